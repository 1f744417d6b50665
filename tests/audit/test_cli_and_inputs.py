"""`tailguard audit` / `certify` / `report diff` end to end, policy inputs, and a
whole-step gymnasium env."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tailguard.adapters.resolve import resolve_policy
from tailguard.audit.audit import run_audit
from tailguard.errors import CheckpointError, ConfigError
from tailguard.tools.cli import main as cli_main

ENV = "py:audit_plants:integrator"


def _sweep(tmp_path: Path) -> Path:
    path = tmp_path / "sweep.toml"
    path.write_text('dimensions = ["latency_fixed"]\n[levels]\nlatency_fixed = [0.25, 0.75]\n')
    return path


def _audit(policy: Path, out: Path, sweep: Path, *extra: str) -> int:
    return cli_main(
        [
            "audit",
            "--policy",
            str(policy),
            "--env",
            ENV,
            "--out",
            str(out),
            "--sweep",
            str(sweep),
            "--episodes",
            "4",
            "--resamples",
            "500",
            "--quiet",
            "--no-html",
            *extra,
        ]
    )


def test_audit_cli_writes_every_output(plant_policy: Path, tmp_path: Path) -> None:
    """`tailguard audit` exits 0 and writes summary.json (+ schema), summary.md and an
    envelope that `tailguard envelope check` accepts."""
    out = tmp_path / "audit"
    assert _audit(plant_policy, out, _sweep(tmp_path)) == 0
    assert {p.name for p in out.iterdir()} >= {
        "summary.json",
        "summary.schema.json",
        "summary.md",
        "envelope.json",
    }
    assert cli_main(["envelope", "check", str(out / "envelope.json")]) == 0


def test_report_diff_paired_and_unpaired(plant_policy: Path, tmp_path: Path) -> None:
    """Same seeds: paired deltas without warning (0 for the same policy); other seeds:
    unpaired with a warning in diff.json and diff.md."""
    sweep = _sweep(tmp_path)
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert _audit(plant_policy, a, sweep) == 0
    assert _audit(plant_policy, b, sweep) == 0
    assert _audit(plant_policy, c, sweep, "--seed", "7") == 0
    d1, d2 = tmp_path / "d1", tmp_path / "d2"
    assert (
        cli_main(
            [
                "report",
                "diff",
                str(a / "summary.json"),
                str(b / "summary.json"),
                "--out",
                str(d1),
                "--quiet",
            ]
        )
        == 0
    )
    paired = json.loads((d1 / "diff.json").read_text())
    assert paired["paired"] and not paired["warning"]
    assert all(r["delta"] == 0.0 for r in paired["conditions"])
    assert (
        cli_main(
            [
                "report",
                "diff",
                str(a / "summary.json"),
                str(c / "summary.json"),
                "--out",
                str(d2),
                "--quiet",
            ]
        )
        == 0
    )
    unpaired = json.loads((d2 / "diff.json").read_text())
    assert not unpaired["paired"] and "NOT paired" in unpaired["warning"]
    assert "Warning" in (d2 / "diff.md").read_text()


def test_report_diff_refuses_a_non_summary(tmp_path: Path) -> None:
    """A file that is not an audit summary is refused (exit 1) before comparing."""
    bad = tmp_path / "x.json"
    bad.write_text('{"hello": 1}')
    assert cli_main(["report", "diff", str(bad), str(bad), "--out", str(tmp_path / "d")]) == 1


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["--workers", "zero"], 2),
        (["--env", "NoSuchEnv-v9"], 1),
        (["--dimensions", "latency_fixd"], 1),
    ],
)
def test_bad_input_exit_codes(
    plant_policy: Path, tmp_path: Path, args: list[str], code: int
) -> None:
    """Usage errors exit 2; refused inputs (unknown env, unknown dimension) exit 1."""
    base = [
        "audit",
        "--policy",
        str(plant_policy),
        "--env",
        ENV,
        "--out",
        str(tmp_path / "o"),
        "--quiet",
        "--episodes",
        "2",
    ]
    assert cli_main(base + args) == code


def test_unknown_env_says_how_to_list_valid_ids(plant_policy: Path) -> None:
    """An unknown gymnasium id names how to list the registered ones."""
    from tailguard.errors import TailguardError

    with pytest.raises(TailguardError, match=r"gymnasium\.registry"):
        run_audit(plant_policy, "NoSuchEnv-v9", episodes=2)


def test_unrecognised_policy_format_is_refused(tmp_path: Path) -> None:
    """A policy file with an unknown suffix is refused (never silently loads nothing)."""
    bad = tmp_path / "model.bin"
    bad.write_bytes(b"\0" * 10)
    with pytest.raises(CheckpointError, match="unrecognised policy format"):
        resolve_policy(bad, tmp_path)
    with pytest.raises(ConfigError, match="not found"):
        resolve_policy(tmp_path / "missing.onnx", tmp_path)
    with pytest.raises(ConfigError, match="vecnormalize"):
        resolve_policy(bad, tmp_path, vecnormalize=bad)


def _rsl_rl_checkpoint(path: Path) -> Path:
    """An RSL-RL 5.x style checkpoint of a 1 -> 1 MLP actor."""
    import torch

    g = torch.Generator().manual_seed(0)
    actor = {
        "mlp.0.weight": torch.randn(4, 1, generator=g) * 0.1,
        "mlp.0.bias": torch.zeros(4),
        "mlp.2.weight": torch.randn(1, 4, generator=g) * 0.1,
        "mlp.2.bias": torch.zeros(1),
        "distribution.std_param": torch.ones(1),
    }
    critic = {
        "mlp.0.weight": torch.zeros(4, 1),
        "mlp.0.bias": torch.zeros(4),
        "mlp.2.weight": torch.zeros(1, 4),
        "mlp.2.bias": torch.zeros(1),
    }
    torch.save(
        {
            "actor_state_dict": actor,
            "critic_state_dict": critic,
            "optimizer_state_dict": {},
            "iter": 1,
            "infos": {},
        },
        path,
    )
    return path


def test_checkpoint_is_exported_with_parity_and_audited(tmp_path: Path) -> None:
    """An RSL-RL .pt is exported on the fly with the adapters' parity check; the audit runs
    the exported ONNX and records the source format, both hashes and the parity result."""
    ckpt = _rsl_rl_checkpoint(tmp_path / "model.pt")
    resolved = resolve_policy(ckpt, tmp_path / "work")
    assert resolved.onnx_path.suffix == ".onnx" and resolved.source["format"] == "rsl-rl"
    assert resolved.source["parity"]["passed"]
    from tailguard.audit.conditions import NOMINAL, Condition

    r = run_audit(
        ckpt,
        ENV,
        episodes=2,
        n_resamples=200,
        workdir=tmp_path / "w2",
        conditions=[NOMINAL, Condition(name="l", dimension="custom", latency="fixed:ms=5")],
    )
    assert r.policy["format"] == "rsl-rl" and r.policy["parity"]["passed"]
    assert r.policy["onnx_sha256"] == resolved.sha256


def test_whole_step_gymnasium_env_is_audited_and_says_so(tmp_path: Path) -> None:
    """CartPole-v1 (no MuJoCo) runs at whole-step resolution; every output states it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.array([[0.0, 0.0], [0.0, 0.0], [-1.0, 1.0], [-0.5, 0.5]], np.float32)  # push with
    graph = helper.make_graph(  # the pole's angle and angular velocity: balances a while
        [helper.make_node("MatMul", ["obs", "W"], ["actions"])],
        "cartpole",
        [helper.make_tensor_value_info("obs", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("actions", TensorProto.FLOAT, [1, 2])],
        [numpy_helper.from_array(w, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    policy = tmp_path / "cartpole.onnx"
    onnx.save(model, str(policy))
    from tailguard.audit.conditions import NOMINAL, Condition
    from tailguard.audit.outputs import audit_markdown

    r = run_audit(
        policy,
        "CartPole-v1",
        episodes=3,
        n_resamples=200,
        conditions=[
            NOMINAL,
            Condition(name="late", dimension="latency_fixed", latency="fixed:ms=20"),
        ],
    )
    assert r.task.resolution == "whole-step" and r.task.period_ns == 20_000_000
    assert r.nominal.returns.min() > 20  # the policy does balance the pole for a while
    summary = r.summary()
    assert "WHOLE-STEP" in summary["task"]["resolution_note"]
    assert "whole-step" in audit_markdown(summary)


def test_recurrent_policy_state_is_carried_and_reset(tmp_path: Path) -> None:
    """A recurrent ONNX policy (GRU, RSL-RL state names) is audited with its state carried
    across ticks and zeroed per episode: no faults, and repeated episodes are identical."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tg_models import build_recurrent

    from tailguard.audit.conditions import NOMINAL, Condition

    policy = build_recurrent(tmp_path / "gru.onnx", "GRU", obs_size=1, hidden=4, action_size=1)
    conds = [NOMINAL, Condition(name="late", dimension="custom", latency="fixed:ms=5")]
    kw = dict(episodes=3, n_resamples=200, conditions=conds, derive=False)
    apart = run_audit(policy, ENV, block=1, **kw)  # type: ignore[arg-type]
    together = run_audit(policy, ENV, block=3, **kw)  # type: ignore[arg-type]
    assert apart.conditions[0].faults == 0
    # An episode after another in the same unit equals one run alone: state is reset.
    for a, b in zip(apart.conditions, together.conditions, strict=True):
        assert a.returns.tolist() == b.returns.tolist()
        assert [e.max_norm_daction for e in a.episodes] == [e.max_norm_daction for e in b.episodes]
    assert apart.conditions[0].episodes[0].max_norm_daction > 0

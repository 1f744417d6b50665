"""`tailguard replay` subcommand: exit codes, JSON layout, reproducibility outside `run`."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import pytest

pytest.importorskip("gymnasium")
pytest.importorskip("mujoco")

from tailguard.firmware_sim.cli import register


def _run(argv: list[str]) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="tailguard")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    out = io.StringIO()
    return args.handler(args, out), out.getvalue()


def test_replay_writes_reproducible_json(hopper_onnx: Path, tmp_path: Path) -> None:
    """Two runs with the same inputs give identical JSON outside `run`; seeds are S+i."""
    docs = []
    for name in ("a.json", "b.json"):
        code, text = _run([
            "replay", "--policy", str(hopper_onnx), "--env", "Hopper-v5", "--episodes", "2",
            "--seed", "10", "--profile", "lognormal:median_ms=2,sigma=0.8,cap_ms=15",
            "--dt-profile", "gaussian:std_ms=0.5", "--drop-prob", "0.01", "--no-guard",
            "--json", str(tmp_path / name),
        ])  # fmt: skip
        assert code == 0 and "return" in text
        docs.append(json.loads((tmp_path / name).read_text()))
    a, b = docs
    assert [e["seed"] for e in a["episodes"]] == [10, 11]
    for e in a["episodes"]:
        assert {"seed", "return", "length", "terminated"} <= set(e)
    assert {"duration_s", "host"} <= set(a["run"])
    a.pop("run"), b.pop("run")
    assert a == b


def test_guarded_replay_json_is_reproducible_and_says_starter(
    hopper_onnx: Path, tmp_path: Path
) -> None:
    """Guarded replay (default) is identical outside `run` for the same inputs, has per-episode
    guard stats, and says it used the starter envelope when none was given."""
    docs = []
    for name in ("a.json", "b.json"):
        code, text = _run([
            "replay", "--policy", str(hopper_onnx), "--env", "Hopper-v5", "--episodes", "2",
            "--seed", "3", "--profile", "mix:0.9*nominal+0.1*fixed:ms=30", "--deadline-ms", "5",
            "--fallback", "zero", "--json", str(tmp_path / name),
        ])  # fmt: skip
        assert code == 0 and "interv." in text
        docs.append(json.loads((tmp_path / name).read_text()))
    a, b = docs
    assert a["guard"]["envelope"]["source"] == "starter"
    assert "not audited" in a["guard"]["envelope"]["note"]
    assert a["guard"]["fallback"] == "zero" and a["guard"]["deadline_ns"] == 5_000_000
    for e in a["episodes"]:
        assert {"violations", "state_time_ns", "interventions"} <= set(e["guard"])
    assert a["summary"]["guard_deadline_misses"] > 0
    a.pop("run"), b.pop("run")
    assert a == b


def test_guarded_replay_with_envelope_file_and_fallback_policy(
    hopper_onnx: Path, tmp_path: Path
) -> None:
    """An envelope file and a second ONNX policy as fallback are accepted and recorded."""
    from fsim_helpers import write_linear_onnx

    from tailguard import OnnxPolicy, save_envelope, starter_envelope

    env_path = tmp_path / "env.json"
    sha = OnnxPolicy(hopper_onnx).sha256
    save_envelope(starter_envelope(obs_size=11, action_size=3, period_ns=8_000_000,
                                   sha256=sha), env_path)  # fmt: skip
    robust = write_linear_onnx(tmp_path / "robust.onnx", 11, 3, seed=5)
    code, _ = _run([
        "replay", "--policy", str(hopper_onnx), "--env", "Hopper-v5", "--episodes", "1",
        "--envelope", str(env_path), "--fallback", str(robust), "--quiet",
        "--json", str(tmp_path / "out.json"),
    ])  # fmt: skip
    doc = json.loads((tmp_path / "out.json").read_text())
    assert code == 0 and doc["guard"]["envelope"] == {"source": "file", "path": str(env_path)}
    assert doc["guard"]["fallback"]["policy"] == str(robust)


def test_replay_envelope_for_another_period_exits_1(
    hopper_onnx: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An envelope written for another control period is refused (exit 1, names both)."""
    from tailguard import save_envelope, starter_envelope

    env_path = tmp_path / "env.json"
    save_envelope(starter_envelope(obs_size=11, action_size=3, period_ns=20_000_000), env_path)
    code, _ = _run(["replay", "--policy", str(hopper_onnx), "--env", "Hopper-v5",
                    "--envelope", str(env_path)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and "20000000" in err and "8000000" in err


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--envelope", "missing.json"], "missing.json"),
        (["--fallback", "bogus"], "valid choices are ['hold', 'zero']"),
        (["--no-guard", "--env", "mjcf:nosuchrobot"], "valid names are ['ant', 'hopper']"),
        (["--no-guard", "--profile", "lognormx"], "did you mean 'lognormal'"),
        (["--no-guard", "--env", "NoSuchEnv-v0"], "NoSuchEnv-v0"),
    ],
)
def test_replay_refused_input_exits_1(
    hopper_onnx: Path, extra: list[str], fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Input that cannot be used (file, spec, env) exits 1 with a message on stderr."""
    argv = ["replay", "--policy", str(hopper_onnx), "--env", "Hopper-v5", "--episodes", "1"]
    code, _ = _run(argv + extra)
    assert code == 1 and fragment in capsys.readouterr().err


def test_replay_contradictory_flags_exit_2(
    hopper_onnx: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--no-guard with a guard flag is a usage error (exit 2) naming both flags."""
    argv = ["replay", "--policy", str(hopper_onnx), "--env", "Hopper-v5", "--episodes", "1"]
    code, _ = _run([*argv, "--no-guard", "--envelope", "e.json"])
    err = capsys.readouterr().err
    assert code == 2 and "--no-guard cannot be combined with --envelope" in err


@pytest.mark.parametrize(
    ("extra", "flag"),
    [
        (["--deadline-ms", "-1"], "--deadline-ms"),
        (["--deadline-ms", "inf"], "--deadline-ms"),
        (["--episodes", "0"], "--episodes"),
        (["--drop-prob", "nan"], "--drop-prob"),
        (["--seed", "-1"], "--seed"),
    ],
)
def test_replay_values_out_of_range_are_usage_errors(
    hopper_onnx: Path, extra: list[str], flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A flag value outside its range stops argparse with exit 2 and names the flag."""
    argv = ["replay", "--policy", str(hopper_onnx), "--env", "Hopper-v5", *extra]
    with pytest.raises(SystemExit) as info:
        _run(argv)
    assert info.value.code == 2 and f"argument {flag}" in capsys.readouterr().err


def test_replay_missing_policy_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A missing policy file exits with code 1 naming the file."""
    code, _ = _run(["replay", "--policy", str(tmp_path / "x.onnx"), "--env", "Hopper-v5",
                    "--no-guard"])  # fmt: skip
    assert code == 1 and "x.onnx" in capsys.readouterr().err


def test_replay_takes_an_sb3_checkpoint(tmp_path: Path) -> None:
    """`replay --policy model.zip` exports the SB3 model (parity checked) and replays it; the
    JSON names the source checkpoint and the exported ONNX file's hash."""
    sb3 = pytest.importorskip("stable_baselines3")
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = sb3.PPO("MlpPolicy", "Hopper-v5", n_steps=64, batch_size=64, device="cpu", seed=0)
    model.save(tmp_path / "model.zip")
    out = tmp_path / "r.json"
    code, _ = _run(
        [
            "replay",
            "--policy",
            str(tmp_path / "model.zip"),
            "--env",
            "Hopper-v5",
            "--episodes",
            "1",
            "--no-guard",
            "--quiet",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    doc = json.loads(out.read_text())
    assert doc["policy"]["source"]["format"] == "sb3"
    assert doc["policy"]["source"]["parity"]["passed"] is True
    assert len(doc["policy"]["sha256"]) == 64 and doc["episodes"][0]["length"] > 0


def test_replay_refuses_an_unknown_checkpoint_format(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A policy file that is neither ONNX, .pt nor .zip is refused (exit 1), never loaded."""
    bogus = tmp_path / "policy.bin"
    bogus.write_bytes(b"\0" * 16)
    code, _ = _run(["replay", "--policy", str(bogus), "--env", "Hopper-v5", "--no-guard"])
    assert code == 1
    assert "unrecognised policy format '.bin'" in capsys.readouterr().err

"""``tailguard harden`` on RSL-RL ``.pt`` checkpoints: every supported layout rebuilt as rsl-rl
5.x runner networks with the file's own weights; one tiny end-to-end run (audit -> rsl-rl PPO
fine-tuning under the failing timing -> export with parity -> re-audit -> diff -> pair
certify); reproducible for a seed; refusals before anything runs; no code from the file runs.

The end-to-end checkpoint is ckpt_factory's 5.x layout (InvertedPendulum sizes) whose actor
computes a linear balance controller ``u = K @ obs`` (ELU kept in its linear range by a
bias): it balances at nominal timing and falls under 0.75 of a period of latency, so the
audit has something to harden. Budgets are tiny: these tests check the pipeline and its
invariants, not that the hardened policy is better.
"""

from __future__ import annotations

import json
import math
import pickle
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("rsl_rl")
pytest.importorskip("mujoco")
torch = pytest.importorskip("torch")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "adapters"))
import ckpt_factory as cf  # noqa: E402

from tailguard.audit.harden import harden  # noqa: E402
from tailguard.audit.harden_rsl_rl import build_runner, finetune_rsl_rl, read_rsl_rl  # noqa: E402
from tailguard.errors import ConfigError  # noqa: E402

ENV = "InvertedPendulum-v5"
OBS, ACT = 4, 1
# Balances at nominal timing and up to 0.625 period of latency (substep timing: the audit
# no longer rounds 0.75 period up to a whole one), falls at 0.75 period.
GAINS = (2.0, 30.0, 2.0, 2.0)
BUDGET: dict[str, Any] = {
    "timesteps": 300,
    "episodes": 2,
    "quick": True,
    "n_resamples": 200,
    "html": False,
    "seed": 3,
}


def _build(case: cf.Case, seed: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
    """ckpt_factory's checkpoint of ``case`` with InvertedPendulum's sizes."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cf, "OBS_DIM", OBS)
        mp.setattr(cf, "ACTION_DIM", ACT)
        return cf.build(case, seed=seed)


def _controller(path: Path) -> Path:
    """A 5.x checkpoint (normalizer, log_std) whose actor is ``u = K @ obs``."""
    ckpt, _ = _build(cf.Case("5", normalizer=True, std_kind="log_std"))
    a = ckpt["actor_state_dict"]
    a["mlp.0.weight"][0] = torch.tensor(GAINS)
    a["mlp.0.bias"][:] = 5.0  # ELU's linear range while K @ obs > -5
    a["mlp.2.weight"][0] = 0.0
    a["mlp.2.weight"][0, 0] = 1.0
    a["mlp.2.bias"][0] = 0.0
    a["mlp.4.weight"][:] = 0.0
    a["mlp.4.weight"][0, 0] = 1.0
    a["mlp.4.bias"][:] = -5.0
    a["obs_normalizer._mean"][:] = 0.0  # (x - 0) / (0.99 + 0.01): the identity
    a["obs_normalizer._std"][:] = 0.99
    a["obs_normalizer._var"][:] = 0.99**2
    a["obs_normalizer.count"] = torch.tensor(1_000_000)
    torch.save(ckpt, path)
    return path


@pytest.fixture(scope="module")
def hardened(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """One tiny harden run of the controller checkpoint (it fails latency)."""
    tmp = tmp_path_factory.mktemp("harden_rsl_rl")
    ckpt = _controller(tmp / "controller.pt")
    return harden(ckpt, ENV, tmp / "out", **BUDGET), ckpt


def _tensors(path: Path, key: str) -> dict[str, Any]:
    return dict(torch.load(path, weights_only=True, map_location="cpu")[key])


def test_pipeline_writes_every_stage_for_an_rsl_rl_checkpoint(hardened: tuple[Any, Path]) -> None:
    """Audit, fine-tuning, export with parity, re-audit on the same conditions, diff and the
    pair envelope (binding the ORIGINAL policy) are all written; the training record is
    rsl-rl's, with the budget's iteration count and the normalizer carried into the ONNX."""
    import onnx

    r, _ = hardened
    assert r.status == "certified"
    assert any(n.startswith("latency_fixed/") for n in r.mix.failing)
    for role in ("before_summary", "after_summary", "diff", "diff_markdown", "pair"):
        assert r.files[role].is_file(), role
    assert r.files["envelope"].is_file() and r.files["training"].is_file()
    assert r.hardened_model == r.files["model"] and r.hardened_model.name == "hardened.pt"
    assert r.hardened_onnx.name == "hardened.onnx" and r.hardened_onnx.is_file()
    record = json.loads(r.files["training"].read_text())
    assert record["framework"] == "rsl-rl" and record["source_format"] == "5.x"
    assert record["export"]["parity"]["passed"]
    assert record["export"]["parity"]["observations"] >= 200
    s = record["settings"]
    assert s["iterations"] == math.ceil(300 / (s["num_envs"] * s["num_steps_per_env"]))
    assert record["env_steps"] == s["iterations"] * s["num_envs"] * s["num_steps_per_env"] >= 300
    assert record["randomization"] == r.mix.to_dict()
    assert record["fine_tuned_from_sha256"] == r.before.policy["sha256"]
    meta = {p.key: p.value for p in onnx.load(str(r.hardened_onnx)).metadata_props}
    assert meta["tailguard.source_format"] == "rsl-rl"
    assert meta["tailguard.obs_normalizer"] == "folded"
    count = _tensors(r.hardened_model, "actor_state_dict")["obs_normalizer.count"]
    assert int(count) == 1_000_000 + record["env_steps"], "normalizer updated, not reset"
    assert [c.condition for c in r.after.conditions] == [c.condition for c in r.before.conditions]
    assert r.diff["paired"]
    pair = json.loads(r.files["pair"].read_text())
    assert pair["fallback"] == {"policy": "hardened.pt", "onnx": "hardened.onnx"}
    envelope = json.loads(r.files["envelope"].read_text())
    assert envelope["policy"]["sha256"] == r.before.policy["onnx_sha256"]
    assert r.certify.policy["onnx_sha256"] == r.before.policy["onnx_sha256"]
    assert r.exit_code == r.certify.exit_code


def test_fine_tuning_changes_the_weights_and_the_same_seed_repeats_them(
    hardened: tuple[Any, Path], tmp_path: Path
) -> None:
    """The fine-tuned actor differs from the file's; fine-tuning again with the same seed,
    mix and budget (one torch thread) gives bit-identical actor and critic weights; another
    seed gives others."""
    r, ckpt = hardened
    original = _tensors(ckpt, "actor_state_dict")
    tuned = _tensors(r.hardened_model, "actor_state_dict")
    assert any(not torch.equal(original[k], tuned[k]) for k in original if k.startswith("mlp."))
    model = read_rsl_rl(ckpt)
    args = (ENV, r.mix, r.before.task.period_ns, 300)
    (tmp_path / "same").mkdir()
    (tmp_path / "other").mkdir()
    again = finetune_rsl_rl(model, *args, 3, 1e-4, tmp_path / "same", None)["model"]
    other = finetune_rsl_rl(model, *args, 4, 1e-4, tmp_path / "other", None)["model"]
    for key in ("actor_state_dict", "critic_state_dict"):
        first, second = _tensors(r.hardened_model, key), _tensors(again, key)
        assert first.keys() == second.keys()
        assert all(torch.equal(first[k], second[k]) for k in first), key
    different = _tensors(other, "actor_state_dict")
    assert any(not torch.equal(tuned[k], different[k]) for k in tuned)


def _venv() -> Any:
    import gymnasium as gym

    from tailguard.adapters.rsl_rl_vecenv import GymnasiumVecEnv

    return GymnasiumVecEnv([lambda: gym.make(ENV) for _ in range(4)], seed=0)


@pytest.mark.parametrize("case", cf.all_cases(), ids=lambda c: c.id)
def test_every_layout_is_rebuilt_as_rsl_rl_5_networks_with_its_weights(
    case: cf.Case, tmp_path: Path
) -> None:
    """For every supported checkpoint layout (1.x-5.x, MLP / LSTM / GRU, normalizer or not,
    std or log_std), the rsl-rl 5.5 runner built by harden acts exactly like the numpy
    reference of the file's actor (normalizer included, hidden state carried across
    steps), so fine-tuning starts from the file's own weights."""
    from tensordict import TensorDict

    ckpt, ref = _build(case, seed=1)
    torch.save(ckpt, tmp_path / "c.pt")
    model = read_rsl_rl(tmp_path / "c.pt")
    assert model["spec"].format_version == case.expected_version
    venv = _venv()
    runner, _, optimizer = build_runner(model, venv, 0, 1e-4, 8)
    venv.close()
    assert optimizer.startswith("fresh")  # ckpt_factory writes an empty optimizer state
    policy = runner.alg.get_policy()
    policy.eval()
    policy.reset()
    obs = np.random.default_rng(0).normal(size=(6, 4, OBS)).astype(np.float32)
    with torch.no_grad():
        ours = np.stack(
            [
                policy(TensorDict({"policy": torch.from_numpy(o)}, batch_size=[4])).numpy()
                for o in obs
            ]
        )
    assert np.allclose(ours, cf.reference_rollout(ref, obs), atol=1e-5)


def test_a_runner_checkpoint_brings_its_optimizer_state(hardened: tuple[Any, Path]) -> None:
    """``hardened.pt`` is what ``OnPolicyRunner.save`` writes: hardening it again rebuilds the
    same networks and loads its Adam moments (at the fine-tuning learning rate)."""
    r, _ = hardened
    model = read_rsl_rl(r.hardened_model)
    venv = _venv()
    runner, _, optimizer = build_runner(model, venv, 0, 1e-4, 8)
    venv.close()
    assert optimizer.startswith("loaded from the file")
    opt = runner.alg.optimizer
    assert opt.state and all(g["lr"] == 1e-4 for g in opt.param_groups)
    saved = _tensors(r.hardened_model, "actor_state_dict")
    assert all(torch.equal(v, runner.alg.actor.state_dict()[k]) for k, v in saved.items())


class _Touch:
    """Unpickling it creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (Path.touch, (self.marker,))


def _refusals(tmp: Path) -> dict[str, tuple[Path, str]]:
    ckpt, _ = _build(cf.Case("5", normalizer=True))
    torch.save(ckpt["actor_state_dict"], tmp / "actor_only.pt")
    legacy, _ = _build(cf.Case("1"))
    legacy["model_state_dict"] = {
        k: v for k, v in legacy["model_state_dict"].items() if not k.startswith("critic.")
    }
    torch.save(legacy, tmp / "no_critic.pt")
    wide, _ = _build(cf.Case("5"))
    wide["critic_state_dict"]["mlp.0.weight"] = torch.zeros(8, OBS + 3)
    torch.save(wide, tmp / "privileged.pt")
    odd, _ = _build(cf.Case("4"))
    odd["critic_state_dict"]["memory.weight"] = torch.zeros(2)
    torch.save(odd, tmp / "odd_critic.pt")
    (tmp / "garbage.pt").write_bytes(b"not a torch file")
    ckpt["infos"] = _Touch(tmp / "marker")
    torch.save(ckpt, tmp / "pickled.pt")
    return {
        "actor_only": (tmp / "actor_only.pt", "holds no critic"),
        "no_critic": (tmp / "no_critic.pt", "no critic MLP layers"),
        "privileged": (tmp / "privileged.pt", "its critic takes 7 observations and its actor 4"),
        "odd_critic": (tmp / "odd_critic.pt", r"critic keys it cannot map: \['memory.weight'\]"),
        "garbage": (tmp / "garbage.pt", "cannot fine-tune this RSL-RL checkpoint"),
        "pickled": (tmp / "pickled.pt", "cannot fine-tune this RSL-RL checkpoint"),
    }


def test_refuses_checkpoints_it_cannot_fine_tune_before_running(tmp_path: Path) -> None:
    """A checkpoint without a critic, with a privileged (wider) critic observation, with
    critic keys that cannot be mapped, an unreadable file and one carrying a live pickle
    payload are refused with a ConfigError saying what was found, before any audit writes a
    file; the payload never runs; a VecNormalize file with a .pt is refused too."""
    for name, (path, fragment) in _refusals(tmp_path).items():
        out = tmp_path / f"out_{name}"
        with pytest.raises(ConfigError, match=fragment):
            harden(path, ENV, out, **BUDGET)
        assert not out.exists(), name
    assert not (tmp_path / "marker").exists()
    pickle.loads(pickle.dumps(_Touch(tmp_path / "live")))
    assert (tmp_path / "live").exists(), "the payload is live"
    good = _controller(tmp_path / "good.pt")
    with pytest.raises(ConfigError, match=r"--vecnormalize goes with an SB3 \.zip"):
        harden(good, ENV, tmp_path / "out_vn", vecnormalize=good, **BUDGET)


@pytest.mark.parametrize(
    "case",
    [cf.Case("2", "gru", True, "log_std"), cf.Case("5", "lstm", True, "std")],
    ids=lambda c: c.id,
)
def test_recurrent_checkpoints_fine_tune_and_export_with_parity(
    case: cf.Case, tmp_path: Path
) -> None:
    """A recurrent actor (a 2.x GRU with a runner-level normalizer, a 5.x LSTM) is fine-tuned
    as an rsl-rl ``RNNModel`` under a latency mix and written as a 5.x checkpoint that the
    RSL-RL adapter exports with its parity check passing (hidden state carried)."""
    from tailguard.adapters.rsl_rl_export import export_rsl_rl
    from tailguard.audit.harden import TrainingMix

    ckpt, _ = _build(case)
    torch.save(ckpt, tmp_path / "rec.pt")
    mix = TrainingMix(
        profiles=((0.5, "nominal", "nominal", "test"), (0.5, "fixed:ms=30", "x", "test")),
        skipped=(),
        nominal_share=0.5,
        failing=("x",),
    )
    tuned = finetune_rsl_rl(
        read_rsl_rl(tmp_path / "rec.pt"), ENV, mix, 40_000_000, 300, 0, 1e-4, tmp_path, None
    )
    assert tuned["record"]["architecture"]["actor"] == "RNNModel"
    assert tuned["record"]["architecture"]["recurrent"] == case.rnn
    exported = export_rsl_rl(
        tuned["model"], tmp_path / "rec.onnx", observations=tuned["observations"]
    )
    assert exported.parity.passed and exported.parity.num_observations >= 200
    after = _tensors(tuned["model"], "actor_state_dict")
    before = read_rsl_rl(tmp_path / "rec.pt")["actor_state"]
    assert after.keys() == before.keys()
    assert any(not torch.equal(after[k], before[k]) for k in after if k.startswith("rnn."))


def test_missing_train_extra_names_the_pip_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without rsl-rl-lib, hardening a .pt names the exact install command, before any
    audit writes a file."""
    import builtins

    from tailguard.errors import MissingExtraError

    real = builtins.__import__

    def fake(name: str, *a: Any, **k: Any) -> Any:
        if name == "rsl_rl" or name.startswith("rsl_rl."):
            raise ImportError("no rsl_rl")
        return real(name, *a, **k)

    good = _controller(tmp_path / "good.pt")
    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(MissingExtraError, match=r"pip install 'tailguard\[train\]'"):
        harden(good, ENV, tmp_path / "out", **BUDGET)
    assert not (tmp_path / "out").exists()

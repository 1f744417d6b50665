"""``tailguard harden``: audit -> fine-tune from the file's own weights -> export -> re-audit ->
diff -> certify the pair; refusals; no code from the user's zip runs.

Budgets are tiny (a few hundred timesteps, 2 episodes, the quick sweep): these tests check the
pipeline and its invariants, not that the hardened policy is better.
"""

from __future__ import annotations

import base64
import json
import pickle
import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("stable_baselines3")
pytest.importorskip("mujoco")

from tailguard.audit.harden import TrainingMix, harden
from tailguard.errors import ConfigError

POLICIES = Path(__file__).resolve().parents[2] / "guard" / "policies"
NOMINAL_ZIP = POLICIES / "hopper_nominal.zip"
NOMINAL_VN = POLICIES / "hopper_nominal.vecnormalize.pkl"
BUDGET: dict[str, Any] = {
    "timesteps": 512,
    "episodes": 2,
    "quick": True,
    "n_resamples": 200,
    "html": False,
    "seed": 3,
}


def _run(out: Path) -> Any:
    return harden(NOMINAL_ZIP, "Hopper-v5", out, vecnormalize=NOMINAL_VN, **BUDGET)


@pytest.fixture(scope="module")
def hardened(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One tiny harden run of the shipped nominal SB3 PPO Hopper policy (it fails latency)."""
    return _run(tmp_path_factory.mktemp("harden") / "a")


def test_pipeline_writes_every_stage_and_reports_certify_honestly(hardened: Any) -> None:
    """The failing conditions become the training mix (nominal share kept, weights sum to 1,
    each profile from a failing condition, every failing condition trained or skipped with a
    reason); the hardened ONNX passed parity; the re-audit used the same conditions and
    seeds (paired diff); the pair envelope binds the ORIGINAL policy and certify's verdict is
    the exit code."""
    r = hardened
    assert r.status == "certified"
    mix = r.mix.to_dict()
    assert mix["failing_conditions"], "the shipped nominal policy fails latency conditions"
    weights = [p["weight"] for p in mix["profiles"]]
    assert abs(sum(weights) - 1.0) < 1e-12 and mix["profiles"][0]["latency"] == "nominal"
    assert weights[0] == pytest.approx(0.3)
    trained = {p["condition"] for p in mix["profiles"][1:]}
    skipped = {s["condition"] for s in mix["skipped"]}
    outside = {n for n in trained | skipped if n.startswith("out/")}
    assert outside, "the pair's out-of-envelope stresses are trained on too"
    assert trained and trained | skipped == set(mix["failing_conditions"]) | outside
    assert not trained & skipped
    audited = {c.condition.name: c.condition for c in r.before.conditions}
    for p in mix["profiles"][1:]:
        if p["condition"] in audited:
            cond = audited[p["condition"]]
            assert p["latency"] in (cond.latency, cond.obs_delay)
    for s in mix["skipped"]:
        kind = s["condition"].split("/")[0]
        assert kind in ("dt_jitter", "rate_change", "drops", "drop_bursts") or s["condition"] == (
            "out/rate"
        )
    record = json.loads(r.files["training"].read_text())
    assert record["randomization"] == mix and record["timesteps"] == 512
    assert record["export"]["parity"]["passed"]
    assert [c.condition for c in r.after.conditions] == [c.condition for c in r.before.conditions]
    assert r.diff["paired"] and {row["condition"] for row in r.diff["conditions"]} == {
        c.condition.name for c in r.before.conditions[1:]
    }
    pair = json.loads(r.files["pair"].read_text())
    assert pair["fallback"]["onnx"] == "hardened.onnx"
    envelope = json.loads(r.files["envelope"].read_text())
    assert envelope["policy"]["sha256"] == r.before.policy["onnx_sha256"]
    assert envelope["timing"] == r.before.envelope.to_dict()["timing"]
    assert all(envelope["responses"][k] == "fallback" for k in pair["responses_changed"])
    assert r.certify.policy["onnx_sha256"] == r.before.policy["onnx_sha256"]
    assert r.exit_code == r.certify.exit_code == {"pass": 0, "warn": 1, "fail": 2}[r.verdict]
    summary = json.loads(r.files["certify_summary"].read_text())
    assert summary["verdict"] == r.verdict


def _actions(onnx: Path, obs: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    s = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: obs})[0]


def test_same_seed_gives_the_same_hardened_policy(hardened: Any, tmp_path: Path) -> None:
    """A second run with the same seed and budget exports a policy with identical actions on
    recorded observations (one torch thread, seeded training and timing streams), and the
    fine-tuned policy differs from the original (training did change the weights)."""
    again = _run(tmp_path / "b")
    obs = np.load(POLICIES / "hopper_observations.npy").astype(np.float32)
    first = _actions(hardened.hardened_onnx, obs)
    assert np.array_equal(first, _actions(again.hardened_onnx, obs))
    assert not np.array_equal(first, _actions(POLICIES / "hopper_nominal.onnx", obs))
    assert again.training["randomization"] == hardened.training["randomization"]


def _tiny_model(path: Path, algo: str = "PPO") -> Path:
    import gymnasium as gym
    import stable_baselines3 as sb3
    import torch

    torch.set_num_threads(1)
    env = gym.make("Hopper-v5")
    if algo == "PPO":
        model = sb3.PPO(
            "MlpPolicy", env, n_steps=32, batch_size=16, seed=0, device="cpu",
            policy_kwargs={"net_arch": [8, 8]},
        )  # fmt: skip
    else:
        model = getattr(sb3, algo)(
            "MlpPolicy", env, seed=0, device="cpu", policy_kwargs={"net_arch": [8, 8]}
        )
    model.save(path)
    return path


def _refusal_inputs(tmp: Path) -> dict[str, tuple[Path, str]]:
    (tmp / "model.pkl").write_bytes(b"x")
    (tmp / "ckpt.pt").write_bytes(b"x")
    return {
        "onnx": (POLICIES / "hopper_nominal.onnx", "holds no training state"),
        "suffix": (tmp / "model.pkl", "unrecognised policy format '.pkl'"),
        "missing": (tmp / "absent.zip", "not found"),
        "rsl_rl": (tmp / "ckpt.pt", "cannot fine-tune this RSL-RL checkpoint"),
        "sac": (_tiny_model(tmp / "sac.zip", "SAC"), "this is SAC"),
    }


def test_refuses_what_it_cannot_fine_tune_before_running(tmp_path: Path) -> None:
    """ONNX, an unknown suffix, a missing file, an unreadable RSL-RL checkpoint and an SAC model are
    refused with a ConfigError saying what to pass instead, before any audit writes a file;
    the CLI maps the refusal to exit code 1."""
    from tailguard.tools.cli import main

    for name, (path, fragment) in _refusal_inputs(tmp_path).items():
        out = tmp_path / f"out_{name}"
        with pytest.raises(ConfigError, match=fragment):
            harden(path, "Hopper-v5", out, **BUDGET)
        assert not out.exists(), name
    code = main(
        ["harden", "--policy", str(POLICIES / "hopper_nominal.onnx"), "--env", "Hopper-v5",
         "--out", str(tmp_path / "cli"), "--quiet"]
    )  # fmt: skip
    assert code == 1


class _Touch:
    """A cloudpickle-style payload: unpickling it creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (Path.touch, (self.marker,))


def _poison(model_zip: Path, marker: Path) -> None:
    """Replace every pickled (':serialized:') field of the zip's ``data`` with the payload."""
    payload = base64.b64encode(pickle.dumps(_Touch(marker))).decode()
    with zipfile.ZipFile(model_zip) as z:
        members = {n: z.read(n) for n in z.namelist()}
    data = json.loads(members["data"])
    poisoned = 0
    for value in data.values():
        if isinstance(value, dict) and ":serialized:" in value:
            value[":serialized:"] = payload
            poisoned += 1
    assert poisoned >= 3
    members["data"] = json.dumps(data).encode()
    with zipfile.ZipFile(model_zip, "w") as z:
        for name, content in members.items():
            z.writestr(name, content)


def test_pickled_code_in_the_users_zip_never_runs(tmp_path: Path) -> None:
    """A zip whose ``data`` carries a live pickle payload in every serialized field is
    audited, rebuilt and fine-tuned without the payload running (its marker file is never
    created); the same payload does run when unpickled, so the check is not vacuous."""
    from tailguard.audit.harden import _finetune, _read_model

    live = tmp_path / "live_marker"
    pickle.loads(pickle.dumps(_Touch(live)))
    assert live.exists()
    marker = tmp_path / "marker"
    model = _tiny_model(tmp_path / "poisoned.zip")
    _poison(model, marker)
    result = harden(model, "Hopper-v5", tmp_path / "out", **BUDGET)
    assert result.status in ("certified", "nothing_to_harden", "untrainable")
    mix = TrainingMix(
        profiles=((0.5, "nominal", "nominal", "test"), (0.5, "fixed:ms=8", "x", "test")),
        skipped=(),
        nominal_share=0.5,
        failing=("x",),
    )
    info = _read_model(model, None)
    tuned = _finetune(info, "Hopper-v5", mix, 8_000_000, 64, 0, 1e-4, tmp_path, None)
    assert tuned["model"].is_file()
    assert not marker.exists()


def test_missing_train_extra_names_the_pip_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without stable-baselines3 the error names the exact install command."""
    import builtins

    from tailguard.errors import MissingExtraError

    real = builtins.__import__

    def fake(name: str, *a: Any, **k: Any) -> Any:
        if name == "stable_baselines3" or name.startswith("stable_baselines3."):
            raise ImportError("no sb3")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    path = tmp_path / "m.zip"
    shutil.copy(NOMINAL_ZIP, path)
    with pytest.raises(MissingExtraError, match=r"pip install 'tailguard\[train\]'"):
        harden(path, "Hopper-v5", tmp_path / "out", **BUDGET)


@pytest.mark.parametrize("algo", ["PPO", "A2C"])
def test_rebuilt_model_acts_like_the_file_before_training(algo: str, tmp_path: Path) -> None:
    """The fresh SB3 model built from the file's readable architecture and weights-only state
    gives the same deterministic actions as the file's exported ONNX policy (fine-tuning
    starts from the file's own weights), for PPO and A2C."""
    import gymnasium as gym
    from stable_baselines3.common.vec_env import DummyVecEnv

    from tailguard.adapters.sb3 import export_sb3
    from tailguard.audit.harden import _read_model, build_model

    model_zip = _tiny_model(tmp_path / f"{algo}.zip", algo)
    info = _read_model(model_zip, None)
    venv = DummyVecEnv([lambda: gym.make("Hopper-v5")])
    model, _ = build_model(info, venv, 123, 1e-4, 64)  # another seed: another fresh init
    obs = np.load(POLICIES / "hopper_observations.npy").astype(np.float32)[:50]
    ours = model.predict(obs, deterministic=True)[0]
    exported = export_sb3(model_zip, tmp_path / "p.onnx").path
    assert np.allclose(ours, _actions(exported, obs), atol=1e-5)
    fresh = type(model)(
        "MlpPolicy", venv, seed=123, device="cpu", policy_kwargs={"net_arch": [8, 8]}
    )
    assert not np.allclose(fresh.predict(obs, deterministic=True)[0], ours, atol=1e-3)
    venv.close()


@pytest.mark.parametrize(
    ("env_id", "wrapper"),
    [
        ("Hopper-v5", "ExactLatencyWrapper"),  # the audit simulates exact release times
        ("Hopper-v4", "ActionLatencyWrapper"),  # refused by the substep simulator: whole steps
        ("Pendulum-v1", "ActionLatencyWrapper"),
    ],
)
def test_training_env_matches_the_audits_resolution(env_id: str, wrapper: str) -> None:
    from tailguard.audit.harden import _make_env
    from tailguard.audit.tasks import make_audit_task, task_resolution

    mix = TrainingMix(
        profiles=((0.5, "nominal", "nominal", "test"), (0.5, "fixed:ms=3", "x", "test")),
        skipped=(),
        nominal_share=0.5,
        failing=("x",),
    )
    env = _make_env(env_id, mix, 8_000_000, 0)
    assert type(env).__name__ == wrapper
    resolution = task_resolution(make_audit_task(env_id))
    assert resolution == ("substep" if wrapper == "ExactLatencyWrapper" else "whole-step")
    if wrapper == "ActionLatencyWrapper":
        assert env._round_up  # a late command waits for the next step, as the audit has it
    env.close()

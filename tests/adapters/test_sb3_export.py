"""SB3 export: ONNX reproduces predict(deterministic=True) for PPO/A2C/SAC/TD3 (+VecNormalize)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
sb3 = pytest.importorskip("stable_baselines3")

from tailguard.adapters.sb3 import export_sb3, load_sb3  # noqa: E402
from tailguard.errors import CheckpointError  # noqa: E402


def _model(algo: str, activation: Any = None) -> Any:
    cls = getattr(sb3, algo)
    kwargs: dict[str, Any] = {"net_arch": [16, 16]}
    if activation is not None:
        kwargs["activation_fn"] = activation
    extra: dict[str, Any] = (
        {"n_steps": 8} if algo in ("PPO", "A2C") else {"learning_starts": 10_000}
    )
    if algo == "PPO":
        extra["batch_size"] = 8
    torch.manual_seed(0)
    model = cls("MlpPolicy", "Pendulum-v1", policy_kwargs=kwargs, device="cpu", **extra)
    with torch.no_grad():  # push some means past the bounds so clipping / squashing matters
        for name, param in model.policy.named_parameters():
            if name in ("action_net.bias", "actor.mu.bias", "actor.mu.4.bias"):
                param.add_(1.5)
    return model


def _observations(n: int) -> np.ndarray:
    rng = np.random.default_rng(3)
    return (rng.normal(size=(n, 3)) * [1.0, 1.0, 4.0]).astype(np.float32)


def _onnx_actions(path: Path, obs: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"obs": obs})[0]


@pytest.mark.parametrize(
    ("algo", "activation", "expected_activation"),
    [
        ("PPO", None, "tanh"),
        ("PPO", torch.nn.ReLU, "relu"),
        ("A2C", None, "tanh"),
        ("SAC", None, "relu"),
        ("TD3", None, "relu"),
    ],
)
def test_sb3_export_matches_predict(
    tmp_path: Path, algo: str, activation: Any, expected_activation: str
) -> None:
    """The exported ONNX actions equal predict(deterministic=True), bounds included."""
    model = _model(algo, activation)
    model.save(tmp_path / "model.zip")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = export_sb3(tmp_path / "model.zip", out_dir / "policy.onnx", exporter="legacy")
    assert os.listdir(out_dir) == ["policy.onnx"]
    assert result.metadata["tailguard.source_format"] == "sb3"
    assert result.metadata["tailguard.source_version"] == algo.lower()
    assert result.metadata["tailguard.activation"] == expected_activation
    assert result.parity.passed
    obs = _observations(50)
    expected, _ = model.predict(obs, deterministic=True)
    got = _onnx_actions(result.path, obs)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    assert np.all(got <= 2.0) and np.all(got >= -2.0)
    assert np.any(np.abs(got) > 1.0)  # the rescale to [-2, 2] is in the graph


def test_vecnormalize_statistics_are_folded_in(tmp_path: Path) -> None:
    """With a VecNormalize file, ONNX(raw obs) equals predict(normalize_obs(raw obs))."""
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    venv = VecNormalize(make_vec_env("Pendulum-v1", n_envs=2, seed=0), clip_obs=2.0)
    venv.reset()
    for _ in range(30):
        venv.step(np.random.default_rng(0).uniform(-2, 2, size=(2, 1)))
    venv.save(str(tmp_path / "vecnormalize.pkl"))
    model = _model("PPO")
    model.save(tmp_path / "model.zip")
    result = export_sb3(
        tmp_path / "model.zip",
        tmp_path / "policy.onnx",
        vecnormalize=tmp_path / "vecnormalize.pkl",
        exporter="legacy",
    )
    assert result.metadata["tailguard.obs_normalizer"] == "vecnormalize"
    obs = _observations(40)
    venv.training = False
    expected, _ = model.predict(venv.normalize_obs(obs), deterministic=True)
    np.testing.assert_allclose(_onnx_actions(result.path, obs), expected, atol=1e-5, rtol=0)
    venv.close()


def test_discrete_action_space_is_refused(tmp_path: Path) -> None:
    """A PPO model with a Discrete action space is refused with a clear message."""
    model = sb3.PPO("MlpPolicy", "CartPole-v1", n_steps=8, batch_size=8, device="cpu")
    model.save(tmp_path / "cartpole.zip")
    with pytest.raises(CheckpointError, match="action space Discrete is not supported"):
        load_sb3(tmp_path / "cartpole.zip")


class _Evil:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("echo this-must-never-run",))


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda p: _write(p / "m.zip", b"PK\x03\x04 truncated"), "cannot read the SB3 zip"),
        (lambda p: p / "missing.zip", "not found"),
    ],
)
def test_bad_sb3_files_are_refused(tmp_path: Path, make: Any, fragment: str) -> None:
    """Missing or corrupt SB3 zips raise CheckpointError."""
    with pytest.raises(CheckpointError, match=fragment):
        load_sb3(make(tmp_path))


def test_vecnormalize_with_code_is_refused(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A VecNormalize pickle that references arbitrary callables is refused, never run."""
    model = _model("PPO")
    model.save(tmp_path / "model.zip")
    evil = _write(tmp_path / "vn.pkl", pickle.dumps({"obs_rms": _Evil()}))
    with pytest.raises(CheckpointError, match=r"refused to load the VecNormalize file"):
        load_sb3(tmp_path / "model.zip", vecnormalize=evil)
    assert "this-must-never-run" not in capfd.readouterr().out

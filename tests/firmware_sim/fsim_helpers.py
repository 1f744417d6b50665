"""Tiny deterministic policies (numpy and ONNX) built at test time, for firmware_sim tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from tailguard.firmware_sim.controllers import LinearController

#: the gymnasium MuJoCo v5 envs beyond the first four locomotion tasks (test_more_envs.py)
MORE_ENVS = [
    "InvertedPendulum-v5",
    "InvertedDoublePendulum-v5",
    "Swimmer-v5",
    "Reacher-v5",
    "Pusher-v5",
    "Humanoid-v5",
    "HumanoidStandup-v5",
]


def linear_weights(obs_dim: int, act_dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A fixed random linear policy (float32)."""
    rng = np.random.default_rng(seed)
    w = rng.normal(0.0, 0.3, (act_dim, obs_dim)).astype(np.float32)
    b = rng.normal(0.0, 0.1, act_dim).astype(np.float32)
    return w, b


def linear_controller(obs_dim: int, act_dim: int, seed: int = 0) -> LinearController:
    """tanh(W obs + b) with fixed random weights."""
    return LinearController(*linear_weights(obs_dim, act_dim, seed))


def write_linear_onnx(path: Path, obs_dim: int, act_dim: int, seed: int = 0) -> Path:
    """Write tanh(obs @ W.T + b) as an ONNX model with input 'obs' and output 'actions'."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w, b = linear_weights(obs_dim, act_dim, seed)
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["obs", "W", "b"], ["pre"], transB=1),
            helper.make_node("Tanh", ["pre"], ["actions"]),
        ],
        "linear_policy",
        [helper.make_tensor_value_info("obs", TensorProto.FLOAT, [1, obs_dim])],
        [helper.make_tensor_value_info("actions", TensorProto.FLOAT, [1, act_dim])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def plain_rollout(
    env_id: str,
    policy: Callable,
    seed: int,
    action_lag: int = 0,
    obs_lag: int = 0,
    max_episode_steps: int | None = None,
) -> tuple[float, int, bool]:
    """Reference: plain gymnasium with actions applied ``action_lag`` steps late (zero before
    the first) and the policy seeing the observation ``obs_lag`` steps old (at most
    ``max_episode_steps`` steps when given, else the env's own limit)."""
    import gymnasium as gym

    env = gym.make(env_id, max_episode_steps=max_episode_steps)
    obs, _ = env.reset(seed=seed)
    zero = np.zeros(env.action_space.shape, env.action_space.dtype)
    actions: list[np.ndarray] = []
    observations = [obs]
    ret, n = 0.0, 0
    while True:
        seen = observations[max(len(observations) - 1 - obs_lag, 0)]
        actions.append(np.asarray(policy(seen, 0), env.action_space.dtype))
        k = len(actions) - 1 - action_lag
        obs, r, term, trunc, _ = env.step(actions[k] if k >= 0 else zero)
        observations.append(obs)
        ret += float(r)
        n += 1
        if term or trunc:
            return ret, n, bool(term)

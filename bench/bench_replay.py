"""Simulated-time replay throughput vs raw ``mujoco.mj_step`` on the same model.

Physics steps per second, side by side, for HalfCheetah-v5 (17-64-64-6 MLP policy), Hopper-v5
and Ant-v5 (obs-64-64-act). Replay runs whole episodes (reset included) with an ONNX policy
through plain onnxruntime, under nominal timing and under a long-tail latency profile (which
splits control periods into substep segments). The guard is not in the loop yet.

Run for real: ``python -m pytest bench/bench_replay.py --benchmark-enable``; a side-by-side
table with the ratio: ``python bench/bench_replay.py``.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

gym = pytest.importorskip("gymnasium")
mujoco = pytest.importorskip("mujoco")
onnx = pytest.importorskip("onnx")

from firmware_sim.controllers import OnnxController  # noqa: E402
from firmware_sim.loop import SimLoop  # noqa: E402
from firmware_sim.profile_spec import parse_profile  # noqa: E402
from firmware_sim.tasks import MujocoTask  # noqa: E402

ENVS = ["HalfCheetah-v5", "Hopper-v5", "Ant-v5"]
PROFILES = {"nominal": None, "lognormal": "lognormal:median_ms=2,sigma=0.8,cap_ms=15"}
RAW_STEPS = 5000


def _mlp_onnx(path: Path, obs_dim: int, act_dim: int, hidden: int = 64) -> Path:
    """A fixed random obs-64-64-act tanh MLP as ONNX (input 'obs', output 'actions')."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    sizes = [obs_dim, hidden, hidden, act_dim]
    nodes, inits, x = [], [], "obs"
    for i in range(3):
        w = (rng.normal(0, 1, (sizes[i + 1], sizes[i])) / np.sqrt(sizes[i])).astype(np.float32)
        b = np.zeros(sizes[i + 1], np.float32)
        inits += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(b, f"b{i}")]
        out = "actions" if i == 2 else f"h{i}"
        nodes.append(helper.make_node("Gemm", [x, f"W{i}", f"b{i}"], [f"z{i}"], transB=1))
        nodes.append(helper.make_node("Tanh", [f"z{i}"], [out]))
        x = out
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("obs", TensorProto.FLOAT, [1, obs_dim])],
        [helper.make_tensor_value_info("actions", TensorProto.FLOAT, [1, act_dim])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _loop(env_id: str, profile: str | None, tmp: Path) -> SimLoop:
    task = MujocoTask(gym.make(env_id))
    obs_dim = task.env.observation_space.shape[0]
    ctl = OnnxController(_mlp_onnx(tmp / f"{env_id}.onnx", obs_dim, task.nu))
    latency = None if profile is None else parse_profile(profile)
    return SimLoop(task, ctl, latency=latency)


def _replay_steps(loop: SimLoop, min_steps: int) -> int:
    """Run episodes until at least ``min_steps`` physics steps; return the count."""
    steps, seed = 0, 0
    while steps < min_steps:
        r = loop.run_episode(seed)
        steps += r.sim_time_ns // loop.task.substep_ns
        seed += 1
    return steps


def _raw_steps(model: object, data: object, n: int) -> int:
    for _ in range(n):
        mujoco.mj_step(model, data)
    return n


@pytest.mark.parametrize("env_id", ENVS)
def bench_raw_mj_step(benchmark, env_id: str) -> None:
    """Raw mujoco.mj_step, one call per physics step, on the env's model."""
    u = gym.make(env_id).unwrapped
    data = mujoco.MjData(u.model)
    benchmark.extra_info["physics_steps"] = RAW_STEPS
    benchmark(_raw_steps, u.model, data, RAW_STEPS)


@pytest.mark.parametrize("profile", list(PROFILES))
@pytest.mark.parametrize("env_id", ENVS)
def bench_replay(benchmark, env_id: str, profile: str, tmp_path: Path) -> None:
    """Simulated-time replay of whole episodes with an ONNX MLP policy."""
    loop = _loop(env_id, PROFILES[profile], tmp_path)
    steps = benchmark(_replay_steps, loop, RAW_STEPS)
    benchmark.extra_info["physics_steps"] = steps
    assert steps >= RAW_STEPS


def main() -> None:
    """Print steps/s of raw mj_step and replay side by side, with the ratio."""
    with tempfile.TemporaryDirectory() as tmp:
        print(
            f"{'env':<16} {'profile':<10} {'raw steps/s':>12} {'replay steps/s':>15} {'ratio':>6}"
        )
        for env_id in ENVS:
            u = gym.make(env_id).unwrapped
            data = mujoco.MjData(u.model)
            t0 = time.perf_counter()
            _raw_steps(u.model, data, 20_000)
            raw = 20_000 / (time.perf_counter() - t0)
            for name, spec in PROFILES.items():
                loop = _loop(env_id, spec, Path(tmp))
                _replay_steps(loop, 1000)  # warm-up
                t0 = time.perf_counter()
                steps = _replay_steps(loop, 20_000)
                rate = steps / (time.perf_counter() - t0)
                print(f"{env_id:<16} {name:<10} {raw:>12.0f} {rate:>15.0f} {rate / raw:>6.2f}")


if __name__ == "__main__":
    main()

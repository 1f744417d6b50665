"""Simulated-time replay throughput vs raw ``mujoco.mj_step`` on the same model, side by side.

Physics steps per second for HalfCheetah-v5 (17-64-64-6 MLP policy), Hopper-v5 and Ant-v5
(obs-64-64-act MLP): raw ``mj_step`` (one Python call per physics step, as a plain loop
would) and replay of whole episodes (reset included) of an ONNX policy

- ``guarded``: the runtime Guard in the loop (``OnnxPolicy`` with bound buffers, starter
  envelope, simulated clock), nominal timing;
- ``guarded+lognormal``: the same under a long-tail latency profile with a deadline (every
  release and deadline off the substep grid: that substep split in two shortened steps,
  deadline misses);
- ``bare``: plain onnxruntime, no guard, nominal timing;
- ``bare+timing``: plain onnxruntime under latency, period jitter and observation delay
  together (every event off the grid: split steps, observations integrated ahead from the
  recorded step boundaries): the cost of exact event timing.

``physics_steps`` counts simulated time in substeps; a split substep is two ``mj_step``
calls, so the variants with off-grid events do more MuJoCo work per counted step.

The machine is shared and loaded, so absolute rates move a lot: the variants are timed in
alternating blocks and the ratio replay / raw is taken per block (median reported), both in
wall time and in process CPU time (``time.process_time``: immune to being descheduled, not
to the cache pollution of neighbours).

Run for real: ``python -m pytest bench/bench_replay.py --benchmark-enable``; the side-by-side
table: ``python bench/bench_replay.py [--blocks N]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

gym = pytest.importorskip("gymnasium")
mujoco = pytest.importorskip("mujoco")
pytest.importorskip("onnx")

from tailguard import OnnxPolicy, starter_envelope  # noqa: E402
from tailguard.firmware_sim.controllers import OnnxController  # noqa: E402
from tailguard.firmware_sim.guarded import GuardedController  # noqa: E402
from tailguard.firmware_sim.loop import SimLoop  # noqa: E402
from tailguard.firmware_sim.profile_spec import parse_profile  # noqa: E402
from tailguard.firmware_sim.tasks import MujocoTask  # noqa: E402

ENVS = ["HalfCheetah-v5", "Hopper-v5", "Ant-v5"]
LOGNORMAL = "lognormal:median_ms=2,sigma=0.8,cap_ms=15"
JITTER = "gaussian:std_ms=0.5"
OBS_DELAY = "uniform:lo_ms=0.1,hi_ms=3"
VARIANTS = ("guarded", "guarded+lognormal", "bare", "bare+timing")
MIN_STEPS = 5000


def _mlp_onnx(path: Path, obs_dim: int, act_dim: int, hidden: int = 64) -> Path:
    """A fixed random obs-64-64-act MLP with tanh layers (actions squashed into [-1, 1], as
    the envs' bounds and the guard's envelope expect) as ONNX: input 'obs', output 'actions'."""
    import onnx
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


def _policy(env_id: str, task: MujocoTask, tmp: Path) -> Path:
    path = tmp / f"{env_id}.onnx"
    if not path.exists():
        _mlp_onnx(path, task.obs_size, task.nu)
    return path


def make_loop(env_id: str, variant: str, tmp: Path) -> SimLoop:
    """A replay loop for ``variant`` (see module docstring)."""
    task = MujocoTask(gym.make(env_id))
    path = _policy(env_id, task, tmp)
    if variant == "bare":
        return SimLoop(task, OnnxController(path))
    if variant == "bare+timing":
        return SimLoop(
            task,
            OnnxController(path),
            latency=parse_profile(LOGNORMAL),
            dt=parse_profile(JITTER, nominal_ns=task.period_ns),
            obs_delay=parse_profile(OBS_DELAY),
        )
    policy = OnnxPolicy(path)
    envelope = starter_envelope(
        obs_size=task.obs_size,
        action_size=task.nu,
        period_ns=task.period_ns,
        sha256=policy.sha256,
        action_low=list(task.action_low),
        action_high=list(task.action_high),
    )
    if variant == "guarded":
        return SimLoop(task, GuardedController(policy, envelope))
    deadline_ns = task.period_ns // 2
    ctl = GuardedController(policy, envelope, deadline_ns=deadline_ns)
    return SimLoop(task, ctl, latency=parse_profile(LOGNORMAL))


def replay_steps(loop: SimLoop, min_steps: int, seed: int = 0) -> int:
    """Run episodes until at least ``min_steps`` physics steps; return the count."""
    steps = 0
    while steps < min_steps:
        r = loop.run_episode(seed)
        steps += r.sim_time_ns // loop.task.substep_ns
        seed += 1
    return steps


def raw_steps(model: object, data: object, n: int) -> int:
    """``n`` calls of ``mujoco.mj_step`` (one physics step each)."""
    step = mujoco.mj_step
    for _ in range(n):
        step(model, data)
    return n


def side_by_side(
    env_id: str,
    blocks: int,
    min_steps: int,
    tmp: Path,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, dict[str, float]]:
    """Interleaved blocks of raw mj_step and each replay variant, timed with ``clock``.

    Returns:
        {variant: {"steps_per_s": median rate, "ratio": median per-block replay/raw}} plus
        ``raw``: {"steps_per_s": median rate}.
    """
    u = gym.make(env_id).unwrapped
    data = mujoco.MjData(u.model)
    loops = {v: make_loop(env_id, v, tmp) for v in VARIANTS}
    for loop in loops.values():
        replay_steps(loop, 1000)  # warm-up: ORT arenas, caches
    raw_steps(u.model, data, 2000)

    def timed(fn: Callable[[], int]) -> float:
        t0 = clock()
        n = fn()
        return n / (clock() - t0)

    rates: dict[str, list[float]] = {v: [] for v in ("raw", *VARIANTS)}
    ratios: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for b in range(blocks):
        raw = timed(lambda: raw_steps(u.model, data, min_steps))
        rates["raw"].append(raw)
        for v, loop in loops.items():
            rate = timed(lambda loop=loop, b=b: replay_steps(loop, min_steps, seed=100 * b))
            rates[v].append(rate)
            ratios[v].append(rate / raw)
    out = {"raw": {"steps_per_s": statistics.median(rates["raw"])}}
    for v in VARIANTS:
        out[v] = {
            "steps_per_s": statistics.median(rates[v]),
            "ratio": statistics.median(ratios[v]),
        }
    return out


@pytest.mark.parametrize("env_id", ENVS)
def bench_raw_mj_step(benchmark, env_id: str) -> None:
    """Raw mujoco.mj_step, one call per physics step, on the env's model."""
    u = gym.make(env_id).unwrapped
    data = mujoco.MjData(u.model)
    benchmark.extra_info["physics_steps"] = MIN_STEPS
    benchmark(raw_steps, u.model, data, MIN_STEPS)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("env_id", ENVS)
def bench_replay(benchmark, env_id: str, variant: str, tmp_path: Path) -> None:
    """Simulated-time replay of whole episodes with an ONNX MLP policy."""
    loop = make_loop(env_id, variant, tmp_path)
    steps = benchmark(replay_steps, loop, MIN_STEPS)
    benchmark.extra_info["physics_steps"] = steps
    assert steps >= MIN_STEPS


def bench_replay_vs_raw_side_by_side(benchmark, tmp_path: Path, request) -> None:
    """HalfCheetah: interleaved raw mj_step vs guarded replay; the ratio in extra_info."""
    from tg_timing import is_smoke

    blocks, steps = (1, 500) if is_smoke(request.config) else (7, MIN_STEPS)
    result = benchmark.pedantic(
        side_by_side, args=("HalfCheetah-v5", blocks, steps, tmp_path), rounds=1, iterations=1
    )
    for v in VARIANTS:
        benchmark.extra_info[f"ratio_{v}"] = result[v]["ratio"]
    benchmark.extra_info["raw_steps_per_s"] = result["raw"]["steps_per_s"]
    assert np.isfinite(result["guarded"]["ratio"])


def main() -> None:
    """Print raw and replay steps/s side by side, with the median per-block ratio."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--blocks", type=int, default=7)
    parser.add_argument("--steps", type=int, default=MIN_STEPS)
    parser.add_argument("--envs", nargs="*", default=ENVS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print(f"{'env':<16} {'clock':<6} {'variant':<19} {'steps/s':>10} {'raw steps/s':>12} "
              f"{'ratio':>6}")  # fmt: skip
        for env_id in args.envs:
            for name, clock in (("wall", time.perf_counter), ("cpu", time.process_time)):
                res = side_by_side(env_id, args.blocks, args.steps, Path(tmp), clock)
                raw = res["raw"]["steps_per_s"]
                for v in VARIANTS:
                    print(
                        f"{env_id:<16} {name:<6} {v:<19} {res[v]['steps_per_s']:>10.0f} "
                        f"{raw:>12.0f} {res[v]['ratio']:>6.2f}"
                    )


if __name__ == "__main__":
    main()

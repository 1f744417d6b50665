"""The same audit sweep on the local executor (1 worker), the local process pool (2 workers)
and Ray (a local Ray with 2 CPUs, already running): the pool's speed-up and Ray's overhead
against the pool, side by side in one run. Ray's start-up (``ray.init`` until both workers
have answered a task, then ``ray.shutdown``) is measured on its own.

Ray is timed twice: on fresh workers (each worker process imports tailguard, MuJoCo and
onnxruntime and builds the env on its first unit, which a forked pool inherits) and on the
same, warm workers (what every later entry of a ``tailguard sweep`` gets).

The sweep: the shipped Hopper policy (ONNX) on Hopper-v5, nominal plus three conditions,
``--episodes`` paired episodes each, blocks of 5 episodes (the audit's default), results
byte-identical on all of them (checked). With the default 35 episodes the 1-worker run is
about a minute on this 2-core machine (25 episodes took 39-45 s, with other work running).

    python bench/bench_cluster.py [--episodes 35] [--repeat 3]
    python -m pytest bench/bench_cluster.py --benchmark-enable
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("gymnasium")
pytest.importorskip("mujoco")
pytest.importorskip("ray")

from tg_timing import is_smoke

from tailguard.audit.audit import run_audit
from tailguard.audit.conditions import NOMINAL, Condition
from tailguard.audit.executor import LocalExecutor, ProcessExecutor
from tailguard.audit.outputs import dump_json

POLICY = Path(__file__).resolve().parents[1] / "guard" / "policies" / "hopper_nominal.onnx"
ENV = "Hopper-v5"
EPISODES = 35
SMOKE_EPISODES = 2  # and two conditions

_RESULTS: dict[str, dict[str, Any]] = {}


def _conditions() -> list[Condition]:
    return [
        NOMINAL,
        Condition(name="latency", dimension="custom", latency="fixed:ms=4"),
        Condition(name="jitter", dimension="custom", dt="uniform:lo_ms=6,hi_ms=10"),
        Condition(name="spikes", dimension="custom", latency="spikes:p=0.02,len=3,ms=16"),
    ]


def _sweep(executor: Any, episodes: int, smoke: bool = False) -> Any:
    return run_audit(
        POLICY,
        ENV,
        episodes=episodes,
        conditions=_conditions()[: 2 if smoke else None],
        n_resamples=1000,
        derive=False,
        executor=executor,
    )


def _summary(result: Any) -> str:
    return dump_json({k: v for k, v in result.summary().items() if k != "run"})


def ray_startup() -> float:
    """Seconds from ``ray.init(num_cpus=2)`` until two workers have each answered a task."""
    import ray

    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:

        @ray.remote(num_cpus=1)
        def pid() -> int:
            time.sleep(0.2)  # keep the first worker busy so the second one starts too
            return os.getpid()

        assert len(set(ray.get([pid.remote(), pid.remote()]))) == 2
        return time.perf_counter() - t0
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def ray_two_cpus() -> Iterator[Any]:
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def bench_ray_startup(benchmark: Any, request: pytest.FixtureRequest) -> None:
    """ray.init (2 CPUs) until both workers answered, then shutdown (not in the sweeps)."""
    if is_smoke(request.config):
        pytest.skip("a second Ray start-up (5-10 s) runs with --benchmark-enable only")
    seconds = benchmark.pedantic(ray_startup, rounds=1, iterations=1)
    benchmark.extra_info["startup_s"] = seconds


@pytest.mark.parametrize("where", ["local-1", "pool-2", "ray-2", "ray-2-warm"])
def bench_cluster_sweep(
    benchmark: Any, request: pytest.FixtureRequest, where: str, ray_two_cpus: Any
) -> None:
    """The sweep on one executor; the last one compares the three (same summary bytes)."""
    from tailguard.audit.ray_executor import RayExecutor

    smoke = is_smoke(request.config)
    episodes = SMOKE_EPISODES if smoke else EPISODES
    executor = {
        "local-1": LocalExecutor,
        "pool-2": lambda: ProcessExecutor(2),
        "ray-2": RayExecutor,  # joins the module's running Ray: start-up not counted
        "ray-2-warm": RayExecutor,  # the same Ray's workers, warm from ray-2
    }[where]()
    t0 = time.perf_counter()
    result = benchmark.pedantic(lambda: _sweep(executor, episodes, smoke), rounds=1, iterations=1)
    _RESULTS[where] = {"wall_s": time.perf_counter() - t0, "summary": _summary(result)}
    benchmark.extra_info["episodes_per_condition"] = episodes
    benchmark.extra_info["wall_s"] = _RESULTS[where]["wall_s"]
    if len(_RESULTS) == 4:
        assert len({r["summary"] for r in _RESULTS.values()}) == 1, "executors disagree"
        w = {k: r["wall_s"] for k, r in _RESULTS.items()}
        benchmark.extra_info["pool_speedup_vs_local"] = w["local-1"] / w["pool-2"]
        benchmark.extra_info["ray_over_pool"] = w["ray-2"] / w["pool-2"]
        benchmark.extra_info["ray_warm_over_pool"] = w["ray-2-warm"] / w["pool-2"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--episodes", type=int, default=EPISODES)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    import ray

    from tailguard.audit.ray_executor import RayExecutor

    startups = [ray_startup() for _ in range(args.repeat)]
    walls: dict[str, list[float]] = {"local-1": [], "pool-2": [], "ray-2": [], "ray-2-warm": []}
    summaries = set()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        for _ in range(args.repeat):  # interleaved, so all three see the same machine
            for where, make in (
                ("local-1", LocalExecutor),
                ("pool-2", lambda: ProcessExecutor(2)),
                ("ray-2", RayExecutor),
                ("ray-2-warm", RayExecutor),
            ):
                t0 = time.perf_counter()
                result = _sweep(make(), args.episodes)
                walls[where].append(time.perf_counter() - t0)
                summaries.add(_summary(result))
    finally:
        ray.shutdown()
    med = {k: sorted(v)[len(v) // 2] for k, v in walls.items()}
    n = len(_conditions()) * args.episodes
    print(f"sweep: {len(_conditions())} conditions x {args.episodes} episodes = {n}, {ENV}")
    for k, v in walls.items():
        print(f"  {k:8s} wall {', '.join(f'{x:.2f}' for x in v)} s (median {med[k]:.2f})")
    print(f"  pool-2 speed-up over local-1: {med['local-1'] / med['pool-2']:.2f}x")
    print(f"  ray-2 / pool-2 wall: {med['ray-2'] / med['pool-2']:.3f} (fresh workers)")
    print(f"  ray-2-warm / pool-2 wall: {med['ray-2-warm'] / med['pool-2']:.3f} (warm workers)")
    ups = ", ".join(f"{s:.2f}" for s in startups)
    print(f"  Ray start-up (init until 2 workers answered): {ups} s")
    print(f"  summaries identical on all executors: {len(summaries) == 1}")
    print(f"  load average (1, 5, 15 min): {os.getloadavg()}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()

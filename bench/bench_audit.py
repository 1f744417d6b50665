"""A same-size audit as the peer tool's: 6 conditions x 20 paired episodes on Hopper-v5 with
the shipped short-lived policy (``guard/policies/hopper_nominal.onnx``), end to end.

The peer (deltatau-audit 0.6.2, ``audit-sb3``) took 13.7 s for 6 conditions x 20 episodes of
a short-lived SB3 Hopper policy on this kind of 2-core machine. Our six: nominal plus one
level of each of the peer's axes, in time rather than action repeats: a sustained rate change
(x2, the peer's "speed"), period jitter (+-0.4 P), one period of latency (the peer's
"delay"), latency spike bursts (4 P) and observation age (1 P). The wall time includes the
process start, imports, the sweep, 9999-resample BCa intervals, the envelope derivation and
every output file (report.html with its plots), like the peer's CLI run.

    python bench/bench_audit.py [--workers 2]             # wall time of `tailguard audit`
    python -m pytest bench/bench_audit.py --benchmark-enable
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("gymnasium")
pytest.importorskip("mujoco")
pytest.importorskip("scipy")

from tg_timing import is_smoke

from tailguard.audit.audit import run_audit
from tailguard.audit.sweep import build_sweep

POLICY = Path(__file__).resolve().parents[1] / "guard" / "policies" / "hopper_nominal.onnx"
ENV = "Hopper-v5"
EPISODES = 20
PEER_WALL_S = 13.7
SWEEP = """\
dimensions = ["rate_change", "dt_jitter", "latency_fixed", "latency_spikes", "obs_age"]
[levels]
rate_change = [2.0]
dt_jitter = [0.4]
latency_fixed = [1.0]
latency_spikes = [4.0]
obs_age = [1.0]
"""


def _conditions() -> list[Any]:
    from tailguard.audit.sweep import DIMENSIONS

    levels = {
        "rate_change": [2.0],
        "dt_jitter": [0.4],
        "latency_fixed": [1.0],
        "latency_spikes": [4.0],
        "obs_age": [1.0],
    }
    assert set(levels) <= set(DIMENSIONS)
    return build_sweep(8_000_000, dimensions=list(levels), levels=levels)


def bench_audit_same_size(benchmark: Any, request: pytest.FixtureRequest) -> None:
    """run_audit of 6 conditions x 20 episodes (in-process, 2 workers), outputs excluded."""
    episodes = 4 if is_smoke(request.config) else EPISODES
    conds = _conditions()
    assert len(conds) == 6

    def run() -> object:
        return run_audit(POLICY, ENV, episodes=episodes, conditions=conds, workers=2)

    result = benchmark.pedantic(run, rounds=1, iterations=1)
    assert len(result.conditions) == 6
    benchmark.extra_info["episodes_per_condition"] = episodes
    benchmark.extra_info["peer_wall_s"] = PEER_WALL_S


def wall_time_cli(workers: str) -> tuple[float, float]:
    """(wall, CPU) time of one `tailguard audit` process tree (imports and outputs included),
    s. CPU time (user + system of the process and its workers) does not count the time the
    machine gave to other processes."""
    import resource

    with tempfile.TemporaryDirectory() as tmp:
        sweep = Path(tmp) / "sweep.toml"
        sweep.write_text(SWEEP)
        cmd = [
            sys.executable,
            "-m",
            "tailguard",
            "audit",
            "--policy",
            str(POLICY),
            "--env",
            ENV,
            "--sweep",
            str(sweep),
            "--episodes",
            str(EPISODES),
            "--workers",
            workers,
            "--out",
            str(Path(tmp) / "out"),
            "--quiet",
        ]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, timeout=600)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", default="2")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    runs = [wall_time_cli(args.workers) for _ in range(args.repeat)]
    walls = sorted(w for w, _ in runs)
    median, best = walls[len(walls) // 2], walls[0]
    print(
        f"tailguard audit, 6 conditions x {EPISODES} episodes, {ENV}, workers {args.workers}: "
        f"wall {', '.join(f'{w:.2f}' for w, _ in runs)} s (median {median:.2f}, best "
        f"{best:.2f}); CPU {', '.join(f'{c:.2f}' for _, c in runs)} s; peer {PEER_WALL_S} s "
        f"-> {PEER_WALL_S / median:.1f}x (median wall), {PEER_WALL_S / best:.1f}x (best wall)"
    )
    print(f"load average (1, 5, 15 min): {os.getloadavg()}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()

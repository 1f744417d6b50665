"""`tailguard inspect`: a policy's interface, metadata, and its latency on this machine."""

from __future__ import annotations

import gc
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from tailguard.runtime.policy import OnnxPolicy
from tailguard.stats.histogram import LogLinearHistogram

__all__ = ["inspect_policy", "format_inspection"]


def inspect_policy(path: str | Path, ticks: int = 2000) -> dict[str, Any]:
    """Load the policy and time ``ticks`` bound inferences (the guard's call style).

    Returns:
        ``describe()`` facts plus ``latency_ns`` (percentiles) and ``histogram`` (a
        log-bucketed count list for the text plot), measured with time.perf_counter_ns.
    """
    policy = OnnxPolicy(path)
    rng = np.random.default_rng(0)
    bufs = policy.buffers
    run, args, obs = bufs.run, bufs.run_args, bufs.obs
    hist = LogLinearHistogram(2, 10**11)
    for i in range(min(200, ticks)):  # warm-up
        run(args[i & 1])
    gc.collect()
    clock = time.perf_counter_ns
    for i in range(ticks):
        obs[:] = rng.standard_normal(policy.obs_size)
        t = clock()
        run(args[i & 1])
        hist.record(clock() - t)
    report = policy.describe()
    report["machine"] = f"{platform.machine()} {platform.processor() or ''}".strip()
    report["ticks_timed"] = ticks
    report["latency_ns"] = {
        **{f"p{p:g}".replace(".", ""): hist.value_at_percentile(p) for p in (50, 90, 99, 99.9)},
        "max": hist.max_value,
        "min": hist.min_value,
    }
    report["histogram"] = _log_buckets(hist)
    return report


def _log_buckets(hist: LogLinearHistogram) -> list[tuple[int, int]]:
    """(upper bound ns, count) of the power-of-two buckets that hold samples."""
    lowest, _, counts = hist.occupied_buckets()
    octaves: dict[int, int] = {}
    for value, n in zip(lowest.tolist(), counts.tolist(), strict=True):
        octave = int(value).bit_length()
        octaves[octave] = octaves.get(octave, 0) + n
    return [(1 << k, n) for k, n in sorted(octaves.items())]


def format_inspection(r: dict[str, Any]) -> str:
    """The text `tailguard inspect` prints for an :func:`inspect_policy` report."""
    lines = [f"policy   {r['path']}", f"sha256   {r['sha256']}", f"producer {r['producer']}"]
    lines.append(f"opsets   {r['opsets']}  ir_version {r['ir_version']}")
    for kind in ("inputs", "outputs"):
        for t in r[kind]:
            lines.append(f"{kind[:-1]:8} {t['name']:<12} {t['type']:<14} {t['shape']}")
    if r["recurrent"]:
        lines.append(f"recurrent state: {r['recurrent']}")
    for k, v in sorted(r["metadata"].items()):
        lines.append(f"metadata {k} = {v}")
    lat = r["latency_ns"]
    lines.append(
        f"\nlatency over {r['ticks_timed']} bound inferences with the guard's check nodes "
        f"({r['machine']}):"
    )
    lines.append(
        "  "
        + "  ".join(f"{k} {lat[k] / 1e3:.1f} us" for k in ("min", "p50", "p90", "p99", "p999"))
        + f"  max {lat['max'] / 1e3:.1f} us"
    )
    total = sum(n for _, n in r["histogram"]) or 1
    for hi, n in r["histogram"]:
        bar = "#" * max(1, round(50 * n / total))
        lines.append(f"  < {hi / 1e3:9.1f} us  {n:7d}  {bar}")
    return "\n".join(lines)

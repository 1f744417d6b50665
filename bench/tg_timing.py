"""Benchmark timing helpers: per-call timing into our own histograms (tails next to medians).

Imported as `tg_timing` (a unique name: several test folders have their own conftest.py).

pytest-benchmark reports means and medians of whole rounds; the tails that matter for a
control loop (p99, p99.9, max) come from timing every call with perf_counter_ns into a
LogLinearHistogram. The two clock reads around each call cost the same for every variant
(`bench_minimal_tick` shows their size), so ratios between variants stay fair.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

from tailguard.stats.histogram import LogLinearHistogram

NS_PER_US = 1000.0


def is_smoke(config: Any) -> bool:
    """True when benchmarks only run as a smoke test (--benchmark-disable, the default in
    pyproject, unless --benchmark-enable is given too)."""
    disabled = bool(config.getoption("benchmark_disable", False))
    return disabled and not bool(config.getoption("benchmark_enable", False))


def time_calls(fn: Callable[[], Any], n: int, hist: LogLinearHistogram) -> None:
    """Call fn n times, recording each call's duration (ns) into hist."""
    clock = time.perf_counter_ns
    record = hist.record
    for _ in range(n):
        t = clock()
        fn()
        record(clock() - t)


def interleaved(
    variants: dict[str, Callable[[], Any]], blocks: int, per_block: int
) -> tuple[dict[str, LogLinearHistogram], int]:
    """Time several variants in alternating blocks so they share the machine's noise.

    Returns:
        ({name: per-call histogram}, GC collections that happened while timing).
    """
    hists = {name: LogLinearHistogram(2, 10**11) for name in variants}
    collections = [0]

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            collections[0] += 1

    gc.collect()
    gc.freeze()
    gc.callbacks.append(on_gc)
    try:
        for _ in range(blocks):
            for name, fn in variants.items():
                time_calls(fn, per_block, hists[name])
    finally:
        gc.callbacks.remove(on_gc)
        gc.unfreeze()
    return hists, collections[0]


def summary_us(hist: LogLinearHistogram) -> dict[str, float]:
    """p50/p90/p99/p99.9/max of a per-call histogram, in microseconds."""
    out = {
        f"p{p:g}".replace(".", ""): hist.value_at_percentile(p) / NS_PER_US
        for p in (50, 90, 99, 99.9)
    }
    out["max"] = hist.max_value / NS_PER_US
    out["count"] = hist.total_count
    return out

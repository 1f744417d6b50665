"""Pacing lateness of tailguard.runtime.pacer.Pacer: sleep-then-spin against a sleep-only loop.

Each run paces a loop with an empty body for ~2 s at 500 Hz and at 1 kHz and records every
wake-up's lateness (ns) into a preallocated numpy array. ``sleep_only`` is the same pacer
with ``spin_ns=0``: same absolute-deadline grid, the wake-up left to the OS timer.

    python -m pytest bench/bench_pacer.py --benchmark-enable -s

Tail figures (p50 / p99 / p99.9 / max, us) are printed and stored in
``benchmark.extra_info``; the timing pytest-benchmark reports itself is just the run length.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tailguard.runtime.pacer import Pacer
from tailguard.stats.percentile import percentiles

FULL_RUN_S = 2.0
SMOKE_RUN_S = 0.05  # with --benchmark-disable the file is a smoke test
SPIN_NS = {"sleep_spin": 150_000, "sleep_only": 0}


def _pace(rate_hz: float, spin_ns: int, duration_s: float) -> tuple[np.ndarray, int]:
    """Pace an empty loop; returns per-tick lateness (ns, int64) and the missed cycles."""
    pacer = Pacer(rate_hz, spin_ns=spin_ns)
    n_ticks = max(1, round(duration_s * rate_hz))
    lateness_ns = np.zeros(n_ticks, dtype=np.int64)
    pacer.start()
    for i in range(n_ticks):
        lateness_ns[i] = pacer.wait()
    return lateness_ns, pacer.missed_cycles


def _tails_us(lateness_ns: np.ndarray) -> dict[str, float]:
    """Nearest-rank p50/p99/p99.9 (tailguard's one percentile rule) and max, us."""
    q = percentiles(lateness_ns, (50.0, 99.0, 99.9))
    return {
        "p50_us": round(q[50.0] / 1e3, 3),
        "p99_us": round(q[99.0] / 1e3, 3),
        "p99_9_us": round(q[99.9] / 1e3, 3),
        "max_us": round(float(lateness_ns.max()) / 1e3, 3),
    }


@pytest.mark.parametrize("rate_hz", [500.0, 1000.0])
@pytest.mark.parametrize("mode", ["sleep_spin", "sleep_only"])
def bench_pacer_lateness(
    benchmark: Any, request: pytest.FixtureRequest, mode: str, rate_hz: float
) -> None:
    """Wake-up lateness of deadline pacing at rate_hz, spin vs sleep-only."""
    # Same rule as pytest-benchmark: --benchmark-enable overrides the default --benchmark-disable.
    options = request.config.getoption
    disabled = bool(options("benchmark_disable")) and not options("benchmark_enable")
    duration_s = SMOKE_RUN_S if disabled else FULL_RUN_S
    lateness_ns, missed = benchmark.pedantic(
        _pace, args=(rate_hz, SPIN_NS[mode], duration_s), rounds=1, iterations=1
    )
    tails = _tails_us(lateness_ns)
    benchmark.extra_info.update(
        {"mode": mode, "rate_hz": rate_hz, "ticks": int(lateness_ns.size), "missed": missed}
    )
    benchmark.extra_info.update(tails)
    print(
        f"\npacer {mode:>10} @ {rate_hz:6.0f} Hz, {lateness_ns.size} ticks, missed {missed}: "
        f"p50 {tails['p50_us']:.2f} us  p99 {tails['p99_us']:.1f} us  "
        f"p99.9 {tails['p99_9_us']:.1f} us  max {tails['max_us']:.1f} us"
    )
    assert lateness_ns.size > 0


def _us(values: dict[str, Any]) -> dict[str, float]:
    return {k: round(values[f"{k}_ns"] / 1e3, 3) for k in ("p50", "p99", "p999", "max")}


@pytest.mark.benchmark(group="pacer")
def bench_pacer_vs_cyclictest(benchmark: Any, request: pytest.FixtureRequest) -> None:
    """Pacer wake-up lateness next to cyclictest's, 1 kHz, SCHED_OTHER, same machine and run
    (three alternating runs of each; medians of the per-run percentiles).

    Needs cyclictest on PATH (Debian/Ubuntu package rt-tests); skipped otherwise and in
    the smoke run. Both run unpinned with the calling process's scheduling policy.
    """
    import shutil

    from tailguard.stats.histogram import LogLinearHistogram
    from tailguard.tools.bench_cli import run_cyclictest

    options = request.config.getoption
    if bool(options("benchmark_disable")) and not options("benchmark_enable"):
        pytest.skip("smoke run: cyclictest comparison only with --benchmark-enable")
    if shutil.which("cyclictest") is None:
        pytest.skip("cyclictest not installed (Debian/Ubuntu: apt-get install rt-tests)")
    rate_hz = 1000.0
    runs = 3  # alternate short runs so both see the same machine drift

    def alternate() -> tuple[list[dict[str, int]], list[dict[str, Any]], int]:
        pacer_runs, ct_runs, missed_total = [], [], 0
        for _ in range(runs):
            lateness_ns, missed = _pace(rate_hz, SPIN_NS["sleep_spin"], FULL_RUN_S)
            missed_total += missed
            hist = LogLinearHistogram()
            hist.record_many(lateness_ns)
            pacer_runs.append(
                {
                    "p50_ns": hist.value_at_percentile(50.0),
                    "p99_ns": hist.value_at_percentile(99.0),
                    "p999_ns": hist.value_at_percentile(99.9),
                    "max_ns": hist.max_value,
                }
            )
            ct = run_cyclictest(rate_hz, FULL_RUN_S, cpu=None, fifo_priority=None)
            if "error" in ct:
                pytest.fail(f"cyclictest did not run: {ct['error']}")
            ct_runs.append(ct)
        return pacer_runs, ct_runs, missed_total

    pacer_runs, ct_runs, missed = benchmark.pedantic(alternate, rounds=1, iterations=1)

    def median_of(rs: list[dict[str, Any]]) -> dict[str, int]:
        keys = ("p50_ns", "p99_ns", "p999_ns", "max_ns")
        return {k: int(np.median([r[k] for r in rs])) for k in keys}

    pacer, ct = median_of(pacer_runs), {**median_of(ct_runs), "command": ct_runs[0]["command"]}
    benchmark.extra_info.update(
        {
            "rate_hz": rate_hz,
            "runs_each": runs,
            "missed": missed,
            "pacer_sleep_spin": _us(pacer),
            "cyclictest": _us(ct),
            "p99_per_run_us": [
                [round(p["p99_ns"] / 1e3, 1), round(c["p99_ns"] / 1e3, 1)]
                for p, c in zip(pacer_runs, ct_runs, strict=True)
            ],
            "cyclictest_command": ct["command"],
        }
    )
    print(
        f"\n1 kHz wake-up lateness, median of {runs} alternating runs, p99: pacer "
        f"{pacer['p99_ns'] / 1e3:.1f} us, cyclictest {ct['p99_ns'] / 1e3:.1f} us (max "
        f"{pacer['max_ns'] / 1e3:.0f} vs {ct['max_ns'] / 1e3:.0f} us)"
    )

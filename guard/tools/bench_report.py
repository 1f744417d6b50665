"""What `tailguard bench` reports: summaries, the envelope verdict, warnings and the files.

Nothing here runs on the hot path: these functions take the histograms a finished run
recorded and turn them into ``summary.json``, HdrHistogram files (``*.hdr`` base64 and
``*.hgrm`` text), ``timing.png`` and the empirical timing profiles firmware_sim replays
(``parse_profile("empirical:DIR/empirical_profile.json")``).

Envelope verdict: each threshold of the envelope's ``timing.dt`` and ``timing.latency``
(p50/p95/p99/max) is compared with the same statistic of the guard's own histograms;
``margin_ns = limit_ns - measured_ns`` (negative = violated). The threshold that "fails
first" is the one with the smallest relative margin ``margin_ns / limit_ns``: the most
violated one when the machine does not fit, or the one a uniform slow-down would cross
first when it does.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tailguard.envelope.model import Envelope
from tailguard.machine import machine_info
from tailguard.stats.histogram import LogLinearHistogram

__all__ = [
    "PERCENTILES",
    "ThresholdCheck",
    "Verdict",
    "empirical_profile",
    "envelope_verdict",
    "format_verdict",
    "machine_info",
    "summarize",
    "timing_warnings",
    "as_us",
    "write_histograms",
    "write_json",
    "write_plot",
]

#: Percentiles every metric summary carries, with their summary keys.
PERCENTILES: tuple[tuple[str, float], ...] = (
    ("p50", 50.0),
    ("p90", 90.0),
    ("p99", 99.0),
    ("p999", 99.9),
)
_ENVELOPE_STATS: tuple[tuple[str, float | None], ...] = (
    ("p50", 50.0),
    ("p95", 95.0),
    ("p99", 99.0),
    ("max", None),
)


def summarize(hist: LogLinearHistogram) -> dict[str, int | float]:
    """p50/p90/p99/p99.9/max (ns, HdrHistogram semantics), count and mean of a histogram.

    Percentiles are the highest value of the bucket holding that rank (never below the
    true value, above it by less than ``hist.relative_precision``).
    """
    n = hist.total_count
    if n == 0:
        return {"count": 0}
    values = hist.percentiles(p for _, p in PERCENTILES)
    out: dict[str, int | float] = {"count": n}
    for key, p in PERCENTILES:
        out[key] = values[p]
    out["max"] = hist.max_value
    out["mean"] = round(hist.mean, 1)
    return out


# ------------------------------------------------------------------------------ verdict


@dataclass(frozen=True)
class ThresholdCheck:
    """One envelope threshold against the measured value.

    Attributes:
        name: e.g. ``"latency.p99"`` (the envelope key ``timing.latency.p99_ns``).
        measured_ns: the statistic of the measured histogram, ns.
        limit_ns: the envelope's threshold, ns.
        margin_ns: ``limit_ns - measured_ns``; negative when violated.
        margin_frac: ``margin_ns / limit_ns``.
        ok: ``measured_ns <= limit_ns``.
    """

    name: str
    measured_ns: int
    limit_ns: int
    margin_ns: int
    margin_frac: float
    ok: bool


@dataclass(frozen=True)
class Verdict:
    """Does the measured timing fit the envelope?

    Attributes:
        fits: every checked threshold holds.
        checks: one entry per threshold the envelope sets (null thresholds are skipped).
        fails_first: name of the check with the smallest relative margin (None if none).
        failing: names of the violated checks, worst first.
        not_checked: envelope limits this run cannot measure, with the reason.
    """

    fits: bool
    checks: tuple[ThresholdCheck, ...]
    fails_first: str | None
    failing: tuple[str, ...]
    not_checked: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "fits": self.fits,
            "fails_first": self.fails_first,
            "failing": list(self.failing),
            "checks": [asdict(c) for c in self.checks],
            "not_checked": list(self.not_checked),
        }


def _check(name: str, measured_ns: int, limit_ns: int) -> ThresholdCheck:
    margin = limit_ns - measured_ns
    return ThresholdCheck(name, measured_ns, limit_ns, margin, margin / limit_ns, margin >= 0)


def envelope_verdict(
    envelope: Envelope,
    dt_hist: LogLinearHistogram,
    latency_hist: LogLinearHistogram,
    max_overrun_streak: int | None = None,
) -> Verdict:
    """Compare measured dt and latency histograms with the envelope's thresholds.

    Args:
        envelope: the envelope to judge against.
        dt_hist: measured time between tick starts, ns.
        latency_hist: measured tick latency (policy + guard), ns.
        max_overrun_streak: longest run of consecutive ticks with latency above the
            period, checked against ``timing.max_consecutive_overruns`` when given.

    Returns:
        The verdict (see :class:`Verdict`).
    """
    timing = envelope.timing
    checks: list[ThresholdCheck] = []
    for kind, hist, thresholds in (
        ("dt", dt_hist, timing.dt),
        ("latency", latency_hist, timing.latency),
    ):
        if hist.total_count == 0:
            continue
        for key, percentile in _ENVELOPE_STATS:
            limit = getattr(thresholds, f"{key}_ns")
            if limit is None:
                continue
            measured = (
                hist.max_value if percentile is None else hist.value_at_percentile(percentile)
            )
            checks.append(_check(f"{kind}.{key}", measured, limit))
    if timing.max_consecutive_overruns is not None and max_overrun_streak is not None:
        limit = timing.max_consecutive_overruns
        margin = limit - max_overrun_streak
        checks.append(
            ThresholdCheck(
                "max_consecutive_overruns",
                max_overrun_streak,
                limit,
                margin,
                margin / limit if limit else (0.0 if margin >= 0 else -1.0),
                margin >= 0,
            )
        )
    not_checked = []
    if timing.obs_age_max_ns is not None:
        not_checked.append("obs_age_max_ns: the benchmark has no sensor timestamps")
    ranked = sorted(checks, key=lambda c: c.margin_frac)
    failing = tuple(c.name for c in ranked if not c.ok)
    return Verdict(
        fits=not failing,
        checks=tuple(checks),
        fails_first=ranked[0].name if ranked else None,
        failing=failing,
        not_checked=tuple(not_checked),
    )


def _us(ns: int | float) -> str:
    return f"{ns / 1000:.1f} us"


def format_verdict(verdict: Verdict) -> str:
    """Human-readable verdict table (one line per threshold)."""
    lines = [
        "envelope verdict: " + ("FITS" if verdict.fits else "DOES NOT FIT"),
        f"  {'threshold':<26} {'measured':>12} {'limit':>12} {'margin':>12}",
    ]
    for c in verdict.checks:
        if c.name == "max_consecutive_overruns":
            cells = (str(c.measured_ns), str(c.limit_ns), str(c.margin_ns))
        else:
            cells = (_us(c.measured_ns), _us(c.limit_ns), _us(c.margin_ns))
        flag = "ok  " if c.ok else "FAIL"
        lines.append(
            f"  {flag} {c.name:<21} {cells[0]:>12} {cells[1]:>12} {cells[2]:>12}"
            f"  ({c.margin_frac:+.0%})"
        )
    if verdict.fails_first is not None:
        what = "fails first" if verdict.fits else "worst violation"
        lines.append(f"  {what}: {verdict.fails_first}")
    lines += [f"  not checked: {n}" for n in verdict.not_checked]
    return "\n".join(lines)


# ----------------------------------------------------------------- machine and warnings


def timing_warnings(info: Mapping[str, Any], *, pinned: bool, gc_frozen: bool) -> list[str]:
    """Things this machine or run does that hurt loop timing, as one sentence each.

    Args:
        info: :func:`machine_info` as it was during the run.
        pinned: the loop ran pinned to one CPU (``--cpu``).
        gc_frozen: the GC was collected and frozen after warm-up.
    """
    warnings = []
    cpus = list(info.get("affinity", []))
    if not pinned and len(cpus) != 1:
        warnings.append(
            f"no CPU pinning: the loop may migrate between CPUs {cpus}; pass --cpu N "
            "(best an isolated core, isolcpus=/nohz_full=)"
        )
    governors = info.get("governor")
    if governors:
        slow = sorted({g for g in governors.values() if g != "performance"})
        if slow:
            warnings.append(
                f"CPU frequency governor is {'/'.join(slow)}, not 'performance': frequency "
                "ramps add latency; e.g. cpupower frequency-set -g performance"
            )
    threads = int(info.get("onnxruntime_threads", {}).get("intra_op", 1))
    if cpus and threads > len(cpus):
        warnings.append(
            f"onnxruntime uses {threads} intra-op threads but the loop may use only "
            f"{len(cpus)} CPU(s): its threads will preempt each other; pass --threads 1"
        )
    if not gc_frozen:
        warnings.append(
            "GC not frozen: a full collection of a loaded process costs milliseconds; "
            "call guard.warm_up(obs) (gc.collect(); gc.freeze()) before the loop"
        )
    if info.get("sched_policy") == "SCHED_OTHER":
        warnings.append(
            "scheduling policy is SCHED_OTHER: any other process can delay a wake-up; pass "
            "--fifo 80 (needs root, CAP_SYS_NICE or an rtprio limit)"
        )
    return warnings


# ------------------------------------------------------------------------------- files


def write_histograms(out_dir: Path, hists: Mapping[str, LogLinearHistogram]) -> list[str]:
    """Write each histogram as ``NAME.hdr`` (HdrHistogram V2 base64) and ``NAME.hgrm``.

    ``.hgrm`` values are printed in microseconds. Returns the file names written.
    """
    names = []
    for name, hist in hists.items():
        (out_dir / f"{name}.hdr").write_text(hist.to_hdr_base64() + "\n")
        (out_dir / f"{name}.hgrm").write_text(hist.to_hgrm(value_scale=1000.0))
        names += [f"{name}.hdr", f"{name}.hgrm"]
    return names


def empirical_profile(
    hist: LogLinearHistogram, metric: str, *, rate_hz: float, policy: str, usage: str
) -> dict[str, Any]:
    """An empirical timing profile firmware_sim loads (``empirical:PATH``).

    The profile data is the ``hdr`` key (an HdrHistogram V2 base64 string); the other
    keys are provenance that the loader ignores.
    """
    return {
        "hdr": hist.to_hdr_base64(),
        "metric": metric,
        "unit": "ns",
        "source": "tailguard bench",
        "policy": policy,
        "rate_hz": rate_hz,
        "summary_ns": summarize(hist),
        "usage": usage,
    }


def _hist_points(hist: LogLinearHistogram) -> tuple[np.ndarray, np.ndarray]:
    """Bucket midpoints (us) and counts of the non-empty buckets."""
    lowest, width, counts = hist.occupied_buckets()
    return (lowest + width / 2.0) / 1000.0, counts.astype(np.float64)


def write_plot(
    path: Path,
    hists: Mapping[str, LogLinearHistogram],
    series_us: Mapping[str, np.ndarray],
    period_ns: int,
    title: str,
) -> str | None:
    """Write ``timing.png``: histograms on log axes and the per-tick time series.

    Args:
        path: PNG file to write.
        hists: histograms to draw in the top panel (label -> histogram, ns).
        series_us: per-tick series for the bottom panel (label -> float array, us).
        period_ns: the nominal period, drawn as a reference line.
        title: figure title.

    Returns:
        None when written, else a note saying why not (matplotlib missing).
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return (
            "timing.png skipped: matplotlib is not installed; "
            "install it with: pip install 'tailguard[report]'"
        )
    fig = Figure(figsize=(10, 7.5), dpi=100)
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1)
    period_us = period_ns / 1000.0
    for label, hist in hists.items():
        if hist.total_count:
            x, y = _hist_points(hist)
            top.step(x, y, where="mid", label=label, linewidth=1.0)
    top.axvline(period_us, color="black", linestyle="--", linewidth=0.8, label="period")
    top.set_xscale("log")
    top.set_yscale("log")
    top.set_xlabel("time per tick (us)")
    top.set_ylabel("ticks")
    top.legend(fontsize=8)
    top.grid(True, which="both", alpha=0.3)
    for label, values in series_us.items():
        if values.size:
            t_s = np.arange(values.size) * (period_ns / 1e9)
            bottom.plot(t_s, np.maximum(values, 1e-3), linewidth=0.5, label=label)
    bottom.axhline(period_us, color="black", linestyle="--", linewidth=0.8)
    bottom.set_yscale("log")
    bottom.set_xlabel("run time (s)")
    bottom.set_ylabel("us")
    bottom.legend(fontsize=8, loc="upper right")
    bottom.grid(True, which="both", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(str(path))
    return None


def write_json(path: Path, data: Any) -> None:
    """Pretty JSON with a trailing newline."""
    path.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")


def as_us(summary: Mapping[str, Any], keys: Sequence[str] = ("p50", "p99", "max")) -> str:
    """``p50 12.3 us, p99 45.6 us, max 78.9 us`` from a :func:`summarize` dict."""
    if not summary.get("count"):
        return "no samples"
    return ", ".join(f"{k} {summary[k] / 1000:.1f} us" for k in keys)

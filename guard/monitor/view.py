"""The live terminal view (rich) and the plain-text summary."""

from __future__ import annotations

from typing import Any

from tailguard.stats.histogram import LogLinearHistogram

__all__ = ["render_live", "format_summary"]

_BARS = " ▁▂▃▄▅▆▇█"


def _us(v: Any) -> str:
    return "-" if v is None else f"{v / 1000:.1f}"


def _sparkline(h: LogLinearHistogram, bins: int = 24) -> str:
    """Latency distribution between p0 and p99.9 in ``bins`` log-spaced cells."""
    import numpy as np

    if h.total_count == 0:
        return ""
    counts = np.frombuffer(h.counts, dtype=np.int64)
    idx = np.flatnonzero(counts)
    cells = np.array_split(idx, min(bins, len(idx)))
    sums = [int(counts[c].sum()) for c in cells]
    top = max(sums) or 1
    return "".join(_BARS[min(8, round(8 * s / top))] for s in sums)


def render_live(summary: dict[str, Any], lifetime_latency: LogLinearHistogram) -> Any:
    """A rich renderable of the monitor state (the monitor extra installs rich)."""
    from rich.console import Group
    from rich.table import Table

    w, life = summary["window"], summary["lifetime"]
    head = Table.grid(padding=(0, 2))
    head.add_row(
        f"guard [bold]{summary['guard_id'] or '(waiting)'}[/]",
        f"state [bold]{summary['state']}[/]",
        f"rate {w.get('tick_rate_hz') or 0:.0f} Hz",
        f"tick {summary['last_tick']}",
    )
    t = Table(title="timing (µs)")
    t.add_column("metric")
    for col in ("p50", "p99", "p99.9", "max"):
        t.add_column(f"window {col}", justify="right")
    for col in ("p50", "p99", "p99.9", "max"):
        t.add_column(f"life {col}", justify="right")
    for name, key in (("dt", "dt_ns"), ("latency", "latency_ns")):
        lf = life.get(key, {})
        t.add_row(
            name,
            *(_us(w.get(f"{name}_{p}_ns")) for p in ("p50", "p99", "p999", "max")),
            *(_us(lf.get(p)) for p in ("p50", "p99", "p999", "max")),
        )
    pub = summary["publisher"]
    loss = Table.grid(padding=(0, 2))
    loss.add_row(
        f"msgs lost {summary['lost_msgs']}",
        f"ring overflow {pub.get('ring_overflow', 0)}",
        f"send dropped {pub.get('send_dropped', 0)}",
        f"events dropped {pub.get('events_dropped', 0)}",
        f"malformed {summary['malformed']}",
    )
    viol = ", ".join(f"{k} {v}" for k, v in sorted(summary["violations"].items())) or "none"
    states = (
        ", ".join(f"{k} {v / 1e9:.1f}s" for k, v in summary["state_time_ns"].items() if v) or "-"
    )
    alerts = summary["alerts"]
    return Group(
        head,
        t,
        loss,
        f"violations: {viol}",
        f"time in state: {states}",
        f"latency histogram: {_sparkline(lifetime_latency)}",
        f"alerts: warn {alerts.get('warn', 0)}, fail {alerts.get('fail', 0)}",
    )


def format_summary(summary: dict[str, Any]) -> str:
    """Plain-text summary (end of a live session, ``--once``)."""
    w, life = summary["window"], summary["lifetime"]
    pub = summary["publisher"]
    lines = [
        f"guard {summary['guard_id']}  state {summary['state']}  ticks seen "
        f"{summary['ticks_seen']} (last tick {summary['last_tick']})",
        f"messages {summary['received']}  lost {summary['lost_msgs']}  malformed "
        f"{summary['malformed']}  unknown version {summary['unknown_version']}",
        f"ring overflow {pub.get('ring_overflow', 0)}  send dropped {pub.get('send_dropped', 0)}"
        f"  events dropped {pub.get('events_dropped', 0)}",
    ]
    if "cmd_refused" in pub:  # the guard runs the command channel
        lines.append(
            f"commands accepted {pub.get('cmd_accepted', 0)}  refused {pub['cmd_refused']}"
        )
    for name, key in (("dt", "dt_ns"), ("latency", "latency_ns")):
        lf = life.get(key, {})
        lines.append(
            f"{name:8s} window p50/p99/p99.9/max "
            + "/".join(_us(w.get(f"{name}_{p}_ns")) for p in ("p50", "p99", "p999", "max"))
            + " us   lifetime "
            + "/".join(_us(lf.get(p)) for p in ("p50", "p99", "p999", "max"))
            + " us"
        )
    viol = ", ".join(f"{k} {v}" for k, v in sorted(summary["violations"].items())) or "none"
    lines.append(f"violations: {viol}")
    a = summary["alerts"]
    lines.append(
        f"alerts: fail {a.get('fail', 0)}, warn {a.get('warn', 0)}, info {a.get('info', 0)}"
        f"  -> exit {summary['exit_code']}"
    )
    return "\n".join(lines)

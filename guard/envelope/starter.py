"""Starter envelopes: PLACEHOLDER thresholds derived from the control period, not audited.

``tailguard envelope init`` and runs without ``--envelope`` start from these; the audit
replaces the thresholds with measured ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from tailguard.envelope.checks import NS, check_int
from tailguard.envelope.problems import Problems
from tailguard.envelope.rules import MAX_WINDOW_TICKS
from tailguard.envelope.schema import (
    Envelope,
    PolicyBinding,
    Provenance,
    Thresholds,
    Timing,
    Window,
)
from tailguard.errors import EnvelopeError

__all__ = ["starter_envelope"]


def _scaled(period_ns: int, percent: int) -> int:
    return max(1, (period_ns * percent + 50) // 100)


def starter_envelope(
    *,
    obs_size: int,
    action_size: int,
    period_ns: int,
    sha256: str | None = None,
    action_low: Sequence[float] | None = None,
    action_high: Sequence[float] | None = None,
    tool_version: str = "",
) -> Envelope:
    """A first envelope with PLACEHOLDER thresholds derived from the control period.

    The thresholds are fixed multiples of ``period_ns`` (dt p50/p95/p99/max = 1.05/1.2/
    1.5/3x, latency = 0.25/0.5/0.75/1.0x), at most 3 consecutive overruns, a window of
    about 2 s checked 10 times per window. Nobody measured that the policy tolerates them:
    provenance says source "init", audited False, and explains how to get audited ones.

    Args:
        obs_size: flat observation length.
        action_size: flat action length.
        period_ns: nominal control period, ns.
        sha256: hex sha256 of the ONNX file, or None to leave the envelope unbound.
        action_low: lower action bounds (``action_size`` floats) or None.
        action_high: upper action bounds or None.
        tool_version: tailguard version to record.

    Returns:
        A valid, unaudited envelope.

    Raises:
        EnvelopeError: an argument is out of range.
    """
    low: Any = action_low  # PolicyBinding checks and converts the bounds
    high: Any = action_high
    p = Problems("timing")
    if not check_int(p, "period_ns", period_ns, minimum=1, what=NS):
        raise EnvelopeError(p.items)
    ticks = min(MAX_WINDOW_TICKS, max(10, (2_000_000_000 + period_ns // 2) // period_ns))
    period_ms = period_ns / 1e6
    notes = (
        f"PLACEHOLDER thresholds, NOT audited: fixed multiples of the {period_ms:g} ms period "
        "(dt p50/p95/p99/max = 1.05/1.2/1.5/3x, latency p50/p95/p99/max = 0.25/0.5/0.75/1.0x). "
        "Nobody has measured that this policy tolerates them. To get audited thresholds, run "
        "the tailguard timing audit of this policy in simulation, which measures the tolerated "
        "dt/latency boundary and writes an envelope with provenance source 'audit'; or set them "
        "by hand from your own measurements and change provenance source to 'manual'."
    )
    return Envelope(
        policy=PolicyBinding(
            sha256=sha256,
            obs_size=obs_size,
            action_size=action_size,
            action_low=low,
            action_high=high,
        ),
        timing=Timing(
            period_ns=period_ns,
            dt=Thresholds(*(_scaled(period_ns, k) for k in (105, 120, 150, 300))),
            latency=Thresholds(*(_scaled(period_ns, k) for k in (25, 50, 75, 100))),
            max_consecutive_overruns=3,
        ),
        window=Window(ticks=ticks, check_every_ticks=max(1, ticks // 10)),
        provenance=Provenance(
            source="init",
            audited=False,
            tool_version=tool_version,
            created_utc=datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
            notes=notes,
        ),
    )

"""One rule for "was this envelope written for this loop's period?", used by every loop.

An envelope's dt and latency thresholds are set for one control period, so guarding a
loop that runs at another rate would judge it against the wrong numbers. Every entry point
that pairs an envelope with a loop (``run --rate-hz``, ``replay`` on an env's control
period, ...) calls :func:`require_period` before the loop starts.
"""

from __future__ import annotations

import os

from tailguard.envelope.checks import INT64_MAX, is_int
from tailguard.envelope.schema import Envelope
from tailguard.errors import ConfigError, EnvelopeMismatchError, EnvelopeProblem

__all__ = ["PERIOD_TOLERANCE_PPM", "period_matches", "require_period"]

#: Largest relative difference, in parts per million, between an envelope's period and the
#: loop's that still counts as the same period (0.1 %). It absorbs rounding a rate to whole
#: nanoseconds (``Pacer(30).period_ns`` is 33333333) and a period typed with fewer digits
#: (``--period-ms 33.333``); a different rate (50 Hz vs 100 Hz) is far outside it.
PERIOD_TOLERANCE_PPM = 1_000


def _require_period_ns(period_ns: object) -> int:
    if not is_int(period_ns) or not 0 < period_ns <= INT64_MAX:  # type: ignore[operator]
        raise ConfigError(
            f"period_ns must be a positive integer number of nanoseconds, got {period_ns!r}"
        )
    return int(period_ns)  # type: ignore[call-overload]


def period_matches(envelope_period_ns: int, period_ns: int) -> bool:
    """True when two periods differ by at most ``PERIOD_TOLERANCE_PPM`` of ``period_ns``.

    Args:
        envelope_period_ns: the envelope's ``timing.period_ns``, ns.
        period_ns: the loop's period, ns, > 0.

    Raises:
        ConfigError: a period is not a positive integer.
    """
    found = _require_period_ns(envelope_period_ns)
    expected = _require_period_ns(period_ns)
    return abs(found - expected) * 1_000_000 <= PERIOD_TOLERANCE_PPM * expected


def _describe(period_ns: int) -> str:
    return f"{period_ns} ns ({period_ns / 1e6:g} ms, {1e9 / period_ns:g} Hz)"


def require_period(
    envelope: Envelope,
    period_ns: int,
    *,
    where: str,
    path: str | os.PathLike[str] | None = None,
) -> None:
    """Refuse an envelope written for another control period than the loop's.

    Args:
        envelope: the envelope about to be enforced.
        period_ns: the loop's control period, ns (e.g. ``Pacer(rate_hz).period_ns`` or an
            env's control period).
        where: what sets the loop's period, in the user's words, e.g. ``"--rate-hz 100"``
            or ``"the control period of Hopper-v4"``; it is quoted in the message.
        path: the envelope's file, if it came from one; prefixed to the message.

    Raises:
        EnvelopeMismatchError: (an ``EnvelopeError``) the periods differ by more than
            ``PERIOD_TOLERANCE_PPM``; its one problem, at ``timing.period_ns``, gives the
            expected and found periods and how to fix it.
        ConfigError: ``period_ns`` is not a positive integer.
    """
    found = envelope.timing.period_ns
    if period_matches(found, period_ns):
        return
    problem = EnvelopeProblem(
        "timing.period_ns",
        f"{_describe(int(period_ns))} to match {where}",
        _describe(found),
        "the envelope's thresholds were set for another control rate; use an envelope "
        f"written for this period (tailguard envelope init --period-ms {period_ns / 1e6:g}) "
        f"or run the loop at {1e9 / found:g} Hz",
    )
    raise EnvelopeMismatchError(problem, path)

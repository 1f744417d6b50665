"""The per-tick telemetry ring: what the guard's hot path hands to the publisher thread.

One writer (the control loop) and one reader (the telemetry thread). The writer stores a
tick's values at slot ``tick & mask`` and then publishes ``head = tick``; the reader only
reads ticks up to ``head``, so it never sees a half-written record (stores happen in
bytecode order under the GIL). The ring never blocks the writer: if the reader falls more
than ``capacity`` ticks behind, the oldest records are overwritten and the reader counts
them as lost (:attr:`TelemetryRing.overflowed`).

Per tick: ``dt_ns``, ``latency_ns`` and ``flags`` = guard state code in bits 0-3 (index of
``GuardState``) and one bit per ``Violation`` (bit ``4 + index``) for the kinds counted on
that tick. Nominal ticks have flags 0.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass

import numpy as np

from guard.state import GuardState, Violation

__all__ = ["TelemetryRing", "TickBatch", "STATE_CODES", "VIOLATION_BITS", "decode_flags"]

STATE_CODES: dict[GuardState, int] = {s: i for i, s in enumerate(GuardState)}
VIOLATION_BITS: dict[Violation, int] = {v: 1 << (4 + i) for i, v in enumerate(Violation)}
_STATES = list(GuardState)


def decode_flags(flags: int) -> tuple[GuardState, list[Violation]]:
    """(state, violations) of one tick's flags value."""
    return _STATES[flags & 0xF], [v for v, bit in VIOLATION_BITS.items() if flags & bit]


@dataclass(frozen=True)
class TickBatch:
    """Consecutive ticks ``first_tick .. first_tick + len - 1`` read from the ring."""

    first_tick: int
    dt_ns: np.ndarray
    latency_ns: np.ndarray
    flags: np.ndarray
    lost: int  # ticks overwritten before they could be read (ring overflow)


class TelemetryRing:
    """Preallocated single-writer/single-reader ring of per-tick records.

    Args:
        capacity: slots; rounded up to a power of two (>= 64).
    """

    def __init__(self, capacity: int = 8192) -> None:
        cap = 64
        while cap < capacity:
            cap <<= 1
        self.capacity = cap
        self.mask = cap - 1
        self.dt_ns = array("q", bytes(8 * cap))
        self.latency_ns = array("q", bytes(8 * cap))
        self.flags = array("q", bytes(8 * cap))
        self.head = 0  # last tick completely written (ticks start at 1)
        self.overflowed = 0  # ticks lost to the reader falling behind
        self._next = 1  # reader cursor: the next tick to read

    def write(self, tick: int, dt_ns: int, latency_ns: int, flags: int) -> None:
        """Store one tick (the guard inlines this in its fast path)."""
        j = tick & self.mask
        self.dt_ns[j] = dt_ns
        self.latency_ns[j] = latency_ns
        self.flags[j] = flags
        self.head = tick

    def read(self, max_ticks: int | None = None) -> TickBatch | None:
        """Everything written since the last read (reader thread), or None if nothing new."""
        head = self.head
        first = self._next
        if head < first:
            return None
        lost = 0
        if head - first + 1 > self.capacity:
            lost = head - first + 1 - self.capacity
            first += lost
            self.overflowed += lost
        last = head if max_ticks is None else min(head, first + max_ticks - 1)
        n = last - first + 1
        start = first & self.mask
        idx = (
            (np.arange(n) + start) & self.mask
            if start + n > self.capacity
            else slice(start, start + n)
        )
        views = [
            np.frombuffer(a, dtype=np.int64)[idx].copy()
            for a in (self.dt_ns, self.latency_ns, self.flags)
        ]
        # The writer may have lapped us while we copied: drop what it overwrote.
        lapped = self.head - self.capacity + 1 - first
        if lapped > 0:
            k = min(lapped, n)
            views = [v[k:] for v in views]
            first += k
            lost += k
            self.overflowed += k
            n -= k
        self._next = first + n
        return TickBatch(first, views[0], views[1], views[2], lost)

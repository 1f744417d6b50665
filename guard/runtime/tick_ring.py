"""The per-tick telemetry ring: what the guard's hot path hands to the publisher thread.

One writer (the control loop) and readers that only ever read completed ticks (up to
``head``; stores happen in bytecode order under the GIL, so a reader never sees a
half-written record). The ring never blocks the writer: if the telemetry reader falls more
than ``capacity`` ticks behind, the oldest records are overwritten and counted as lost
(:attr:`TelemetryRing.overflowed`). The guard uses the same ring for its own histograms,
so telemetry adds no work to a nominal tick.

Per tick: ``dt_ns``, ``latency_ns`` and ``flags`` = the guard state's code in bits 0-3
(:data:`STATE_CODES`) and one bit per ``Violation`` counted on that tick
(:data:`VIOLATION_BITS`). Both are explicit tables, part of the telemetry wire format: they
do not follow the Enums' order, so adding or reordering an Enum member never changes what
a monitor decodes. A new kind takes the next free bit. Nominal ticks have flags 0.
"""

from __future__ import annotations

from array import array
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from tailguard.errors import ConfigError
from tailguard.runtime.state import GuardState, Violation

__all__ = ["TelemetryRing", "TickBatch", "STATE_CODES", "VIOLATION_BITS", "decode_flags"]

#: Wire code of each state (bits 0-3 of a tick's flags). Never renumber: monitors decode it.
STATE_CODES: dict[GuardState, int] = {
    GuardState.NOMINAL: 0,
    GuardState.HOLD: 1,
    GuardState.FALLBACK: 2,
    GuardState.LATCHED: 3,
}
_V = Violation
#: Wire bit of each violation kind (bits 4-62 of a tick's flags). Never renumber.
VIOLATION_BITS: dict[Violation, int] = {
    _V.LATENCY_MAX: 1 << 4,
    _V.DT_MAX: 1 << 5,
    _V.OVERRUN_STREAK: 1 << 6,
    _V.OBS_AGE: 1 << 7,
    _V.OBS_NONFINITE: 1 << 8,
    _V.OBS_SHAPE: 1 << 9,
    _V.ACTION_NONFINITE: 1 << 10,
    _V.ACTION_BOUNDS: 1 << 11,
    _V.ACTION_RATE: 1 << 12,
    _V.POLICY_ERROR: 1 << 13,
    _V.DEADLINE_MISS: 1 << 14,
    _V.HOLD_LIMIT: 1 << 15,
    _V.FALLBACK_ERROR: 1 << 16,
    _V.DT_P50: 1 << 17,
    _V.DT_P95: 1 << 18,
    _V.DT_P99: 1 << 19,
    _V.LATENCY_P50: 1 << 20,
    _V.LATENCY_P95: 1 << 21,
    _V.LATENCY_P99: 1 << 22,
    _V.OBS_RANGE: 1 << 23,
    _V.ACTION_SATURATION: 1 << 24,
    _V.ACTION_FROZEN: 1 << 25,
    _V.ACTION_CHATTER: 1 << 26,
}
del _V
_STATE_OF_CODE = {code: s for s, code in STATE_CODES.items()}
_BITS_IN_ORDER = sorted(VIOLATION_BITS.items(), key=lambda item: item[1])


def decode_flags(flags: int) -> tuple[GuardState, list[Violation]]:
    """(state, violations) of one tick's flags value (violations in bit order).

    Raises:
        ConfigError: bits 0-3 hold no known state code.
    """
    try:
        state = _STATE_OF_CODE[flags & 0xF]
    except KeyError:
        raise ConfigError(f"flags {flags:#x}: unknown state code {flags & 0xF}") from None
    return state, [v for v, bit in _BITS_IN_ORDER if flags & bit]


@dataclass(frozen=True)
class TickBatch:
    """Consecutive ticks ``first_tick .. first_tick + len - 1`` read from the ring."""

    first_tick: int
    dt_ns: np.ndarray
    latency_ns: np.ndarray
    flags: np.ndarray
    lost: int  # ticks overwritten before they could be read (ring overflow)


class TelemetryRing:
    """The guard's per-tick ring: raw dt/latency of every tick, read by up to two readers.

    The guard (single writer) stores tick ``t`` at slot ``t & mask`` on every tick. Its
    own histogram flush reads the ring every 1024 ticks; a telemetry publisher thread may
    read it too (:meth:`read`). Ticks up to ``head`` are complete: ``head`` comes from the
    guard (its tick counter minus one, so no per-tick store is needed for it). Values < 0
    mark "no measurement" (the first tick's dt; a clock that went backwards). Flags are
    sparse: only ticks resolved off the fast path have any, and they arrive through
    ``flag_events`` as ``(tick, flags)``; every other tick has flags 0.

    Args:
        capacity: slots; rounded up to a power of two (>= 256).
    """

    def __init__(self, capacity: int = 8192) -> None:
        cap = 256
        while cap < capacity:
            cap <<= 1
        self.capacity = cap
        self.mask = cap - 1
        self.dt_ns = array("q", bytes(8 * cap))
        self.latency_ns = array("q", bytes(8 * cap))
        self.flag_events: deque[tuple[int, int]] = deque(maxlen=cap)
        self.head_source: Callable[[], int] = lambda: self._written
        self._written = 0  # used when no guard drives the ring (tests, write())
        self.overflowed = 0  # ticks lost to the telemetry reader falling behind
        self._next = 1  # telemetry reader cursor: the next tick to read

    @property
    def head(self) -> int:
        """The last tick whose record is complete."""
        return self.head_source()

    def write(self, tick: int, dt_ns: int, latency_ns: int, flags: int = 0) -> None:
        """Store one tick (the guard inlines the dt/latency stores in its fast path)."""
        j = tick & self.mask
        self.dt_ns[j] = dt_ns
        self.latency_ns[j] = latency_ns
        if flags:
            self.flag_events.append((tick, flags))
        self._written = tick

    def slice(self, first: int, last: int) -> tuple[np.ndarray, np.ndarray]:
        """Copies of (dt_ns, latency_ns) for ticks first..last (at most ``capacity``)."""
        n = last - first + 1
        start = first & self.mask
        if start + n <= self.capacity:
            idx: Any = slice(start, start + n)
        else:
            idx = (np.arange(n) + start) & self.mask
        return (
            np.frombuffer(self.dt_ns, dtype=np.int64)[idx].copy(),
            np.frombuffer(self.latency_ns, dtype=np.int64)[idx].copy(),
        )

    def read(self, max_ticks: int | None = None) -> TickBatch | None:
        """Everything completed since the last read (the telemetry thread), or None."""
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
        dt, lat = self.slice(first, last)
        n = last - first + 1
        # The writer may have lapped us while we copied: drop what it overwrote.
        lapped = self.head - self.capacity + 1 - first
        if lapped > 0:
            k = min(lapped, n)
            dt, lat = dt[k:], lat[k:]
            first += k
            lost += k
            self.overflowed += k
            n -= k
        flags = np.zeros(n, dtype=np.int64)
        events = self.flag_events
        while events and events[0][0] < first + n:
            tick, value = events.popleft()
            if tick >= first:
                flags[tick - first] = value
        self._next = first + n
        return TickBatch(first, dt, lat, flags, lost)

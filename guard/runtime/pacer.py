"""Fixed-rate loop pacing on absolute deadlines: sleep, then spin the last stretch.

For users who let tailguard run their control loop. Deadlines lie on a fixed grid
``t0 + k * period_ns``, so lateness in one tick never shifts the ticks after it (no drift).

Each :meth:`Pacer.wait` sleeps until ``spin_ns`` before the deadline and then busy-spins on
the clock until the deadline itself: a timer wake-up on a stock kernel is late by tens of
microseconds with a long tail, a spin on a monotonic clock is late by about one clock read.

When the loop falls behind by one or more whole periods, the slots it missed are counted in
``missed_cycles`` and the pacer resumes on the next future slot of the same grid. It never
runs several ticks back to back to catch up: a control loop that fell behind wants the
freshest observation, not a burst of stale ticks.

A wait never blocks for long: it sleeps in slices of at most ``max_sleep_ns`` and, between
slices, polls ``should_stop`` and compares the clock with ``stop_at_ns`` (the end of the run).
A stop request or a deadline past the end makes :meth:`Pacer.wait` return :data:`STOPPED`
within one slice, so a loop at 0.01 Hz still ends on time and answers SIGTERM at once
(Python runs signal handlers between slices; one long ``time.sleep`` would resume after the
handler and sleep on).

This module is on the hot path: :meth:`Pacer.wait` does no allocation beyond integers, no
logging and never raises. ``should_stop`` is polled only when a wait needs more than one
slice, so at control rates above ``1 / max_sleep`` it costs nothing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from tailguard.errors import ConfigError

__all__ = ["MAX_RATE_HZ", "MIN_RATE_HZ", "STOPPED", "Pacer"]

#: Highest rate a Pacer accepts. Above this a Python loop cannot keep up with its own period.
MAX_RATE_HZ = 100_000.0
#: Lowest rate a Pacer accepts (a period of 10**15 ns, about 11.6 days).
MIN_RATE_HZ = 1e-6
#: What :meth:`Pacer.wait` returns instead of a lateness when the run must end.
STOPPED = -1
#: Default longest single sleep, ns: a stop request is seen within this long.
DEFAULT_MAX_SLEEP_NS = 50_000_000

_NS_PER_S = 1_000_000_000


class Pacer:
    """Paces a loop at a fixed rate on absolute deadlines.

    Example::

        pacer = Pacer(500.0)
        pacer.start()
        while running:
            lateness_ns = pacer.wait()   # returns at the next deadline
            action = guard.step(robot.read())
            robot.write(action)

    Args:
        rate_hz: loop rate in Hz; ``0 < rate_hz <= 100_000``.
        spin_ns: how long before each deadline to stop sleeping and start busy-spinning on
            the clock, in ns. 0 gives a sleep-only loop. Spinning costs CPU: at 1 kHz the
            default 150 us spin keeps one core busy about 15 % of the time.
        clock: monotonic clock returning integer ns.
        sleep: sleeps for a number of seconds (float); injected for tests.
        should_stop: polled between sleep slices; when it returns true, :meth:`wait`
            returns :data:`STOPPED`. None: never.
        stop_at_ns: the end of the run in clock ns (None: no end); a wait whose deadline
            lies after it sleeps until then and returns :data:`STOPPED`. Also settable
            later as the ``stop_at_ns`` attribute (e.g. right after :meth:`start`).
        max_sleep_ns: longest single sleep, ns (> 0).

    Attributes:
        period_ns: the nominal period, ``round(1e9 / rate_hz)`` ns.
        ticks: number of completed :meth:`wait` calls since :meth:`start`.
        missed_cycles: grid slots skipped because the loop fell behind by whole periods.
        last_lateness_ns: lateness returned by the last :meth:`wait`, ns.
        next_deadline_ns: the deadline the next :meth:`wait` aims for, in clock ns.
        stopped: :meth:`wait` returned :data:`STOPPED` (stays true until :meth:`start`).

    Raises:
        ConfigError: ``rate_hz`` is not a finite number in [1e-06, 100000], ``spin_ns`` is
            not a non-negative integer, or ``max_sleep_ns`` is not a positive integer.
    """

    def __init__(
        self,
        rate_hz: float,
        *,
        spin_ns: int = 150_000,
        clock: Callable[[], int] = time.perf_counter_ns,
        sleep: Callable[[float], None] = time.sleep,
        should_stop: Callable[[], bool] | None = None,
        stop_at_ns: int | None = None,
        max_sleep_ns: int = DEFAULT_MAX_SLEEP_NS,
    ) -> None:
        rng = f"[{MIN_RATE_HZ:g}, {MAX_RATE_HZ:g}] Hz"
        if isinstance(rate_hz, bool) or not isinstance(rate_hz, int | float):
            raise ConfigError(
                f"rate_hz must be a number in {rng}, got {type(rate_hz).__name__} {rate_hz!r}"
            )
        if not math.isfinite(rate_hz) or not MIN_RATE_HZ <= rate_hz <= MAX_RATE_HZ:
            raise ConfigError(
                f"rate_hz must be a finite number in {rng}, got {rate_hz!r}; "
                "pass the control rate, e.g. Pacer(500.0) for a 2 ms period"
            )
        if isinstance(spin_ns, bool) or not isinstance(spin_ns, int) or spin_ns < 0:
            raise ConfigError(
                f"spin_ns must be a non-negative integer number of ns, got {spin_ns!r}"
            )
        if isinstance(max_sleep_ns, bool) or not isinstance(max_sleep_ns, int) or max_sleep_ns < 1:
            raise ConfigError(f"max_sleep_ns must be a positive integer, got {max_sleep_ns!r}")
        self.rate_hz = float(rate_hz)
        self.period_ns: int = round(_NS_PER_S / rate_hz)
        self.spin_ns = spin_ns
        self._clock = clock
        self._sleep = sleep
        self._should_stop = should_stop
        self.stop_at_ns = stop_at_ns
        self.max_sleep_ns = max_sleep_ns
        self.stopped = False
        self._started = False
        self.ticks = 0
        self.missed_cycles = 0
        self.last_lateness_ns = 0
        self.next_deadline_ns = 0

    def start(self, now_ns: int | None = None) -> None:
        """Start (or restart) the grid: the first deadline is one period from now.

        Resets ``ticks``, ``missed_cycles`` and ``last_lateness_ns``.

        Args:
            now_ns: grid origin in clock ns; defaults to the clock's current reading.
        """
        origin_ns = self._clock() if now_ns is None else int(now_ns)
        self.next_deadline_ns = origin_ns + self.period_ns
        self.ticks = 0
        self.missed_cycles = 0
        self.last_lateness_ns = 0
        self.stopped = False
        self._started = True

    def wait(self) -> int:
        """Block until the next deadline and return how late the wake-up was.

        If the loop already fell one or more whole periods behind the deadline, the missed
        slots are added to ``missed_cycles`` and the pacer waits for the next future slot on
        the same grid instead. If it is late by less than one period, it returns at once.
        Calling ``wait()`` before :meth:`start` starts the grid now.

        Returns:
            Lateness of the wake-up, ns (>= 0), measured against the slot served. It is
            below one period unless the sleep itself overshot by more than that; the next
            ``wait()`` then accounts for the skipped slots. :data:`STOPPED` (-1) instead
            when ``should_stop`` asked to stop or the deadline lies after ``stop_at_ns``;
            that slot is not served (``ticks`` unchanged).
        """
        clock = self._clock
        if not self._started:
            self.start()
        period_ns = self.period_ns
        deadline_ns = self.next_deadline_ns
        now_ns = clock()
        behind_ns = now_ns - deadline_ns
        if behind_ns >= period_ns:
            # Skip to the first slot at or after now: -(-a // b) is ceil(a / b) on ints.
            skipped = -(-behind_ns // period_ns)
            self.missed_cycles += skipped
            deadline_ns += skipped * period_ns
        stop_at_ns = self.stop_at_ns
        if stop_at_ns is not None and deadline_ns > stop_at_ns:
            # The slot lies after the end of the run: wait for the end, not the slot.
            self._sleep_until(stop_at_ns, now_ns)
            self.stopped = True
            return STOPPED
        sleep_ns = deadline_ns - self.spin_ns - now_ns
        if sleep_ns > 0:
            if sleep_ns <= self.max_sleep_ns:
                self._sleep(sleep_ns / _NS_PER_S)
            elif self._sleep_until(deadline_ns - self.spin_ns, now_ns):
                self.stopped = True
                return STOPPED
        now_ns = clock()
        while now_ns < deadline_ns:
            now_ns = clock()
        lateness_ns = now_ns - deadline_ns
        self.next_deadline_ns = deadline_ns + period_ns
        self.last_lateness_ns = lateness_ns
        self.ticks += 1
        return lateness_ns

    def _sleep_until(self, until_ns: int, now_ns: int) -> bool:
        """Sleep in slices of at most ``max_sleep_ns`` until ``until_ns``.

        Returns:
            True if ``should_stop`` asked to stop before then.
        """
        should_stop, clock, sleep, slice_ns = (
            self._should_stop,
            self._clock,
            self._sleep,
            self.max_sleep_ns,
        )
        while True:
            if should_stop is not None and should_stop():
                return True
            remaining_ns = until_ns - now_ns
            if remaining_ns <= 0:
                return False
            sleep((remaining_ns if remaining_ns < slice_ns else slice_ns) / _NS_PER_S)
            now_ns = clock()

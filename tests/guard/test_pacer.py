"""Tests for tailguard.runtime.pacer: deadline grid, lateness, missed cycles without catch-up."""

from __future__ import annotations

import math
import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tailguard.runtime.pacer import STOPPED, Pacer

PERIOD_1KHZ_NS = 1_000_000


class FakeClock:
    """A monotonic ns clock whose sleep advances it; no real time passes.

    Args:
        now_ns: initial reading.
        read_step_ns: how far each clock read advances time (models the cost of a read,
            which lets a spin loop make progress).
        oversleep_ns: how much longer than asked every sleep lasts.
    """

    def __init__(self, now_ns: int = 0, read_step_ns: int = 0, oversleep_ns: int = 0) -> None:
        self.now_ns = now_ns
        self.read_step_ns = read_step_ns
        self.oversleep_ns = oversleep_ns
        self.reads = 0
        self.sleeps_s: list[float] = []

    def __call__(self) -> int:
        self.reads += 1
        self.now_ns += self.read_step_ns
        return self.now_ns

    def sleep(self, seconds: float) -> None:
        self.sleeps_s.append(seconds)
        self.now_ns += round(seconds * 1e9) + self.oversleep_ns

    def advance(self, ns: int) -> None:
        """Simulate the loop body taking ``ns``."""
        self.now_ns += ns


def make_pacer(clock: FakeClock, rate_hz: float = 1000.0, spin_ns: int = 0) -> Pacer:
    return Pacer(rate_hz, spin_ns=spin_ns, clock=clock, sleep=clock.sleep)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"rate_hz": 0}, "rate_hz must be a finite number"),
        ({"rate_hz": -50.0}, "rate_hz must be a finite number"),
        ({"rate_hz": math.nan}, "got nan"),
        ({"rate_hz": math.inf}, "got inf"),
        ({"rate_hz": 100_001}, "[1e-06, 100000]"),
        ({"rate_hz": 1e-7}, "[1e-06, 100000]"),
        ({"rate_hz": 500, "max_sleep_ns": 0}, "max_sleep_ns must be a positive integer"),
        ({"rate_hz": "500"}, "got str '500'"),
        ({"rate_hz": True}, "got bool"),
        ({"rate_hz": None}, "got NoneType"),
        ({"rate_hz": 500, "spin_ns": -1}, "spin_ns must be a non-negative integer"),
        ({"rate_hz": 500, "spin_ns": 1.5}, "spin_ns must be a non-negative integer"),
    ],
)
def test_bad_arguments_raise_config_error(kwargs: dict[str, object], fragment: str) -> None:
    """Out-of-range or non-numeric arguments raise ConfigError (a ValueError) naming them."""
    with pytest.raises(ValueError, match=re.escape(fragment)):
        Pacer(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("rate_hz", "period_ns"),
    [(1000.0, 1_000_000), (500, 2_000_000), (3.0, 333_333_333), (100_000, 10_000)],
)
def test_period_ns_is_rounded_inverse_rate(rate_hz: float, period_ns: int) -> None:
    """period_ns is 1e9 / rate_hz rounded to an integer number of ns."""
    assert Pacer(rate_hz).period_ns == period_ns


def test_start_sets_first_deadline_one_period_ahead() -> None:
    """start(now) puts the first deadline at now + period and resets the counters."""
    clock = FakeClock(now_ns=5_000)
    pacer = make_pacer(clock)
    pacer.start(now_ns=1_000)
    assert pacer.next_deadline_ns == 1_000 + PERIOD_1KHZ_NS
    pacer.start()
    assert pacer.next_deadline_ns == 5_000 + PERIOD_1KHZ_NS
    assert (pacer.ticks, pacer.missed_cycles, pacer.last_lateness_ns) == (0, 0, 0)


def test_wait_returns_exactly_on_the_grid() -> None:
    """With a perfect sleep, every wake-up lands on t0 + k * period with zero lateness."""
    clock = FakeClock(now_ns=7_000)
    pacer = make_pacer(clock)
    pacer.start()
    for k in range(1, 50):
        clock.advance((k * 37_000) % 900_000)  # loop body shorter than a period
        assert pacer.wait() == 0
        assert clock.now_ns == 7_000 + k * PERIOD_1KHZ_NS
        assert pacer.next_deadline_ns == 7_000 + (k + 1) * PERIOD_1KHZ_NS
    assert pacer.ticks == 49
    assert pacer.missed_cycles == 0


def test_lateness_does_not_accumulate_into_drift() -> None:
    """A wake-up that is late every time leaves later deadlines on the original grid."""
    clock = FakeClock(oversleep_ns=300)
    pacer = make_pacer(clock)
    pacer.start(now_ns=0)
    for _ in range(100):
        assert pacer.wait() == 300
    assert pacer.last_lateness_ns == 300
    assert pacer.next_deadline_ns == 101 * PERIOD_1KHZ_NS
    assert clock.now_ns == 100 * PERIOD_1KHZ_NS + 300


def test_late_by_less_than_a_period_returns_at_once() -> None:
    """A wait() called after its deadline but within one period returns without sleeping."""
    clock = FakeClock()
    pacer = make_pacer(clock)
    pacer.start(now_ns=0)
    pacer.wait()
    clock.advance(PERIOD_1KHZ_NS + 400_000)  # 0.4 periods past the next deadline
    sleeps_before = len(clock.sleeps_s)
    assert pacer.wait() == 400_000
    assert len(clock.sleeps_s) == sleeps_before
    assert pacer.missed_cycles == 0
    assert pacer.next_deadline_ns == 3 * PERIOD_1KHZ_NS


def test_missed_cycles_counted_without_catch_up() -> None:
    """Falling 2.5 periods behind counts 3 missed slots and resumes on the next grid slot."""
    clock = FakeClock()
    pacer = make_pacer(clock)
    pacer.start(now_ns=0)
    pacer.wait()  # served slot 1 ms
    clock.advance(3_500_000)  # next deadline was 2 ms; now 4.5 ms
    assert pacer.wait() == 0
    assert clock.now_ns == 5 * PERIOD_1KHZ_NS  # slots 2, 3, 4 ms skipped
    assert pacer.missed_cycles == 3
    # No burst: the following tick waits one whole period again.
    assert pacer.wait() == 0
    assert clock.sleeps_s[-1] == pytest.approx(1e-3)
    assert clock.now_ns == 6 * PERIOD_1KHZ_NS
    assert pacer.ticks == 3


def test_behind_by_exactly_whole_periods_serves_the_current_slot() -> None:
    """Being exactly k periods behind skips k slots and serves the one at now, on time."""
    clock = FakeClock()
    pacer = make_pacer(clock)
    pacer.start(now_ns=0)
    clock.advance(3 * PERIOD_1KHZ_NS)  # deadline 1 ms, now 3 ms
    assert pacer.wait() == 0
    assert pacer.missed_cycles == 2
    assert clock.now_ns == 3 * PERIOD_1KHZ_NS
    assert pacer.next_deadline_ns == 4 * PERIOD_1KHZ_NS


def test_spin_phase_reaches_the_deadline() -> None:
    """wait() sleeps until spin_ns before the deadline, then spins on the clock to it."""
    clock = FakeClock(read_step_ns=1_000)
    pacer = make_pacer(clock, spin_ns=50_000)
    pacer.start(now_ns=0)
    reads_before = clock.reads
    lateness_ns = pacer.wait()
    # One sleep, ending 50 us (minus the entry read) before the deadline.
    assert len(clock.sleeps_s) == 1
    assert clock.sleeps_s[0] == pytest.approx((PERIOD_1KHZ_NS - 50_000 - 1_000) / 1e9)
    # About 50 reads of 1 us each were spent spinning.
    assert clock.reads - reads_before >= 50
    assert 0 <= lateness_ns < 1_000
    assert clock.now_ns >= PERIOD_1KHZ_NS


def test_spin_longer_than_period_never_sleeps() -> None:
    """With spin_ns above the period the pacer only spins (useful at very high rates)."""
    clock = FakeClock(read_step_ns=500)
    pacer = Pacer(20_000, spin_ns=100_000, clock=clock, sleep=clock.sleep)
    pacer.start(now_ns=0)
    for _ in range(10):
        assert pacer.wait() < 500
    assert clock.sleeps_s == []


def test_wait_before_start_starts_the_grid() -> None:
    """Calling wait() without start() starts the grid at the current time instead of raising."""
    clock = FakeClock(now_ns=123)
    pacer = make_pacer(clock)
    assert pacer.wait() == 0
    assert clock.now_ns == 123 + PERIOD_1KHZ_NS
    assert pacer.ticks == 1


def test_long_wait_sleeps_in_bounded_slices() -> None:
    """A 100 s period is slept in slices no longer than max_sleep_ns; the slot is still hit."""
    clock = FakeClock()
    pacer = Pacer(0.01, spin_ns=0, clock=clock, sleep=clock.sleep, max_sleep_ns=50_000_000)
    pacer.start(now_ns=0)
    assert pacer.wait() == 0
    assert clock.now_ns == 100 * 10**9
    assert max(clock.sleeps_s) <= 0.05 and len(clock.sleeps_s) == 2000


def test_stop_request_ends_a_long_wait_within_one_slice() -> None:
    """should_stop() turning true mid-wait returns STOPPED within one slice, slot unserved."""
    clock = FakeClock()
    pacer = Pacer(
        0.01,
        spin_ns=0,
        clock=clock,
        sleep=clock.sleep,
        should_stop=lambda: clock.now_ns >= 3 * 10**9,
        max_sleep_ns=50_000_000,
    )
    pacer.start(now_ns=0)
    assert pacer.wait() == STOPPED
    assert 3 * 10**9 <= clock.now_ns <= 3 * 10**9 + 50_000_000
    assert pacer.stopped and pacer.ticks == 0


def test_deadline_after_the_end_of_the_run_returns_stopped_at_the_end() -> None:
    """With stop_at_ns before the next slot, wait() returns STOPPED at stop_at_ns, not later."""
    clock = FakeClock()
    pacer = Pacer(0.01, spin_ns=0, clock=clock, sleep=clock.sleep, stop_at_ns=10**9)
    pacer.start(now_ns=0)
    assert pacer.wait() == STOPPED
    assert clock.now_ns == 10**9 and pacer.ticks == 0


def test_stop_hooks_leave_fast_ticks_alone() -> None:
    """At 1 kHz with an end far away, ticks are served normally and should_stop is not polled."""
    clock = FakeClock(read_step_ns=100)
    polled = []
    pacer = Pacer(
        1000.0,
        spin_ns=0,
        clock=clock,
        sleep=clock.sleep,
        should_stop=lambda: polled.append(1) or False,
        stop_at_ns=10**12,
    )
    pacer.start(now_ns=0)
    assert all(pacer.wait() >= 0 for _ in range(50))
    assert pacer.ticks == 50 and polled == []


@settings(max_examples=200, deadline=None)
@given(
    work_ns=st.lists(st.integers(min_value=0, max_value=5_000_000), min_size=1, max_size=60),
    oversleep_ns=st.integers(min_value=0, max_value=300_000),
    spin_ns=st.integers(min_value=0, max_value=200_000),
)
def test_accounting_invariants_hold_for_any_schedule(
    work_ns: list[int], oversleep_ns: int, spin_ns: int
) -> None:
    """For any loop-body durations: deadlines stay on the grid, ticks + missed slots cover it."""
    clock = FakeClock(read_step_ns=700, oversleep_ns=oversleep_ns)
    pacer = make_pacer(clock, spin_ns=spin_ns)
    pacer.start(now_ns=0)
    for body_ns in work_ns:
        clock.advance(body_ns)
        before_ns = clock.now_ns
        lateness_ns = pacer.wait()
        assert lateness_ns >= 0
        assert clock.now_ns >= before_ns
        served_ns = pacer.next_deadline_ns - PERIOD_1KHZ_NS
        assert clock.now_ns - served_ns == lateness_ns
    assert pacer.next_deadline_ns % PERIOD_1KHZ_NS == 0
    assert pacer.next_deadline_ns // PERIOD_1KHZ_NS == 1 + pacer.ticks + pacer.missed_cycles
    assert pacer.ticks == len(work_ns)


@pytest.mark.timeout(10)
def test_real_clock_smoke_200_ticks_at_1khz() -> None:
    """On the real clock, 200 ticks keep the accounting consistent (no timing assertions)."""
    pacer = Pacer(1000.0)
    t0_ns = time.perf_counter_ns()
    pacer.start(t0_ns)
    lateness_ns = [pacer.wait() for _ in range(200)]
    assert pacer.ticks == 200
    assert all(late >= 0 for late in lateness_ns)
    slots = (pacer.next_deadline_ns - t0_ns) // pacer.period_ns
    assert (pacer.next_deadline_ns - t0_ns) % pacer.period_ns == 0
    assert slots == 1 + pacer.ticks + pacer.missed_cycles
    assert pacer.last_lateness_ns == lateness_ns[-1]

"""Deadline runners: in-time results, late results counted, late exceptions never leak."""

from __future__ import annotations

import threading
import time

import pytest
from tg_models import FakeClock

from tailguard.errors import ConfigError
from tailguard.runtime.deadline import (
    InlineDeadlineRunner,
    ThreadDeadlineRunner,
    make_deadline_runner,
)

MS = 1_000_000
WAIT_S = 5.0  # upper bound on any wait for the worker thread (never reached when it works)


# ----------------------------------------------------------------- simulated time --
def test_inline_runner_judges_against_the_simulated_clock() -> None:
    """In time -> True; finishing after the deadline -> False and counted as late."""
    clock = FakeClock()
    cost = {"ns": 1 * MS}
    runner = InlineDeadlineRunner(lambda arg: clock.advance(cost["ns"]), clock)
    assert runner.run(None, clock.now_ns + 2 * MS) is True
    assert runner.run(None, clock.now_ns + 1 * MS) is True  # exactly at the deadline
    cost["ns"] = 3 * MS
    assert runner.run(None, clock.now_ns + 2 * MS) is False
    assert runner.late_results == 1 and runner.late_errors == 0
    assert not runner.busy and runner.wait_idle(0.0)


def test_inline_runner_raises_this_ticks_exception_once() -> None:
    """An inline inference's exception belongs to its own tick: raised there, not later."""
    clock = FakeClock()
    mode = {"raise": True}

    def fn(arg):
        clock.advance(5 * MS)
        if mode["raise"]:
            raise RuntimeError("boom")

    runner = InlineDeadlineRunner(fn, clock)
    with pytest.raises(RuntimeError, match="boom"):
        runner.run(None, clock.now_ns + 1 * MS)
    mode["raise"] = False
    assert runner.run(None, clock.now_ns + 10 * MS) is True


# ------------------------------------------------------------------- wall clock --
@pytest.fixture
def blocking():
    """A worker whose inference blocks until released (or WAIT_S passes)."""
    release = threading.Event()
    started = threading.Event()
    state = {"block": False, "raise": False, "calls": 0}

    def fn(arg):
        state["calls"] += 1
        started.set()
        if state["block"]:
            release.wait(WAIT_S)
        if state["raise"]:
            raise RuntimeError("late boom")

    runner = ThreadDeadlineRunner(fn, time.monotonic_ns)
    yield runner, state, release, started
    release.set()
    runner.close(WAIT_S)


def test_thread_runner_in_time_returns_true(blocking) -> None:
    """A quick inference well within its deadline returns True and counts nothing."""
    runner, _state, _, _ = blocking
    assert runner.run(None, time.monotonic_ns() + 2_000 * MS) is True
    assert runner.late_results == 0 and not runner.busy


def test_late_results_are_counted_when_they_finish(blocking) -> None:
    """An inference its caller stopped waiting for is counted in late_results when it ends;
    until then further runs miss at once without starting a second inference."""
    runner, state, release, _ = blocking
    state["block"] = True
    assert runner.run(None, time.monotonic_ns() + 20 * MS) is False
    assert runner.busy and runner.late_results == 0  # still running
    assert runner.run(None, time.monotonic_ns() + 2_000 * MS) is False  # busy: immediate miss
    assert state["calls"] == 1
    release.set()
    assert runner.wait_idle(WAIT_S)
    assert runner.late_results == 1 and runner.late_errors == 0


def test_a_late_exception_is_counted_not_raised_on_the_next_tick(blocking) -> None:
    """A late inference that raises is counted in late_errors; the next good run returns
    True without raising the stale exception."""
    runner, state, release, _ = blocking
    state["block"] = state["raise"] = True
    assert runner.run(None, time.monotonic_ns() + 20 * MS) is False
    release.set()
    assert runner.wait_idle(WAIT_S)
    assert runner.late_errors == 1 and runner.late_results == 1
    state["block"] = state["raise"] = False
    assert runner.run(None, time.monotonic_ns() + 2_000 * MS) is True


def test_an_in_time_exception_reaches_the_caller(blocking) -> None:
    """An inference that raises within its deadline raises in the caller, once."""
    runner, state, _, _ = blocking
    state["raise"] = True
    with pytest.raises(RuntimeError, match="late boom"):
        runner.run(None, time.monotonic_ns() + 2_000 * MS)
    state["raise"] = False
    assert runner.run(None, time.monotonic_ns() + 2_000 * MS) is True
    assert runner.late_errors == 0


def test_a_deadline_already_past_starts_nothing(blocking) -> None:
    """run() with a deadline in the past misses without starting the inference."""
    runner, state, _, started = blocking
    assert runner.run(None, time.monotonic_ns() - 1) is False
    assert state["calls"] == 0 and not started.is_set() and not runner.busy


def test_unknown_mode_is_a_config_error() -> None:
    """make_deadline_runner refuses other modes with the valid choices."""
    with pytest.raises(ConfigError, match=r"\['inline', 'thread'\]"):
        make_deadline_runner("async", lambda a: None, time.monotonic_ns)

"""Deadline mode: bound the time the guard waits for an inference.

Two runners with one call signature, ``run(arg, deadline_ns) -> bool`` (True: finished in
time; False: missed, the result must be discarded). An exception raised by an inference the
caller waited for propagates to the caller, so the guard turns it into an event like any
policy error. An inference the caller stopped waiting for is *late*: its result and its
exception belong to a tick that is already answered, so neither ever reaches a later tick;
both runners count them (:attr:`late_results`, :attr:`late_errors`).

* :class:`ThreadDeadlineRunner` runs inference on a worker thread and returns at the
  deadline if it has not finished; use it on a robot. A late inference keeps running in the
  background; until it finishes, later ticks miss immediately (no second inference is
  started on buffers still being written). A deadline that has already passed when
  ``run`` is called starts nothing.
* :class:`InlineDeadlineRunner` runs inference in the caller's thread and judges it against
  the deadline afterwards by reading the clock. With a simulated clock (advanced by the
  simulator while the policy "runs") this models deadline mode exactly, without threads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from tailguard.errors import ConfigError

__all__ = ["InlineDeadlineRunner", "ThreadDeadlineRunner", "make_deadline_runner"]


class InlineDeadlineRunner:
    """Run, then compare the clock with the deadline (for simulated time).

    The inference always completes (it runs in the caller's thread), so an exception it
    raises belongs to this tick and propagates, late or not.

    Args:
        fn: the inference, ``fn(arg)``.
        clock: the guard's integer-ns clock.
    """

    def __init__(self, fn: Callable[[Any], Any], clock: Callable[[], int]) -> None:
        self._fn = fn
        self._clock = clock
        self.late_results = 0  # inferences that finished after their deadline (discarded)
        self.late_errors = 0  # always 0 here: an inline inference's exception is this tick's

    def run(self, arg: Any, deadline_ns: int) -> bool:
        """Run ``fn(arg)``; True if the clock is at or before ``deadline_ns`` afterwards."""
        self._fn(arg)
        if self._clock() <= deadline_ns:
            return True
        self.late_results += 1
        return False

    @property
    def busy(self) -> bool:
        """Never: the inference runs in the caller's thread."""
        return False

    def wait_idle(self, timeout_s: float = 1.0) -> bool:
        """Nothing runs in the background: True at once."""
        return True

    def close(self) -> None:
        """Nothing to release."""


class ThreadDeadlineRunner:
    """Run inference on a worker thread; stop waiting for it at the deadline.

    The wait is ``threading.Event.wait(timeout)`` computed from the guard's clock, so the
    clock must be wall time (``time.perf_counter_ns`` or ``time.monotonic_ns``).

    Args:
        fn: the inference, ``fn(arg)``; onnxruntime releases the GIL while it runs.
        clock: integer-ns wall clock.
    """

    def __init__(self, fn: Callable[[Any], Any], clock: Callable[[], int]) -> None:
        self._fn = fn
        self._clock = clock
        self._go = threading.Event()
        self._done = threading.Event()
        # Decides, for an inference finishing just as its caller gives up, which of the two
        # happened first: either the caller takes the result, or the run is late.
        self._lock = threading.Lock()
        self._done.set()  # idle
        self._arg: Any = None
        self._exc: BaseException | None = None
        self._abandoned = False
        self._busy = False
        self._closed = False
        self.late_results = 0  # inferences that finished after their caller gave up
        self.late_errors = 0  # ... of which raised (the exception is dropped, counted here)
        self._thread = threading.Thread(target=self._work, name="tailguard-inference", daemon=True)
        self._thread.start()

    def run(self, arg: Any, deadline_ns: int) -> bool:
        """Run ``fn(arg)`` on the worker; True if it finished by ``deadline_ns``.

        Raises:
            BaseException: whatever ``fn`` raised, if it finished in time.
        """
        if self._busy:  # the previous, late inference is still writing its buffers
            return False
        timeout_s = (deadline_ns - self._clock()) * 1e-9
        if timeout_s <= 0.0:  # already too late: do not start what nobody will wait for
            return False
        self._done.clear()
        self._abandoned = False
        self._arg = arg
        self._busy = True
        self._go.set()
        if not self._done.wait(timeout_s):
            with self._lock:
                if not self._done.is_set():
                    self._abandoned = True  # the worker counts it when it finishes
                    return False
        exc, self._exc = self._exc, None
        if exc is not None:
            raise exc
        return True

    def _work(self) -> None:
        while True:
            self._go.wait()
            self._go.clear()
            if self._closed:
                return
            exc: BaseException | None = None
            try:
                self._fn(self._arg)
            except BaseException as e:  # handed to the caller, or counted if late
                exc = e
            with self._lock:
                if self._abandoned:
                    self.late_results += 1
                    self.late_errors += exc is not None
                else:
                    self._exc = exc
                self._busy = False
                self._done.set()

    @property
    def busy(self) -> bool:
        """True while an inference (possibly a late one) is still running."""
        return self._busy

    def wait_idle(self, timeout_s: float = 1.0) -> bool:
        """Wait up to ``timeout_s`` for a running (late) inference to finish; True if idle."""
        return self._done.wait(timeout_s)

    def close(self, timeout_s: float = 1.0) -> None:
        """Stop the worker thread (waits for a running inference up to ``timeout_s``)."""
        self._closed = True
        self._go.set()
        self._thread.join(timeout_s)


def make_deadline_runner(
    mode: str, fn: Callable[[Any], Any], clock: Callable[[], int]
) -> InlineDeadlineRunner | ThreadDeadlineRunner:
    """Build the runner for ``mode`` ("thread" or "inline").

    Raises:
        ConfigError: ``mode`` is neither.
    """
    if mode == "thread":
        return ThreadDeadlineRunner(fn, clock)
    if mode == "inline":
        return InlineDeadlineRunner(fn, clock)
    raise ConfigError(f"unknown deadline mode {mode!r}; valid choices are ['inline', 'thread']")

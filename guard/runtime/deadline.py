"""Deadline mode: bound the time the guard waits for an inference.

Two runners with one call signature, ``run(arg, deadline_ns) -> bool`` (True: finished in
time; False: missed, the result must be discarded). Exceptions raised by the inference
propagate to the caller either way, so the guard turns them into events the same way.

* :class:`ThreadDeadlineRunner` runs inference on a worker thread and returns at the
  deadline if it has not finished; use it on a robot. A late inference keeps running in the
  background; until it finishes, later ticks miss immediately (no second inference is
  started on buffers still being written).
* :class:`InlineDeadlineRunner` runs inference in the caller's thread and judges it against
  the deadline afterwards by reading the clock. With a simulated clock (advanced by the
  simulator while the policy "runs") this models deadline mode exactly, without threads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

__all__ = ["InlineDeadlineRunner", "ThreadDeadlineRunner", "make_deadline_runner"]


class InlineDeadlineRunner:
    """Run, then compare the clock with the deadline (for simulated time).

    Args:
        fn: the inference, ``fn(arg)``.
        clock: the guard's integer-ns clock.
    """

    def __init__(self, fn: Callable[[Any], Any], clock: Callable[[], int]) -> None:
        self._fn = fn
        self._clock = clock

    def run(self, arg: Any, deadline_ns: int) -> bool:
        self._fn(arg)
        return self._clock() <= deadline_ns

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
        self._arg: Any = None
        self._exc: BaseException | None = None
        self._busy = False
        self._closed = False
        self.late_results = 0  # inferences that finished after their deadline (discarded)
        self._thread = threading.Thread(target=self._work, name="tailguard-inference", daemon=True)
        self._thread.start()

    def run(self, arg: Any, deadline_ns: int) -> bool:
        if self._busy:  # the previous, late inference is still writing its buffers
            return False
        self._done.clear()
        self._arg = arg
        self._busy = True
        self._go.set()
        timeout_s = (deadline_ns - self._clock()) * 1e-9
        if timeout_s <= 0.0 or not self._done.wait(timeout_s):
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
            waited = self._done.is_set()
            try:
                self._fn(self._arg)
            except BaseException as exc:  # handed to the caller, never lost
                self._exc = exc
            self._busy = False
            if waited:
                self.late_results += 1
            self._done.set()

    @property
    def busy(self) -> bool:
        """True while an inference (possibly a late one) is still running."""
        return self._busy

    def close(self, timeout_s: float = 1.0) -> None:
        """Stop the worker thread (waits for a running inference up to ``timeout_s``)."""
        self._closed = True
        self._go.set()
        self._thread.join(timeout_s)


def make_deadline_runner(
    mode: str, fn: Callable[[Any], Any], clock: Callable[[], int]
) -> InlineDeadlineRunner | ThreadDeadlineRunner:
    """Build the runner for ``mode`` ("thread" or "inline")."""
    if mode == "thread":
        return ThreadDeadlineRunner(fn, clock)
    if mode == "inline":
        return InlineDeadlineRunner(fn, clock)
    raise ValueError(f"unknown deadline mode '{mode}'; valid choices are ['inline', 'thread']")

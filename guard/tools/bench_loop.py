"""The measured loop of `tailguard bench`: paced, guarded ticks with per-tick timing.

The loop is the one a user runs: ``Pacer.wait()`` (sleep, then spin) then ``Guard.step(obs)``
on the policy, with the GC collected and frozen after warm-up. Per tick it keeps wake-up
lateness, the ``step()`` wall time and the bare inference time (the policy's own run
function, wrapped before the guard is built); the guard records dt and latency itself. The
per-tick values go into small preallocated buffers that are folded into histograms every
``CHUNK`` ticks; the progress display is only redrawn when the loop has slack before its
next deadline. What all this bookkeeping adds per tick is measured by
:func:`measure_bench_cost`.

The pacer's waits are bounded slices that see the end of the run (``stop_at_ns``), so a
very low rate still ends at the requested duration.
"""

from __future__ import annotations

import array
import gc
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from tailguard.envelope.model import Envelope
from tailguard.errors import ConfigError
from tailguard.runtime.guard import Guard
from tailguard.runtime.pacer import STOPPED, Pacer
from tailguard.runtime.policy import _CheckedPolicy
from tailguard.stats.histogram import LogLinearHistogram
from tailguard.stats.percentile import percentiles

__all__ = ["CHUNK", "MAX_TICKS", "LoopResult", "measure_bench_cost", "run_guarded_loop"]

#: Ticks buffered before they are folded into the histograms (and the progress redrawn).
CHUNK = 256
#: Longest run accepted (ticks); bounds the per-tick series kept for the plot.
MAX_TICKS = 4_000_000
_HIST_HIGHEST_NS = 2**40  # ~18 min: anything longer is clamped (and counted)
_NS_PER_S = 1_000_000_000

Clock = Callable[[], int]


def _timed_run(run: Callable[[Any], Any], clock: Clock, cell: list[int]) -> Callable[[Any], Any]:
    """Wrap a policy's run function so each call's duration (ns) lands in ``cell[0]``."""

    def timed(arg: Any) -> Any:
        t = clock()
        try:
            return run(arg)
        finally:
            cell[0] = clock() - t

    return timed


def _run_ticks(
    n_ticks: int,
    wait: Callable[[], int],
    step: Callable[[Any], Any],
    obs: Any,
    clock: Clock,
    cell: list[int],
    bufs: tuple[array.array, array.array, array.array],
    flush: Callable[[int], None],
) -> int:
    """The measured loop. Per tick: wait, step, three buffer stores; a flush every chunk.

    Also run by :func:`measure_bench_cost` with no-op ``wait``/``step``, so the cost it
    reports is the cost of exactly this code.

    Returns:
        Ticks run: ``n_ticks``, or fewer when ``wait()`` returned ``STOPPED``.
    """
    late_buf, step_buf, inf_buf = bufs
    chunk = len(late_buf)
    j = 0
    for done in range(n_ticks):
        late = wait()
        if late == STOPPED:
            if j:
                flush(j)
            return done
        t_a = clock()
        step(obs)
        t_b = clock()
        late_buf[j] = late
        step_buf[j] = t_b - t_a
        inf_buf[j] = cell[0]
        cell[0] = 0  # 0 marks "the policy did not run" (latched guard)
        j += 1
        if j == chunk:
            flush(j)
            j = 0
    if j:
        flush(j)
    return n_ticks


def _run_bare(n_ticks: int, wait: Callable[[], int], step: Callable[[Any], Any], obs: Any) -> None:
    """The same loop without any measurement: the baseline of :func:`measure_bench_cost`."""
    for _ in range(n_ticks):
        wait()
        step(obs)


def _buffers(chunk: int) -> tuple[array.array, array.array, array.array]:
    return (
        array.array("q", bytes(8 * chunk)),
        array.array("q", bytes(8 * chunk)),
        array.array("q", bytes(8 * chunk)),
    )


def measure_bench_cost(
    blocks: int = 40, per_block: int = 500, clock: Clock = time.perf_counter_ns
) -> dict[str, float]:
    """What the benchmark's own bookkeeping adds to each tick, ns.

    Times the measured loop (:func:`_run_ticks`, with the run-function wrapper) and the
    bare loop, both around no-op ``wait``/``step``/inference, in alternating blocks;
    the added cost per tick is the difference of the per-block means.

    Returns:
        ``{"median_ns", "p90_ns", "max_ns"}`` over blocks, plus ``blocks`` and
        ``ticks_per_block``. The histogram flush every ``CHUNK`` ticks is not included
        (the run reports it separately as ``flush_max_ns``).
    """
    noop: Callable[[Any], Any] = int  # a C call, like onnxruntime's run_with_iobinding
    cell = [0]
    timed = _timed_run(noop, clock, cell)

    def step_bare(obs: Any) -> None:
        noop(0)

    def step_timed(obs: Any) -> None:
        timed(0)

    def wait() -> int:
        return 0

    bufs = _buffers(CHUNK)

    def no_flush(j: int) -> None:
        return None

    diffs = []
    for _ in range(blocks):
        t = clock()
        _run_ticks(per_block, wait, step_timed, None, clock, cell, bufs, no_flush)
        measured = clock() - t
        t = clock()
        _run_bare(per_block, wait, step_bare, None)
        bare = clock() - t
        diffs.append((measured - bare) / per_block)
    diffs.sort()
    q = percentiles(diffs, (50.0, 90.0))  # the one nearest-rank definition
    return {
        "median_ns": round(q[50.0], 1),
        "p90_ns": round(q[90.0], 1),
        "max_ns": round(diffs[-1], 1),
        "blocks": blocks,
        "ticks_per_block": per_block,
    }


@dataclass
class LoopResult:
    """What one guarded run measured.

    Attributes:
        hists: ``wakeup_lateness_ns`` (Pacer.wait), ``dt_ns`` (achieved period, the
            guard's), ``latency_ns`` (the guard's: tick start to action out),
            ``step_ns`` (Guard.step wall time), ``inference_ns`` (the policy's own run
            call) and ``guard_overhead_ns`` (step minus inference), all ns.
        lateness_us, step_us: per-tick series (float32, us) for the plot.
        ticks: ticks run (fewer than asked when the run was stopped).
        missed_cycles: pacer slots skipped because the loop fell a whole period behind.
        max_overrun_streak: longest run of consecutive ticks whose step took longer than
            the period.
        gc_collections: collections seen during the timed loop, per generation.
        guard_stats: ``Guard.stats()`` at the end.
        flush_max_ns: longest histogram flush (every CHUNK ticks), ns.
        progress_max_ns: longest progress redraw, ns (0 without a display).
        elapsed_ns: wall time of the timed loop.
    """

    hists: dict[str, LogLinearHistogram]
    lateness_us: np.ndarray
    step_us: np.ndarray
    ticks: int
    missed_cycles: int
    max_overrun_streak: int
    gc_collections: dict[str, int]
    guard_stats: dict[str, Any]
    flush_max_ns: int
    progress_max_ns: int
    elapsed_ns: int


class _Progress:
    """Progress display that draws only when the loop has slack before its next deadline.

    rich when installed and stderr is a terminal, else a plain line. A redraw allocates
    and takes ~0.5 ms with rich, so it is skipped while the slack is smaller than a few
    times the slowest redraw seen, and it happens at most every ``interval_s``.
    """

    def __init__(self, total: int, enabled: bool, interval_s: float = 0.5) -> None:
        self.total = total
        self.enabled = enabled
        self.interval_ns = int(interval_s * _NS_PER_S)
        self.max_cost_ns = 0
        self._last_ns = 0
        self._tty = sys.stderr.isatty()
        self._rich: Any = None
        self._task: Any = None
        self._next_pct = 25
        if enabled and self._tty:
            try:
                from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

                self._rich = Progress(
                    TextColumn("tailguard bench"),
                    BarColumn(),
                    TextColumn("{task.completed}/{task.total} ticks"),
                    TimeRemainingColumn(),
                    auto_refresh=False,
                    transient=True,
                )
                self._task = self._rich.add_task("bench", total=total)
                self._rich.start()
            except ImportError:
                self._rich = None

    def update(self, done: int, slack_ns: int, now_ns: int) -> None:
        if not self.enabled:
            return
        if not self._tty:  # a log file: one line per quarter
            pct = 100 * done // max(self.total, 1)
            if pct >= self._next_pct:
                self._next_pct = pct // 25 * 25 + 25
                sys.stderr.write(f"tailguard bench: {pct}% ({done}/{self.total} ticks)\n")
            return
        if now_ns - self._last_ns < self.interval_ns or slack_ns < 3 * max(
            self.max_cost_ns, 200_000
        ):
            return
        t = time.perf_counter_ns()
        if self._rich is not None:
            self._rich.update(self._task, completed=done)
            self._rich.refresh()
        else:
            width = 30
            filled = width * done // max(self.total, 1)
            sys.stderr.write(
                f"\rtailguard bench [{'#' * filled}{'.' * (width - filled)}] "
                f"{done}/{self.total} ticks"
            )
            sys.stderr.flush()
        self._last_ns = t
        self.max_cost_ns = max(self.max_cost_ns, time.perf_counter_ns() - t)

    def close(self) -> None:
        if self._rich is not None:
            self._rich.stop()
        elif self.enabled and self._tty:
            sys.stderr.write("\n")


def run_guarded_loop(
    policy: _CheckedPolicy,
    envelope: Envelope,
    *,
    rate_hz: float,
    n_ticks: int,
    obs: np.ndarray,
    clock: Clock = time.perf_counter_ns,
    sleep: Callable[[float], None] = time.sleep,
    spin_ns: int = 150_000,
    warmup_ticks: int = 500,
    freeze_gc: bool = True,
    progress: bool = False,
    should_stop: Callable[[], bool] | None = None,
) -> LoopResult:
    """Run ``n_ticks`` paced, guarded ticks and measure them (see :class:`LoopResult`).

    The policy's run function is wrapped (to time the bare inference) before the guard is
    built; the guard and pacer share ``clock``. Inject a simulated ``clock``/``sleep`` (and
    a policy that advances the clock) to run the same code in simulated time.

    Args:
        policy: the policy to guard (an OnnxPolicy, or a CallablePolicy in tests).
        envelope: the envelope the guard enforces.
        rate_hz: loop rate, Hz.
        n_ticks: ticks to run, 1..MAX_TICKS.
        obs: the observation fed every tick, float32 [obs_size].
        clock: integer-ns monotonic clock.
        sleep: sleep(seconds) for the pacer.
        spin_ns: the pacer's spin stretch before each deadline, ns.
        warmup_ticks: untimed inferences before the loop (``Guard.warm_up``).
        freeze_gc: ``gc.collect(); gc.freeze()`` after warm-up (undone at the end).
        progress: draw a progress display on stderr.
        should_stop: polled by the pacer between sleep slices; when it returns true the
            run ends early and the result covers the ticks run (``LoopResult.ticks``).

    Raises:
        ConfigError: ``n_ticks`` outside 1..MAX_TICKS.
    """
    if isinstance(n_ticks, bool) or not isinstance(n_ticks, int) or not 1 <= n_ticks <= MAX_TICKS:
        raise ConfigError(f"n_ticks must be an integer in 1..{MAX_TICKS}, got {n_ticks!r}")
    cell = [0]
    # The guard binds the policy's run function when it is built: wrap it first.
    policy.set_inference_wrapper(lambda run: _timed_run(run, clock, cell))
    guard = Guard(policy, envelope, clock=clock)
    pacer = Pacer(rate_hz, spin_ns=spin_ns, clock=clock, sleep=sleep, should_stop=should_stop)
    period_ns = pacer.period_ns
    hist_names = ("wakeup_lateness_ns", "step_ns", "inference_ns", "guard_overhead_ns")
    hists = {name: LogLinearHistogram(2, _HIST_HIGHEST_NS) for name in hist_names}
    h_late, h_step, h_inf, h_over = (hists[n] for n in hist_names)
    lateness_us = np.zeros(n_ticks, dtype=np.float32)
    step_us = np.zeros(n_ticks, dtype=np.float32)
    bufs = _buffers(CHUNK)
    view = tuple(np.frombuffer(b, dtype=np.int64) for b in bufs)
    state = {"pos": 0, "streak": 0, "best": 0, "flush_max": 0}
    display = _Progress(n_ticks, progress)

    def flush(j: int) -> None:
        t = clock()
        late, step, inf = (v[:j] for v in view)
        h_late.record_many(late)
        h_step.record_many(step)
        ran = inf > 0
        h_inf.record_many(inf[ran])
        h_over.record_many((step - inf)[ran])
        pos = state["pos"]
        lateness_us[pos : pos + j] = late / 1000.0
        step_us[pos : pos + j] = step / 1000.0
        state["pos"] = pos + j
        over = step > period_ns
        if state["streak"] or over.any():
            streak, best = state["streak"], state["best"]
            for o in over.tolist():
                streak = streak + 1 if o else 0
                best = max(best, streak)
            state["streak"], state["best"] = streak, best
        now = clock()
        state["flush_max"] = max(state["flush_max"], now - t)
        display.update(pos + j, pacer.next_deadline_ns - pacer.spin_ns - now, now)

    gc_counts = [0, 0, 0]

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            gen = int(info.get("generation", 2))
            gc_counts[min(gen, 2)] += 1

    try:
        guard.warm_up(obs, ticks=warmup_ticks, freeze_gc=freeze_gc)
        gc.callbacks.append(on_gc)
        try:
            start = clock()
            pacer.start()
            ticks = _run_ticks(n_ticks, pacer.wait, guard.step, obs, clock, cell, bufs, flush)
            elapsed = clock() - start
        finally:
            gc.callbacks.remove(on_gc)
            display.close()
        guard_hists = guard.histograms()
        hists = {
            "wakeup_lateness_ns": h_late,
            "dt_ns": guard_hists["dt_ns"],
            "latency_ns": guard_hists["latency_ns"],
            "step_ns": h_step,
            "inference_ns": h_inf,
            "guard_overhead_ns": h_over,
        }
        return LoopResult(
            hists=hists,
            lateness_us=lateness_us[:ticks],
            step_us=step_us[:ticks],
            ticks=ticks,
            missed_cycles=pacer.missed_cycles,
            max_overrun_streak=state["best"],
            gc_collections={f"gen{g}": n for g, n in enumerate(gc_counts)},
            guard_stats=guard.stats(),
            flush_max_ns=state["flush_max"],
            progress_max_ns=display.max_cost_ns,
            elapsed_ns=elapsed,
        )
    finally:
        guard.close()
        if freeze_gc:
            gc.unfreeze()

"""`tailguard bench`: measure this machine's control-loop timing with the real guarded loop.

    tailguard bench --policy P.onnx --rate-hz 500 --duration-s 30 [--envelope E.json]
                    [--cpu N] [--fifo PRIO] [--compare-cyclictest] --out DIR

The loop is the one a user runs: ``Pacer.wait()`` (sleep, then spin) then ``Guard.step(obs)``
on the policy, with the GC collected and frozen after warm-up. Per tick it keeps wake-up
lateness, the ``step()`` wall time and the bare inference time (the policy's own run
function, wrapped before the guard is built); the guard records dt and latency itself. The
per-tick values go into small preallocated buffers that are folded into histograms every
``CHUNK`` ticks; the progress display is only redrawn when the loop has slack before its
next deadline. What all this bookkeeping adds per tick is measured before the run and
reported (``bench_cost`` in summary.json).

Exit codes: 0 measured (and, with ``--envelope``, the timing fits it); 1 the timing does
not fit the envelope, or an input was refused; 2 usage error.
"""

from __future__ import annotations

import argparse
import array
import gc
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tailguard.envelope.model import Envelope, PolicyBinding, Timing, load_envelope
from tailguard.runtime.guard import Guard
from tailguard.runtime.pacer import MAX_RATE_HZ, Pacer
from tailguard.runtime.policy import OnnxPolicy, _CheckedPolicy
from tailguard.stats.histogram import LogLinearHistogram
from tailguard.tools import bench_report as report

__all__ = [
    "CHUNK",
    "MAX_TICKS",
    "LoopResult",
    "handler",
    "measure_bench_cost",
    "register",
    "run_cyclictest",
    "run_guarded_loop",
]

#: Ticks buffered before they are folded into the histograms (and the progress redrawn).
CHUNK = 256
#: Longest run accepted (ticks); bounds the per-tick series kept for the plot.
MAX_TICKS = 4_000_000
_HIST_HIGHEST_NS = 2**40  # ~18 min: anything longer is clamped (and counted)
_NS_PER_S = 1_000_000_000

Clock = Callable[[], int]


# ---------------------------------------------------------------------- the measured loop


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
) -> None:
    """The measured loop. Per tick: wait, step, three buffer stores; a flush every chunk.

    Also run by :func:`measure_bench_cost` with no-op ``wait``/``step``, so the cost it
    reports is the cost of exactly this code.
    """
    late_buf, step_buf, inf_buf = bufs
    chunk = len(late_buf)
    j = 0
    for _ in range(n_ticks):
        late = wait()
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
    return {
        "median_ns": round(statistics.median(diffs), 1),
        "p90_ns": round(diffs[int(0.9 * (len(diffs) - 1))], 1),
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
        ticks: ticks run.
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

    Raises:
        ValueError: ``n_ticks`` outside 1..MAX_TICKS.
    """
    if not 1 <= n_ticks <= MAX_TICKS:
        raise ValueError(f"n_ticks must be in 1..{MAX_TICKS}, got {n_ticks}")
    cell = [0]
    # The guard binds policy._run_fn when it is built: wrap it first.
    policy._run_fn = _timed_run(policy._run_fn, clock, cell)  # type: ignore[attr-defined]
    guard = Guard(policy, envelope, clock=clock)
    pacer = Pacer(rate_hz, spin_ns=spin_ns, clock=clock, sleep=sleep)
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
            _run_ticks(n_ticks, pacer.wait, guard.step, obs, clock, cell, bufs, flush)
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
            lateness_us=lateness_us,
            step_us=step_us,
            ticks=n_ticks,
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


# ----------------------------------------------------------------------------- cyclictest


def _nearest_rank_us(hist: dict[int, int], total: int, percentile: float) -> int:
    rank = max(1, math.ceil(percentile * total / 100.0))
    seen = 0
    for value in sorted(hist):
        seen += hist[value]
        if seen >= rank:
            return value
    return -1  # in the overflow bucket


def run_cyclictest(
    rate_hz: float, duration_s: float, *, cpu: int | None, fifo_priority: int | None
) -> dict[str, Any]:
    """Run cyclictest (rt-tests) at the same rate, duration and scheduling; its tails.

    Runs one measurement thread (``-t 1``), SCHED_OTHER or SCHED_FIFO like the guarded
    loop, pinned to the same CPU, with ``--default-system`` (no cpu_dma_latency tuning, so
    both measurements see the same system settings).

    Returns:
        ``{"available": False, "note": how to install}`` when cyclictest is not on PATH;
        else ``{"available": True, "command", "ticks", "p50_ns", "p99_ns", "p999_ns",
        "max_ns", "min_ns", "mean_ns"}`` (cyclictest measures in whole us), or with an
        ``"error"`` when it failed.
    """
    exe = shutil.which("cyclictest")
    if exe is None:
        return {
            "available": False,
            "note": "cyclictest is not installed; on Debian/Ubuntu: sudo apt-get install "
            "rt-tests (then rerun with --compare-cyclictest)",
        }
    interval_us = max(1, round(1e6 / rate_hz))
    loops = max(1, round(duration_s * rate_hz))
    hist_max_us = max(10_000, 20 * interval_us)
    with tempfile.TemporaryDirectory(prefix="tailguard-ct-") as tmp:
        out_json = Path(tmp) / "cyclictest.json"
        cmd = [
            exe,
            "-q",
            "-t",
            "1",
            "-i",
            str(interval_us),
            "-l",
            str(loops),
            "-h",
            str(hist_max_us),
            "--default-system",
            f"--json={out_json}",
        ]
        cmd += ["--policy=fifo", "-p", str(fifo_priority)] if fifo_priority else ["--policy=other"]
        if cpu is not None:
            cmd += ["-a", str(cpu)]
        shown = " ".join(["cyclictest", *cmd[1:]]).replace(str(out_json), "OUT.json")
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=duration_s * 2 + 30, check=False
            )
            data = json.loads(out_json.read_text())
            thread = data["thread"]["0"]
        except (OSError, subprocess.SubprocessError, ValueError, KeyError) as exc:
            return {"available": True, "command": shown, "error": f"cyclictest failed: {exc}"}
    if proc.returncode != 0:
        return {"available": True, "command": shown, "error": proc.stderr.strip()[-500:]}
    hist = {int(k): int(v) for k, v in thread["histogram"].items()}
    total = int(thread["cycles"])
    max_us = int(thread["max"])

    def pct(p: float) -> int:
        v = _nearest_rank_us(hist, total, p)
        return (max_us if v < 0 else v) * 1000

    return {
        "available": True,
        "command": shown,
        "ticks": total,
        "p50_ns": pct(50.0),
        "p99_ns": pct(99.0),
        "p999_ns": pct(99.9),
        "max_ns": max_us * 1000,
        "min_ns": int(thread["min"]) * 1000,
        "mean_ns": round(float(thread["avg"]) * 1000.0),
    }


# ------------------------------------------------------------------------------- the CLI


def register(subparsers: Any) -> None:
    """Add the ``bench`` subcommand to the ``tailguard`` parser."""
    p = subparsers.add_parser(
        "bench",
        help="measure this machine's control-loop latency",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="exit codes: 0 measured (and fits the envelope), 1 does not fit the envelope "
        "or input refused, 2 usage error",
    )
    p.add_argument("--policy", type=Path, required=True, help="the policy's .onnx file")
    p.add_argument(
        "--rate-hz",
        type=float,
        default=None,
        help="loop rate (default: the envelope's period, else 500)",
    )
    p.add_argument("--duration-s", type=float, default=30.0, help="timed run length (30)")
    p.add_argument("--envelope", type=Path, default=None, help="judge the timing against it")
    p.add_argument("--cpu", type=int, default=None, help="pin the loop to this CPU")
    p.add_argument("--fifo", type=int, default=None, metavar="PRIO", help="SCHED_FIFO priority")
    p.add_argument(
        "--compare-cyclictest",
        action="store_true",
        help="also run cyclictest (rt-tests) at the same rate and report both",
    )
    p.add_argument("--out", type=Path, required=True, help="directory for the results")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (1)")
    p.add_argument("--spin-us", type=float, default=150.0, help="pacer spin before deadline")
    p.add_argument("--warmup-ticks", type=int, default=500, help="untimed inferences first")
    p.add_argument(
        "--no-gc-freeze", action="store_true", help="do not freeze the GC (to see its cost)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress display")
    p.set_defaults(func=handler)


def _usage(message: str) -> int:
    sys.stderr.write(f"tailguard bench: error: {message}\n")
    return 2


def _measure_only_envelope(policy: _CheckedPolicy, period_ns: int) -> Envelope:
    """No thresholds: only non-finite checks, so every tick runs the policy."""
    return Envelope(
        policy=PolicyBinding(sha256=None, obs_size=policy.obs_size, action_size=policy.action_size),
        timing=Timing(period_ns=period_ns),
    )


def _set_scheduling(cpu: int | None, fifo: int | None, notes: list[str]) -> bool:
    """Apply --cpu and --fifo; returns whether the loop is pinned. Failures become notes."""
    pinned = False
    if cpu is not None:
        try:
            os.sched_setaffinity(0, {cpu})
            pinned = True
        except OSError as exc:
            notes.append(f"--cpu {cpu}: could not pin ({exc.strerror}); running unpinned")
    if fifo is not None:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(fifo))
        except PermissionError:
            notes.append(
                f"--fifo {fifo}: not permitted (needs root, CAP_SYS_NICE, or an rtprio limit "
                "in /etc/security/limits.conf); continuing with SCHED_OTHER"
            )
        except OSError as exc:
            notes.append(f"--fifo {fifo}: {exc.strerror}; continuing with SCHED_OTHER")
    return pinned


def handler(args: argparse.Namespace) -> int:
    """Run `tailguard bench` (see the module docstring); returns the exit code."""
    envelope = load_envelope(args.envelope) if args.envelope is not None else None
    rate_hz = args.rate_hz
    if rate_hz is None:
        rate_hz = _NS_PER_S / envelope.timing.period_ns if envelope is not None else 500.0
    if not (math.isfinite(rate_hz) and 0 < rate_hz <= MAX_RATE_HZ):
        return _usage(f"--rate-hz must be in (0, {MAX_RATE_HZ:g}], got {rate_hz:g}")
    if not (math.isfinite(args.duration_s) and args.duration_s > 0):
        return _usage(f"--duration-s must be positive, got {args.duration_s:g}")
    n_ticks = max(1, round(args.duration_s * rate_hz))
    if n_ticks > MAX_TICKS:
        return _usage(
            f"--duration-s {args.duration_s:g} at {rate_hz:g} Hz is {n_ticks} ticks; at most "
            f"{MAX_TICKS} per run (split longer runs)"
        )
    allowed = os.sched_getaffinity(0)
    if args.cpu is not None and args.cpu not in allowed:
        return _usage(f"--cpu {args.cpu} is not available; this process may use {sorted(allowed)}")
    if args.fifo is not None and not 1 <= args.fifo <= 99:
        return _usage(f"--fifo priority must be in 1..99, got {args.fifo}")
    if args.threads < 1:
        return _usage(f"--threads must be >= 1, got {args.threads}")
    if args.spin_us < 0 or args.warmup_ticks < 0:
        return _usage("--spin-us and --warmup-ticks must be >= 0")

    policy = OnnxPolicy(args.policy, intra_op_threads=args.threads)
    period_ns = round(_NS_PER_S / rate_hz)
    notes: list[str] = []
    if envelope is None:
        envelope_used = _measure_only_envelope(policy, period_ns)
    else:
        envelope_used = envelope
        if envelope.timing.period_ns != period_ns:
            notes.append(
                f"--rate-hz {rate_hz:g} gives a {period_ns / 1e6:g} ms period but the envelope "
                f"is for {envelope.timing.period_ns / 1e6:g} ms; its dt thresholds refer to that"
            )
    args.out.mkdir(parents=True, exist_ok=True)
    obs = np.random.default_rng(0).standard_normal(policy.obs_size).astype(np.float32)

    saved_affinity = allowed
    saved_sched = (os.sched_getscheduler(0), os.sched_getparam(0))
    try:
        cost = measure_bench_cost()
        pinned = _set_scheduling(args.cpu, args.fifo, notes)
        info = report.machine_info(args.threads)
        result = run_guarded_loop(
            policy,
            envelope_used,
            rate_hz=rate_hz,
            n_ticks=n_ticks,
            obs=obs,
            spin_ns=round(args.spin_us * 1000),
            warmup_ticks=args.warmup_ticks,
            freeze_gc=not args.no_gc_freeze,
            progress=not args.no_progress,
        )
        cyclictest = None
        if args.compare_cyclictest:
            fifo = args.fifo if info["sched_policy"] == "SCHED_FIFO" else None
            cyclictest = run_cyclictest(rate_hz, args.duration_s, cpu=args.cpu, fifo_priority=fifo)
    finally:
        try:
            os.sched_setscheduler(0, *saved_sched)
            os.sched_setaffinity(0, saved_affinity)
        except OSError:
            pass

    verdict = None
    if envelope is not None:
        verdict = report.envelope_verdict(
            envelope,
            result.hists["dt_ns"],
            result.hists["latency_ns"],
            result.max_overrun_streak,
        )
    return _write_and_print(
        args, rate_hz, policy, info, pinned, result, cost, cyclictest, verdict, notes
    )


def _write_and_print(
    args: argparse.Namespace,
    rate_hz: float,
    policy: OnnxPolicy,
    info: dict[str, Any],
    pinned: bool,
    result: LoopResult,
    cost: dict[str, float],
    cyclictest: dict[str, Any] | None,
    verdict: report.Verdict | None,
    notes: list[str],
) -> int:
    out: Path = args.out
    period_ns = round(_NS_PER_S / rate_hz)
    warnings = report.timing_warnings(info, pinned=pinned, gc_frozen=not args.no_gc_freeze)
    if sum(result.gc_collections.values()):
        warnings.append(
            f"{sum(result.gc_collections.values())} GC collection(s) ran during the loop "
            f"({result.gc_collections}); something allocates per tick"
        )
    metrics = {name: report.summarize(h) for name, h in result.hists.items()}
    files = report.write_histograms(out, result.hists)
    usage = "tailguard replay ... --profile empirical:{path}"
    for fname, metric, what in (
        ("empirical_profile.json", "latency_ns", "--profile"),
        ("empirical_dt_profile.json", "dt_ns", "--dt-profile"),
    ):
        data = report.empirical_profile(
            result.hists[metric],
            metric,
            rate_hz=rate_hz,
            policy=policy.name,
            usage=usage.replace("--profile", what).format(path=out / fname),
        )
        report.write_json(out / fname, data)
        files.append(fname)
    plot_note = report.write_plot(
        out / "timing.png",
        {
            k: result.hists[k]
            for k in ("latency_ns", "inference_ns", "wakeup_lateness_ns", "guard_overhead_ns")
        },
        {"latency (step)": result.step_us, "wake-up lateness": result.lateness_us},
        period_ns,
        f"tailguard bench: {policy.name} at {rate_hz:g} Hz, {result.ticks} ticks, {info['cpu']}",
    )
    if plot_note is None:
        files.append("timing.png")
    else:
        notes.append(plot_note)
    summary: dict[str, Any] = {
        "tool": "tailguard bench",
        "command": _command_line(args, rate_hz),
        "policy": {"path": str(policy.path), "sha256": policy.sha256, "name": policy.name},
        "rate_hz": rate_hz,
        "period_ns": period_ns,
        "duration_s": args.duration_s,
        "ticks": result.ticks,
        "elapsed_s": round(result.elapsed_ns / 1e9, 3),
        "missed_cycles": result.missed_cycles,
        "max_overrun_streak": result.max_overrun_streak,
        "gc_frozen": not args.no_gc_freeze,
        "gc_collections": result.gc_collections,
        "metrics_ns": metrics,
        "guard": {
            k: result.guard_stats[k]
            for k in ("state", "interventions", "transitions", "overruns", "violations")
        },
        "bench_cost": {
            "per_tick_ns": cost,
            "flush_every_ticks": CHUNK,
            "flush_max_ns": result.flush_max_ns,
            "progress_redraw_max_ns": result.progress_max_ns,
        },
        "machine": info,
        "warnings": warnings,
        "notes": notes,
        "cyclictest": cyclictest,
        "verdict": None if verdict is None else verdict.to_dict(),
        "files": sorted([*files, "summary.json"]),
    }
    report.write_json(out / "summary.json", summary)
    _print_report(summary, metrics, cyclictest, verdict, out)
    return 0 if verdict is None or verdict.fits else 1


def _command_line(args: argparse.Namespace, rate_hz: float) -> str:
    """The equivalent command line (for the record in summary.json)."""
    parts = ["tailguard bench", f"--policy {args.policy}", f"--rate-hz {rate_hz:g}"]
    parts.append(f"--duration-s {args.duration_s:g}")
    for flag, value in (("--envelope", args.envelope), ("--cpu", args.cpu), ("--fifo", args.fifo)):
        if value is not None:
            parts.append(f"{flag} {value}")
    if args.compare_cyclictest:
        parts.append("--compare-cyclictest")
    if args.threads != 1:
        parts.append(f"--threads {args.threads}")
    if args.no_gc_freeze:
        parts.append("--no-gc-freeze")
    parts.append(f"--out {args.out}")
    return " ".join(parts)


def _print_report(
    summary: dict[str, Any],
    metrics: dict[str, dict[str, Any]],
    cyclictest: dict[str, Any] | None,
    verdict: report.Verdict | None,
    out: Path,
) -> None:
    m = summary["machine"]
    print(
        f"tailguard bench: {summary['policy']['name']} at {summary['rate_hz']:g} Hz, "
        f"{summary['ticks']} ticks in {summary['elapsed_s']:g} s on {m['cpu']} "
        f"(CPUs {m['affinity']}, {m['sched_policy']})"
    )
    for name in (
        "wakeup_lateness_ns",
        "dt_ns",
        "latency_ns",
        "inference_ns",
        "guard_overhead_ns",
    ):
        s = metrics[name]
        print(f"  {name:<20} {report.as_us(s, ('p50', 'p90', 'p99', 'p999', 'max'))}")
    print(
        f"  missed cycles {summary['missed_cycles']}, GC collections "
        f"{sum(summary['gc_collections'].values())}, bench bookkeeping "
        f"{summary['bench_cost']['per_tick_ns']['median_ns']:.0f} ns/tick (median)"
    )
    if cyclictest is not None:
        if not cyclictest.get("available"):
            print(f"  cyclictest: {cyclictest['note']}")
        elif "error" in cyclictest:
            print(f"  cyclictest: {cyclictest['error']}")
        else:
            late = metrics["wakeup_lateness_ns"]
            print("  wake-up lateness     tailguard Pacer      cyclictest")
            for key in ("p50", "p99", "max"):
                ours, theirs = late[key] / 1000, cyclictest[key + "_ns"] / 1000
                print(f"    {key:<18} {ours:>10.1f} us {theirs:>12.1f} us")
    for w in summary["warnings"]:
        print(f"  warning: {w}")
    for n in summary["notes"]:
        print(f"  note: {n}")
    if verdict is not None:
        print(report.format_verdict(verdict))
    print(f"  results in {out}/ ({', '.join(summary['files'])})")

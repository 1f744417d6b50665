"""`tailguard bench`: measure this machine's control-loop timing with the real guarded loop.

    tailguard bench --policy P.onnx --rate-hz 500 --duration-s 30 [--envelope E.json]
                    [--cpu N] [--fifo PRIO] [--compare-cyclictest] --out DIR

This module is the command line: flags (each with its unit and range, from
:mod:`tailguard.cli_args`), scheduling, and the results written to ``--out``. The measured
loop is :mod:`tailguard.tools.bench_loop` (what the loop does per tick, and what the
benchmark's own bookkeeping costs: ``bench_cost`` in summary.json), the cyclictest
comparison :mod:`tailguard.tools.bench_cyclictest`; their public names stay importable
from here.

Exit codes: 0 measured (and, with ``--envelope``, the timing fits it); 1 the timing does
not fit the envelope, or an input was refused; 2 usage error; 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import numpy as np

from tailguard import cli_args as ca
from tailguard.envelope.model import Envelope, PolicyBinding, Timing, load_envelope
from tailguard.envelope.period import require_period
from tailguard.runtime.pacer import MAX_RATE_HZ, MIN_RATE_HZ
from tailguard.runtime.policy import OnnxPolicy, _CheckedPolicy
from tailguard.tools import bench_report as report
from tailguard.tools.bench_cyclictest import run_cyclictest
from tailguard.tools.bench_loop import (
    CHUNK,
    MAX_TICKS,
    LoopResult,
    measure_bench_cost,
    run_guarded_loop,
)

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

_NS_PER_S = 1_000_000_000
_MAX_SPIN_US = 100_000.0


def register(subparsers: Any) -> None:
    """Add the ``bench`` subcommand to the ``tailguard`` parser."""
    p = subparsers.add_parser(
        "bench",
        help="measure this machine's control-loop latency",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="exit codes: 0 measured (and fits the envelope), 1 does not fit the envelope "
        "or input refused, 2 usage error, 130 interrupted",
    )
    p.add_argument("--policy", type=Path, required=True, help="the policy's .onnx file")
    p.add_argument(
        "--rate-hz",
        type=ca.rate_hz(MAX_RATE_HZ, MIN_RATE_HZ),
        default=None,
        help="loop rate, Hz (default: the envelope's period, else 500)",
    )
    p.add_argument(
        "--duration-s",
        type=ca.duration("s"),
        default=30.0,
        help=f"timed run length, s (30; at most {MAX_TICKS} ticks)",
    )
    p.add_argument("--envelope", type=Path, default=None, help="judge the timing against it")
    p.add_argument(
        "--cpu", type=ca.Integer(0, 1 << 16), default=None, help="pin the loop to this CPU"
    )
    p.add_argument(
        "--fifo", type=ca.Integer(1, 99), default=None, metavar="PRIO", help="SCHED_FIFO priority"
    )
    p.add_argument(
        "--compare-cyclictest",
        action="store_true",
        help="also run cyclictest (rt-tests) at the same rate and report both",
    )
    p.add_argument("--out", type=ca.output_dir, required=True, help="directory for the results")
    p.add_argument(
        "--threads",
        type=ca.Integer(1, 256),
        default=1,
        help="onnxruntime intra-op threads (1)",
    )
    p.add_argument(
        "--spin-us",
        type=ca.Number("us", minimum=0.0, maximum=_MAX_SPIN_US),
        default=150.0,
        help=f"pacer spin before each deadline, us in [0, {_MAX_SPIN_US:g}] (150)",
    )
    p.add_argument(
        "--warmup-ticks",
        type=ca.Integer(0, 1_000_000),
        default=500,
        help="untimed inferences first (500)",
    )
    p.add_argument(
        "--no-gc-freeze", action="store_true", help="do not freeze the GC (to see its cost)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress display")
    p.set_defaults(func=handler)


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
    if not MIN_RATE_HZ <= rate_hz <= MAX_RATE_HZ:  # an envelope's period sets it
        raise ca.UsageError(
            f"the envelope's period gives {rate_hz:g} Hz; pass --rate-hz in "
            f"[{MIN_RATE_HZ:g}, {MAX_RATE_HZ:g}]"
        )
    ticks_asked = args.duration_s * rate_hz
    if ticks_asked < 1:
        raise ca.UsageError(
            f"--duration-s {args.duration_s:g} at --rate-hz {rate_hz:g} is less than one tick "
            f"({ticks_asked:.3g}); pass --duration-s >= {1 / rate_hz:g} or a higher --rate-hz"
        )
    if ticks_asked > MAX_TICKS:
        raise ca.UsageError(
            f"--duration-s {args.duration_s:g} at {rate_hz:g} Hz is {ticks_asked:.0f} ticks; "
            f"at most {MAX_TICKS} per run (split longer runs)"
        )
    n_ticks = round(ticks_asked)
    if envelope is not None:  # the rule `run` and `replay` apply: a verdict needs its period
        require_period(
            envelope, round(_NS_PER_S / rate_hz), where=f"--rate-hz {rate_hz:g}", path=args.envelope
        )
    allowed = os.sched_getaffinity(0)
    if args.cpu is not None and args.cpu not in allowed:
        raise ca.UsageError(
            f"--cpu {args.cpu} is not available; this process may use {sorted(allowed)}"
        )

    policy = OnnxPolicy(args.policy, intra_op_threads=args.threads)
    period_ns = round(_NS_PER_S / rate_hz)
    notes: list[str] = []
    envelope_used = _measure_only_envelope(policy, period_ns) if envelope is None else envelope
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

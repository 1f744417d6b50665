"""``tailguard harden``: audit -> fine-tune under the failing timing -> export -> re-audit ->
report diff -> certify the pair (original in charge, hardened as fallback).

Exit codes: certify's verdict for the pair, 0 pass / 1 warn / 2 fail; 0 when the audit finds
nothing to harden; 1 when an input is refused (an ONNX file, an RSL-RL checkpoint whose
layout cannot be mapped onto rsl-rl's networks, SAC/TD3, a missing ``train`` extra) or the
failing conditions are all of kinds harden cannot train on; 2 on a usage error.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from tailguard import cli_args as ca

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add ``harden``."""
    if "harden" in subparsers.choices:
        return
    p = subparsers.add_parser(
        "harden",
        help="audit, fine-tune under the failing timing, re-audit, certify the pair",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--policy",
        required=True,
        type=ca.input_file,
        help="SB3 .zip model (PPO or A2C) or RSL-RL .pt checkpoint (PPO)",
    )
    p.add_argument("--vecnormalize", type=ca.input_file, default=None, help="its VecNormalize file")
    p.add_argument("--env", required=True, help="gymnasium env id (MuJoCo: substep timing)")
    p.add_argument("--out", required=True, type=ca.output_dir, help="output folder")
    p.add_argument(
        "--timesteps",
        type=ca.Integer(1, 1_000_000_000, "env steps"),
        default=200_000,
        help="fine-tuning budget, env steps (default 200000)",
    )
    p.add_argument("--seed", type=ca.seed(), default=0, help="seed of audits and training")
    p.add_argument(
        "--episodes",
        type=ca.Integer(2, 100_000, "episodes"),
        default=None,
        help="paired episodes per condition (default 20; 5 with --quick)",
    )
    p.add_argument("--quick", action="store_true", help="the smoke sweep")
    p.add_argument("--workers", default="1", help="audit worker processes: N or 'auto'")
    from tailguard.tools.audit_cli import add_executor_flags

    add_executor_flags(p)
    p.add_argument(
        "--require", choices=["PASS", "MILD"], default="MILD", help="required rating (MILD)"
    )
    p.add_argument(
        "--nominal-share",
        type=ca.Number("", minimum=0.0, maximum=1.0, min_open=True, max_open=True),
        default=0.3,
        help="share of nominal-timing training episodes, (0, 1) (default 0.3)",
    )
    p.add_argument(
        "--resamples",
        type=ca.Integer(100, 1_000_000),
        default=9999,
        help="bootstrap resamples (default 9999)",
    )
    p.add_argument(
        "--no-train-outside",
        action="store_true",
        help="train only on the audit's failing conditions, not also on the out-of-envelope "
        "stresses certify judges the pair under",
    )
    p.add_argument("--no-html", action="store_true", help="skip the report.html files")
    p.add_argument("--quiet", action="store_true", help="no progress bar, no summary")
    p.set_defaults(func=_cmd_harden)


class _StagedProgress:
    """One rich bar per stage on a terminal; nothing otherwise (or with --quiet)."""

    def __init__(self, quiet: bool) -> None:
        self.bar: Any = None
        self.tasks: dict[str, Any] = {}
        if quiet or not sys.stderr.isatty():
            return
        try:
            from rich.progress import Progress
        except ImportError:
            return
        self.bar = Progress(transient=True)

    def __enter__(self) -> _StagedProgress:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self.bar is None:
            return
        if stage not in self.tasks:
            self.tasks[stage] = self.bar.add_task(stage, total=total)
        self.bar.update(self.tasks[stage], completed=done, total=total)


def _cmd_harden(args: argparse.Namespace) -> int:
    from tailguard.audit.executor import parse_workers
    from tailguard.audit.harden import harden
    from tailguard.errors import TailguardError
    from tailguard.tools.audit_cli import executor_kwargs

    try:
        workers = parse_workers(args.workers)
    except TailguardError as exc:
        raise ca.UsageError(str(exc)) from None
    episodes = args.episodes if args.episodes is not None else (5 if args.quick else 20)
    with _StagedProgress(args.quiet) as progress:
        result = harden(
            args.policy,
            args.env,
            args.out,
            vecnormalize=args.vecnormalize,
            timesteps=args.timesteps,
            seed=args.seed,
            episodes=episodes,
            quick=args.quick,
            workers=workers,
            **executor_kwargs(args),
            require=args.require,
            nominal_share=args.nominal_share,
            train_outside=not args.no_train_outside,
            n_resamples=args.resamples,
            html=not args.no_html,
            progress=progress,
        )
    if not args.quiet:
        print(_summary(result))
    if result.status == "untrainable":
        print(
            "tailguard harden: the failing conditions are all of kinds harden cannot train on: "
            + "; ".join(f"{s['condition']}: {s['reason']}" for s in result.mix.skipped),
            file=sys.stderr,
        )
    elif result.certify is not None and result.certify.verdict != "pass":
        for check in result.certify.failing():
            print(
                f"{check.status.upper()}: {check.name} [{check.condition or 'global'}]: "
                f"{check.message}",
                file=sys.stderr,
            )
    return result.exit_code


def _summary(result: Any) -> str:
    lines = [f"tailguard harden: {result.verdict.upper()} (exit {result.exit_code})"]
    before = result.before
    lines.append(
        f"before: audit verdict {before.verdict().value}; failing: {list(result.mix.failing)}"
    )
    if result.status == "nothing_to_harden":
        lines.append("every condition is tolerated: nothing to harden (no training ran)")
        return "\n".join(lines)
    for w, spec, cond, how in result.mix.profiles:
        lines.append(f"  train {w:.3f}  {spec}  <- {cond} ({how})")
    for s in result.mix.skipped:
        lines.append(f"  not trained: {s['condition']}: {s['reason']}")
    if result.after is not None:
        lines.append(f"after: audit verdict {result.after.verdict().value}")
        par = result.training["export"]["parity"]
        lines.append(
            f"exported {result.hardened_onnx} (parity max |diff| {par['max_abs_diff']:.3g}, "
            f"scaled {par['max_scaled_diff']:.3g}, tolerance {par['tolerance']:g})"
        )
    if result.diff is not None:
        from tailguard.audit.diff import diff_markdown

        lines.append(diff_markdown(result.diff))
    if result.certify is not None:
        lines.append(
            f"certify of the pair (original in charge, hardened fallback): "
            f"{result.certify.verdict.upper()}"
        )
    lines.append("wrote " + ", ".join(str(p) for p in result.files.values()))
    return "\n".join(lines)

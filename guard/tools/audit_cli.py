"""``tailguard audit``, ``tailguard certify`` and ``tailguard report diff``.

audit:   paired episodes per timing condition -> ratings, summary.json/.md, envelope.json,
         report.html. Exit 0 when the audit ran (the verdict is in the summary), 1 when an
         input was refused, 2 on a usage error.
certify: the guard in the loop against the envelope. Exit 0 pass, 1 warn (inconclusive or a
         non-critical check), 2 fail (every failing check is named) — also 2 when the
         envelope or policy is refused (another policy, another period).
report diff: compare two audit summaries (paired when the seeds match).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from tailguard import cli_args as ca
from tailguard.errors import TailguardError

__all__ = ["add_executor_flags", "executor_kwargs", "register"]

_EPISODES = ca.Integer(2, 100_000, "episodes")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--policy",
        required=True,
        type=ca.input_file,
        help="ONNX policy, RSL-RL .pt checkpoint or SB3 .zip (exported with parity)",
    )
    p.add_argument(
        "--vecnormalize",
        type=ca.input_file,
        default=None,
        help="SB3 VecNormalize statistics to fold into the exported policy",
    )
    p.add_argument(
        "--env",
        required=True,
        help="gymnasium id (MuJoCo tasks at sub-step timing; any other env at "
        "whole-step resolution), mjcf:NAME, or py:MODULE:FUNCTION",
    )
    p.add_argument("--out", required=True, type=ca.output_dir, help="output folder")
    p.add_argument("--workers", default="1", help="local worker processes: N or 'auto' (default 1)")
    add_executor_flags(p)
    p.add_argument(
        "--fallback",
        default=None,
        help="fallback the guard switches to: hold (default), zero or ROBUST.onnx",
    )
    p.add_argument(
        "--profile",
        action="append",
        default=[],
        type=ca.input_file,
        metavar="FILE",
        help="measured latency profile (bench / flight recorder output); repeatable",
    )
    p.add_argument(
        "--require",
        choices=["PASS", "MILD"],
        default=None,
        help="rating a condition must reach to be tolerated (default MILD)",
    )
    p.add_argument(
        "--resamples",
        type=ca.Integer(100, 1_000_000),
        default=9999,
        help="bootstrap resamples (default 9999)",
    )
    p.add_argument(
        "--alpha",
        type=ca.Number("", minimum=0.0, maximum=0.5, min_open=True, max_open=True),
        default=0.05,
        help="family-wise error rate (Holm) of the tolerated claims (default 0.05)",
    )
    p.add_argument("--no-html", action="store_true", help="skip report.html")
    p.add_argument("--quiet", action="store_true", help="no progress bar, no table")


def register(subparsers: Any) -> None:
    """Add ``audit``, ``certify`` and ``report`` (those not registered yet)."""
    have = subparsers.choices
    if "audit" not in have:
        p = subparsers.add_parser(
            "audit",
            help="timing audit: paired sweep -> ratings and an audited envelope",
            description=__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _common(p)
        p.add_argument(
            "--episodes",
            type=_EPISODES,
            default=None,
            help="paired episodes per condition (default 20; 5 with --quick)",
        )
        p.add_argument("--seed", type=ca.seed(), default=0, help="episode i resets with S+i")
        p.add_argument("--quick", action="store_true", help="a smoke sweep")
        p.add_argument(
            "--frontier",
            action="store_true",
            help="also sweep constant latency L x jitter J: the tolerated frontier",
        )
        p.add_argument(
            "--sweep",
            type=ca.input_file,
            default=None,
            help="sweep file (.json or .toml): dimensions, levels, conditions",
        )
        p.add_argument(
            "--dimensions", default=None, help="comma-separated dimensions to sweep (default: all)"
        )
        p.add_argument(
            "--return-offset",
            type=ca.Number(""),
            default=0.0,
            help="subtracted from returns before the ratio (envs with returns <= 0)",
        )
        p.set_defaults(func=_cmd_audit)
    if "certify" not in have:
        p = subparsers.add_parser(
            "certify",
            help="certify a policy against its envelope (exit 0 pass / 1 warn / 2 fail)",
            description=__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _common(p)
        p.add_argument("--envelope", required=True, type=ca.input_file, help="envelope JSON")
        p.add_argument(
            "--episodes",
            type=_EPISODES,
            default=20,
            help="paired episodes per profile (default 20)",
        )
        p.add_argument(
            "--seed",
            type=ca.seed(),
            default=1000,
            help="base seed (default 1000: not the audit's episodes)",
        )
        p.set_defaults(func=_cmd_certify)
    if "report" not in have:
        p = subparsers.add_parser("report", help="compare audit summaries")
        rsub = p.add_subparsers(dest="report_cmd", required=True)
        d = rsub.add_parser("diff", help="before/after comparison of two audit summaries")
        d.add_argument("before", type=ca.input_file)
        d.add_argument("after", type=ca.input_file)
        d.add_argument("--out", required=True, type=ca.output_dir)
        d.add_argument("--quiet", action="store_true")
        d.set_defaults(func=_cmd_diff)


class _Progress:
    """A rich progress bar on a terminal; nothing otherwise."""

    def __init__(self, label: str, quiet: bool) -> None:
        self.bar: Any = None
        if quiet or not sys.stderr.isatty():
            return
        try:
            from rich.progress import Progress
        except ImportError:
            return
        self.bar = Progress(transient=True)
        self.task = self.bar.add_task(label, total=None)

    def __enter__(self) -> _Progress:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def __call__(self, done: int, total: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=done, total=total)


def add_executor_flags(p: argparse.ArgumentParser) -> None:
    """``--executor local|ray`` and ``--address`` (audit, certify, harden, sweep)."""
    p.add_argument(
        "--executor",
        choices=["local", "ray"],
        default="local",
        help="where the work units run: local processes (default; see --workers) or a Ray "
        "cluster (pip install 'tailguard[cluster]')",
    )
    p.add_argument(
        "--address",
        default=None,
        metavar="auto|HOST:PORT|ray://HOST[:PORT]",
        help="Ray cluster to join with --executor ray (default: start a Ray on this machine; "
        "auto: the one `ray start` runs here)",
    )


def executor_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The API's ``executor`` and ``address`` from the flags (usage errors at once)."""
    if args.address is not None and args.executor != "ray":
        raise ca.UsageError("--address is for --executor ray; add --executor ray or drop it")
    if args.executor == "ray":
        from tailguard.audit.ray_executor import parse_address

        try:
            parse_address(args.address)
        except TailguardError as exc:
            raise ca.UsageError(str(exc)) from None
    return {"executor": args.executor, "address": args.address}


def _workers(text: str) -> int:
    from tailguard.audit.executor import parse_workers

    try:
        return parse_workers(text)
    except TailguardError as exc:
        raise ca.UsageError(str(exc)) from None


def _cmd_audit(args: argparse.Namespace) -> int:
    from tailguard.audit.audit import run_audit
    from tailguard.audit.outputs import write_audit

    episodes = args.episodes if args.episodes is not None else (5 if args.quick else 20)
    dims = None
    if args.dimensions:
        dims = [d.strip() for d in args.dimensions.split(",") if d.strip()]
    with _Progress("audit", args.quiet) as progress:
        result = run_audit(
            args.policy,
            args.env,
            episodes=episodes,
            seed=args.seed,
            workers=_workers(args.workers),
            **executor_kwargs(args),
            quick=args.quick,
            dimensions=dims,
            sweep_file=args.sweep,
            profiles=[str(p) for p in args.profile],
            require=args.require or "MILD",
            n_resamples=args.resamples,
            alpha=args.alpha,
            return_offset=args.return_offset,
            workdir=args.out,
            vecnormalize=args.vecnormalize,
            frontier=args.frontier,
            fallback=args.fallback,
            progress=progress,
        )
    files = write_audit(result, args.out, html=not args.no_html)
    if not args.quiet:
        print(files["markdown"].read_text(encoding="utf-8"))
        print("wrote " + ", ".join(str(p) for p in files.values()))
    return 0


def _cmd_certify(args: argparse.Namespace) -> int:
    from tailguard.audit.certification import certify
    from tailguard.audit.outputs import write_certify

    try:
        with _Progress("certify", args.quiet) as progress:
            result = certify(
                args.policy,
                args.envelope,
                args.env,
                fallback=args.fallback,
                profiles=[str(p) for p in args.profile],
                episodes=args.episodes,
                seed=args.seed,
                workers=_workers(args.workers),
                **executor_kwargs(args),
                require=args.require,
                n_resamples=args.resamples,
                alpha=args.alpha,
                workdir=args.out,
                vecnormalize=args.vecnormalize,
                progress=progress,
            )
    except ca.UsageError:
        raise
    except TailguardError as exc:
        print(f"tailguard certify: FAIL: input refused: {exc}", file=sys.stderr)
        return 2
    files = write_certify(result, args.out, html=not args.no_html)
    if not args.quiet:
        print(files["markdown"].read_text(encoding="utf-8"))
    for check in result.failing():
        print(
            f"{check.status.upper()}: {check.name} [{check.condition or 'global'}]: "
            f"{check.message}",
            file=sys.stderr,
        )
    return result.exit_code


def _cmd_diff(args: argparse.Namespace) -> int:
    import json

    from tailguard.audit.diff import diff_markdown, diff_summaries, load_summary

    doc = diff_summaries(load_summary(args.before), load_summary(args.after))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "diff.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    text = diff_markdown(doc)
    (out / "diff.md").write_text(text, encoding="utf-8")
    if doc["warning"]:
        print(f"warning: {doc['warning']}", file=sys.stderr)
    if not args.quiet:
        print(text)
    return 0

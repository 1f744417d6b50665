"""``tailguard sweep MANIFEST --out DIR``: audit or certify many checkpoints (checkpoints x
envs x sweep files, see :mod:`tailguard.audit.campaign`) into one results tree with an index
page (index.html, index.json).

Exit 0 when every entry ran, 1 when an entry failed (each named in the index with its error)
or the manifest was refused (every problem listed), 2 on a usage error, 130 on Ctrl-C (the
tree is marked partial; --resume completes it without redoing finished work units).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from tailguard import cli_args as ca

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add ``sweep``."""
    if "sweep" in subparsers.choices:
        return
    from tailguard.tools.audit_cli import add_executor_flags

    p = subparsers.add_parser(
        "sweep",
        help="audit or certify many checkpoints from one manifest into one results tree",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("manifest", type=ca.input_file, help="manifest (.toml or .json)")
    p.add_argument("--out", required=True, type=ca.output_dir, help="results tree")
    p.add_argument(
        "--resume",
        action="store_true",
        help="complete an earlier run into --out: finished entries and units are not redone",
    )
    p.add_argument("--workers", default="1", help="local worker processes: N or 'auto' (default 1)")
    add_executor_flags(p)
    p.add_argument("--no-html", action="store_true", help="skip each entry's report.html")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=_cmd_sweep)


def _cmd_sweep(args: argparse.Namespace) -> int:
    from tailguard.audit.campaign import load_manifest, run_sweep
    from tailguard.audit.executor import parse_workers
    from tailguard.errors import TailguardError
    from tailguard.tools.audit_cli import executor_kwargs

    try:
        workers = parse_workers(args.workers)
    except TailguardError as exc:
        raise ca.UsageError(str(exc)) from None
    where = executor_kwargs(args)
    manifest = load_manifest(args.manifest)
    last = [""]

    def progress(entry: str, done: int, total: int) -> None:
        if not args.quiet and entry != last[0]:
            last[0] = entry
            print(f"sweep: {entry} ({len(manifest.entries)} entries)", file=sys.stderr)

    outcome = run_sweep(
        manifest,
        args.out,
        workers=workers,
        resume=args.resume,
        html_report=not args.no_html,
        progress=progress,
        **where,
    )
    counts = {s: list(outcome.statuses.values()).count(s) for s in ("ok", "failed", "pending")}
    if not args.quiet:
        print(
            f"tailguard sweep: {counts['ok']} ok, {counts['failed']} failed, "
            f"{counts['pending']} pending; {len(outcome.skipped)} entries and "
            f"{outcome.reused_units} units reused; index: {args.out / 'index.html'}"
        )
    for entry, error in outcome.errors.items():
        print(f"FAILED {entry}: {error}", file=sys.stderr)
    return outcome.exit_code

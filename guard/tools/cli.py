"""The `tailguard` console script (also `python -m tailguard`).

Exit codes (one table for every subcommand, :data:`tailguard.cli_args.EXIT_CODES`): 0 ok;
1 a check failed or an input was refused (the message says which and why); 2 usage error
(bad flag or value; nothing ran); 130 interrupted. Every flag is parsed by a type from
:mod:`tailguard.cli_args` that states its unit and range. Subcommands of the offline
packages (`export`, `replay`, ...) are imported only when used, so `tailguard demo` never
imports torch or MuJoCo.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from tailguard import cli_args as ca

__all__ = ["main", "build_parser"]

#: Longest demo, simulated seconds.
MAX_DEMO_S = 3600.0
#: Hopper demo: paired episodes per column by default, and at most.
DEMO_EPISODES = 40
MAX_DEMO_EPISODES = 10_000
#: Hopper demo: the first reset seed by default (the envelope's audit used 100..139).
DEMO_SEED = 1000

# command -> (module with register(subparsers), help); imported lazily. Add new
# subcommands here: one entry each.
_EXTERNAL = {
    "export": (
        "tailguard.adapters.cli",
        "export a checkpoint (RSL-RL, SB3, torch) to a checked ONNX file",
    ),
    "replay": ("tailguard.firmware_sim.cli", "replay a policy in MuJoCo in simulated time"),
    "firmware": (
        "tailguard.firmware_sim.firmware_cli",
        "run a wall-clock MuJoCo firmware process over ZMQ",
    ),
    "run": (
        "tailguard.firmware_sim.firmware_cli",
        "run a guarded ONNX policy against a firmware process",
    ),
    "monitor": ("tailguard.monitor.cli", "watch a running guard (ZMQ sidecar)"),
    "keys": ("tailguard.monitor.cli", "create CURVE keys for the guard/monitor command channel"),
    "bench": ("tailguard.tools.bench_cli", "measure this machine's control-loop latency"),
    "audit": ("tailguard.tools.audit_cli", "timing audit: paired sweep -> audited envelope"),
    "certify": ("tailguard.tools.audit_cli", "certify a policy against its envelope (0/1/2)"),
    "report": ("tailguard.tools.audit_cli", "compare two audit summaries (report diff)"),
    "harden": ("tailguard.tools.harden_cli", "audit, fine-tune under failing timing, certify"),
    "sweep": (
        "tailguard.tools.sweep_cli",
        "audit or certify many checkpoints from one manifest into one results tree",
    ),
    "chunks": (
        "tailguard.tools.chunks_cli",
        "audit an action-chunk policy under per-chunk delays (sync / async / guarded)",
    ),
}


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="the shipped Hopper policy pair in MuJoCo with its audited envelope: nominal "
        "timing, a latency long tail and GC bursts; nominal only, robust only, guarded "
        "(pendulum without the sim extra)",
    )
    p.add_argument(
        "--episodes",
        type=ca.Integer(2, MAX_DEMO_EPISODES, "episodes"),
        default=DEMO_EPISODES,
        help=f"Hopper: paired episodes per column, 2..{MAX_DEMO_EPISODES} "
        f"(default {DEMO_EPISODES})",
    )
    p.add_argument(
        "--seconds",
        type=ca.Number("s", minimum=0.0, maximum=MAX_DEMO_S, min_open=True),
        default=30.0,
        help=f"pendulum fallback: simulated seconds per scenario, (0, {MAX_DEMO_S:g}] "
        "(default 30; Hopper episodes run to the env's 1000-step limit)",
    )
    p.add_argument(
        "--seed",
        type=ca.seed(),
        default=DEMO_SEED,
        help=f"Hopper: episode i resets with SEED+i in every column (default {DEMO_SEED}: "
        "not the audit's episodes); pendulum: latency and disturbance seed",
    )
    p.add_argument(
        "--workers",
        type=ca.Integer(1, 64, "workers"),
        default=2,
        help="worker processes for the Hopper episodes, 1..64 (default 2; results do not "
        "depend on it)",
    )
    p.add_argument(
        "--out",
        type=ca.output_dir,
        default=None,
        help="folder for report.html and demo.json (default: a fresh temp directory)",
    )
    p.add_argument(
        "--json", type=ca.output_file, default=None, help="also write the results as JSON"
    )
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    import tempfile

    from tailguard.tools.demo import demo_json, format_demo, run_demo, write_report

    result = run_demo(args.seconds, args.seed, episodes=args.episodes, workers=args.workers)
    text = format_demo(result)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(demo_json(result), indent=2) + "\n")
    if args.out is None:
        out = Path(tempfile.mkdtemp(prefix="tailguard-demo-"))
        where = "a fresh temp directory; choose one with --out DIR"
    else:
        out, where = Path(args.out), "--out"
    report = write_report(result, text, out)
    print(f"\nreport: {report} ({where})")
    return 0


#: Longest control period `envelope init` writes, ms (one minute).
MAX_PERIOD_MS = 60_000.0


def _add_envelope(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("envelope", help="create or check envelope files")
    esub = p.add_subparsers(dest="envelope_cmd", required=True)
    init = esub.add_parser("init", help="write a starter envelope (placeholder thresholds)")
    init.add_argument("--policy", type=Path, required=True, help="the policy's .onnx file")
    init.add_argument(
        "--period-ms",
        type=ca.duration("ms", maximum=MAX_PERIOD_MS),
        required=True,
        help=f"nominal control period, ms in (0, {MAX_PERIOD_MS:g}]",
    )
    init.add_argument(
        "-o", "--output", type=ca.output_file, required=True, help="envelope JSON to write"
    )
    init.add_argument(
        "--action-bound",
        type=ca.Number("", minimum=0.0, maximum=1e30, min_open=True),
        default=None,
        help="symmetric action bound |a_i| <= B (default: unbounded, only non-finite checks)",
    )
    init.add_argument("--force", action="store_true", help="overwrite an existing file")
    init.set_defaults(func=_cmd_envelope_init)
    check = esub.add_parser("check", help="validate an envelope; print every problem")
    check.add_argument("file", type=Path)
    check.add_argument("--policy", type=Path, default=None, help="also check it fits this policy")
    check.set_defaults(func=_cmd_envelope_check)


def _cmd_envelope_init(args: argparse.Namespace) -> int:
    from tailguard import __version__
    from tailguard.envelope.model import save_envelope, starter_envelope
    from tailguard.runtime.policy import OnnxPolicy

    if args.output.exists() and not args.force:
        print(f"error: {args.output} exists; pass --force to overwrite it", file=sys.stderr)
        return ca.EXIT_FAILED
    policy = OnnxPolicy(args.policy)
    a = policy.action_size
    bound = args.action_bound
    env = starter_envelope(
        obs_size=policy.obs_size,
        action_size=a,
        period_ns=round(args.period_ms * 1e6),
        sha256=policy.sha256,
        action_low=None if bound is None else [-bound] * a,
        action_high=None if bound is None else [bound] * a,
        tool_version=__version__,
    )
    save_envelope(env, args.output)
    print(
        f"wrote {args.output}: obs_size {policy.obs_size}, action_size {a}, period "
        f"{args.period_ms:g} ms, bound to sha256 {(policy.sha256 or '')[:12]}..."
    )
    print(
        "NOTE: its thresholds are PLACEHOLDERS derived from the period, not audited for "
        "this policy."
    )
    return 0


def _cmd_envelope_check(args: argparse.Namespace) -> int:
    from tailguard.envelope.json_io import read_envelope_file

    env, problems = read_envelope_file(args.file)  # read and parsed once, size-bounded
    for p in problems:
        print(f"{args.file}: {p}")
    if problems or env is None:
        print(f"{len(problems)} problem(s)", file=sys.stderr)
        return 1
    if args.policy is not None:
        from tailguard.runtime.guard import Guard
        from tailguard.runtime.policy import OnnxPolicy

        Guard._check_binding(OnnxPolicy(args.policy), env, allow_mismatch=False)
    prov = env.provenance
    audited = "audited" if prov.audited else "NOT audited (placeholder or hand-written)"
    print(f"{args.file}: ok (schema {env.schema_version}, source '{prov.source}', {audited})")
    return 0


def _add_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="show a policy's interface and its latency here")
    p.add_argument("policy", type=Path)
    p.add_argument(
        "--ticks",
        type=ca.Integer(10, 10_000_000, "inferences"),
        default=2000,
        help="timed inferences, 10..10000000 (default 2000)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=_cmd_inspect)


def _cmd_inspect(args: argparse.Namespace) -> int:
    from tailguard.tools.inspect_policy import format_inspection, inspect_policy

    report = inspect_policy(args.policy, ticks=args.ticks)
    print(json.dumps(report, indent=2) if args.json else format_inspection(report))
    return 0


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tailguard",
        description="Real-time deployment guard for robot RL policies.",
        epilog="exit codes: " + "; ".join(f"{code} {text}" for code, text in ca.EXIT_CODES.items()),
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_demo(sub)
    _add_envelope(sub)
    _add_inspect(sub)
    wanted = argv[0] if argv else None
    for name, (module, help_text) in _EXTERNAL.items():
        if name in sub.choices:
            continue
        if name == wanted:
            try:
                importlib.import_module(module).register(sub)
            except ModuleNotFoundError as exc:
                if exc.name and module.startswith(exc.name):
                    continue  # that part of tailguard is not built yet
                raise
        elif _available(module):
            sub.add_parser(name, help=help_text, add_help=False)
    return parser


def _available(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def _version() -> str:
    from tailguard import __version__

    return f"tailguard {__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (see :data:`tailguard.cli_args.EXIT_CODES`)."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    return ca.run_cli(build_parser(args_list), args_list)


if __name__ == "__main__":
    sys.exit(main())

"""``tailguard replay``: replay an ONNX policy in a MuJoCo env in simulated time.

Timing flags (specs as in ``firmware_sim.profile_spec``):

- ``--profile SPEC``: inference latency per tick (default ``nominal`` = 0);
- ``--dt-profile SPEC``: control period per tick (default ``nominal`` = the env's period);
- ``--obs-delay-profile SPEC``: observation age per tick (default ``nominal`` = fresh);
- ``--drop-prob P`` / ``--drop-burst N``: lost commands (bursts of N ticks, starting with
  probability P per tick).

Exit codes: 0 done; 2 bad input (unknown env, bad spec, unloadable policy) or a feature not
available yet (guarded replay: ``--envelope`` / ``--fallback``).

JSON output: ``episodes`` (one object per episode: ``seed``, ``return``, ``length``,
``terminated``, timing percentiles, smoothness), ``summary``, the inputs; wall-clock facts
(duration, host, versions) only under ``run``, so everything else is identical for the same
inputs and seed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from guard.errors import TailguardError

__all__ = ["register", "run_replay_command"]

SCHEMA = "tailguard.replay/1"


def register(subparsers: Any) -> None:
    """Add the ``replay`` subcommand to an ``argparse`` subparsers object."""
    p = subparsers.add_parser(
        "replay",
        help="replay an ONNX policy in MuJoCo under a timing profile (simulated time)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--policy", required=True, help="ONNX policy file (input obs -> actions)")
    p.add_argument("--env", required=True, help="gymnasium MuJoCo env id, e.g. Hopper-v5")
    p.add_argument("--profile", default="nominal", help="latency profile spec (default nominal)")
    p.add_argument("--dt-profile", default="nominal", help="control-period profile spec")
    p.add_argument("--obs-delay-profile", default="nominal", help="observation-age profile spec")
    p.add_argument("--drop-prob", type=float, default=0.0, help="per-tick drop probability")
    p.add_argument("--drop-burst", type=int, default=1, help="ticks lost per drop (default 1)")
    p.add_argument("--episodes", type=int, default=10, help="number of episodes (default 10)")
    p.add_argument("--seed", type=int, default=0, help="episode i resets with seed S+i")
    p.add_argument("--envelope", help="envelope JSON for the guard (not wired yet)")
    p.add_argument("--fallback", help="guard fallback (not wired yet)")
    p.add_argument("--no-guard", action="store_true", help="replay the bare policy")
    p.add_argument("--json", dest="json_out", help="write the results to this JSON file")
    p.add_argument("--quiet", action="store_true", help="no progress bar or table")
    p.set_defaults(handler=run_replay_command)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _table(results: list[Any], out: TextIO) -> None:
    out.write(f"{'seed':>6} {'return':>12} {'length':>7} {'fell':>5} {'lat p99 ms':>11} "
              f"{'dt p99 ms':>10} {'max|da|':>8}\n")  # fmt: skip
    for r in results:
        out.write(
            f"{r.seed:>6} {r.ret:>12.2f} {r.length:>7} {'yes' if r.terminated else 'no':>5} "
            f"{r.latency_ns['p99'] / 1e6:>11.3f} {r.dt_ns['p99'] / 1e6:>10.3f} "
            f"{r.max_abs_daction:>8.3f}\n"
        )


def run_replay_command(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Handler of ``tailguard replay``; returns the exit code."""
    out = out if out is not None else sys.stdout
    err = sys.stderr
    if (args.envelope or args.fallback) and not args.no_guard:
        err.write(
            "tailguard replay: guarded replay (--envelope/--fallback) is not wired yet; "
            "run with --no-guard\n"
        )
        return 2
    if args.episodes < 1:
        err.write(f"tailguard replay: --episodes must be >= 1, got {args.episodes}\n")
        return 2
    started = time.perf_counter()
    started_utc = datetime.now(UTC).isoformat(timespec="seconds")
    try:
        from firmware_sim.controllers import OnnxController
        from firmware_sim.replay import TimingSpec, build_loop, make_task, run_episodes, summarize

        timing = TimingSpec(
            latency=args.profile,
            dt=args.dt_profile,
            obs_delay=args.obs_delay_profile,
            drop_prob=args.drop_prob,
            drop_burst=args.drop_burst,
        )
        controller = OnnxController(args.policy)
        try:
            task = make_task(args.env)
        except Exception as exc:  # gymnasium raises its own error types for unknown ids
            if isinstance(exc, TailguardError):
                raise
            raise TailguardError(f"cannot make env '{args.env}': {exc}") from None
        loop = build_loop(task, controller, timing)
    except TailguardError as exc:
        err.write(f"tailguard replay: {exc}\n")
        return 2

    progress = None if args.quiet else _progress(args.episodes, err)
    results = run_episodes(loop, args.episodes, args.seed, progress)
    if not args.quiet:
        _table(results, out)
    doc = {
        "schema": SCHEMA,
        "env": args.env,
        "policy": {"path": str(args.policy), "sha256": _sha256(Path(args.policy))},
        "timing": timing.to_dict(),
        "guard": None,
        "seed": args.seed,
        "period_ns": task.period_ns,
        "substep_ns": task.substep_ns,
        "episodes": [r.to_dict() for r in results],
        "summary": summarize(results),
        "run": {
            "started_utc": started_utc,
            "duration_s": time.perf_counter() - started,
            "host": platform.node(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
    }
    if args.json_out:
        try:
            Path(args.json_out).write_text(json.dumps(doc, indent=2) + "\n")
        except OSError as exc:
            err.write(f"tailguard replay: cannot write {args.json_out}: {exc}\n")
            return 2
    return 0


def _progress(total: int, err: TextIO) -> Any:
    """A per-episode progress callback (plain text; one line per episode on a TTY only)."""
    if not err.isatty():
        return None

    def on_episode(i: int, result: Any) -> None:
        err.write(f"\rreplay: episode {i + 1}/{total}  return {result.ret:.1f}")
        if i + 1 == total:
            err.write("\n")
        err.flush()

    return on_episode

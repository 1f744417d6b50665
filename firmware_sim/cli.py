"""``tailguard replay``: replay an ONNX policy in a MuJoCo env in simulated time.

Timing flags (specs as in ``tailguard.firmware_sim.profile_spec``):

- ``--profile SPEC``: inference latency per tick (default ``nominal`` = 0);
- ``--dt-profile SPEC``: control period per tick (default ``nominal`` = the env's period);
- ``--obs-delay-profile SPEC``: observation age per tick (default ``nominal`` = fresh);
- ``--drop-prob P`` / ``--drop-burst N``: lost commands (bursts of N ticks, starting with
  probability P per tick).

Guard flags: the runtime guard runs in the loop on the simulated clock unless ``--no-guard``.
``--envelope E.json`` (default: the policy's starter envelope, placeholder thresholds, noted
in the JSON), ``--fallback hold|zero|PATH.onnx`` (a second, timing-robust policy),
``--deadline-ms D`` (deadline mode in simulated time: a late inference is abandoned and the
hold/fallback action released at the deadline).

Environments: a gymnasium MuJoCo v5 id (``tailguard.firmware_sim.tasks.SUPPORTED_ENVS``:
Hopper, Walker2d, HalfCheetah, Ant, Swimmer, InvertedPendulum, InvertedDoublePendulum,
Reacher, Pusher, Humanoid, HumanoidStandup) or ``mjcf:ant`` / ``mjcf:PATH.xml`` (raw MJCF
robot, PD firmware at 1 kHz, policy at 50 Hz).

Exit codes (the table of :mod:`tailguard.cli_args`): 0 done; 1 input refused (unknown env,
bad profile spec, unloadable policy or envelope, envelope not made for this policy or the
env's period, results file not writable); 2 usage error (a flag's value out of its range,
contradictory flags).

JSON output: ``episodes`` (one object per episode: ``seed``, ``return``, ``length``,
``terminated``, timing percentiles, smoothness, per-episode ``guard`` statistics when
guarded), ``summary``, the inputs (``guard`` says which envelope and fallback); wall-clock facts
(duration, host, versions) only under ``run``, so everything else is identical for the same
inputs and seed.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from tailguard import cli_args as ca
from tailguard.errors import TailguardError

__all__ = ["register", "run_replay_command"]

SCHEMA = "tailguard.replay/1"
#: Most episodes one replay runs.
MAX_EPISODES = 100_000
#: Longest burst of lost commands, ticks.
MAX_DROP_BURST = 1_000_000
#: Longest --deadline-ms.
MAX_DEADLINE_MS = 60_000.0


def register(subparsers: Any) -> None:
    """Add the ``replay`` subcommand to an ``argparse`` subparsers object."""
    p = subparsers.add_parser(
        "replay",
        help="replay an ONNX policy in MuJoCo under a timing profile (simulated time)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--policy",
        required=True,
        help="ONNX policy, RSL-RL .pt or SB3 .zip (checkpoints are exported with a parity check)",
    )
    p.add_argument(
        "--vecnormalize", help="SB3 VecNormalize statistics to fold in (with an SB3 .zip only)"
    )
    p.add_argument(
        "--env", required=True, help="gymnasium MuJoCo env id (Hopper-v5) or mjcf:ant / mjcf:PATH"
    )
    p.add_argument("--profile", default="nominal", help="latency profile spec (default nominal)")
    p.add_argument("--dt-profile", default="nominal", help="control-period profile spec")
    p.add_argument("--obs-delay-profile", default="nominal", help="observation-age profile spec")
    p.add_argument(
        "--drop-prob", type=ca.probability(), default=0.0, help="per-tick drop probability"
    )
    p.add_argument(
        "--drop-burst",
        type=ca.Integer(1, MAX_DROP_BURST, "ticks"),
        default=1,
        help="ticks lost per drop (default 1)",
    )
    p.add_argument(
        "--episodes",
        type=ca.Integer(1, MAX_EPISODES, "episodes"),
        default=10,
        help=f"number of episodes, 1..{MAX_EPISODES} (default 10)",
    )
    p.add_argument(
        "--seed",
        type=ca.Integer(0, (1 << 32) - 1 - MAX_EPISODES),
        default=0,
        help="episode i resets with seed S+i",
    )
    p.add_argument("--envelope", help="envelope JSON (default: the policy's starter envelope)")
    p.add_argument(
        "--fallback", help="guard fallback: hold (default), zero, or PATH.onnx (robust policy)"
    )
    p.add_argument(
        "--deadline-ms",
        type=ca.duration("ms", maximum=MAX_DEADLINE_MS),
        help=f"deadline mode: answer within D ms of tick start, (0, {MAX_DEADLINE_MS:g}]",
    )
    p.add_argument("--no-guard", action="store_true", help="replay the bare policy")
    p.add_argument(
        "--json", dest="json_out", type=ca.output_file, help="write the results to this JSON file"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar or table")
    p.set_defaults(handler=run_replay_command, func=run_replay_command)


def _table(results: list[Any], out: TextIO) -> None:
    guarded = any(r.guard is not None for r in results)
    out.write(f"{'seed':>6} {'return':>12} {'length':>7} {'fell':>5} {'lat p99 ms':>11} "
              f"{'dt p99 ms':>10} {'max|da|':>8}")  # fmt: skip
    out.write(f" {'interv.':>8} {'misses':>7} {'violations':>10}\n" if guarded else "\n")
    for r in results:
        out.write(
            f"{r.seed:>6} {r.ret:>12.2f} {r.length:>7} {'yes' if r.terminated else 'no':>5} "
            f"{r.latency_ns['p99'] / 1e6:>11.3f} {r.dt_ns['p99'] / 1e6:>10.3f} "
            f"{r.max_abs_daction:>8.3f}"
        )
        if r.guard is not None:
            g = r.guard
            n_viol = sum(g["violations"].values())
            out.write(f" {g['interventions']:>8} {g['deadline_misses']:>7} {n_viol:>10}\n")
        else:
            out.write("\n")


def run_replay_command(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Handler of ``tailguard replay``; returns the exit code."""
    out = out if out is not None else sys.stdout
    err = sys.stderr
    guard_flags = [
        flag
        for flag, value in (
            ("--envelope", args.envelope),
            ("--fallback", args.fallback),
            ("--deadline-ms", args.deadline_ms),
        )
        if value is not None
    ]
    if args.no_guard and guard_flags:
        err.write(
            f"tailguard replay: error: --no-guard cannot be combined with "
            f"{', '.join(guard_flags)}\n"
        )
        return ca.EXIT_USAGE
    started = time.perf_counter()
    started_utc = datetime.now(UTC).isoformat(timespec="seconds")
    try:
        from tailguard.firmware_sim.controllers import Controller, OnnxController
        from tailguard.firmware_sim.replay import (
            GuardSpec,
            TimingSpec,
            build_guarded,
            build_loop,
            make_task,
            run_episodes,
            summarize,
        )

        timing = TimingSpec(
            latency=args.profile,
            dt=args.dt_profile,
            obs_delay=args.obs_delay_profile,
            drop_prob=args.drop_prob,
            drop_burst=args.drop_burst,
        )
        from tailguard.adapters.resolve import resolve_policy

        exported = tempfile.TemporaryDirectory(prefix="tailguard-replay-")
        resolved = resolve_policy(args.policy, exported.name, vecnormalize=args.vecnormalize)
        args.policy = str(resolved.onnx_path)
        task = make_task(args.env)
        controller: Controller
        guard_info: dict[str, Any] | None = None
        if args.no_guard:
            controller = OnnxController(args.policy)
        else:
            spec = GuardSpec(
                envelope=args.envelope,
                fallback=args.fallback or "hold",
                deadline_ns=None if args.deadline_ms is None else round(args.deadline_ms * 1e6),
            )
            controller, guard_info = build_guarded(task, args.policy, spec)
            if args.envelope is None and not args.quiet:
                err.write(
                    "tailguard replay: no --envelope: guarding with the policy's starter "
                    "envelope (placeholder thresholds, not audited)\n"
                )
        loop = build_loop(task, controller, timing)
    except TailguardError as exc:
        err.write(f"tailguard replay: {exc}\n")
        return ca.EXIT_FAILED

    progress = None if args.quiet else _progress(args.episodes, err)
    results = run_episodes(loop, args.episodes, args.seed, progress)
    if not args.quiet:
        _table(results, out)
    doc = {
        "schema": SCHEMA,
        "env": args.env,
        "task": task.describe() if hasattr(task, "describe") else None,
        "policy": {"path": str(args.policy), "sha256": resolved.sha256, "source": resolved.source},
        "timing": timing.to_dict(),
        "guard": guard_info,
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
            return ca.EXIT_FAILED
    return ca.EXIT_OK


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

"""``tailguard chunks --policy CHUNK.onnx``: audit an action-chunk policy's execution under
per-chunk inference delays, in simulated time.

Runs synchronous, naive asynchronous and guarded asynchronous execution (``tailguard.audit.
chunk_compare``) under nominal timing and each ``--profile`` (a named per-chunk delay profile
-- ``exp_delta_long_tail``, ``exp_delta_tail_capped`` -- or any latency spec, drawn once per
chunk), on paired episodes; prints per condition the return ratio against sync under nominal
timing with its interval, falls, d p50/p95/p99, p_violate = P(d > H - s) with its exact
interval and the smoothness metrics, then the tail cap on d each profile implies (the
envelope's ``chunks`` section).

Exit 0 when it ran, 1 when the policy or a profile is refused (the reason is printed),
2 on a usage error.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from tailguard import cli_args as ca

__all__ = ["register"]

_DEFAULT_PROFILES = ("exp_delta_long_tail", "exp_delta_tail_capped")


def register(subparsers: Any) -> None:
    """Add ``chunks``."""
    if "chunks" in subparsers.choices:
        return
    p = subparsers.add_parser(
        "chunks",
        help="audit an action-chunk policy under per-chunk delays (sync / async / guarded)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--policy", required=True, type=ca.input_file, help="chunk policy (.onnx)")
    p.add_argument(
        "--fallback",
        type=ca.input_file,
        default=None,
        help="per-tick ONNX policy the guarded variant falls back to on chunk_exhausted",
    )
    p.add_argument("--env", default="Hopper-v5", help="MuJoCo env id (default Hopper-v5)")
    p.add_argument(
        "--profile",
        action="append",
        default=None,
        help="per-chunk latency: a named chunk profile or a latency spec (repeatable; "
        f"default: {', '.join(_DEFAULT_PROFILES)})",
    )
    p.add_argument("--episodes", type=ca.Integer(2, 100_000, "episodes"), default=30)
    p.add_argument("--seed", type=ca.seed(), default=2000, help="first reset seed")
    p.add_argument("--resamples", type=ca.Integer(100, 1_000_000, "resamples"), default=9999)
    p.add_argument(
        "--horizon", type=ca.Integer(1, 1024), default=None, help="H, if not in metadata"
    )
    p.add_argument(
        "--execute-horizon", type=ca.Integer(1, 1024), default=None, help="s, if not in metadata"
    )
    p.add_argument("--json", type=ca.output_file, default=None, help="write the full result")
    p.set_defaults(func=_cmd_chunks)


def _cmd_chunks(args: argparse.Namespace) -> int:
    from tailguard.audit.chunk_compare import compare_chunk_execution, markdown_table
    from tailguard.audit.chunk_metrics import chunk_limits
    from tailguard.errors import TailguardError
    from tailguard.firmware_sim.chunked import chunk_profile

    profiles = tuple(args.profile or _DEFAULT_PROFILES)
    for spec in profiles:  # every profile is checked before anything runs
        try:
            chunk_profile(spec, 1_000_000)
        except TailguardError as exc:
            raise ca.UsageError(f"--profile {spec!r}: {exc}") from None
    result = compare_chunk_execution(
        args.policy,
        args.fallback,
        env_id=args.env,
        profiles=profiles,
        episodes=args.episodes,
        seed=args.seed,
        n_resamples=args.resamples,
        horizon=args.horizon,
        execute_horizon=args.execute_horizon,
    )
    settings = result["settings"]
    print(markdown_table(result))
    print("rate limit of the guarded variants (largest nominal step):", result["rate_limit"])
    sections = {}
    for profile, cap in result["delay_caps"].items():
        limits = chunk_limits(cap, settings["horizon"], settings["execute_horizon"])
        sections[profile] = limits.to_dict()
        verdict = "tolerated" if cap["within_limit"] else "NOT tolerated (cut the tail or lower s)"
        print(
            f"{profile}: d p99 {cap['d_at_quantile']} vs H - s = {cap['h_minus_s']}: {verdict}; "
            f"envelope chunks section: {json.dumps(sections[profile])}"
        )
    if args.json is not None:
        result["chunks_sections"] = sections
        args.json.write_text(json.dumps(result, indent=2, default=float) + "\n")
    print(f"{settings['episodes']} paired episodes per condition, {settings['wall_s']} s")
    return 0

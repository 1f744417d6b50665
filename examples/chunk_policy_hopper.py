"""Run the shipped Hopper chunk policy (H = 8, s = 5) synchronously, naively asynchronously and
under the chunk guard, with exp-delta's long-tailed per-chunk delay and its tail-capped
variant, in simulated time; print the comparison and the tail cap the envelope should hold.

    python examples/chunk_policy_hopper.py [--episodes 30] [--json out.json]

Needs the ``sim`` extra (MuJoCo, gymnasium, scipy). About a minute on one core.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tailguard.audit.chunk_compare import compare_chunk_execution, markdown_table
from tailguard.audit.chunk_metrics import chunk_limits

POLICIES = Path(__file__).resolve().parents[1] / "guard" / "policies"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--episodes", type=int, default=30)
    ap.add_argument("--seed", type=int, default=2000)
    ap.add_argument("--json", type=Path, default=None, help="also write the full result here")
    args = ap.parse_args()
    result = compare_chunk_execution(
        POLICIES / "hopper_chunk.onnx",
        POLICIES / "hopper_nominal.onnx",  # the per-tick fallback of guarded_fallback
        episodes=args.episodes,
        seed=args.seed,
    )
    print(markdown_table(result))
    print(
        "rate limit (per tick, largest nominal |Δa|):", [round(x, 3) for x in result["rate_limit"]]
    )
    for profile, cap in result["delay_caps"].items():
        limits = chunk_limits(
            cap, result["settings"]["horizon"], result["settings"]["execute_horizon"]
        )
        print(
            f"{profile}: d_p99 = {cap['d_at_quantile']}, H - s = {cap['h_minus_s']}, "
            f"tolerated: {cap['within_limit']}; envelope chunks section: {limits.to_dict()}"
        )
    print(f"wall time {result['settings']['wall_s']} s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()

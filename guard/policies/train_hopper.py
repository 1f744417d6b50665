"""Train the shipped Hopper-v5 policies with rsl-rl-lib PPO on CPU.

Two variants, same network, same observation and action spaces (so one can be the other's
fallback):

* ``nominal``: plain timing (every action applied at once, fixed control period).
* ``robust``: timing-randomized: each episode draws an action-latency profile (on time, 0..1
  or 0..2 periods late, or a lognormal long tail capped at 4 periods) and every step draws
  the control period (6, 8 or 10 ms, i.e. 3..5 physics substeps instead of 4), through
  ``tailguard.firmware_sim.wrappers`` and the same ns timing profiles the simulated-time
  loop replays.

Usage (from the repository root)::

    nice -n 19 python -m tailguard.policies.train_hopper --variant nominal \
        --iterations 600 --out guard/policies/hopper_nominal.pt

The script writes the rsl-rl 5.x checkpoint (``runner.save``) and a log line every 10
iterations to stdout.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import gymnasium as gym
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tailguard.adapters.rsl_rl_vecenv import GymnasiumVecEnv
from tailguard.firmware_sim.wrappers import ActionLatencyWrapper, ControlPeriodJitterWrapper

HIDDEN_SIZES = [64, 64]
MS = 1_000_000
PERIOD_NS = 8 * MS  # Hopper-v5: 4 physics substeps of 2 ms

# Timing randomization of the robust variant, as tailguard timing-profile specs (ns).
ROBUST_PERIOD = {"kind": "empirical", "counts": {str(k * 2 * MS): 1 for k in (3, 4, 5)}}
ROBUST_LATENCY = [
    "nominal",  # on time
    {"kind": "empirical", "counts": {"0": 1, str(PERIOD_NS): 1}},  # 0 or 1 period late
    {"kind": "empirical", "counts": {"0": 1, str(PERIOD_NS): 1, str(2 * PERIOD_NS): 1}},
    "lognormal:median_ms=4,sigma=0.9,cap_ms=32",  # long tail, at most 4 periods late
]


def make_env(variant: str, seed: int) -> gym.Env:
    """Build one Hopper-v5 env, timing-randomized for the robust variant."""
    env = gym.make("Hopper-v5")
    if variant == "robust":
        env = ControlPeriodJitterWrapper(env, ROBUST_PERIOD, seed=seed + 10_000)
        env = ActionLatencyWrapper(env, ROBUST_LATENCY, period_ns=PERIOD_NS, seed=seed + 20_000)
    return env


def train_cfg(seed: int) -> dict:
    """The rsl-rl-lib 5.x runner configuration."""
    return {
        "seed": seed,
        "num_steps_per_env": 128,
        "save_interval": 1_000_000,
        "obs_groups": {"actor": ["policy"], "critic": ["policy"]},
        "algorithm": {
            "class_name": "PPO",
            "num_learning_epochs": 5,
            "num_mini_batches": 4,
            "clip_param": 0.2,
            "gamma": 0.99,
            "lam": 0.95,
            "value_loss_coef": 1.0,
            "entropy_coef": 0.0,
            "learning_rate": 3e-4,
            "max_grad_norm": 1.0,
            "schedule": "adaptive",
            "desired_kl": 0.01,
        },
        "actor": {
            "class_name": "MLPModel",
            "hidden_dims": HIDDEN_SIZES,
            "activation": "elu",
            "obs_normalization": True,
            "distribution_cfg": {
                "class_name": "GaussianDistribution",
                "init_std": 0.6,
                "std_type": "scalar",
            },
        },
        "critic": {
            "class_name": "MLPModel",
            "hidden_dims": HIDDEN_SIZES,
            "activation": "elu",
            "obs_normalization": True,
        },
    }


def main() -> int:
    """Parse arguments, train, save the checkpoint."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=["nominal", "robust"], required=True)
    parser.add_argument("--iterations", type=int, default=600)
    parser.add_argument("--num-envs", type=int, default=16)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-wall-s", type=float, default=25 * 60, help="stop early after this")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    from rsl_rl.runners import OnPolicyRunner

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    env = GymnasiumVecEnv(
        [lambda i=i: make_env(args.variant, args.seed * 1000 + i) for i in range(args.num_envs)],
        seed=args.seed * 1000,
    )
    runner = OnPolicyRunner(env, train_cfg(args.seed), log_dir=None, device="cpu")
    start_s = time.perf_counter()
    chunk = 10
    done = 0
    while done < args.iterations:
        n = min(chunk, args.iterations - done)
        runner.learn(num_learning_iterations=n)
        done += n
        runner.current_learning_iteration = done
        elapsed_s = time.perf_counter() - start_s
        returns = list(env.recent_returns)
        mean_return = sum(returns) / len(returns) if returns else float("nan")
        print(
            f"iter {done} steps {env.total_steps} elapsed_s {elapsed_s:.0f} "
            f"mean_return {mean_return:.1f}",
            flush=True,
        )
        if elapsed_s > args.max_wall_s:
            print(f"wall budget reached after {done} iterations", flush=True)
            break
    args.out.parent.mkdir(parents=True, exist_ok=True)
    runner.save(
        str(args.out),
        infos={
            "variant": args.variant,
            "iterations": done,
            "env_steps": env.total_steps,
            "train_time_s": time.perf_counter() - start_s,
        },
    )
    print(f"saved {args.out} after {time.perf_counter() - start_s:.0f} s", flush=True)
    env.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Train the shipped nominal Hopper-v5 policy with Stable-Baselines3 PPO, export it, evaluate it.

Standard MuJoCo PPO settings (SB3's defaults: n_steps 2048, batch 64, 10 epochs, lr 3e-4,
gamma 0.99, GAE 0.95, clip 0.2, tanh [64, 64]) with observation and reward normalization
(``VecNormalize``); the observation statistics are folded into the exported ONNX graph, so
the ONNX policy takes raw Hopper observations. One environment, one torch thread, seeded:

    nice -n 19 python -m tailguard.policies.train_sb3_hopper --timesteps 600000 --seed 1 \\
        --out guard/policies/hopper_nominal

writes ``PREFIX.zip`` (the SB3 model), ``PREFIX.vecnormalize.pkl``, ``PREFIX.onnx`` (exported
with the parity check against ``hopper_observations.npy``) and ``PREFIX.training.json``
(settings, seeds, wall time, the evaluation of every episode). Evaluation: deterministic
actions, reset seeds 0..19, the 1000-step limit of Hopper-v5.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
PPO_SETTINGS: dict[str, Any] = {
    "n_steps": 2048,
    "batch_size": 64,
    "n_epochs": 10,
    "learning_rate": 3e-4,
    "gamma": 0.99,
    "gae_lambda": 0.95,
    "clip_range": 0.2,
    "ent_coef": 0.0,
}


def evaluate_onnx(onnx_path: Path, episodes: int = 20, env_id: str = "Hopper-v5") -> dict[str, Any]:
    """Deterministic returns of an ONNX policy over reset seeds ``0..episodes-1``."""
    import gymnasium as gym
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    env = gym.make(env_id)
    returns, lengths = [], []
    for seed in range(episodes):
        obs, _ = env.reset(seed=seed)
        total, steps, done = 0.0, 0, False
        while not done:
            action = session.run(None, {name: obs.astype(np.float32)[None]})[0][0]
            obs, reward, terminated, truncated, _ = env.step(np.clip(action, -1.0, 1.0))
            total += float(reward)
            steps += 1
            done = terminated or truncated
        returns.append(total)
        lengths.append(steps)
    env.close()
    limit = env.spec.max_episode_steps if env.spec else None
    return {
        "reset_seeds": list(range(episodes)),
        "returns": returns,
        "lengths": lengths,
        "mean_return": float(np.mean(returns)),
        "std_return": float(np.std(returns)),
        "fraction_full_length": float(np.mean([n == limit for n in lengths])),
    }


def artifact(prefix: Path, suffix: str) -> Path:
    """``PREFIX`` + ``suffix``: where a policy's files live (``hopper_nominal.onnx`` ...)."""
    return prefix.with_name(prefix.name + suffix)


def train(timesteps: int, seed: int, out: Path) -> dict[str, Any]:
    """Train, save, export and evaluate; returns the record written to training.json."""
    import gymnasium as gym
    import stable_baselines3
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    from tailguard.adapters.sb3 import export_sb3

    torch.set_num_threads(1)
    out.parent.mkdir(parents=True, exist_ok=True)
    venv = VecNormalize(DummyVecEnv([lambda: Monitor(gym.make("Hopper-v5"))]), gamma=0.99)
    venv.seed(seed)
    model = PPO("MlpPolicy", venv, seed=seed, device="cpu", verbose=0, **PPO_SETTINGS)
    start = time.perf_counter()
    model.learn(total_timesteps=timesteps, progress_bar=False)
    wall_s = time.perf_counter() - start
    recent = [float(e["r"]) for e in (model.ep_info_buffer or ())]
    model.save(artifact(out, ".zip"))
    venv.save(str(artifact(out, ".vecnormalize.pkl")))
    observations = np.load(HERE / "hopper_observations.npy")
    result = export_sb3(
        artifact(out, ".zip"),
        artifact(out, ".onnx"),
        vecnormalize=artifact(out, ".vecnormalize.pkl"),
        observations=observations,
    )
    record = {
        "env": "Hopper-v5",
        "algorithm": "PPO (stable-baselines3)",
        "versions": {
            "stable_baselines3": stable_baselines3.__version__,
            "torch": torch.__version__,
            "gymnasium": gym.__version__,
            "python": platform.python_version(),
        },
        "ppo_settings": PPO_SETTINGS,
        "vecnormalize": {"norm_obs": True, "norm_reward": True, "gamma": 0.99},
        "seed": seed,
        "timesteps": timesteps,
        "wall_s": round(wall_s, 1),
        "torch_threads": 1,
        "training_return_last_100_episodes": float(np.mean(recent)) if recent else None,
        "parity_max_abs_diff": result.parity.max_abs_diff,
        "evaluation": evaluate_onnx(artifact(out, ".onnx")),
    }
    artifact(out, ".training.json").write_text(json.dumps(record, indent=2) + "\n")
    venv.close()
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--timesteps", type=int, default=600_000, help="environment steps")
    parser.add_argument("--seed", type=int, default=1, help="training seed (>= 0)")
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="output path prefix, e.g. guard/policies/hopper_nominal",
    )
    args = parser.parse_args(argv)
    if args.timesteps <= 0 or args.seed < 0:
        parser.error("--timesteps must be > 0 and --seed >= 0")
    record = train(args.timesteps, args.seed, args.out)
    ev = record["evaluation"]
    print(
        f"trained {args.timesteps} steps in {record['wall_s']} s; deterministic return "
        f"{ev['mean_return']:.0f} ± {ev['std_return']:.0f} over {len(ev['returns'])} episodes, "
        f"{ev['fraction_full_length']:.0%} reach the step limit"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

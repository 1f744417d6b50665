"""Evaluate the shipped Hopper-v5 ONNX policies under nominal timing and action delays.

Each condition runs 20 episodes with reset seeds 0..19 (paired: the same seeds and the same
delay streams for every policy). Actions are the ONNX output clipped to the action bounds, as
during training. Two simulators of the delay:

* ``wrapper``: ``tailguard.firmware_sim.wrappers.ActionLatencyWrapper``, whole control steps
  (an action is late by the number of 8 ms deadlines its latency missed); episode ``s``
  seeds it with ``1000 + s``.
* ``firmware_sim``: the simulated-time loop (``tailguard.firmware_sim.replay``), where the
  latency is resolved at the physics substep (2 ms): the previous command is held until the
  new one arrives, inside the period.

Both draw the latency from the same timing-profile specs (ns).

Usage (from the repository root)::

    python -m tailguard.policies.evaluate_hopper guard/policies/hopper_nominal.onnx \
        guard/policies/hopper_robust.onnx --json /tmp/hopper_eval.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tailguard.firmware_sim.wrappers import ActionLatencyWrapper

PERIOD_NS = 8_000_000  # Hopper-v5's control period
CONDITIONS: dict[str, str | None] = {
    "nominal": None,
    "wrapper: fixed delay 1 step": "fixed:ms=8",
    "wrapper: lognormal tail (median 0.6 periods, sigma 1.0, cap 5 steps)": (
        "lognormal:median_ms=4.8,sigma=1.0,cap_ms=40"
    ),
}
FIRMWARE_SIM_PROFILES = {
    "firmware_sim: fixed 8 ms": "fixed:ms=8",
    "firmware_sim: lognormal median 4.8 ms, sigma 1.0, cap 40 ms": (
        "lognormal:median_ms=4.8,sigma=1.0,cap_ms=40"
    ),
}


class _ClippedOnnx:
    """firmware_sim controller: the ONNX policy with actions clipped to [-1, 1]."""

    def __init__(self, path: Path) -> None:
        from tailguard.firmware_sim.controllers import OnnxController

        self.inner = OnnxController(path)

    def __call__(self, obs: np.ndarray, obs_time_ns: int) -> np.ndarray:
        return np.clip(self.inner(obs, obs_time_ns), -1.0, 1.0)

    def reset(self) -> None:
        self.inner.reset()


def run_firmware_sim(path: Path, profile: str, episodes: int) -> list[float]:
    """Returns of ``episodes`` firmware_sim episodes (reset seeds 0..episodes-1)."""
    from tailguard.firmware_sim.replay import TimingSpec, build_loop, make_task, run_episodes

    loop = build_loop(make_task("Hopper-v5"), _ClippedOnnx(path), TimingSpec(latency=profile))
    return [float(r.ret) for r in run_episodes(loop, episodes, seed=0)]


def run_episode(session: Any, latency: str | None, seed: int) -> float:
    """Return the undiscounted return of one deterministic episode (``latency``: a spec)."""
    env = gym.make("Hopper-v5")
    if latency is not None:
        env = ActionLatencyWrapper(env, latency, period_ns=PERIOD_NS, seed=1000 + seed)
    obs, _ = env.reset(seed=seed)  # the wrapper passes the seed on: same initial state
    space = env.action_space
    if not isinstance(space, gym.spaces.Box):
        raise SystemExit(f"evaluate_hopper needs a Box action space, got {space}")
    low, high = space.low, space.high
    total = 0.0
    done = False
    while not done:
        action = session.run(None, {"obs": obs.astype(np.float32)[None, :]})[0][0]
        obs, reward, terminated, truncated, _ = env.step(np.clip(action, low, high))
        total += float(reward)
        done = terminated or truncated
    env.close()
    return total


def main() -> int:
    """Evaluate every policy under every condition; print a table, optionally write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("policies", nargs="+", type=Path)
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--no-firmware-sim", action="store_true", help="only the gymnasium wrapper conditions"
    )
    args = parser.parse_args()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    results: dict[str, dict[str, Any]] = {}
    for path in args.policies:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        results[path.name] = {}
        runs: list[tuple[str, Any]] = [
            (name, lambda d=delay, q=session: [run_episode(q, d, s) for s in range(args.episodes)])
            for name, delay in CONDITIONS.items()
        ]
        if not args.no_firmware_sim:
            runs += [
                (name, lambda p=spec, f=path: run_firmware_sim(f, p, args.episodes))
                for name, spec in FIRMWARE_SIM_PROFILES.items()
            ]
        for name, run in runs:
            returns = run()
            results[path.name][name] = {
                "mean": float(np.mean(returns)),
                "std": float(np.std(returns)),
                "returns": returns,
            }
            print(
                f"{path.name:22s} {name:70s} {np.mean(returns):8.1f} ± {np.std(returns):6.1f}",
                flush=True,
            )
    for policy, by_condition in results.items():
        nominal = by_condition["nominal"]["mean"]
        for name, entry in by_condition.items():
            entry["ratio_to_nominal"] = entry["mean"] / nominal if nominal else float("nan")
            if name != "nominal":
                print(f"{policy:22s} {name:70s} ratio {entry['ratio_to_nominal']:.3f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

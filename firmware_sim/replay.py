"""Multi-episode replay: build a loop from specs, run seeded episodes, summarize.

Episode ``i`` resets the environment with seed ``seed + i`` (reproducible with plain
gymnasium) and seeds its timing streams from the same number.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from firmware_sim.controllers import Controller
from firmware_sim.loop import EpisodeResult, SimLoop
from firmware_sim.profile_spec import parse_profile
from firmware_sim.profiles import DropSampler
from firmware_sim.tasks import MujocoTask, import_mujoco

__all__ = ["TimingSpec", "build_loop", "make_task", "run_episodes", "summarize"]


@dataclass(frozen=True)
class TimingSpec:
    """The timing conditions of a replay, as specs (see ``firmware_sim.profile_spec``).

    Attributes:
        latency: inference latency profile (nominal = 0).
        dt: control period profile (nominal = the env's period).
        obs_delay: observation age profile (nominal = 0).
        drop_prob: per-tick probability that a burst of lost commands starts.
        drop_burst: commands lost per burst.
    """

    latency: str = "nominal"
    dt: str = "nominal"
    obs_delay: str = "nominal"
    drop_prob: float = 0.0
    drop_burst: int = 1

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "latency": self.latency,
            "dt": self.dt,
            "obs_delay": self.obs_delay,
            "drop_prob": self.drop_prob,
            "drop_burst": self.drop_burst,
        }


def make_task(env_id: str) -> MujocoTask:
    """Make the gymnasium env ``env_id`` and wrap it for substep stepping."""
    _, gym = import_mujoco()
    return MujocoTask(gym.make(env_id))


def build_loop(task: MujocoTask, controller: Controller, timing: TimingSpec) -> SimLoop:
    """A :class:`SimLoop` with the profiles of ``timing`` (nominal ones cost nothing).

    Raises:
        ProfileError: a spec is invalid.
    """
    latency = parse_profile(timing.latency, nominal_ns=0)
    dt = parse_profile(timing.dt, nominal_ns=task.period_ns)
    obs_delay = parse_profile(timing.obs_delay, nominal_ns=0)
    drops = DropSampler(timing.drop_prob, timing.drop_burst)
    is_nominal = timing.latency.strip() == "nominal"
    return SimLoop(
        task,
        controller,
        latency=None if is_nominal else latency,
        dt=None if timing.dt.strip() == "nominal" else dt,
        obs_delay=None if timing.obs_delay.strip() == "nominal" else obs_delay,
        drops=drops,
    )


def run_episodes(
    loop: SimLoop,
    episodes: int,
    seed: int,
    on_episode: Callable[[int, EpisodeResult], None] | None = None,
) -> list[EpisodeResult]:
    """Run ``episodes`` episodes with reset seeds ``seed, seed + 1, ...``."""
    results = []
    for i in range(episodes):
        result = loop.run_episode(seed + i)
        results.append(result)
        if on_episode is not None:
            on_episode(i, result)
    return results


def summarize(results: list[EpisodeResult]) -> dict[str, Any]:
    """Mean/std/min/max of the return, mean length, fall rate, worst latency and smoothness."""
    if not results:
        return {"episodes": 0}
    rets = np.asarray([r.ret for r in results])
    return {
        "episodes": len(results),
        "return_mean": float(rets.mean()),
        "return_std": float(rets.std()),
        "return_min": float(rets.min()),
        "return_max": float(rets.max()),
        "length_mean": float(np.mean([r.length for r in results])),
        "fall_rate": float(np.mean([r.terminated for r in results])),
        "latency_p99_ns_max": max(r.latency_ns["p99"] for r in results),
        "dt_p99_ns_max": max(r.dt_ns["p99"] for r in results),
        "max_abs_daction": max(r.max_abs_daction for r in results),
        "max_abs_d2action": max(r.max_abs_d2action for r in results),
        "drops": sum(r.drops for r in results),
    }

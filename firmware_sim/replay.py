"""Multi-episode replay: build a loop from specs, run seeded episodes, summarize.

Episode ``i`` resets the environment with seed ``seed + i`` (reproducible with plain
gymnasium) and seeds its timing streams from the same number.

Environments: a gymnasium MuJoCo id (``Hopper-v5`` ...) or ``mjcf:NAME_OR_PATH`` for a raw
MJCF robot under PD firmware (see ``tailguard.firmware_sim.pd_robot``). Guarded replay runs the
runtime
``Guard`` on the loop's simulated clock (see ``tailguard.firmware_sim.guarded``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from tailguard.envelope.period import require_period
from tailguard.errors import TailguardError
from tailguard.firmware_sim.controllers import Controller
from tailguard.firmware_sim.loop import EpisodeResult, SimLoop
from tailguard.firmware_sim.profile_spec import parse_profile
from tailguard.firmware_sim.profiles import DropSampler
from tailguard.firmware_sim.tasks import MujocoTask, Task, import_mujoco

if TYPE_CHECKING:
    from tailguard.firmware_sim.guarded import GuardedController

__all__ = [
    "GuardSpec",
    "TimingSpec",
    "build_guarded",
    "build_loop",
    "make_task",
    "run_episodes",
    "summarize",
]

MJCF_PREFIX = "mjcf:"


@dataclass(frozen=True)
class TimingSpec:
    """The timing conditions of a replay, as specs (see ``tailguard.firmware_sim.profile_spec``).

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


@dataclass(frozen=True)
class GuardSpec:
    """How the guard runs in a replay.

    Attributes:
        envelope: envelope JSON path, or None for the policy's starter envelope
            (``guard.starter_envelope``: placeholder thresholds, not audited).
        fallback: ``"hold"``, ``"zero"`` or the path of a second (timing-robust) ONNX policy.
        deadline_ns: deadline mode in simulated time, ns, or None.
    """

    envelope: str | None = None
    fallback: str = "hold"
    deadline_ns: int | None = None


def make_task(env_id: str) -> Task:
    """Make the task ``env_id``: a gymnasium MuJoCo id, or ``mjcf:NAME_OR_PATH``.

    Raises:
        TailguardError: unknown env, unreadable model.
    """
    if env_id.startswith(MJCF_PREFIX):
        from tailguard.firmware_sim.pd_robot import PdRobotTask

        return PdRobotTask.from_name(env_id[len(MJCF_PREFIX) :])
    _, gym = import_mujoco()
    try:
        env = gym.make(env_id)
    except Exception as exc:  # gymnasium raises its own error types for unknown ids
        raise TailguardError(f"cannot make env '{env_id}': {exc}") from None
    return MujocoTask(env)


def build_guarded(
    task: Task, policy_path: str, spec: GuardSpec
) -> tuple[GuardedController, dict[str, Any]]:
    """A :class:`GuardedController` for ``policy_path`` on ``task``, and its JSON description.

    Raises:
        PolicyLoadError: the policy or fallback policy cannot be loaded.
        EnvelopeError, HashMismatchError: the envelope does not fit the policy or the task.
        TailguardError: an unknown fallback.
    """
    from tailguard.envelope.model import load_envelope, starter_envelope
    from tailguard.firmware_sim.guarded import GuardedController
    from tailguard.runtime.policy import OnnxPolicy

    policy = OnnxPolicy(policy_path)
    info: dict[str, Any] = {"enabled": True}
    if spec.envelope is None:
        envelope = starter_envelope(
            obs_size=policy.obs_size,
            action_size=policy.action_size,
            period_ns=task.period_ns,
            sha256=policy.sha256,
            action_low=[float(v) for v in task.action_low],
            action_high=[float(v) for v in task.action_high],
        )
        info["envelope"] = {
            "source": "starter",
            "note": "no --envelope given: the policy's starter envelope (guard.starter_envelope"
            "), PLACEHOLDER thresholds from the control period, not audited",
        }
    else:
        envelope = load_envelope(spec.envelope)
        info["envelope"] = {"source": "file", "path": spec.envelope}
        require_period(
            envelope, task.period_ns, where="the env's control period", path=spec.envelope
        )
    fallback: Any
    if spec.fallback in ("hold", "zero"):
        fallback = spec.fallback
        info["fallback"] = spec.fallback
    elif spec.fallback.endswith(".onnx"):
        fallback = OnnxPolicy(spec.fallback)
        info["fallback"] = {"policy": spec.fallback, "sha256": fallback.sha256}
    else:
        raise TailguardError(
            f"unknown fallback '{spec.fallback}'; valid choices are ['hold', 'zero'] or the "
            "path of a .onnx policy"
        )
    info["deadline_ns"] = spec.deadline_ns
    info["deadline_mode"] = "inline (simulated time)" if spec.deadline_ns else None
    try:
        controller = GuardedController(
            policy, envelope, fallback=fallback, deadline_ns=spec.deadline_ns
        )
    except ValueError as exc:
        raise TailguardError(str(exc)) from None
    return controller, info


def build_loop(task: Task, controller: Controller, timing: TimingSpec) -> SimLoop:
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
        **_guard_summary(results),
    }


def _guard_summary(results: list[EpisodeResult]) -> dict[str, Any]:
    """Guard totals over the episodes (empty without a guard)."""
    stats = [r.guard for r in results if r.guard is not None]
    if not stats:
        return {}
    violations: dict[str, int] = {}
    for s in stats:
        for kind, n in s["violations"].items():
            violations[kind] = violations.get(kind, 0) + n
    return {
        "guard_interventions": sum(s["interventions"] for s in stats),
        "guard_deadline_misses": sum(s["deadline_misses"] for s in stats),
        "guard_violations": dict(sorted(violations.items())),
    }

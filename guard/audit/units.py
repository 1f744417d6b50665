"""Work units: one condition x a block of episode indices, runnable in any process.

A :class:`WorkUnit` carries everything needed to rebuild its loop from scratch (env id,
policy file, condition, seeds, guard settings), so any executor — in-process, a local process
pool, a cluster — runs it to the same :class:`EpisodeOutcome` values. Each unit builds its own
loop (a fresh simulated clock) and runs its episodes in index order, so a result does not
depend on which process ran it nor on what ran before.

Common random numbers: episode ``i`` resets the env with ``seed + i`` and seeds every
timing stream from the same number (``SimLoop``), under every condition.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tailguard.audit.conditions import Condition

__all__ = ["EpisodeOutcome", "GuardSettings", "Target", "UnitResult", "WorkUnit", "run_unit"]


@dataclass(frozen=True)
class Target:
    """What every unit of an audit shares.

    Attributes:
        env: env id (see ``tailguard.audit.tasks.make_audit_task``).
        policy: path of the ONNX policy.
        seed: base seed: episode ``i`` uses ``seed + i``.
    """

    env: str
    policy: str
    seed: int = 0


@dataclass(frozen=True)
class GuardSettings:
    """Run the runtime guard in the loop (certify).

    Attributes:
        envelope: the envelope as JSON data (``Envelope.to_dict()``).
        fallback: ``"hold"``, ``"zero"`` or the path of a fallback ONNX policy.
        keep_ticks: keep the per-tick guard state (for the report's timeline).
    """

    envelope: dict[str, Any]
    fallback: str = "hold"
    keep_ticks: bool = False


@dataclass(frozen=True)
class WorkUnit:
    """One condition x episodes ``[start, stop)``.

    Attributes:
        target: env, policy, seed.
        condition: the timing condition.
        index: the condition's position in the sweep (orders results).
        start, stop: episode indices.
        guard: guard settings, or None for the bare policy.
        tag: free label (e.g. ``"guarded"``), kept in the result.
    """

    target: Target
    condition: Condition
    index: int
    start: int
    stop: int
    guard: GuardSettings | None = None
    tag: str = ""


@dataclass
class EpisodeOutcome:
    """What the audit keeps of one episode.

    Attributes:
        episode: episode index (reset seed = base seed + episode).
        ret, length, fell: return, ticks, the env's termination rule fired.
        faults: ticks where the policy raised or returned a non-finite action (the previous
            command was held instead).
        latency_ns, dt_ns, obs_age_ns: per-tick samples, int64.
        max_abs_daction: per action element, max |a_t - a_{t-1}| of the policy outputs.
        max_norm_daction, max_norm_d2action: max ||a_t - a_{t-1}|| and
            ||a_t - 2 a_{t-1} + a_{t-2}|| over the executed commands (smoothness).
        max_overrun_streak: longest run of ticks whose latency exceeded the period.
        out_of_bounds_ticks: ticks whose policy output left the env's action bounds (the
            env clamps it; the envelope's bound check must not count that as a fault).
        guard: per-episode guard statistics (guarded units only).
        guard_states: per-tick guard state (``keep_ticks`` only).
        observations, actions: per tick, what the policy saw and returned, float32
            (n, obs_dim) and (n, act_dim) (bare units only): the failure detectors'
            thresholds are derived from them (``tailguard.audit.derive``).
    """

    episode: int
    ret: float
    length: int
    fell: bool
    faults: int
    latency_ns: np.ndarray
    dt_ns: np.ndarray
    obs_age_ns: np.ndarray
    max_abs_daction: np.ndarray
    max_norm_daction: float
    max_norm_d2action: float
    max_overrun_streak: int
    out_of_bounds_ticks: int = 0
    guard: dict[str, Any] | None = None
    guard_states: list[str] | None = None
    observations: np.ndarray | None = None
    actions: np.ndarray | None = None


@dataclass
class UnitResult:
    """A unit's outcomes, in episode order."""

    unit: WorkUnit
    episodes: list[EpisodeOutcome] = field(default_factory=list)


class _FaultCounting:
    """The bare policy, made fault-tolerant: an exception or a non-finite action is
    counted and the previous command is held (the audit finishes; the condition FAILs)."""

    def __init__(self, inner: Any, nu: int) -> None:
        self.inner = inner
        self.nu = nu
        self.faults = 0
        self._last = np.zeros(nu, np.float32)
        self.seen: list[np.ndarray] = []  # the observations of the episode, as decided on

    def __call__(self, obs: np.ndarray, obs_time_ns: int) -> np.ndarray:
        self.seen.append(np.array(obs, dtype=np.float32).reshape(-1))
        try:
            action = np.asarray(self.inner(obs, obs_time_ns), np.float32).reshape(-1)
        except Exception:  # a policy fault is data for the audit, not a crash
            self.faults += 1
            return self._last
        if action.size != self.nu or not np.all(np.isfinite(action)):
            self.faults += 1
            return self._last
        self._last = action
        return action

    def reset(self) -> None:
        self.faults = 0
        self._last = np.zeros(self.nu, np.float32)
        self.seen = []
        reset = getattr(self.inner, "reset", None)
        if reset is not None:
            reset()


_TASKS: dict[str, Any] = {}
_SESSIONS: dict[str, Any] = {}


def task_for(env: str) -> Any:
    """One task per env per process (reset per episode; building one takes a while). Forked
    workers inherit the parent's, built before the pool starts."""
    from tailguard.audit.tasks import make_audit_task

    if env not in _TASKS:
        _TASKS[env] = make_audit_task(env)
    return _TASKS[env]


class _Recurrent:
    """A recurrent ONNX policy (RSL-RL ``h_in``/``c_in`` state) outside the guard: the state
    is carried across ticks and zeroed at every episode start."""

    def __init__(self, path: str) -> None:
        from tailguard.runtime.policy import OnnxPolicy

        self.policy = OnnxPolicy(path)

    def __call__(self, obs: np.ndarray, obs_time_ns: int) -> np.ndarray:
        return self.policy(obs)[0]

    def reset(self) -> None:
        self.policy.reset_state()


def _session(policy: str) -> Any:
    """One plain onnxruntime session per policy file per process (feed-forward policies are
    stateless between calls; recurrent ones are reset per episode)."""
    from tailguard.firmware_sim.controllers import OnnxController

    if policy not in _SESSIONS:
        plain = OnnxController(policy)
        recurrent = len(plain.session.get_inputs()) > 1
        _SESSIONS[policy] = _Recurrent(policy) if recurrent else plain
    return _SESSIONS[policy]


def _controller(unit: WorkUnit, task: Any) -> Any:
    if unit.guard is None:
        return _FaultCounting(_session(unit.target.policy), task.nu)
    from tailguard.envelope.model import envelope_from_dict
    from tailguard.firmware_sim.guarded import GuardedController
    from tailguard.runtime.policy import OnnxPolicy

    g = unit.guard
    fallback: Any = g.fallback
    if fallback not in ("hold", "zero"):
        fallback = OnnxPolicy(fallback)
    return GuardedController(
        OnnxPolicy(unit.target.policy),
        envelope_from_dict(g.envelope),
        fallback=fallback,
        keep_ticks=g.keep_ticks,
    )


def _longest_run(mask: np.ndarray) -> int:
    if not mask.any():
        return 0
    padded = np.concatenate(([0], mask.astype(np.int8), [0]))
    edges = np.flatnonzero(np.diff(padded))
    return int((edges[1::2] - edges[::2]).max())


def _out_of_bounds(actions: np.ndarray, task: Any) -> int:
    low = np.asarray(task.action_low, np.float64)
    high = np.asarray(task.action_high, np.float64)
    if not actions.size:
        return 0
    return int(np.count_nonzero(np.any((actions < low) | (actions > high), axis=1)))


def run_unit(unit: WorkUnit) -> UnitResult:
    """Run one unit in this process (the executors call this)."""
    from tailguard.firmware_sim.replay import build_loop

    task = task_for(unit.target.env)
    controller = _controller(unit, task)
    loop = build_loop(task, controller, unit.condition.timing())
    period_ns = task.period_ns
    out = UnitResult(unit)
    for i in range(unit.start, unit.stop):
        r = loop.run_episode(unit.target.seed + i, trace=True)
        tr = r.trace
        assert tr is not None  # trace=True always returns one
        acts = np.asarray(tr.actions, np.float64)
        executed = acts[np.asarray(tr.applied_ns) >= 0]
        d1 = np.diff(executed, axis=0)
        d2 = np.diff(executed, n=2, axis=0)
        da = np.abs(np.diff(acts, axis=0))
        lat = np.asarray(tr.latency_ns, np.int64)
        faults = getattr(controller, "faults", 0)
        seen = getattr(controller, "seen", None)
        observations = np.stack(seen) if seen and len(seen) == len(acts) else None
        guard = r.guard
        if guard is not None:
            faults = int(guard["violations"].get("policy_error", 0)) + int(
                guard["violations"].get("action_nonfinite", 0)
            )
        out.episodes.append(
            EpisodeOutcome(
                episode=i,
                ret=float(r.ret),
                length=int(r.length),
                fell=bool(r.terminated),
                faults=int(faults),
                latency_ns=lat,
                dt_ns=np.diff(np.asarray(tr.tick_ns, np.int64)),
                obs_age_ns=np.asarray(tr.obs_age_ns, np.int64),
                max_abs_daction=da.max(0) if da.size else np.zeros(acts.shape[1]),
                max_norm_daction=float(np.linalg.norm(d1, axis=1).max()) if d1.size else 0.0,
                max_norm_d2action=float(np.linalg.norm(d2, axis=1).max()) if d2.size else 0.0,
                max_overrun_streak=_longest_run(lat > period_ns),
                out_of_bounds_ticks=_out_of_bounds(acts, task),
                guard=guard,
                guard_states=list(controller.tick_states)
                if getattr(controller, "keep_ticks", False)
                else None,
                observations=observations,
                actions=acts.astype(np.float32) if observations is not None else None,
            )
        )
    return out

"""The simulated-time control loop (hot path of offline replay).

One tick, in simulated time, on the loop's :class:`SimClock` (the single source of time):

1. physics runs up to the tick start (rounded up to the physics substep grid), applying a
   pending command at the substep boundary at or after its release time;
2. the env's termination rule is checked (after the first tick), then the episode horizon;
3. the controller sees the observation sampled ``obs_delay`` earlier (never older than the
   previous tick's observation) and returns an action;
4. the action is released ``latency`` after the tick start (the clock advances by it, see
   :class:`~tailguard.firmware_sim.controllers.SimulatedInference`; a guard in deadline mode
   releases
   its hold/fallback action at the deadline instead, see ``tailguard.firmware_sim.guarded``); a
   dropped frame loses it; the previous command holds until the new one is applied
   (zero-order hold, as firmware does);
5. the next tick starts ``dt`` after this one, or when this tick's inference ends if that
   is later: the loop is sequential, a slow tick delays the next one and missed ticks are
   not caught up.

The episode lasts ``max_episode_steps * period_ns`` of simulated time (1000 env steps for
the gymnasium tasks) or until the env terminates. Under nominal timing every segment is one
whole env step and the rollout equals the plain gymnasium rollout; with one period of
latency it equals the plain rollout with each action applied one env step late.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tailguard.firmware_sim.clock import SimClock
from tailguard.firmware_sim.controllers import Controller, SimulatedInference
from tailguard.firmware_sim.profiles import DropSampler, Profile
from tailguard.firmware_sim.tasks import Task
from tailguard.stats.percentile import percentiles

__all__ = ["EpisodeResult", "EpisodeTrace", "SimLoop", "percentiles_ns"]

# Independent random streams per episode: SeedSequence([seed, stream]).
_STREAM_LATENCY, _STREAM_DT, _STREAM_OBS, _STREAM_DROP = 1, 2, 3, 4


def percentiles_ns(values: list[int] | np.ndarray) -> dict[str, int]:
    """p50/p95/p99/max of integer ns values (zeros when empty), as a dict of ints.

    The percentiles are tailguard's one nearest-rank definition
    (:mod:`tailguard.stats.percentile`), the same the guard's histograms report.
    """
    if len(values) == 0:
        return {"p50": 0, "p95": 0, "p99": 0, "max": 0}
    arr = np.asarray(values, np.int64)
    q = percentiles(arr, (50, 95, 99))
    return {"p50": int(q[50.0]), "p95": int(q[95.0]), "p99": int(q[99.0]), "max": int(arr.max())}


@dataclass
class EpisodeTrace:
    """Per-tick records of one episode (times relative to the episode start, ns).

    Attributes:
        tick_ns: tick start times, int64 (n,).
        latency_ns: release time minus tick start, int64 (n,).
        obs_age_ns: tick start minus observation time, int64 (n,).
        dropped: bool (n,): the tick's command was lost.
        applied_ns: substep boundary at which the command took effect, -1 if never, (n,).
        actions: float (n, act_dim): the controller's outputs.
        ctrl_ns, ctrl: with ``substep_ctrl``: start time of every physics substep and the
            command applied during it, (m,) and (m, act_dim).
        sampled_latency_ns: the latency the profile drew for each tick, int64 (n,) (differs
            from ``latency_ns`` when a guard answered at its deadline).
    """

    tick_ns: np.ndarray
    latency_ns: np.ndarray
    obs_age_ns: np.ndarray
    dropped: np.ndarray
    applied_ns: np.ndarray
    actions: np.ndarray
    ctrl_ns: np.ndarray | None = None
    ctrl: np.ndarray | None = None
    sampled_latency_ns: np.ndarray | None = None


@dataclass
class EpisodeResult:
    """Outcome and timing facts of one simulated episode.

    Attributes:
        seed: the env reset seed.
        ret: episode return (sum of rewards).
        length: number of ticks (control periods) simulated.
        terminated: the env's termination rule fired (a fall).
        sim_time_ns: simulated time of the episode, ns.
        dt_ns, latency_ns, obs_age_ns: p50/p95/p99/max over the ticks, ns.
        drops: commands lost.
        max_abs_daction, max_abs_d2action: max |first / second difference| over the
            sequence of commands applied (smoothness).
        guard: ``controller.stats()`` when the controller has one (e.g. a Guard adapter).
        trace: per-tick records when requested.
    """

    seed: int
    ret: float
    length: int
    terminated: bool
    sim_time_ns: int
    dt_ns: dict[str, int]
    latency_ns: dict[str, int]
    obs_age_ns: dict[str, int]
    drops: int
    max_abs_daction: float
    max_abs_d2action: float
    guard: dict[str, Any] | None = None
    trace: EpisodeTrace | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no trace)."""
        out: dict[str, Any] = {
            "seed": self.seed,
            "return": self.ret,
            "length": self.length,
            "terminated": self.terminated,
            "sim_time_ns": self.sim_time_ns,
            "dt_ns": self.dt_ns,
            "latency_ns": self.latency_ns,
            "obs_age_ns": self.obs_age_ns,
            "drops": self.drops,
            "max_abs_daction": self.max_abs_daction,
            "max_abs_d2action": self.max_abs_d2action,
        }
        if self.guard is not None:
            out["guard"] = self.guard
        return out


class SimLoop:
    """Closes the loop around a controller in simulated time.

    Args:
        task: the environment, stepped at substep resolution.
        controller: decides the action each tick (see ``tailguard.firmware_sim.controllers``).
        latency: inference latency per tick (None: zero), ns.
        dt: control period per tick (None: the env's period), ns.
        obs_delay: observation age per tick (None: fresh), ns.
        drops: lost commands (None: none).
        clock: the simulated clock (one per loop, shared with e.g. a Guard). Episodes follow
            each other on it; it never goes backwards. A controller with its own
            ``inference`` (a :class:`SimulatedInference`, e.g.
            :class:`~tailguard.firmware_sim.guarded.GuardedController`) brings its clock and release
            model; the loop uses both (``clock`` must then be None or that clock).
        max_segment_substeps: split physics into segments of at most this many substeps
            (None: only where a command changes). Rewards stay consistent; for tests.
    """

    def __init__(
        self,
        task: Task,
        controller: Controller,
        *,
        latency: Profile | None = None,
        dt: Profile | None = None,
        obs_delay: Profile | None = None,
        drops: DropSampler | None = None,
        clock: SimClock | None = None,
        max_segment_substeps: int | None = None,
    ) -> None:
        self.task = task
        self.controller = controller
        self.latency = latency
        self.dt = dt
        self.obs_delay = obs_delay
        self.drops = drops if drops is not None and drops.enabled else None
        own = getattr(controller, "inference", None)
        if isinstance(own, SimulatedInference):
            # The controller models its own inference time (e.g. a guard in deadline mode).
            if clock is not None and clock is not own.clock:
                raise ValueError("the controller's inference runs on another clock than the loop's")
            self.clock = own.clock
            self.inference = own
        else:
            self.clock = clock if clock is not None else SimClock()
            self.inference = SimulatedInference(self.clock)
        self.horizon_ns = task.max_episode_steps * task.period_ns
        if max_segment_substeps is not None and max_segment_substeps < 1:
            raise ValueError(f"max_segment_substeps must be >= 1, got {max_segment_substeps}")
        self.max_segment_substeps = max_segment_substeps

    def _reseed(self, seed: int) -> None:
        for profile, stream in (
            (self.latency, _STREAM_LATENCY),
            (self.dt, _STREAM_DT),
            (self.obs_delay, _STREAM_OBS),
            (self.drops, _STREAM_DROP),
        ):
            if profile is not None:
                profile.reseed(np.random.SeedSequence([seed, stream]))

    def run_episode(
        self, seed: int, *, trace: bool = False, substep_ctrl: bool = False
    ) -> EpisodeResult:
        """Run one episode from ``env.reset(seed=seed)``.

        Args:
            seed: env reset seed; the timing streams are seeded from it too.
            trace: keep per-tick records in ``result.trace``.
            substep_ctrl: also record the command of every physics substep (slow; tests).

        Returns:
            The episode's result.
        """
        task, clock, inference = self.task, self.clock, self.inference
        self._reseed(seed)
        self.controller.reset()
        # A controller may offer a cheaper per-tick callable (fetched after reset).
        decide = getattr(self.controller, "decide", self.controller)
        obs = task.reset(seed)
        start_ns = clock()
        sub_ns = task.substep_ns
        period_ns = task.period_ns
        horizon_ns = self.horizon_ns
        latency, dt_prof, drops = self.latency, self.dt, self.drops
        obs_prof = self.obs_delay
        fine = self.max_segment_substeps
        # Bound once: a method lookup per tick is measurable at ~100k physics steps/s.
        observe, run = task.observe, task.run
        arm, settle, clock_set = inference.arm, inference.settle, clock.set
        action_dtype = task.action_dtype
        next_latency = latency.next_ns if latency is not None else None
        next_dt = dt_prof.next_ns if dt_prof is not None else None

        # Observation history (relative time, obs), only with an observation delay.
        history: deque[tuple[int, np.ndarray]] = deque()
        if obs_prof is not None:
            history.append((0, obs))
        ctrl_times: list[int] = []
        ctrl_log: list[np.ndarray] = []
        seg_start_ns = 0

        def after_substep(i: int) -> None:
            t_ns = seg_start_ns + i * sub_ns
            if substep_ctrl:
                ctrl_times.append(t_ns)
                ctrl_log.append(command)
            if obs_prof is not None:
                history.append((t_ns + sub_ns, task.observe()))

        recorder = after_substep if (obs_prof is not None or substep_ctrl) else None

        command = np.zeros(task.nu, dtype=task.action_dtype)  # held until the first arrives
        pending: np.ndarray | None = None
        pending_at_ns = 0  # boundary at which ``pending`` takes effect
        pending_tick = -1
        phys_ns = 0
        ret = 0.0
        tick_ns = 0
        last_obs_ns = 0
        k = 0
        terminated = False

        ticks: list[int] = []
        lat_list: list[int] = []
        sampled: list[int] = []
        age_list: list[int] = []
        drop_flags: list[bool] = []
        applied_at: list[int] = []
        actions: list[np.ndarray] = []
        applied_cmds: list[np.ndarray] = []
        n_drops = 0

        while True:
            # 1. physics up to the tick start, applying the pending command on its boundary.
            target = -(-tick_ns // sub_ns) * sub_ns
            while phys_ns < target or (pending is not None and pending_at_ns <= phys_ns):
                if pending is not None and pending_at_ns <= phys_ns:
                    command = pending
                    pending = None
                    applied_cmds.append(command)
                    if trace:
                        applied_at[pending_tick] = phys_ns
                    continue
                stop = target if pending is None else min(target, pending_at_ns)
                n = (stop - phys_ns) // sub_ns
                if fine is not None:
                    n = min(n, fine)
                seg_start_ns = phys_ns
                ret += run(command, n, recorder)
                phys_ns += n * sub_ns
            # 2. termination (the env checks after each step), then the horizon.
            if k > 0 and task.terminated():
                terminated = True
                break
            if tick_ns >= horizon_ns:
                break
            # 3. observe and decide, on the simulated clock.
            clock_set(start_ns + tick_ns)
            if obs_prof is not None:
                # Sampled at tick - delay (never before the previous observation); the
                # state is the one at the first substep boundary at or after that time.
                obs_ns = max(tick_ns - obs_prof.next_ns(), last_obs_ns)
                obs_at_ns = -(-obs_ns // sub_ns) * sub_ns
                while len(history) > 1 and history[1][0] <= obs_at_ns:
                    history.popleft()
                obs = history[0][1]
                last_obs_ns = obs_ns
            else:
                obs = observe()
                obs_ns = tick_ns
            lat_ns = next_latency() if next_latency is not None else 0
            arm(lat_ns)
            action = decide(obs, start_ns + obs_ns)
            release_ns = settle() - start_ns
            # 4. the command travels to the firmware unless the frame is dropped.
            dropped = drops.next_drop() if drops is not None else False
            if dropped:
                n_drops += 1
            else:
                pending = np.array(action, dtype=action_dtype, copy=True)
                pending_at_ns = -(-release_ns // sub_ns) * sub_ns
                pending_tick = k
            ticks.append(tick_ns)
            lat_list.append(release_ns - tick_ns)
            age_list.append(tick_ns - obs_ns)
            if trace:
                sampled.append(lat_ns)
                drop_flags.append(dropped)
                applied_at.append(-1)
                actions.append(np.array(action, copy=True))
            # 5. next tick: after dt, but not before this tick's inference ended (nor before
            # the clock: a deadline miss leaves it 1 ns past the release time).
            step_ns = next_dt() if next_dt is not None else period_ns
            tick_ns = max(tick_ns + step_ns, release_ns, clock() - start_ns)
            k += 1

        clock.set(max(clock(), start_ns + phys_ns))
        return self._result(
            seed, ret, k, terminated, phys_ns, ticks, lat_list, age_list, n_drops,
            applied_cmds, drop_flags, applied_at, actions, ctrl_times, ctrl_log,
            trace, substep_ctrl, sampled,
        )  # fmt: skip

    def _result(
        self,
        seed: int,
        ret: float,
        length: int,
        terminated: bool,
        phys_ns: int,
        ticks: list[int],
        lat_list: list[int],
        age_list: list[int],
        n_drops: int,
        applied_cmds: list[np.ndarray],
        drop_flags: list[bool],
        applied_at: list[int],
        actions: list[np.ndarray],
        ctrl_times: list[int],
        ctrl_log: list[np.ndarray],
        trace: bool,
        substep_ctrl: bool,
        sampled: list[int],
    ) -> EpisodeResult:
        cmds = np.asarray(applied_cmds, np.float64).reshape(len(applied_cmds), self.task.nu)
        d1 = np.abs(np.diff(cmds, axis=0))
        d2 = np.abs(np.diff(cmds, n=2, axis=0))
        stats = getattr(self.controller, "stats", None)
        episode_trace = None
        if trace:
            episode_trace = EpisodeTrace(
                tick_ns=np.asarray(ticks, np.int64),
                latency_ns=np.asarray(lat_list, np.int64),
                obs_age_ns=np.asarray(age_list, np.int64),
                dropped=np.asarray(drop_flags, bool),
                applied_ns=np.asarray(applied_at, np.int64),
                actions=np.asarray(actions, np.float64).reshape(len(actions), self.task.nu),
                ctrl_ns=np.asarray(ctrl_times, np.int64) if substep_ctrl else None,
                ctrl=np.asarray(ctrl_log, np.float64).reshape(len(ctrl_log), self.task.nu)
                if substep_ctrl
                else None,
                sampled_latency_ns=np.asarray(sampled, np.int64),
            )
        return EpisodeResult(
            seed=seed,
            ret=float(ret),
            length=length,
            terminated=terminated,
            sim_time_ns=phys_ns,
            dt_ns=percentiles_ns(np.diff(np.asarray(ticks, np.int64))),
            latency_ns=percentiles_ns(lat_list),
            obs_age_ns=percentiles_ns(age_list),
            drops=n_drops,
            max_abs_daction=float(d1.max()) if d1.size else 0.0,
            max_abs_d2action=float(d2.max()) if d2.size else 0.0,
            guard=dict(stats()) if callable(stats) else None,
            trace=episode_trace,
        )

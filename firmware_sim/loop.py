"""The simulated-time control loop (hot path of offline replay).

What the simulator models. One tick, in simulated time, on the loop's :class:`SimClock`
(the single source of time), every instant exact to the nanosecond:

1. physics runs up to the tick start; the pending command takes effect at its release
   instant, never on a rounded one;
2. the env's termination rule is judged on the env's own step grid (every
   ``period_ns = frame_skip`` substeps since reset, as gymnasium checks after each
   ``env.step``), wherever the ticks fall; the episode ends at the first step boundary where
   it holds, or at the horizon ``max_episode_steps * period_ns``;
3. the controller sees the state exactly ``obs_delay`` before the tick start (never older
   than the previous tick's observation); the same instant is the timestamp handed to it
   (``obs_time_ns``, a guard's ``obs_timestamp_ns``) and the ``obs_age_ns`` in the trace and
   JSON;
4. the action is released ``latency`` after the tick start (the clock advances by it, see
   :class:`~tailguard.firmware_sim.controllers.SimulatedInference`; a guard in deadline mode
   releases its hold/fallback action at the deadline instead, see
   ``tailguard.firmware_sim.guarded``); a dropped frame loses it; the previous command holds
   until the new one takes effect (zero-order hold, as firmware does);
5. the next tick starts ``dt`` after this one, or when this tick's inference ends if that
   is later: the loop is sequential, a slow tick delays the next one and missed ticks are
   not caught up.

How exact instants are simulated (chosen over stepping at a separate actuation rate, which
would change the integration step of the task and so its dynamics even under nominal
timing). MuJoCo integrates in fixed substeps (2 ms on Hopper, 10 ms on HalfCheetah). A
command released inside a substep splits that one substep in two integration steps: the
old command for the part before the release, the new one for the rest, each run as one
``mj_step`` with ``model.opt.timestep`` shortened to its part and restored right after
(``run_ns`` of the task). The grid is kept: the two parts add up to the substep, so every
later substep and env step boundary stays where gymnasium has it. What this does to MuJoCo:

- the integrators (Euler, implicit, RK4) read ``opt.timestep`` at each call and carry
  nothing across steps but the state, so a split step is two ordinary, shorter steps of the
  same method, with the same per-step error order; the trajectory is not bit-identical to
  an unsplit one even where the command would not change, which is why steps are split only
  where a command does change;
- the constraint solver's warm start (``qacc_warmstart``) is an acceleration, as good a
  first guess for a short step as for a full one; the solver converges to its tolerance
  either way;
- soft contacts: with ``refsafe`` (on by default) MuJoCo raises a constraint time constant
  below ``2 * timestep`` to that value. A shorter step never raises it more than the full
  step does: for the gymnasium models (time constant 0.02 s >= 2 * substep) split and
  unsplit steps see the same contact softness; a model whose time constant is below
  ``2 * substep`` gets stiffer contacts (closer to its own value) during the short parts.

An observation (or a tick start) between step boundaries does not split the physics: the
state at that instant is integrated ahead on a scratch copy from the last step boundary
(``observe_ahead``, one extra ``mj_step``), so looking at the robot never changes its
trajectory. With an observation delay the loop keeps the integration state of every step
boundary back to the previous observation.

Physics never runs past the end of the episode: a command released at or after it is never
applied (``applied_ns`` -1) and does not enter the smoothness metric; a latency of 1000 s
costs one tick, not 1000 s of physics. Paired episodes that do not fall end at the same
simulated time and ``env_steps`` whatever their timing. Control period profiles whose
median is below :data:`MIN_PERIOD_NS` are refused (a zero period never ends an episode).

Under nominal timing every segment is one whole env step and the rollout equals the plain
gymnasium rollout bit for bit; with one period of latency it equals the plain rollout with
each action applied one env step late. Tasks that cannot split a step (no ``run_ns``,
``save_state``, ``observe_ahead``) run at grid resolution: every instant rounded up to the
task's substep grid (``SimLoop.exact_timing`` is False).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tailguard.errors import ConfigError
from tailguard.firmware_sim.clock import SimClock
from tailguard.firmware_sim.controllers import Controller, SimulatedInference
from tailguard.firmware_sim.profiles import DropSampler, Profile
from tailguard.firmware_sim.tasks import Task
from tailguard.stats.percentile import percentiles

__all__ = ["EpisodeResult", "EpisodeTrace", "SimLoop", "percentiles_ns"]

# Independent random streams per episode: SeedSequence([seed, stream]).
_STREAM_LATENCY, _STREAM_DT, _STREAM_OBS, _STREAM_DROP = 1, 2, 3, 4
_STREAM_CONTROLLER = 5  # the controller's own inference model (a guard's fallback latency)

_EXACT_TASK_METHODS = ("run_ns", "save_state", "observe_ahead")

#: shortest median control period a dt profile may have, ns (a 1 MHz loop)
MIN_PERIOD_NS = 1_000


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
        env_steps: env steps simulated, ``sim_time_ns // period_ns``: the horizon's
            ``max_episode_steps`` unless the env terminated (the same for paired episodes
            that do not fall, whatever their timing; ``length`` counts ticks).
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
    env_steps: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no trace)."""
        out: dict[str, Any] = {
            "seed": self.seed,
            "return": self.ret,
            "length": self.length,
            "terminated": self.terminated,
            "sim_time_ns": self.sim_time_ns,
            "env_steps": self.env_steps,
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
        if task.period_ns <= 0 or task.substep_ns <= 0 or task.period_ns % task.substep_ns:
            raise ConfigError(
                f"task period {task.period_ns} ns must be a positive multiple of its physics "
                f"step {task.substep_ns} ns"
            )
        if dt is not None:
            median_ns = dt.quantile_ns(0.5)
            if median_ns < MIN_PERIOD_NS:
                raise ConfigError(
                    f"control period profile {dt.spec!r} has a median of {median_ns} ns: ticks "
                    f"that do not move time forward never reach the episode's end; expected a "
                    f"median period of at least {MIN_PERIOD_NS} ns; the env's own period is "
                    f"{task.period_ns} ns ('nominal', or e.g. 'fixed:ns={task.period_ns}')"
                )
        own = getattr(controller, "inference", None)
        if isinstance(own, SimulatedInference):
            # The controller models its own inference time (e.g. a guard in deadline mode).
            if clock is not None and clock is not own.clock:
                raise ConfigError(
                    "the controller's inference runs on another clock than the loop's; pass "
                    "clock=None or the controller's clock"
                )
            self.clock = own.clock
            self.inference = own
        else:
            self.clock = clock if clock is not None else SimClock()
            self.inference = SimulatedInference(self.clock)
        self.horizon_ns = task.max_episode_steps * task.period_ns
        if max_segment_substeps is not None and max_segment_substeps < 1:
            raise ConfigError(f"max_segment_substeps must be >= 1, got {max_segment_substeps}")
        self.max_segment_substeps = max_segment_substeps
        #: events at their exact times (the task can split a physics step), else rounded up
        #: to the task's substep grid
        self.exact_timing = all(
            callable(getattr(task, name, None))
            for name in ("run_ns", "save_state", "observe_ahead")
        )

    def _reseed(self, seed: int) -> None:
        for profile, stream in (
            (self.latency, _STREAM_LATENCY),
            (self.dt, _STREAM_DT),
            (self.obs_delay, _STREAM_OBS),
            (self.drops, _STREAM_DROP),
        ):
            if profile is not None:
                profile.reseed(np.random.SeedSequence([seed, stream]))
        reseed = getattr(self.inference, "reseed", None)
        if reseed is not None:
            reseed(np.random.SeedSequence([seed, _STREAM_CONTROLLER]))

    def run_episode(
        self, seed: int, *, trace: bool = False, substep_ctrl: bool = False
    ) -> EpisodeResult:
        """Run one episode from ``env.reset(seed=seed)``.

        Args:
            seed: env reset seed; the timing streams are seeded from it too.
            trace: keep per-tick records in ``result.trace``.
            substep_ctrl: also record the command of every integration step (slow; tests).

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
        exact = self.exact_timing
        latency, dt_prof, drops = self.latency, self.dt, self.drops
        obs_prof = self.obs_delay
        fine_ns = None if self.max_segment_substeps is None else self.max_segment_substeps * sub_ns
        # Bound once: a method lookup per tick is measurable at ~100k physics steps/s.
        observe = task.observe
        run_ns = task.run_ns if exact else self._grid_run_ns
        observe_ahead = task.observe_ahead if exact else None
        save_state = task.save_state if exact else None
        # A task whose observation is a function of the integration state alone.
        obs_of_state = getattr(task, "observe_state", None) if exact else None
        terminated_fn = task.terminated
        arm, settle, clock_set = inference.arm, inference.settle, clock.set
        action_dtype = task.action_dtype
        next_latency = latency.next_ns if latency is not None else None
        next_dt = dt_prof.next_ns if dt_prof is not None else None

        command = np.zeros(task.nu, dtype=task.action_dtype)  # held until the first arrives
        # Observation history, only with an observation delay: [t_ns, state, obs, command in
        # force from t_ns on], one entry per integration step boundary.
        history: deque[list[Any]] = deque()
        if obs_prof is not None:
            history.append([0, save_state() if exact else None, obs, command])
        ctrl_times: list[int] = []
        ctrl_log: list[np.ndarray] = []

        def after_step(t0_ns: int, t1_ns: int) -> None:
            if substep_ctrl:
                ctrl_times.append(t0_ns)
                ctrl_log.append(command)
            if obs_prof is not None:
                if obs_of_state is not None:  # the observation is made only if it is used
                    history.append([t1_ns, save_state(), None, command])  # type: ignore[misc]
                else:
                    history.append([t1_ns, save_state() if exact else None, observe(), command])

        recorder = after_step if (obs_prof is not None or substep_ctrl) else None

        pending: np.ndarray | None = None
        pending_at_ns = 0  # when ``pending`` takes effect (exact: its release time)
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
            # 1. Physics up to the tick start (exact: the last step boundary at or before it,
            # the observation is integrated ahead from there; grid: the substep boundary at or
            # after it), never past the horizon. Segments end at every env step boundary
            # (termination is judged there) and at the pending command's release, where it
            # takes effect; a release at the episode's end never takes effect.
            target_ns = tick_ns if exact else -(-tick_ns // sub_ns) * sub_ns
            if target_ns > horizon_ns:
                target_ns = horizon_ns
            while phys_ns < target_ns:
                if pending is not None and pending_at_ns <= phys_ns:
                    command = pending
                    pending = None
                    applied_cmds.append(command)
                    if trace:
                        applied_at[pending_tick] = phys_ns
                    if history and history[-1][0] == phys_ns:
                        history[-1][3] = command
                stop_ns = (phys_ns // period_ns + 1) * period_ns
                at_tick = False
                if target_ns < stop_ns:
                    stop_ns, at_tick = target_ns, True
                if pending is not None and pending_at_ns <= stop_ns:
                    stop_ns, at_tick = pending_at_ns, False
                if at_tick and stop_ns % sub_ns:
                    stop_ns -= stop_ns % sub_ns  # the tick's observation is a look ahead
                    if stop_ns <= phys_ns:
                        break
                if fine_ns is not None and stop_ns - phys_ns > fine_ns:
                    stop_ns = phys_ns + fine_ns
                ret += run_ns(command, phys_ns, stop_ns, recorder)
                phys_ns = stop_ns
                # 2. Termination, on the env's step grid (the env checks after each step).
                if phys_ns % period_ns == 0 and terminated_fn():
                    terminated = True
                    break
            if terminated or tick_ns >= horizon_ns:
                break
            if pending is not None and pending_at_ns <= phys_ns:
                # Released at the tick start or just before: in force from here on.
                command = pending
                pending = None
                applied_cmds.append(command)
                if trace:
                    applied_at[pending_tick] = pending_at_ns
                if history and history[-1][0] == phys_ns:
                    history[-1][3] = command
            # 3. Observe and decide, on the simulated clock.
            clock_set(start_ns + tick_ns)
            if obs_prof is not None:
                # Sampled at tick - delay (never before the previous observation).
                obs_ns = max(tick_ns - obs_prof.next_ns(), last_obs_ns)
                seen_ns = obs_ns if exact else -(-obs_ns // sub_ns) * sub_ns
                while len(history) > 1 and history[1][0] <= seen_ns:
                    history.popleft()
                t0_ns, state, obs, held = history[0]
                if seen_ns > t0_ns:  # between step boundaries (exact timing only)
                    obs = observe_ahead(held, seen_ns - t0_ns, state)  # type: ignore[misc]
                elif obs is None:
                    obs = obs_of_state(state)  # type: ignore[misc]
                last_obs_ns = obs_ns
            else:
                obs_ns = tick_ns
                if exact and phys_ns < tick_ns:
                    obs = observe_ahead(command, tick_ns - phys_ns)  # type: ignore[misc]
                else:
                    obs = observe()
            lat_ns = next_latency() if next_latency is not None else 0
            arm(lat_ns)
            action = decide(obs, start_ns + obs_ns)
            release_ns = settle() - start_ns
            # 4. The command travels to the firmware unless the frame is dropped.
            dropped = drops.next_drop() if drops is not None else False
            if dropped:
                n_drops += 1
            else:
                pending = np.array(action, dtype=action_dtype, copy=True)
                pending_at_ns = release_ns if exact else -(-release_ns // sub_ns) * sub_ns
                pending_tick = k
            ticks.append(tick_ns)
            lat_list.append(release_ns - tick_ns)
            age_list.append(tick_ns - obs_ns)
            if trace:
                sampled.append(lat_ns)
                drop_flags.append(dropped)
                applied_at.append(-1)
                actions.append(np.array(action, copy=True))
            # 5. Next tick: after dt, but not before this tick's inference ended (nor before
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

    def _grid_run_ns(
        self,
        ctrl: np.ndarray,
        start_ns: int,
        stop_ns: int,
        after_step: Callable[[int, int], None] | None,
    ) -> float:
        """``run_ns`` for a task without it: whole substeps only (grid timing)."""
        sub_ns = self.task.substep_ns
        hook = None
        if after_step is not None:

            def hook(i: int) -> None:
                after_step(start_ns + i * sub_ns, start_ns + (i + 1) * sub_ns)

        return self.task.run(ctrl, (stop_ns - start_ns) // sub_ns, hook)

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
            env_steps=phys_ns // self.task.period_ns,
        )

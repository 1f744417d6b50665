"""Gymnasium MuJoCo tasks stepped at physics-substep resolution.

:class:`MujocoTask` reaches into ``env.unwrapped`` (``model``, ``data``, ``frame_skip``) and
steps MuJoCo substeps itself, so a command can change between substeps. Rewards are computed
the way each environment computes them, for the stretch of time actually simulated:

- forward reward (Hopper, Walker2d, HalfCheetah, Ant, Swimmer, Humanoid): weight * (x_after -
  x_before) / env.dt, x as the env measures it (qpos[0], the main body's x, Humanoid's
  ``mass_center``); over a control period the segment terms telescope to exactly the env's
  (x_after - x_before) / env.dt;
- per-step terms: healthy reward, control cost and (Ant, Humanoid) contact cost, and for
  the envs without a forward term the env's whole per-step reward (InvertedPendulum's
  survival reward, InvertedDoublePendulum's alive bonus minus distance and velocity
  penalties, Reacher's and Pusher's distance and control terms, HumanoidStandup's height /
  timestep minus control and impact costs, each through the env's own ``_get_rew``) are
  evaluated at the end of each segment, weighted by segment length / frame_skip. A segment
  covering a whole env step gives exactly the env's value; finer segments give a
  time-weighted sum.

Termination is the env's own rule on the state at the end of the segment (``not is_healthy
and terminate_when_unhealthy``; InvertedPendulum: a non-finite state or |pole angle| > 0.2;
InvertedDoublePendulum: tip height <= 1); the loop judges it on the env's step grid.
Supported (:data:`SUPPORTED_ENVS`): Hopper-v5, Walker2d-v5, HalfCheetah-v5, Ant-v5,
Swimmer-v5, InvertedPendulum-v5, InvertedDoublePendulum-v5, Reacher-v5, Pusher-v5,
Humanoid-v5, HumanoidStandup-v5, and the v4 variants that compute the same reward
(HalfCheetah-v4, Swimmer-v4). Hopper-v4 and Walker2d-v4 pay the healthy reward on the
falling step too, and the other v4 envs compute their reward differently: they are refused
(the audit then runs them at whole-step resolution, which gives the env's own reward), as
are other envs; the ``UnsupportedEnvError`` names the supported ones.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from tailguard.errors import MissingExtraError, UnsupportedEnvError

__all__ = ["SUPPORTED_ENVS", "MujocoTask", "Task", "import_mujoco"]

#: unwrapped class name -> how its forward position is measured (locomotion envs, whose
#: per-step terms are the env's healthy reward, control cost and contact cost)
_X_SOURCE = {
    "HopperEnv": "qpos",
    "Walker2dEnv": "qpos",
    "HalfCheetahEnv": "qpos",
    "AntEnv": "body",
    "SwimmerEnv": "qpos",
}
#: versions whose reward differs from what the segment rewards reproduce (module.class):
#: Hopper-v4 and Walker2d-v4 also pay the healthy reward on the falling step
_REWARD_DIFFERS = {
    "gymnasium.envs.mujoco.hopper_v4.HopperEnv",
    "gymnasium.envs.mujoco.walker2d_v4.Walker2dEnv",
}
#: the same for envs whose other versions compute their reward differently (module.class);
#: "mass": the x of the env's ``mass_center`` (Humanoid-v5)
_X_SOURCE_V5 = {"gymnasium.envs.mujoco.humanoid_v5.HumanoidEnv": "mass"}


def _inverted_pendulum_terms(u: Any, ctrl: np.ndarray) -> tuple[Any, bool]:
    """InvertedPendulum-v5 ``step``: reward ``int(not terminated)``, terminated when the
    observation (qpos, qvel) is not finite or |qpos[1]| > 0.2."""
    data = u.data
    qpos, qvel = data.qpos, data.qvel
    healthy = bool(np.isfinite(qpos).all() and np.isfinite(qvel).all() and abs(qpos[1]) <= 0.2)
    return int(healthy), healthy


def _double_pendulum_terms(u: Any, ctrl: np.ndarray) -> tuple[Any, bool]:
    """InvertedDoublePendulum-v5 ``step``: the tip site's (x, y), terminated when y <= 1, the
    env's ``_get_rew(x, y, terminated)``."""
    x, _, y = u.data.site_xpos[0]
    terminated = bool(y <= 1)
    return u._get_rew(x, y, terminated)[0], not terminated


def _action_terms(u: Any, ctrl: np.ndarray) -> tuple[Any, bool]:
    """Reacher-v5 / Pusher-v5 ``step``: the env's ``_get_rew(action)``; never terminates."""
    return u._get_rew(ctrl)[0], True


def _standup_terms(u: Any, ctrl: np.ndarray) -> tuple[Any, bool]:
    """HumanoidStandup-v5 ``step``: the env's ``_get_rew(qpos[2], action)`` (height / physics
    timestep, control and impact costs, + 1); never terminates."""
    return u._get_rew(u.data.qpos[2], ctrl)[0], True


#: unwrapped class (module.name) -> the env's whole per-step reward and healthy flag on the
#: current state (envs without a forward term)
_STEP_TERMS: dict[str, Callable[[Any, np.ndarray], tuple[Any, bool]]] = {
    "gymnasium.envs.mujoco.inverted_pendulum_v5.InvertedPendulumEnv": _inverted_pendulum_terms,
    "gymnasium.envs.mujoco.inverted_double_pendulum_v5.InvertedDoublePendulumEnv": (
        _double_pendulum_terms
    ),
    "gymnasium.envs.mujoco.reacher_v5.ReacherEnv": _action_terms,
    "gymnasium.envs.mujoco.pusher_v5.PusherEnv": _action_terms,
    "gymnasium.envs.mujoco.humanoidstandup_v5.HumanoidStandupEnv": _standup_terms,
}
SUPPORTED_ENVS = (
    "Hopper-v5",
    "Walker2d-v5",
    "HalfCheetah-v5",
    "Ant-v5",
    "Swimmer-v5",
    "InvertedPendulum-v5",
    "InvertedDoublePendulum-v5",
    "Reacher-v5",
    "Pusher-v5",
    "Humanoid-v5",
    "HumanoidStandup-v5",
)


def _planar_obs_functions() -> dict[str, Any]:
    """The gymnasium ``_get_obs`` functions that ``_observe_planar`` reproduces."""
    out: dict[str, Any] = {}
    try:
        from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv
        from gymnasium.envs.mujoco.hopper_v5 import HopperEnv
        from gymnasium.envs.mujoco.swimmer_v5 import SwimmerEnv
        from gymnasium.envs.mujoco.walker2d_v5 import Walker2dEnv
    except ImportError:  # another gymnasium layout: use the env's own _get_obs
        return out
    for cls in (HalfCheetahEnv, HopperEnv, SwimmerEnv, Walker2dEnv):
        out[cls.__name__] = cls._get_obs
    return out


class Task(Protocol):
    """What :class:`~tailguard.firmware_sim.loop.SimLoop` steps: a MuJoCo model run substep by
    substep.

    Attributes:
        substep_ns: physics timestep, ns.
        period_ns: nominal control period, ns (a multiple of ``substep_ns``).
        max_episode_steps: episode horizon in control periods.
        nu: command size; action_dtype: its dtype; obs_size: observation size.
        action_low, action_high: command bounds, shape (nu,).

    A task that also has ``run_ns(ctrl, start_ns, stop_ns, after_step)``, ``save_state()``
    and ``observe_ahead(ctrl, duration_ns, state)`` (as :class:`MujocoTask` and
    ``PdRobotTask`` do) is simulated at exact event times; without them the loop rounds
    every event up to the substep grid (``SimLoop.exact_timing`` says which).
    """

    substep_ns: int
    period_ns: int
    max_episode_steps: int
    nu: int
    obs_size: int
    action_dtype: Any
    action_low: np.ndarray
    action_high: np.ndarray

    def reset(self, seed: int) -> np.ndarray:
        """Reset with ``seed``; return the first observation."""
        ...

    def run(
        self,
        ctrl: np.ndarray,
        n_substeps: int,
        after_substep: Callable[[int], None] | None = None,
    ) -> float:
        """Apply ``ctrl`` for ``n_substeps`` physics steps; return the segment's reward."""
        ...

    def observe(self) -> np.ndarray:
        """The observation of the current state."""
        ...

    def terminated(self) -> bool:
        """The termination (fall) rule on the current state."""
        ...


_PLANAR_OBS: dict[str, Any] | None = None


def import_mujoco() -> tuple[Any, Any]:
    """Import ``mujoco`` and ``gymnasium`` lazily, with one clear message if missing."""
    try:
        import gymnasium
        import mujoco
    except ImportError as exc:
        raise MissingExtraError(exc.name or "mujoco", "sim", "firmware_sim replay") from None
    return mujoco, gymnasium


class MujocoTask:
    """A gymnasium MuJoCo env driven substep by substep.

    Args:
        env: a made gymnasium env (wrappers allowed); reset goes through it, stepping
            bypasses it.

    Attributes:
        substep_ns: physics timestep, ns.
        period_ns: the env's control period (frame_skip substeps), ns.
        max_episode_steps: the env's TimeLimit (1000 if the spec has none).
    """

    def __init__(self, env: Any) -> None:
        mujoco, _ = import_mujoco()
        self._mj_step = mujoco.mj_step
        self._rne_post = mujoco.mj_rnePostConstraint
        self.env = env
        u = env.unwrapped
        global _PLANAR_OBS
        if _PLANAR_OBS is None:
            _PLANAR_OBS = _planar_obs_functions()
        name = type(u).__name__
        qualified = f"{type(u).__module__}.{name}"
        terms = _STEP_TERMS.get(qualified)
        x_source = _X_SOURCE.get(name) or _X_SOURCE_V5.get(qualified)
        if qualified in _REWARD_DIFFERS or (
            terms is None and (x_source is None or not hasattr(u, "_forward_reward_weight"))
        ):
            # (Ant-v4 has no forward weight: another reward)
            raise UnsupportedEnvError(
                f"environment {env.spec.id if env.spec else name} is not supported by the "
                f"substep simulator; supported: {list(SUPPORTED_ENVS)}"
            )
        self.u = u
        self.model, self.data = u.model, u.data
        self.frame_skip = int(u.frame_skip)
        self._opt = self.model.opt  # a view of the model's options, kept for _short_step
        self._timestep_s = float(self._opt.timestep)
        self.substep_ns = round(self._timestep_s * 1e9)
        self.period_ns = self.substep_ns * self.frame_skip
        self.env_dt = float(u.dt)
        spec = getattr(env, "spec", None)
        self.max_episode_steps = int(getattr(spec, "max_episode_steps", None) or 1000)
        self.nu = int(self.model.nu)
        self.action_dtype = env.action_space.dtype
        self.action_low = np.asarray(env.action_space.low, np.float64)
        self.action_high = np.asarray(env.action_space.high, np.float64)
        self.obs_size = int(np.prod(env.observation_space.shape))
        #: the env's per-step reward and healthy flag (envs without a forward term), or None
        self._terms = terms
        self._w_forward = 0.0 if terms is not None else float(u._forward_reward_weight)
        self._has_health = terms is None and hasattr(u, "_healthy_reward")
        # The pendulums always end on their rule; Reacher and Pusher are always healthy.
        self._terminate = terms is not None or bool(getattr(u, "_terminate_when_unhealthy", False))
        self._has_contact = hasattr(u, "_contact_cost_weight")
        self._body_x = x_source == "body"
        self._plain_x = x_source in ("qpos", None)  # x is qpos[0] (or unused)
        self._mass_center: Any = None
        if x_source == "mass":  # the env module's own function, for the env's exact sum
            self._mass_center = sys.modules[type(u).__module__].mass_center
        self._main_body = getattr(u, "_main_body", 1)
        # gymnasium calls mj_rnePostConstraint after every env step. Ant and the Humanoids
        # read its results (cfrc_ext); for the others skipping it still changes the
        # trajectory in the last bits, so it is always called to reproduce the env exactly.
        self._obs_reads_forces = self._has_contact or name == "HumanoidStandupEnv"
        # Views of the MjData buffers (the env keeps one MjData for its lifetime).
        self._qpos, self._qvel, self._xpos = self.data.qpos, self.data.qvel, self.data.xpos
        self._ctrl_written: np.ndarray | None = None
        self._planar = False
        if name in _PLANAR_OBS and type(u)._get_obs is _PLANAR_OBS[name]:
            exclude = bool(getattr(u, "_exclude_current_positions_from_observation", True))
            self._skip_q = (2 if name == "SwimmerEnv" else 1) if exclude else 0  # Swimmer: x, y
            self._clip_qvel = name not in ("HalfCheetahEnv", "SwimmerEnv")
            size = self.model.nq - self._skip_q + self.model.nv
            self._obs_template = np.zeros(size, np.float64)
            self.observe = self._observe_planar  # type: ignore[method-assign]
            self._planar = True
            self.observe_state = self._observe_planar_state
        self.healthy = True
        self._healthy = _fast_health(u, self._qpos, self._qvel) or (lambda: bool(u.is_healthy))
        self._cost_ctrl: np.ndarray | None = None
        self._cost: Any = 0.0
        self._state_spec = int(mujoco.mjtState.mjSTATE_INTEGRATION)
        self._state_size = int(mujoco.mj_stateSize(self.model, self._state_spec))
        self._get_state, self._set_state = mujoco.mj_getState, mujoco.mj_setState
        self._scratch: Any = None  # MjData for observe_ahead, made on first use

    def reset(self, seed: int) -> np.ndarray:
        """Reset through the env with ``seed``; return the first observation."""
        obs, _ = self.env.reset(seed=seed)
        self._ctrl_written = None  # mj_resetData zeroed data.ctrl
        if self._terms is not None:
            self.healthy = self._terms(self.u, np.zeros(self.nu, self.action_dtype))[1]
        else:
            self.healthy = bool(self.u.is_healthy) if self._has_health else True
        return np.asarray(obs)

    def x_position(self) -> np.float64:
        """Forward position the env's reward differentiates, m.

        Kept a numpy float64 as in the env: a Python float would make ``x - float32 cost``
        float32 under NumPy's promotion rules and lose the env's exact reward.
        """
        if self._body_x:
            return self._xpos[self._main_body, 0]  # type: ignore[no-any-return]
        if self._mass_center is not None:
            return self._mass_center(self.model, self.data)[0]  # type: ignore[no-any-return]
        return self._qpos[0]  # type: ignore[no-any-return]

    def run(
        self,
        ctrl: np.ndarray,
        n_substeps: int,
        after_substep: Callable[[int], None] | None = None,
    ) -> float:
        """Apply ``ctrl`` for ``n_substeps`` physics steps; return the segment's reward.

        Args:
            ctrl: the command, shape (nu,).
            n_substeps: physics steps to run, >= 1.
            after_substep: called with the substep index (0-based) after each substep, for
                recording observations; the reward is still computed once per segment.
        """
        model, data = self.model, self.data
        # x_position() inlined for qpos[0] (hot path); numpy float64 either way.
        x_before = self._qpos[0] if self._plain_x else self.x_position()
        if ctrl is not self._ctrl_written:  # the same command object: already in data.ctrl
            data.ctrl[:] = ctrl
            self._ctrl_written = ctrl
        if after_substep is None:
            self._mj_step(model, data, nstep=n_substeps)
        else:
            for i in range(n_substeps):
                self._mj_step(model, data)
                if self._obs_reads_forces:
                    self._rne_post(model, data)  # Ant, the Humanoids observe cfrc_ext
                after_substep(i)
        return self._segment_reward(ctrl, x_before, n_substeps / self.frame_skip)

    def run_ns(
        self,
        ctrl: np.ndarray,
        start_ns: int,
        stop_ns: int,
        after_step: Callable[[int, int], None] | None = None,
    ) -> float:
        """Hold ``ctrl`` from episode time ``start_ns`` to ``stop_ns``; return the reward.

        Times are ns since the episode's reset; the substep grid is 0, substep, 2 substep ...
        Whole substeps of the span run as usual; a part of a substep at either end runs as
        one integration step shortened to that part (see :meth:`_short_step`). A span on the
        grid is exactly ``run(ctrl, n)``.

        Args:
            ctrl: the command, shape (nu,).
            start_ns, stop_ns: the span, ns, ``start_ns < stop_ns``.
            after_step: called with (step start, step end) ns after each integration step.
        """
        data = self.data
        x_before = self._qpos[0] if self._plain_x else self.x_position()
        if ctrl is not self._ctrl_written:
            data.ctrl[:] = ctrl
            self._ctrl_written = ctrl
        integrate_span(self, start_ns, stop_ns, after_step)
        return self._segment_reward(ctrl, x_before, (stop_ns - start_ns) / self.period_ns)

    def _after(
        self, after_step: Callable[[int, int], None] | None, start_ns: int, stop_ns: int
    ) -> int:
        if after_step is not None:
            if self._obs_reads_forces:
                self._rne_post(self.model, self.data)  # Ant, the Humanoids observe cfrc_ext
            after_step(start_ns, stop_ns)
        return stop_ns

    def _short_step(self, data: Any, duration_ns: int) -> None:
        short_step(self, data, duration_ns)

    def _segment_reward(self, ctrl: np.ndarray, x_before: Any, frac: float) -> float:
        """The env's reward terms for a segment that moved x from ``x_before``, ``frac`` of
        an env step long (ends with the env's ``mj_rnePostConstraint``)."""
        self._rne_post(self.model, self.data)
        if self._terms is not None:  # no forward term: the env's per-step reward, weighted
            reward, self.healthy = self._terms(self.u, ctrl)
            return float(frac * reward)
        x_after = self._qpos[0] if self._plain_x else self.x_position()
        forward = self._w_forward * ((x_after - x_before) / self.env_dt)
        u = self.u
        if ctrl is not self._cost_ctrl:
            # The env's control_cost, computed once per command instead of once per segment
            # (Humanoid's reads data.ctrl, which holds this command now).
            self._cost_ctrl = ctrl
            self._cost = u.control_cost(ctrl)
        ctrl_cost = self._cost
        if self._has_health:
            self.healthy = self._healthy()
            healthy = float(self.healthy) * u._healthy_reward
        else:
            healthy = 0.0
        costs = frac * ctrl_cost
        if self._has_contact:
            costs = frac * ctrl_cost + frac * u.contact_cost
        return float((forward + frac * healthy) - costs)

    def save_state(self) -> np.ndarray:
        """The full integration state (``mjSTATE_INTEGRATION``: time, qpos, qvel, act,
        warm start, ctrl ...), a new float64 array."""
        out = np.empty(self._state_size)
        self._get_state(self.model, self.data, out, self._state_spec)
        return out

    def observe_ahead(
        self, ctrl: np.ndarray, duration_ns: int, state: np.ndarray | None = None
    ) -> np.ndarray:
        """The observation ``duration_ns`` after ``state`` (default: now) under ``ctrl``.

        Integrates a scratch copy of the state (whole substeps, then one shortened step),
        so the task's own trajectory is untouched: an observation between step boundaries
        costs one extra ``mj_step`` and changes nothing else.
        """
        scratch = integrate_ahead(self, ctrl, duration_ns, state)
        self._rne_post(self.model, scratch)  # as after an env step: the obs may read cfrc_ext
        return self._observe_data(scratch)

    #: ``observe_state(state)``: the observation of a ``save_state()`` array, for tasks
    #: whose observation reads only qpos and qvel (None for the others: Ant reads forces)
    observe_state: Callable[[np.ndarray], np.ndarray] | None = None

    def _observe_planar_state(self, state: np.ndarray) -> np.ndarray:
        # mjSTATE_INTEGRATION is laid out time, qpos, qvel, ...
        nq = self.model.nq
        return self._observe_planar(state[1 : 1 + nq], state[1 + nq : 1 + nq + self.model.nv])

    def _observe_data(self, data: Any) -> np.ndarray:
        """The env's observation of another MjData of the same model."""
        if self._planar:
            return self._observe_planar(data.qpos, data.qvel)
        u = self.u
        main, u.data = u.data, data  # the env's _get_obs reads self.data
        try:
            return np.asarray(u._get_obs())
        finally:
            u.data = main

    def observe(self) -> np.ndarray:
        """The env's observation of the current state (a new array)."""
        return self.u._get_obs()

    def _observe_planar(
        self, qpos_all: np.ndarray | None = None, qvel: np.ndarray | None = None
    ) -> np.ndarray:
        """HalfCheetah/Hopper/Swimmer/Walker2d ``_get_obs`` without its temporaries (same
        values), of the env's state or of the given ``qpos``/``qvel``."""
        obs = self._obs_template.copy()
        qpos = (self._qpos if qpos_all is None else qpos_all)[self._skip_q :]
        if qvel is None:
            qvel = self._qvel
        obs[: qpos.shape[0]] = qpos
        if self._clip_qvel:
            np.clip(qvel, -10.0, 10.0, out=obs[qpos.shape[0] :])
        else:
            obs[qpos.shape[0] :] = qvel
        return obs

    def terminated(self) -> bool:
        """The env's termination rule on the current state."""
        return self._terminate and not self.healthy


def _fast_health(u: Any, qpos: np.ndarray, qvel: np.ndarray) -> Callable[[], bool] | None:
    """Hopper-v5's ``is_healthy`` without its temporaries (``state_vector()`` concatenates
    qpos and qvel on every call: 17 us of a segment's 40 on this machine), or None for any
    other env or a subclass that changes the rule.

    The same strict comparisons on the same float64 values: ``lo < x < hi`` for every
    element is ``lo < min(x)`` and ``max(x) < hi``, and a NaN anywhere makes ``min``/``max``
    NaN, so unhealthy, as in the env.
    """
    try:
        from gymnasium.envs.mujoco.hopper_v5 import HopperEnv
    except ImportError:  # pragma: no cover - gymnasium without the v5 envs
        return None
    if getattr(type(u), "is_healthy", None) is not HopperEnv.is_healthy:
        return None
    ranges = (u._healthy_state_range, u._healthy_z_range, u._healthy_angle_range)
    if not all(len(r) == 2 and all(np.ndim(b) == 0 for b in r) for r in ranges):
        return None  # array-valued ranges: the env's own rule
    (lo, hi), (zl, zh), (al, ah) = ranges
    state_q = qpos[2:]  # views: they follow the simulation

    def healthy() -> bool:
        return bool(
            lo < state_q.min()
            and state_q.max() < hi
            and lo < qvel.min()
            and qvel.max() < hi
            and zl < qpos[1] < zh
            and al < qpos[2] < ah
        )

    return healthy


def short_step(task: Any, data: Any, duration_ns: int) -> None:
    """One integration step of ``duration_ns`` (< a substep) of ``task``'s model on ``data``.

    ``model.opt.timestep`` is set to the shortened length for this one ``mj_step`` and
    restored at once. Every integrator (Euler, implicit, RK4) reads the timestep at call time
    and keeps nothing across steps but the state; the constraint solver's warm start
    (``qacc_warmstart``) is an acceleration, valid whatever the step length.
    """
    opt = task._opt
    opt.timestep = task._timestep_s * (duration_ns / task.substep_ns)
    try:
        task._mj_step(task.model, data)
    finally:
        opt.timestep = task._timestep_s


def integrate_span(
    task: Any, start_ns: int, stop_ns: int, after_step: Callable[[int, int], None] | None
) -> None:
    """Integrate ``task`` from episode time ``start_ns`` to ``stop_ns`` on its substep grid.

    A part of a substep at either end runs as one step shortened to that part
    (:func:`short_step`), so every later step boundary stays where the plain env has it.
    ``after_step(start, stop)`` is called after each integration step (through the task's
    ``_after``, which may update derived quantities first).
    """
    model, data, sub = task.model, task.data, task.substep_ns
    t_ns = start_ns
    head_ns = min(-t_ns % sub, stop_ns - t_ns)
    if head_ns:
        short_step(task, data, head_ns)
        t_ns = task._after(after_step, t_ns, t_ns + head_ns)
    n = (stop_ns - t_ns) // sub
    if n:
        if after_step is None:
            task._mj_step(model, data, nstep=n)
            t_ns += n * sub
        else:
            for _ in range(n):
                task._mj_step(model, data)
                t_ns = task._after(after_step, t_ns, t_ns + sub)
    if stop_ns > t_ns:
        short_step(task, data, stop_ns - t_ns)
        task._after(after_step, t_ns, stop_ns)


def integrate_ahead(task: Any, ctrl: np.ndarray, duration_ns: int, state: np.ndarray | None) -> Any:
    """``task``'s scratch ``MjData`` integrated ``duration_ns`` from ``state`` (default: the
    task's current state) with ``data.ctrl = ctrl``: whole substeps, then one shortened step.
    The task's own ``data`` is untouched."""
    model = task.model
    if task._scratch is None:
        mujoco, _ = import_mujoco()
        task._scratch = mujoco.MjData(model)
    scratch = task._scratch
    if state is None:
        state = task.save_state()
    task._set_state(model, scratch, state, task._state_spec)
    scratch.ctrl[:] = ctrl
    n, rest_ns = divmod(int(duration_ns), task.substep_ns)
    if n:
        task._mj_step(model, scratch, nstep=n)
    if rest_ns:
        short_step(task, scratch, rest_ns)
    return scratch

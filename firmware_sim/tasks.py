"""Gymnasium MuJoCo tasks stepped at physics-substep resolution.

:class:`MujocoTask` reaches into ``env.unwrapped`` (``model``, ``data``, ``frame_skip``) and
steps MuJoCo substeps itself, so a command can change between substeps. Rewards are computed
the way each environment computes them, for the stretch of time actually simulated:

- forward reward: weight * (x_after - x_before) / env.dt; over a control period the
  segment terms telescope to exactly the env's (x_after - x_before) / env.dt;
- healthy reward, control cost and (Ant) contact cost: the env's own functions evaluated at
  the end of each segment, weighted by segment length / frame_skip. A segment covering a
  whole env step gives exactly the env's value; finer segments give a time-weighted sum.

Termination is the env's own check (``not is_healthy and terminate_when_unhealthy``).
Supported: Hopper-v5, Walker2d-v5, HalfCheetah-v5, Ant-v5 (and v4 variants with the same
attributes). Other envs raise ``TailguardError`` naming the supported ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from tailguard.errors import MissingExtraError, TailguardError

__all__ = ["SUPPORTED_ENVS", "MujocoTask", "Task", "import_mujoco"]

#: unwrapped class name -> how its forward position is measured
_X_SOURCE = {
    "HopperEnv": "qpos",
    "Walker2dEnv": "qpos",
    "HalfCheetahEnv": "qpos",
    "AntEnv": "body",
}
SUPPORTED_ENVS = ("Hopper-v5", "Walker2d-v5", "HalfCheetah-v5", "Ant-v5")


def _planar_obs_functions() -> dict[str, Any]:
    """The gymnasium ``_get_obs`` functions that ``_observe_planar`` reproduces."""
    out: dict[str, Any] = {}
    try:
        from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv
        from gymnasium.envs.mujoco.hopper_v5 import HopperEnv
        from gymnasium.envs.mujoco.walker2d_v5 import Walker2dEnv
    except ImportError:  # another gymnasium layout: use the env's own _get_obs
        return out
    for cls in (HalfCheetahEnv, HopperEnv, Walker2dEnv):
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
        if name not in _X_SOURCE:
            raise TailguardError(
                f"environment {env.spec.id if env.spec else name} is not supported by the "
                f"substep simulator; supported: {list(SUPPORTED_ENVS)}"
            )
        self.u = u
        self.model, self.data = u.model, u.data
        self.frame_skip = int(u.frame_skip)
        self.substep_ns = round(float(self.model.opt.timestep) * 1e9)
        self.period_ns = self.substep_ns * self.frame_skip
        self.env_dt = float(u.dt)
        spec = getattr(env, "spec", None)
        self.max_episode_steps = int(getattr(spec, "max_episode_steps", None) or 1000)
        self.nu = int(self.model.nu)
        self.action_dtype = env.action_space.dtype
        self.action_low = np.asarray(env.action_space.low, np.float64)
        self.action_high = np.asarray(env.action_space.high, np.float64)
        self.obs_size = int(np.prod(env.observation_space.shape))
        self._w_forward = float(u._forward_reward_weight)
        self._has_health = hasattr(u, "_healthy_reward")
        self._terminate = bool(getattr(u, "_terminate_when_unhealthy", False))
        self._has_contact = hasattr(u, "_contact_cost_weight")
        self._body_x = _X_SOURCE[name] == "body"
        self._main_body = getattr(u, "_main_body", 1)
        # gymnasium calls mj_rnePostConstraint after every env step. Ant reads its results
        # (cfrc_ext); for the others skipping it still changes the trajectory in the last
        # bits, so it is always called to reproduce the env exactly.
        # Views of the MjData buffers (the env keeps one MjData for its lifetime).
        self._qpos, self._qvel, self._xpos = self.data.qpos, self.data.qvel, self.data.xpos
        self._ctrl_written: np.ndarray | None = None
        if name in _PLANAR_OBS and type(u)._get_obs is _PLANAR_OBS[name]:
            exclude = bool(getattr(u, "_exclude_current_positions_from_observation", True))
            self._skip_q = 1 if exclude else 0
            self._clip_qvel = name != "HalfCheetahEnv"
            size = self.model.nq - self._skip_q + self.model.nv
            self._obs_template = np.zeros(size, np.float64)
            self.observe = self._observe_planar  # type: ignore[method-assign]
        self.healthy = True
        self._w_ctrl = float(u._ctrl_cost_weight)
        self._cost_ctrl: np.ndarray | None = None
        self._cost: Any = 0.0

    def reset(self, seed: int) -> np.ndarray:
        """Reset through the env with ``seed``; return the first observation."""
        obs, _ = self.env.reset(seed=seed)
        self._ctrl_written = None  # mj_resetData zeroed data.ctrl
        self.healthy = bool(self.u.is_healthy) if self._has_health else True
        return np.asarray(obs)

    def x_position(self) -> np.float64:
        """Forward position the env's reward differentiates, m.

        Kept a numpy float64 as in the env: a Python float would make ``x - float32 cost``
        float32 under NumPy's promotion rules and lose the env's exact reward.
        """
        if self._body_x:
            return self._xpos[self._main_body, 0]  # type: ignore[no-any-return]
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
        body_x = self._body_x
        # x_position() inlined (hot path); numpy float64 either way.
        x_before = self._xpos[self._main_body, 0] if body_x else self._qpos[0]
        if ctrl is not self._ctrl_written:  # the same command object: already in data.ctrl
            data.ctrl[:] = ctrl
            self._ctrl_written = ctrl
        if after_substep is None:
            self._mj_step(model, data, nstep=n_substeps)
        else:
            for i in range(n_substeps):
                self._mj_step(model, data)
                if self._has_contact:
                    self._rne_post(model, data)  # Ant observes cfrc_ext
                after_substep(i)
        self._rne_post(model, data)
        x_after = self._xpos[self._main_body, 0] if body_x else self._qpos[0]
        forward = self._w_forward * ((x_after - x_before) / self.env_dt)
        frac = n_substeps / self.frame_skip
        u = self.u
        if ctrl is not self._cost_ctrl:
            # Same arithmetic as the env's control_cost (np.sum is np.add.reduce), computed
            # once per command instead of once per segment.
            self._cost_ctrl = ctrl
            self._cost = self._w_ctrl * np.add.reduce(np.square(ctrl))
        ctrl_cost = self._cost
        if self._has_health:
            self.healthy = bool(u.is_healthy)
            healthy = float(self.healthy) * u._healthy_reward
        else:
            healthy = 0.0
        costs = frac * ctrl_cost
        if self._has_contact:
            costs = frac * ctrl_cost + frac * u.contact_cost
        return float((forward + frac * healthy) - costs)

    def observe(self) -> np.ndarray:
        """The env's observation of the current state (a new array)."""
        return self.u._get_obs()

    def _observe_planar(self) -> np.ndarray:
        """HalfCheetah/Hopper/Walker2d ``_get_obs`` without its temporaries (same values)."""
        obs = self._obs_template.copy()
        qpos = self._qpos[self._skip_q :]
        obs[: qpos.shape[0]] = qpos
        if self._clip_qvel:
            np.clip(self._qvel, -10.0, 10.0, out=obs[qpos.shape[0] :])
        else:
            obs[qpos.shape[0] :] = self._qvel
        return obs

    def terminated(self) -> bool:
        """The env's termination rule on the current state."""
        return self._terminate and not self.healthy

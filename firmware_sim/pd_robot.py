"""Raw-MJCF robots under a PD "firmware" layer, stepped by
:class:`~tailguard.firmware_sim.loop.SimLoop`.

On a legged robot the policy does not command torques: it sends joint position targets at
its own rate (here 50 Hz) and the motor firmware closes a PD loop at a much higher rate
(here the physics rate, 1 kHz), holding the last target until a new one arrives. This task
reproduces that: the policy's action ``a`` in [-1, 1]^nu becomes the target
``q* = q_default + action_scale_rad * a`` (clipped to the joint range), and every physics
substep applies ``tau = clip(kp (q* - q) - kd dq, -tau_max, tau_max)``.

The PD law runs inside MuJoCo: each motor actuator of the MJCF is turned into a position
servo (gain ``kp``, bias ``-kp q - kd dq``, force limit = the motor's ``gear * ctrlrange``),
so MuJoCo evaluates it at every substep and a control period is one ``mj_step(nstep=...)``.

The task (documented reward and termination, "stand"):

- reward per control period = ``healthy - ctrl_cost_weight * sum((tau / tau_max)**2)``, with
  ``healthy`` 1 while the torso is up (height within ``healthy_z``, torso z-axis within 60
  degrees of vertical) and 0 otherwise; a segment shorter than a period earns its fraction,
  evaluated on the state and torques at the segment's end;
- termination (a fall): not healthy;
- observation: ``qpos`` without the root's horizontal position (x, y for a free joint, x for
  a planar slider), then ``qvel``; float64;
- reset: ``q_default`` (the MJCF's ``init_qpos`` custom numeric, else ``qpos0``) plus uniform
  noise of ``reset_noise`` on positions and velocities, from ``numpy.random.default_rng(seed)``.

Named models (``from_name``): ``ant`` (gymnasium's ``ant.xml``, stands on its four legs) and
``hopper`` (gymnasium's ``hopper.xml``; a one-legged planar hopper cannot stand still, so it
is a balancing test). Any other name is a path to an MJCF file with motor actuators on hinge
or slide joints, run with the generic defaults.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tailguard.errors import TailguardError
from tailguard.firmware_sim.tasks import (
    import_mujoco,
    integrate_ahead,
    integrate_span,
    short_step,
)

__all__ = ["PdConfig", "PdRobotTask", "gymnasium_asset"]


@dataclass(frozen=True)
class PdConfig:
    """Rates, gains and task constants of a PD robot.

    Attributes:
        physics_hz: physics (and firmware PD) rate, Hz.
        policy_hz: nominal policy rate, Hz; must divide ``physics_hz``.
        kp: PD stiffness, N m / rad.
        kd: PD damping, N m s / rad.
        action_scale_rad: target offset for an action of 1, rad.
        healthy_z: torso height range counted as standing, m.
        ctrl_cost_weight: weight of the normalized torque cost.
        reset_noise: half-width of the uniform reset noise (rad, m, rad/s).
        max_episode_steps: episode horizon in policy ticks.
    """

    physics_hz: int = 1000
    policy_hz: int = 50
    kp: float = 400.0
    kd: float = 25.0
    action_scale_rad: float = 0.3
    healthy_z: tuple[float, float] = (0.3, 1.0)
    ctrl_cost_weight: float = 0.05
    reset_noise: float = 0.02
    max_episode_steps: int = 500

    def __post_init__(self) -> None:
        problems = []
        if self.physics_hz < 1 or self.policy_hz < 1 or self.physics_hz % self.policy_hz:
            problems.append(
                f"physics_hz ({self.physics_hz}) must be a positive multiple of policy_hz "
                f"({self.policy_hz})"
            )
        if 1_000_000_000 % self.physics_hz:
            problems.append(f"physics_hz must divide 1e9 ns, got {self.physics_hz}")
        if self.kp <= 0 or self.kd < 0 or self.action_scale_rad <= 0:
            problems.append("kp and action_scale_rad must be > 0 and kd >= 0")
        if self.max_episode_steps < 1:
            problems.append(f"max_episode_steps must be >= 1, got {self.max_episode_steps}")
        if problems:
            raise TailguardError("invalid PD robot config: " + "; ".join(problems))


_PRESETS: dict[str, tuple[str, PdConfig]] = {
    "ant": ("ant.xml", PdConfig()),
    "hopper": ("hopper.xml", PdConfig(kp=200.0, kd=10.0, healthy_z=(0.7, 2.0))),
}


def gymnasium_asset(name: str) -> Path:
    """Path of an MJCF file shipped with gymnasium (e.g. ``ant.xml``)."""
    _, gym = import_mujoco()
    return Path(gym.__file__).parent / "envs" / "mujoco" / "assets" / name


class PdRobotTask:
    """A raw MJCF robot whose motors run PD on joint targets at the physics rate.

    Args:
        model_path: the MJCF file.
        config: rates, gains and task constants.
        name: for reports.

    Raises:
        TailguardError: unreadable model, or actuators that are not motors on hinge/slide
            joints.
    """

    def __init__(
        self, model_path: str | Path, config: PdConfig | None = None, name: str = ""
    ) -> None:
        mujoco, _ = import_mujoco()
        self.config = cfg = config or PdConfig()
        self.name = name or Path(model_path).stem
        try:
            model = mujoco.MjModel.from_xml_path(str(model_path))
        except Exception as exc:  # mujoco raises ValueError with the parser's message
            raise TailguardError(f"cannot load MJCF '{model_path}': {exc}") from None
        if model.nu == 0:
            raise TailguardError(f"MJCF '{model_path}' has no actuators to drive")
        joints = model.actuator_trnid[:, 0]
        hinge, slide = int(mujoco.mjtJoint.mjJNT_HINGE), int(mujoco.mjtJoint.mjJNT_SLIDE)
        free = int(mujoco.mjtJoint.mjJNT_FREE)
        bad = [
            i
            for i in range(model.nu)
            if int(model.actuator_trntype[i]) != int(mujoco.mjtTrn.mjTRN_JOINT)
            or int(model.jnt_type[joints[i]]) not in (hinge, slide)
        ]
        if bad:
            raise TailguardError(
                f"MJCF '{model_path}': actuators {bad} do not drive a hinge or slide joint; "
                "the PD firmware needs one joint per actuator"
            )
        self.model = model
        self.data = mujoco.MjData(model)
        self._mj_step = mujoco.mj_step
        self._mj_forward = mujoco.mj_forward
        model.opt.timestep = 1.0 / cfg.physics_hz
        self._opt = model.opt  # a view of the model's options, kept for _short_step
        self._timestep_s = float(self._opt.timestep)
        self._state_spec = int(mujoco.mjtState.mjSTATE_INTEGRATION)
        self._state_size = int(mujoco.mj_stateSize(model, self._state_spec))
        self._get_state, self._set_state = mujoco.mj_getState, mujoco.mj_setState
        self._scratch: Any = None  # MjData for observe_ahead, made on first use
        self.substep_ns = 1_000_000_000 // cfg.physics_hz
        self.frame_skip = cfg.physics_hz // cfg.policy_hz
        self.period_ns = self.substep_ns * self.frame_skip
        self.max_episode_steps = cfg.max_episode_steps
        self.nu = int(model.nu)
        self.action_dtype = np.dtype(np.float32)
        self.action_low = -np.ones(self.nu)
        self.action_high = np.ones(self.nu)

        # Default pose: the MJCF's init_qpos numeric when it has one (gymnasium's ant.xml).
        self.q_default = model.qpos0.copy()
        for i in range(model.nnumeric):
            if model.numeric(i).name == "init_qpos" and model.numeric_size[i] == model.nq:
                self.q_default = model.numeric(i).data.copy()
        self._qadr = model.jnt_qposadr[joints].copy()
        low = np.where(model.jnt_limited[joints], model.jnt_range[joints, 0], -np.inf)
        high = np.where(model.jnt_limited[joints], model.jnt_range[joints, 1], np.inf)
        self._target_low, self._target_high = low, high
        self._target_default = np.clip(self.q_default[self._qadr], low, high)
        self.tau_max = np.abs(model.actuator_gear[:, :1] * model.actuator_ctrlrange).max(axis=1)
        self._make_servos(mujoco)

        root = int(model.jnt_type[0]) if model.njnt else -1
        self._free = root == free
        self._skip_q = 2 if root == free else (1 if root == slide else 0)
        self._torso = 1
        self.obs_size = model.nq - self._skip_q + model.nv
        self._target = np.zeros(self.nu)
        self.healthy = True
        self._rng = np.random.default_rng(0)

    @classmethod
    def from_name(cls, name: str, config: PdConfig | None = None) -> PdRobotTask:
        """``ant`` / ``hopper`` (gymnasium's assets, tuned presets) or an MJCF path."""
        if name in _PRESETS:
            asset, preset = _PRESETS[name]
            return cls(gymnasium_asset(asset), config or preset, name=name)
        path = Path(name)
        if not path.is_file():
            raise TailguardError(
                f"unknown MJCF robot '{name}'; valid names are {sorted(_PRESETS)} or the path "
                "of an .xml file"
            )
        return cls(path, config)

    def _make_servos(self, mujoco: Any) -> None:
        """Turn every motor into a PD position servo with the motor's torque limit."""
        m, cfg = self.model, self.config
        m.actuator_gaintype[:] = mujoco.mjtGain.mjGAIN_FIXED
        m.actuator_biastype[:] = mujoco.mjtBias.mjBIAS_AFFINE
        m.actuator_gainprm[:] = 0.0
        m.actuator_biasprm[:] = 0.0
        m.actuator_gainprm[:, 0] = cfg.kp
        m.actuator_biasprm[:, 1] = -cfg.kp
        m.actuator_biasprm[:, 2] = -cfg.kd
        m.actuator_gear[:] = 0.0
        m.actuator_gear[:, 0] = 1.0
        m.actuator_ctrllimited[:] = 0
        m.actuator_forcelimited[:] = 1
        m.actuator_forcerange[:, 0] = -self.tau_max
        m.actuator_forcerange[:, 1] = self.tau_max

    def describe(self) -> dict[str, Any]:
        """The task's constants, for reports."""
        c = self.config
        return {
            "kind": "mjcf-pd",
            "name": self.name,
            "physics_hz": c.physics_hz,
            "policy_hz": c.policy_hz,
            "kp": c.kp,
            "kd": c.kd,
            "action_scale_rad": c.action_scale_rad,
            "healthy_z": list(c.healthy_z),
            "ctrl_cost_weight": c.ctrl_cost_weight,
            "max_episode_steps": c.max_episode_steps,
        }

    # -- the Task protocol ---------------------------------------------------------------
    def reset(self, seed: int) -> np.ndarray:
        """Default pose plus seeded uniform noise; the PD target is the default pose."""
        m, d, noise = self.model, self.data, self.config.reset_noise
        rng = np.random.default_rng(seed)
        d.qpos[:] = self.q_default + rng.uniform(-noise, noise, m.nq)
        if self._free:
            quat = d.qpos[3:7]
            quat /= np.linalg.norm(quat)
        d.qvel[:] = rng.uniform(-noise, noise, m.nv)
        d.time = 0.0
        d.ctrl[:] = self._target_default
        d.act[:] = 0.0
        self._mj_forward(m, d)
        self.healthy = self._is_healthy()
        return self.observe()

    def targets(self, action: np.ndarray) -> np.ndarray:
        """Joint targets for ``action`` (clipped to [-1, 1] and to the joint ranges), rad."""
        a = np.clip(np.asarray(action, np.float64), -1.0, 1.0)
        return np.clip(
            self._target_default + self.config.action_scale_rad * a,
            self._target_low,
            self._target_high,
        )

    def run(
        self,
        ctrl: np.ndarray,
        n_substeps: int,
        after_substep: Callable[[int], None] | None = None,
    ) -> float:
        """Hold the targets of ``ctrl`` for ``n_substeps`` PD/physics steps; return the reward."""
        m, d = self.model, self.data
        d.ctrl[:] = self.targets(ctrl)
        if after_substep is None:
            self._mj_step(m, d, nstep=n_substeps)
        else:
            for i in range(n_substeps):
                self._mj_step(m, d)
                after_substep(i)
        self.healthy = healthy = self._is_healthy()
        frac = n_substeps / self.frame_skip
        effort = float(np.sum(np.square(d.actuator_force / self.tau_max)))
        return frac * (float(healthy) - self.config.ctrl_cost_weight * effort)

    def run_ns(
        self,
        ctrl: np.ndarray,
        start_ns: int,
        stop_ns: int,
        after_step: Callable[[int, int], None] | None = None,
    ) -> float:
        """Hold the targets of ``ctrl`` from episode time ``start_ns`` to ``stop_ns`` (ns since
        reset); return the reward. Parts of a physics step at either end run as one step
        shortened to that part (see ``MujocoTask.run_ns``); the servo, evaluated by MuJoCo
        at every step start, so also re-reads the target at a split instant."""
        d = self.data
        d.ctrl[:] = self.targets(ctrl)
        integrate_span(self, start_ns, stop_ns, after_step)
        self.healthy = healthy = self._is_healthy()
        frac = (stop_ns - start_ns) / self.period_ns
        effort = float(np.sum(np.square(d.actuator_force / self.tau_max)))
        return frac * (float(healthy) - self.config.ctrl_cost_weight * effort)

    @staticmethod
    def _after(after_step: Callable[[int, int], None] | None, start_ns: int, stop_ns: int) -> int:
        if after_step is not None:
            after_step(start_ns, stop_ns)
        return stop_ns

    def _short_step(self, data: Any, duration_ns: int) -> None:
        short_step(self, data, duration_ns)

    def save_state(self) -> np.ndarray:
        """The full integration state (``mjSTATE_INTEGRATION``), a new float64 array."""
        out = np.empty(self._state_size)
        self._get_state(self.model, self.data, out, self._state_spec)
        return out

    def observe_ahead(
        self, ctrl: np.ndarray, duration_ns: int, state: np.ndarray | None = None
    ) -> np.ndarray:
        """The observation ``duration_ns`` after ``state`` (default: now) under the targets of
        ``ctrl``, integrated on a scratch copy (the task's own state is untouched)."""
        return self._observe_data(integrate_ahead(self, self.targets(ctrl), duration_ns, state))

    def observe(self) -> np.ndarray:
        """``qpos`` without the root's horizontal position, then ``qvel`` (a new array)."""
        return self._observe_data(self.data)

    def _observe_data(self, d: Any) -> np.ndarray:
        return np.concatenate((d.qpos[self._skip_q :], d.qvel))

    def observe_state(self, state: np.ndarray) -> np.ndarray:
        """The observation of a :meth:`save_state` array (laid out time, qpos, qvel, ...)."""
        nq, nv = self.model.nq, self.model.nv
        return np.concatenate((state[1 + self._skip_q : 1 + nq], state[1 + nq : 1 + nq + nv]))

    def terminated(self) -> bool:
        """The robot fell (torso too low or high, or tilted beyond 60 degrees)."""
        return not self.healthy

    def joint_positions(self) -> np.ndarray:
        """Positions of the actuated joints (a copy), rad or m."""
        return self.data.qpos[self._qadr].copy()

    def _is_healthy(self) -> bool:
        d = self.data
        lo, hi = self.config.healthy_z
        if self._free:
            z = d.qpos[2]
            up = d.xmat[self._torso][8]  # torso z-axis . world z
            return bool(lo <= z <= hi and up >= 0.5)
        z = d.xpos[self._torso][2]
        return bool(lo <= z <= hi)

"""The env an audit runs: MuJoCo tasks at exact timing, any other gymnasium env at whole-step
resolution, or a custom task factory.

- gymnasium MuJoCo tasks and ``mjcf:`` robots: the simulator's own tasks
  (``tailguard.firmware_sim.replay.make_task``), timing resolved inside a control period
  (``resolution: "substep"``).
- any other gymnasium id (CartPole-v1, Pendulum-v1, ...): :class:`GymStepTask`, which can
  only change the command between env steps (``resolution: "whole-step"``): a latency or
  jitter is rounded up to whole control periods. Every output states the resolution.
- ``py:MODULE:FUNCTION``: a function returning a task object (tests, custom plants).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import numpy as np

from tailguard.errors import ConfigError, TailguardError, UnsupportedEnvError

__all__ = ["GymStepTask", "make_audit_task", "task_resolution"]


def make_audit_task(env_id: str) -> Any:
    """The task for ``env_id`` (see the module docstring).

    Raises:
        TailguardError: unknown env id (with how to list the valid ones), bad factory.
    """
    if env_id.startswith("py:"):
        module, _, name = env_id[3:].rpartition(":")
        try:
            factory: Callable[[], Any] = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError, ValueError) as exc:
            raise ConfigError(
                f"cannot load task factory '{env_id}' ({exc}); expected py:MODULE:FUNCTION"
            ) from None
        return factory()
    from tailguard.firmware_sim.replay import make_task

    try:
        return make_task(env_id)
    except UnsupportedEnvError:
        pass
    except TailguardError as exc:
        raise TailguardError(
            f"{exc}. Valid ids are gymnasium's registered envs (list them with: python -c "
            '"import gymnasium; print(sorted(gymnasium.registry))") or mjcf:NAME_OR_PATH; '
            "MuJoCo tasks need: pip install 'tailguard[sim]'"
        ) from None
    import gymnasium as gym

    return GymStepTask(gym.make(env_id))


def task_resolution(task: Any) -> str:
    """``"substep"`` (timing inside a control period) or ``"whole-step"``."""
    return str(getattr(task, "resolution", "substep"))


class GymStepTask:
    """Any gymnasium env, stepped one whole env step at a time.

    The control period is the env's own step duration (``dt``, ``tau`` or 1 / render_fps).
    A discrete action space takes the argmax of the policy's output vector (one score per
    action); a Box space takes the vector as is.

    Args:
        env: a made gymnasium env (wrappers allowed).

    Raises:
        ConfigError: an observation or action space this task cannot drive.
    """

    resolution = "whole-step"

    def __init__(self, env: Any) -> None:
        import gymnasium as gym

        self.env = env
        u = env.unwrapped
        step_s = getattr(u, "dt", None) or getattr(u, "tau", None)
        if not step_s:
            fps = (getattr(u, "metadata", {}) or {}).get("render_fps")
            step_s = 1.0 / fps if fps else None
        if not step_s:
            raise ConfigError(
                f"cannot tell the control period of {env.spec.id if env.spec else env}: it has "
                "no dt, tau or render_fps"
            )
        self.period_ns = round(float(step_s) * 1e9)
        self.substep_ns = self.period_ns
        spec = getattr(env, "spec", None)
        self.max_episode_steps = int(getattr(spec, "max_episode_steps", None) or 1000)
        space = env.action_space
        self._discrete: int | None
        self.action_dtype: Any
        if isinstance(space, gym.spaces.Discrete):
            self._discrete = int(space.start)
            self.nu = int(space.n)
            self.action_dtype = np.float32
            self.action_low = np.full(self.nu, -np.inf)
            self.action_high = np.full(self.nu, np.inf)
        elif isinstance(space, gym.spaces.Box):
            self._discrete = None
            self.nu = int(np.prod(space.shape))
            self.action_dtype = space.dtype
            self.action_low = np.asarray(space.low, np.float64).reshape(-1)
            self.action_high = np.asarray(space.high, np.float64).reshape(-1)
            self._shape = space.shape
        else:
            raise ConfigError(
                f"action space {space} is not supported; valid choices are Box and Discrete"
            )
        if not isinstance(env.observation_space, gym.spaces.Box):
            raise ConfigError(f"observation space {env.observation_space} is not a Box")
        self.obs_size = int(np.prod(env.observation_space.shape))
        self._obs = np.zeros(self.obs_size)
        self._terminated = False

    def describe(self) -> dict[str, Any]:
        """What the outputs say about this task."""
        return {"kind": "gymnasium (whole-step)", "resolution": self.resolution}

    def reset(self, seed: int) -> np.ndarray:
        """Reset with ``seed``; return the first observation (float64, flat)."""
        obs, _ = self.env.reset(seed=seed)
        self._obs = np.asarray(obs, np.float64).reshape(-1)
        self._terminated = False
        return self._obs.copy()

    def _action(self, ctrl: np.ndarray) -> Any:
        if self._discrete is not None:
            return self._discrete + int(np.argmax(ctrl))
        return np.asarray(ctrl, self.action_dtype).reshape(self._shape)

    def run(
        self, ctrl: np.ndarray, n_substeps: int, after_substep: Callable[[int], None] | None = None
    ) -> float:
        """Apply ``ctrl`` for ``n_substeps`` env steps (stops at termination); the reward."""
        total = 0.0
        action = self._action(ctrl)
        for i in range(n_substeps):
            if self._terminated:
                break
            obs, reward, terminated, _, _ = self.env.step(action)
            self._obs = np.asarray(obs, np.float64).reshape(-1)
            total += float(reward)
            self._terminated = bool(terminated)
            if after_substep is not None:
                after_substep(i)
        return total

    def observe(self) -> np.ndarray:
        """The latest observation (a new array)."""
        return self._obs.copy()

    def terminated(self) -> bool:
        """The env's termination rule fired."""
        return self._terminated

"""A gymnasium → RSL-RL ``VecEnv`` adapter, to train rsl-rl-lib (5.x) policies on MuJoCo tasks.

rsl-rl expects a batched, auto-resetting environment on torch tensors: ``step`` returns the
next observations (the reset observation for environments whose episode just ended), rewards,
``dones`` and ``extras["time_outs"]`` (truncations, which PPO bootstraps through). This
adapter steps a list of ordinary gymnasium environments in one process, one after the other:
simple, deterministic for a seed, and enough for small CPU training runs.

The class duck-types ``rsl_rl.env.VecEnv`` (the runner only uses its attributes and methods)
so that importing this module needs torch and tensordict but not rsl_rl itself.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from tailguard.errors import ConfigError, MissingExtraError

__all__ = ["GymnasiumVecEnv"]


def _import_torch_tensordict() -> tuple[Any, Any]:
    try:
        import torch
        from tensordict import TensorDict
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise MissingExtraError("rsl-rl-lib", "train", "Training with rsl-rl") from exc
    return torch, TensorDict


class GymnasiumVecEnv:
    """Run ``len(env_fns)`` gymnasium envs as one RSL-RL vectorized environment.

    Observations are exposed as the single observation group ``"policy"`` (float32,
    shape ``[num_envs, obs_dim]``). Actions are clipped to the action-space bounds before
    stepping when ``clip_actions`` is true (PPO samples unbounded Gaussian actions).

    Args:
        env_fns: constructors of the environments (flat ``Box`` observation and action spaces).
        seed: env i is reset with seed ``seed + i`` at construction; later resets are unseeded
            (each env's generator continues), so a run is reproducible end to end.
        clip_actions: clip actions to the action-space bounds.
        device: torch device of the returned tensors.
        return_window: how many finished episodes ``recent_returns`` keeps.
    """

    def __init__(
        self,
        env_fns: Sequence[Callable[[], Any]],
        seed: int = 0,
        clip_actions: bool = True,
        device: str = "cpu",
        return_window: int = 100,
    ) -> None:
        torch, tensordict_cls = _import_torch_tensordict()
        self._torch = torch
        self._td = tensordict_cls
        self.envs = [fn() for fn in env_fns]
        if not self.envs:
            raise ConfigError("GymnasiumVecEnv needs at least one environment")
        first = self.envs[0]
        self.num_envs = len(self.envs)
        self.num_obs = int(np.prod(first.observation_space.shape))
        self.num_actions = int(np.prod(first.action_space.shape))
        self._low = np.asarray(first.action_space.low, dtype=np.float64)
        self._high = np.asarray(first.action_space.high, dtype=np.float64)
        self.clip_actions = clip_actions
        spec = getattr(first, "spec", None)
        max_steps = getattr(spec, "max_episode_steps", None) or 1000
        self.max_episode_length = int(max_steps)
        self.device = device
        self.cfg: dict[str, Any] = {}
        self.episode_length_buf = torch.zeros(self.num_envs, dtype=torch.long, device=device)
        self._obs = np.zeros((self.num_envs, self.num_obs), dtype=np.float32)
        self._returns = np.zeros(self.num_envs, dtype=np.float64)
        self.recent_returns: deque[float] = deque(maxlen=return_window)
        self.recent_lengths: deque[int] = deque(maxlen=return_window)
        self.total_steps = 0
        for i, env in enumerate(self.envs):
            obs, _ = env.reset(seed=seed + i)
            self._obs[i] = np.asarray(obs, dtype=np.float32).reshape(-1)

    def get_observations(self) -> Any:
        """Return the current observations as ``TensorDict({"policy": [num_envs, obs_dim]})``."""
        obs = self._torch.from_numpy(self._obs.copy()).to(self.device)
        return self._td({"policy": obs}, batch_size=[self.num_envs], device=self.device)

    def step(self, actions: Any) -> tuple[Any, Any, Any, dict[str, Any]]:
        """Step every env once; finished envs are reset and return their reset observation.

        Args:
            actions: tensor ``[num_envs, num_actions]``.

        Returns:
            (observations, rewards ``[num_envs]``, dones ``[num_envs]``, extras with
            ``time_outs`` ``[num_envs]``).
        """
        torch = self._torch
        act = actions.detach().cpu().numpy().astype(np.float64)
        if self.clip_actions:
            act = np.clip(act, self._low, self._high)
        rewards = np.zeros(self.num_envs, dtype=np.float32)
        dones = np.zeros(self.num_envs, dtype=bool)
        time_outs = np.zeros(self.num_envs, dtype=bool)
        lengths = self.episode_length_buf.cpu().numpy().copy()
        for i, env in enumerate(self.envs):
            obs, reward, terminated, truncated, _ = env.step(act[i])
            rewards[i] = float(reward)
            self._returns[i] += float(reward)
            lengths[i] += 1
            if terminated or truncated:
                dones[i] = True
                time_outs[i] = bool(truncated) and not bool(terminated)
                self.recent_returns.append(float(self._returns[i]))
                self.recent_lengths.append(int(lengths[i]))
                self._returns[i] = 0.0
                lengths[i] = 0
                obs, _ = env.reset()
            self._obs[i] = np.asarray(obs, dtype=np.float32).reshape(-1)
        self.total_steps += self.num_envs
        self.episode_length_buf = torch.from_numpy(lengths).to(self.device)
        extras = {
            "time_outs": torch.from_numpy(time_outs).to(self.device),
            "log": {},
        }
        return (
            self.get_observations(),
            torch.from_numpy(rewards).to(self.device),
            torch.from_numpy(dones.astype(np.int64)).to(self.device),
            extras,
        )

    def close(self) -> None:
        """Close every environment."""
        for env in self.envs:
            env.close()

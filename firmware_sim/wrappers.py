"""Gymnasium wrappers that perturb control timing, for robust training and quick evaluation.

Timing here is counted in whole environment steps (one step = one control period): an action
is late by d steps when it missed d control deadlines. ``ActionLatencyWrapper`` applies
each action only after a sampled delay, holding the last applied action in between (zero-order
hold), as a robot's firmware does when the next command is late. ``ControlPeriodJitterWrapper``
varies the number of physics substeps per step of a MuJoCo environment, i.e. the control period.

Delay models are small seeded objects: ``reset`` is called at every episode start (so a model
may pick a new severity per episode, for domain randomization) and ``sample_steps`` once per
step. All randomness comes from the wrapper's own ``numpy.random.Generator``, seeded by the
``seed`` argument and re-seeded by ``env.reset(seed=...)``, so runs are reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol, SupportsFloat

import gymnasium as gym
import numpy as np

from tailguard.errors import ProfileError

__all__ = [
    "ActionLatencyWrapper",
    "ControlPeriodJitterWrapper",
    "DelayModel",
    "FixedDelay",
    "LognormalDelay",
    "RandomizedDelay",
    "UniformDelay",
]


class DelayModel(Protocol):
    """A seeded model of the action delay, in whole control steps."""

    def reset(self, rng: np.random.Generator) -> None:
        """Start a new episode (may draw per-episode parameters from ``rng``)."""

    def sample_steps(self, rng: np.random.Generator) -> int:
        """Return the delay of the action issued now, in control steps (>= 0)."""
        ...


class FixedDelay:
    """Every action is applied exactly ``steps`` control steps after it was issued.

    Args:
        steps: delay in control steps, >= 0.
    """

    def __init__(self, steps: int) -> None:
        if steps < 0:
            raise ProfileError(f"FixedDelay steps must be >= 0, got {steps}")
        self.steps = int(steps)

    def reset(self, rng: np.random.Generator) -> None:
        """No per-episode state."""

    def sample_steps(self, rng: np.random.Generator) -> int:
        """Return the fixed delay in control steps."""
        return self.steps


class UniformDelay:
    """Delay drawn uniformly from the integers ``low_steps..high_steps`` (inclusive).

    Args:
        low_steps: smallest delay in control steps, >= 0.
        high_steps: largest delay in control steps, >= ``low_steps``.
    """

    def __init__(self, low_steps: int, high_steps: int) -> None:
        if low_steps < 0 or high_steps < low_steps:
            raise ProfileError(
                f"UniformDelay needs 0 <= low_steps <= high_steps, got {low_steps}, {high_steps}"
            )
        self.low_steps = int(low_steps)
        self.high_steps = int(high_steps)

    def reset(self, rng: np.random.Generator) -> None:
        """No per-episode state."""

    def sample_steps(self, rng: np.random.Generator) -> int:
        """Return a uniformly drawn delay in control steps."""
        return int(rng.integers(self.low_steps, self.high_steps + 1))


class LognormalDelay:
    """Long-tail latency: delay = deadlines missed = floor(latency / period), capped.

    The latency, in units of the control period, is lognormal with median ``median_periods``
    and log-space standard deviation ``sigma``. An action whose latency is below one period
    meets its deadline (delay 0, as in the unwrapped env); one with latency in [k, k+1)
    periods misses k deadlines and is applied k steps late, capped at ``max_steps``.

    Args:
        median_periods: median latency as a fraction of the control period, > 0.
        sigma: standard deviation of log(latency), >= 0.
        max_steps: cap on the delay in control steps, >= 0.
    """

    def __init__(self, median_periods: float, sigma: float, max_steps: int) -> None:
        if not median_periods > 0 or sigma < 0 or max_steps < 0:
            raise ProfileError(
                "LognormalDelay needs median_periods > 0, sigma >= 0, max_steps >= 0, got "
                f"{median_periods}, {sigma}, {max_steps}"
            )
        self.median_periods = float(median_periods)
        self.sigma = float(sigma)
        self.max_steps = int(max_steps)

    def reset(self, rng: np.random.Generator) -> None:
        """No per-episode state."""

    def sample_steps(self, rng: np.random.Generator) -> int:
        """Return floor(lognormal latency / period), capped at ``max_steps``."""
        latency_periods = self.median_periods * math.exp(self.sigma * rng.standard_normal())
        return min(self.max_steps, math.floor(latency_periods))


class RandomizedDelay:
    """Domain randomization: each episode uses one model drawn uniformly from ``models``.

    Args:
        models: the candidate delay models (at least one).
    """

    def __init__(self, models: Sequence[DelayModel]) -> None:
        if not models:
            raise ProfileError("RandomizedDelay needs at least one delay model")
        self.models = tuple(models)
        self._current: DelayModel = self.models[0]

    def reset(self, rng: np.random.Generator) -> None:
        """Pick this episode's model and reset it."""
        self._current = self.models[int(rng.integers(len(self.models)))]
        self._current.reset(rng)

    def sample_steps(self, rng: np.random.Generator) -> int:
        """Return a delay drawn from this episode's model."""
        return self._current.sample_steps(rng)


class ActionLatencyWrapper(gym.ActionWrapper):
    """Apply each action only after a sampled delay, holding the last applied action meanwhile.

    At step t the agent issues action a_t with delay d_t (from ``delay``); it arrives at step
    t + d_t. The action sent to the inner environment at step t is the most recently *issued*
    action among those that have arrived; older actions that arrive later are dropped. Before
    any action has arrived, ``initial_action`` (zeros by default) is applied. Delay 0 for
    every step reproduces the unwrapped environment exactly.

    Args:
        env: the environment (continuous ``Box`` action space).
        delay: the delay model, in control steps.
        seed: seed of the wrapper's random generator; ``reset(seed=s)`` re-seeds it with s.
        initial_action: action held until the first one arrives, shape of the action space.
    """

    def __init__(
        self,
        env: gym.Env[Any, Any],
        delay: DelayModel,
        seed: int | None = None,
        initial_action: np.ndarray | None = None,
    ) -> None:
        super().__init__(env)
        space = env.action_space
        if not isinstance(space, gym.spaces.Box):
            raise ProfileError(
                f"ActionLatencyWrapper needs a Box action space, got {type(space).__name__}"
            )
        self._delay = delay
        self._rng = np.random.default_rng(seed)
        default = np.zeros(space.shape, dtype=space.dtype)
        self._initial_action = default if initial_action is None else np.asarray(initial_action)
        self._applied = self._initial_action.copy()
        self._applied_issue_step = -1
        self._pending: list[tuple[int, int, np.ndarray]] = []  # (arrival_step, issue_step, action)
        self._step = 0
        self.last_delay_steps = 0

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Reset the inner env and the delay line (re-seeding the generator if given a seed)."""
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self._delay.reset(self._rng)
        self._applied = self._initial_action.copy()
        self._applied_issue_step = -1
        self._pending.clear()
        self._step = 0
        return self.env.reset(seed=seed, options=options)

    def action(self, action: Any) -> np.ndarray:
        """Queue ``action`` and return the action that has arrived by this step."""
        delay_steps = int(self._delay.sample_steps(self._rng))
        self.last_delay_steps = delay_steps
        now = self._step
        self._pending.append((now + delay_steps, now, np.array(action, copy=True)))
        keep: list[tuple[int, int, np.ndarray]] = []
        for arrival, issued, queued in self._pending:
            if arrival <= now:
                if issued > self._applied_issue_step:
                    self._applied = queued
                    self._applied_issue_step = issued
            elif issued > self._applied_issue_step:
                keep.append((arrival, issued, queued))
        self._pending = [p for p in keep if p[1] > self._applied_issue_step]
        self._step += 1
        return self._applied

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        """Step the inner env with the delayed action; ``info['action_delay_steps']`` is d_t."""
        obs, reward, terminated, truncated, info = self.env.step(self.action(action))
        info["action_delay_steps"] = self.last_delay_steps
        return obs, reward, terminated, truncated, info


class ControlPeriodJitterWrapper(gym.Wrapper[Any, Any, Any, Any]):
    """Vary a MuJoCo env's control period by drawing its physics substeps per step.

    Each step runs ``rng.integers(low_substeps, high_substeps + 1)`` physics substeps instead
    of the env's fixed ``frame_skip``; gymnasium's MuJoCo tasks compute velocities and rewards
    from ``dt = timestep * frame_skip``, so they stay consistent. The nominal value is restored
    on close.

    Args:
        env: a gymnasium MuJoCo env (its ``unwrapped`` has ``frame_skip``).
        low_substeps: fewest substeps per step, >= 1.
        high_substeps: most substeps per step, >= ``low_substeps``.
        seed: seed of the wrapper's generator; ``reset(seed=s)`` re-seeds it with s.
    """

    def __init__(
        self, env: gym.Env[Any, Any], low_substeps: int, high_substeps: int, seed: int | None = None
    ) -> None:
        super().__init__(env)
        if not hasattr(env.unwrapped, "frame_skip"):
            raise ProfileError(
                "ControlPeriodJitterWrapper needs a MuJoCo env with frame_skip, got "
                f"{env.unwrapped!r}"
            )
        if low_substeps < 1 or high_substeps < low_substeps:
            raise ProfileError(
                "ControlPeriodJitterWrapper needs 1 <= low_substeps <= high_substeps, got "
                f"{low_substeps}, {high_substeps}"
            )
        self._nominal_substeps = int(env.unwrapped.frame_skip)
        self.low_substeps = int(low_substeps)
        self.high_substeps = int(high_substeps)
        self._rng = np.random.default_rng(seed)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Reset the inner env (re-seeding the generator if given a seed)."""
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self.env.unwrapped.frame_skip = self._nominal_substeps  # type: ignore[attr-defined]
        return self.env.reset(seed=seed, options=options)

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        """Step with a randomly drawn number of substeps (``info['substeps']``)."""
        substeps = int(self._rng.integers(self.low_substeps, self.high_substeps + 1))
        self.env.unwrapped.frame_skip = substeps  # type: ignore[attr-defined]
        obs, reward, terminated, truncated, info = self.env.step(action)
        info["substeps"] = substeps
        return obs, reward, terminated, truncated, info

    def close(self) -> None:
        """Restore the nominal substeps and close the inner env."""
        self.env.unwrapped.frame_skip = self._nominal_substeps  # type: ignore[attr-defined]
        super().close()

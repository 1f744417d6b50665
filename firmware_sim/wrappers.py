"""Gymnasium wrappers that perturb control timing, drawn from the ns timing profiles.

The timing models are the same seeded profiles the simulated-time loop replays
(:mod:`tailguard.firmware_sim.profiles`, built from the same text/JSON specs by
:func:`~tailguard.firmware_sim.profile_spec.parse_profile`), in integer nanoseconds. A
gymnasium env steps in whole control periods, so each sample is converted to whole steps in
one place each:

- :func:`steps_late`: an action with latency ``L`` misses ``floor(L / period)`` control
  deadlines and is applied that many steps late (a latency below one period meets its
  deadline, as in the unwrapped env). ``ActionLatencyWrapper`` holds the last applied
  action in between (zero-order hold), as a robot's firmware does when the next command is
  late. (The simulated-time loop resolves the same latency at the physics substep instead.)
- :func:`substeps_for`: a control period ``P`` runs ``round(P / timestep)`` physics
  substeps (at least one). ``ControlPeriodJitterWrapper`` sets a MuJoCo env's
  ``frame_skip`` to that every step.
- ``SubstepLatencyWrapper`` (gymnasium MuJoCo envs): a command is released after its
  sampled latency at the next physics-substep boundary, so a latency of a fraction of the
  period holds the previous command for that part of the period, as the simulated-time loop
  does. Use it to TRAIN under latency; for envs without physics substeps use
  ``ActionLatencyWrapper`` (whole steps).

Each wrapper seeds its profiles from its own ``numpy.random.Generator`` (``seed`` argument,
re-seeded by ``env.reset(seed=...)``): at every episode start it picks one of its profiles
(domain randomization over a list; one profile = always that one) and reseeds it from the
generator, so runs are reproducible and episodes differ.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, SupportsFloat, TypeAlias

import gymnasium as gym
import numpy as np

from tailguard.errors import ProfileError
from tailguard.firmware_sim.profile_spec import parse_profile
from tailguard.firmware_sim.profiles import Profile

__all__ = [
    "ActionLatencyWrapper",
    "ControlPeriodJitterWrapper",
    "ExactLatencyWrapper",
    "ProfileLike",
    "SubstepLatencyWrapper",
    "steps_late",
    "substeps_for",
]

#: A profile, or a text/JSON spec that :func:`parse_profile` turns into one.
ProfileLike: TypeAlias = Profile | str | Mapping[str, Any]
_NS_PER_S = 1_000_000_000


def steps_late(latency_ns: int, period_ns: int) -> int:
    """Control deadlines an action with ``latency_ns`` misses: ``floor(latency / period)``."""
    return int(latency_ns) // int(period_ns)


def substeps_for(period_ns: int, timestep_ns: int) -> int:
    """Physics substeps of one control period: ``round(period / timestep)``, at least 1."""
    return max(1, (2 * int(period_ns) + int(timestep_ns)) // (2 * int(timestep_ns)))


class _EpisodeProfiles:
    """One or several profiles; each episode uses one, picked and reseeded by a generator."""

    def __init__(
        self,
        profiles: ProfileLike | Sequence[ProfileLike],
        nominal_ns: int,
        what: str,
        weights: Sequence[float] | None = None,
    ) -> None:
        items = (
            list(profiles)
            if isinstance(profiles, Sequence) and not isinstance(profiles, str)
            else [profiles]
        )
        if not items:
            raise ProfileError(f"{what} needs at least one timing profile")
        self.profiles = [
            p if isinstance(p, Profile) else parse_profile(p, nominal_ns=nominal_ns) for p in items
        ]
        self.weights = None if weights is None else _weights(weights, len(items), what)
        self.current = self.profiles[0]

    def new_episode(self, rng: np.random.Generator) -> None:
        if self.weights is None:
            pick = int(rng.integers(len(self.profiles)))
        else:
            pick = int(rng.choice(len(self.profiles), p=self.weights))
        self.current = self.profiles[pick]
        self.current.reseed(int(rng.integers(2**63)))


def _weights(weights: Sequence[float], n: int, what: str) -> np.ndarray:
    w = np.asarray(weights, np.float64)
    if w.shape != (n,) or not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise ProfileError(f"{what} weights must be {n} positive finite numbers, got {weights!r}")
    return w / w.sum()


def _period_ns_of(env: gym.Env[Any, Any]) -> int | None:
    dt = getattr(env.unwrapped, "dt", None)
    return round(float(dt) * _NS_PER_S) if isinstance(dt, int | float) and dt > 0 else None


class ActionLatencyWrapper(gym.ActionWrapper):
    """Apply each action only after a sampled latency, holding the last applied action meanwhile.

    At step t the agent issues action a_t; its latency ``L_t`` (ns, from the episode's
    profile) makes it arrive at step ``t + steps_late(L_t, period_ns)``. The action sent to
    the inner environment at step t is the most recently *issued* action among those that
    have arrived; older actions that arrive later are dropped. Before any action has arrived,
    ``initial_action`` (zeros by default) is applied. Latency below one period for every
    step reproduces the unwrapped environment exactly.

    Args:
        env: the environment (continuous ``Box`` action space).
        latency: the latency profile (or spec), or a list of them to randomize over episodes.
        period_ns: the control period the latency is compared with, ns; defaults to the
            env's ``unwrapped.dt`` (MuJoCo tasks).
        seed: seed of the wrapper's random generator; ``reset(seed=s)`` re-seeds it with s.
        initial_action: action held until the first one arrives, shape of the action space.
        weights: per-profile draw weights (positive finite; normalized), default uniform.
        round_up: count ``ceil(latency / period)`` steps instead of ``floor``: the audit's
            whole-step resolution (``GymStepTask``), where a command not there at the step
            start waits for the next step. Train with it to match what the audit judges.

    Raises:
        ProfileError: a non-Box action space, no period, a bad profile spec or bad weights.
    """

    def __init__(
        self,
        env: gym.Env[Any, Any],
        latency: ProfileLike | Sequence[ProfileLike],
        period_ns: int | None = None,
        seed: int | None = None,
        initial_action: np.ndarray | None = None,
        weights: Sequence[float] | None = None,
        round_up: bool = False,
    ) -> None:
        super().__init__(env)
        space = env.action_space
        if not isinstance(space, gym.spaces.Box):
            raise ProfileError(
                f"ActionLatencyWrapper needs a Box action space, got {type(space).__name__}"
            )
        period = _period_ns_of(env) if period_ns is None else int(period_ns)
        if period is None or period <= 0:
            raise ProfileError(
                "ActionLatencyWrapper needs the control period: pass period_ns > 0 (the env "
                f"has no positive unwrapped.dt), got {period_ns!r}"
            )
        self.period_ns = period
        self._latency = _EpisodeProfiles(latency, 0, "ActionLatencyWrapper", weights)
        self._round_up = bool(round_up)
        self._rng = np.random.default_rng(seed)
        self._latency.new_episode(self._rng)
        default = np.zeros(space.shape, dtype=space.dtype)
        self._initial_action = default if initial_action is None else np.asarray(initial_action)
        self._applied = self._initial_action.copy()
        self._applied_issue_step = -1
        self._pending: list[tuple[int, int, np.ndarray]] = []  # (arrival_step, issue_step, action)
        self._step = 0
        self.last_latency_ns = 0
        self.last_delay_steps = 0

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Reset the inner env and the delay line (re-seeding the generator if given a seed)."""
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self._latency.new_episode(self._rng)
        self._applied = self._initial_action.copy()
        self._applied_issue_step = -1
        self._pending.clear()
        self._step = 0
        return self.env.reset(seed=seed, options=options)

    def action(self, action: Any) -> np.ndarray:
        """Queue ``action`` and return the action that has arrived by this step."""
        self.last_latency_ns = self._latency.current.next_ns()
        delay_steps = (
            -(-self.last_latency_ns // self.period_ns)
            if self._round_up
            else steps_late(self.last_latency_ns, self.period_ns)
        )
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
        """Step with the delayed action; ``info`` gets ``action_delay_steps`` and
        ``action_latency_ns`` of the action issued now."""
        obs, reward, terminated, truncated, info = self.env.step(self.action(action))
        info["action_delay_steps"] = self.last_delay_steps
        info["action_latency_ns"] = self.last_latency_ns
        return obs, reward, terminated, truncated, info


class ControlPeriodJitterWrapper(gym.Wrapper[Any, Any, Any, Any]):
    """Vary a MuJoCo env's control period, drawn from a period profile, step by step.

    Each step draws a control period (ns) from the episode's profile and runs
    ``substeps_for(period, timestep)`` physics substeps instead of the env's fixed
    ``frame_skip``; gymnasium's MuJoCo tasks compute velocities and rewards from
    ``dt = timestep * frame_skip``, so they stay consistent. ``nominal`` in a spec is the
    env's own period. The nominal ``frame_skip`` is restored on reset and close.

    Args:
        env: a gymnasium MuJoCo env (its ``unwrapped`` has ``frame_skip`` and ``model``).
        period: the period profile (or spec), or a list of them to randomize over episodes;
            e.g. ``uniform:jitter_ms=2`` or ``{"kind": "empirical", "counts": {...}}``.
        seed: seed of the wrapper's generator; ``reset(seed=s)`` re-seeds it with s.

    Raises:
        ProfileError: not a MuJoCo env, or a bad profile spec.
    """

    def __init__(
        self,
        env: gym.Env[Any, Any],
        period: ProfileLike | Sequence[ProfileLike],
        seed: int | None = None,
    ) -> None:
        super().__init__(env)
        inner = env.unwrapped
        if not hasattr(inner, "frame_skip") or not hasattr(inner, "model"):
            raise ProfileError(
                f"ControlPeriodJitterWrapper needs a MuJoCo env with frame_skip, got {inner!r}"
            )
        self._nominal_substeps = int(inner.frame_skip)
        self.timestep_ns = round(float(inner.model.opt.timestep) * _NS_PER_S)
        self.nominal_period_ns = self.timestep_ns * self._nominal_substeps
        self._period = _EpisodeProfiles(
            period, self.nominal_period_ns, "ControlPeriodJitterWrapper"
        )
        self._rng = np.random.default_rng(seed)
        self._period.new_episode(self._rng)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Reset the inner env (re-seeding the generator if given a seed)."""
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self._period.new_episode(self._rng)
        self.env.unwrapped.frame_skip = self._nominal_substeps  # type: ignore[attr-defined]
        return self.env.reset(seed=seed, options=options)

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        """Step with the drawn number of substeps (``info['substeps']``, ``info['period_ns']``)."""
        substeps = substeps_for(self._period.current.next_ns(), self.timestep_ns)
        self.env.unwrapped.frame_skip = substeps  # type: ignore[attr-defined]
        obs, reward, terminated, truncated, info = self.env.step(action)
        info["substeps"] = substeps
        info["period_ns"] = substeps * self.timestep_ns
        return obs, reward, terminated, truncated, info

    def close(self) -> None:
        """Restore the nominal substeps and close the inner env."""
        self.env.unwrapped.frame_skip = self._nominal_substeps  # type: ignore[attr-defined]
        super().close()


class SubstepLatencyWrapper(gym.Wrapper[Any, Any, Any, Any]):
    """Release each command after its sampled latency, at the next physics-substep boundary.

    Step ``t`` starts at ``t * period_ns`` (period = ``frame_skip`` substeps of the model's
    timestep). The command issued at step ``t`` with latency ``L`` is released at
    ``t * period_ns + L``; at every substep boundary the newest released command is applied
    (zero-order hold: the previous one until then; an older command released after a newer
    one is dropped; zeros before the first release). The period's substeps are run in runs of
    equal command through the MuJoCo env's own ``step`` (``frame_skip`` set to the run length),
    so its reward and termination rules apply to each run: the step's reward is the
    substep-weighted mean of the runs' rewards (``r * n / frame_skip`` each), the step stops
    at the first terminating run, and the episode is truncated after the env spec's
    ``max_episode_steps`` steps (1000 without a spec). ``info`` is the last run's, plus
    ``action_latency_ns``. Zero latency reproduces the unwrapped env bit for bit; a latency of
    exactly one period is a rollout one step late.

    Each episode draws one profile from ``latency`` (with ``weights``, default uniform) and
    reseeds it from the wrapper's generator.

    Args:
        env: a gymnasium MuJoCo env (its ``unwrapped`` has ``frame_skip`` and ``model``).
        latency: the latency profile spec (or profile), or a list to randomize over episodes.
        weights: per-profile draw weights (positive finite; normalized), default uniform.
        seed: seed of the wrapper's generator.
        reset_seed_offset: ``reset(seed=s)`` re-seeds the generator with ``s +
            reset_seed_offset`` (an offset keeps the timing stream apart from the env's own
            stream seeded with the same number).

    Raises:
        ProfileError: not a MuJoCo env, a bad spec, or bad weights.
    """

    def __init__(
        self,
        env: gym.Env[Any, Any],
        latency: ProfileLike | Sequence[ProfileLike],
        weights: Sequence[float] | None = None,
        seed: int | None = None,
        reset_seed_offset: int = 0,
    ) -> None:
        super().__init__(env)
        base = env.unwrapped
        if not hasattr(base, "frame_skip") or not hasattr(base, "model"):
            raise ProfileError(
                f"SubstepLatencyWrapper needs a MuJoCo env with frame_skip, got {base!r}; use "
                "ActionLatencyWrapper (whole control steps) for other envs"
            )
        items = (
            list(latency)
            if isinstance(latency, Sequence) and not isinstance(latency, str)
            else [latency]
        )
        if not items:
            raise ProfileError("SubstepLatencyWrapper needs at least one timing profile")
        for item in items:  # refuse a bad spec now, not at the first reset
            if not isinstance(item, Profile):
                parse_profile(item)
        w: Sequence[float] = [1.0] * len(items) if weights is None else weights
        self._specs = items
        self._weights = _weights(w, len(items), "SubstepLatencyWrapper")
        self._base = base
        self._frame_skip = int(base.frame_skip)
        self.substep_ns = round(float(base.model.opt.timestep) * _NS_PER_S)
        self.period_ns = self._frame_skip * self.substep_ns
        self._limit = int(env.spec.max_episode_steps or 1000) if env.spec else 1000
        self._offset = int(reset_seed_offset)
        self._rng = np.random.default_rng(seed)
        self._profile: Profile | None = None
        self._pending: list[tuple[int, int, np.ndarray]] = []  # (release_ns, issue_step, cmd)
        shape = env.action_space.shape or ()
        self._applied: np.ndarray = np.zeros(shape, dtype=np.float64)
        self._applied_issue = -1
        self._t = 0
        self.last_latency_ns = 0

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Reset the inner env, draw the episode's profile, clear the delay line."""
        self._new_episode(seed)
        return self.env.reset(seed=seed, options=options)

    def _new_episode(self, seed: int | None) -> None:
        if seed is not None:
            self._rng = np.random.default_rng(seed + self._offset)
        pick = int(self._rng.choice(len(self._specs), p=self._weights))
        spec = self._specs[pick]
        # A fresh profile per episode: the same stream whatever ran before.
        self._profile = spec if isinstance(spec, Profile) else parse_profile(spec)
        self._profile.reseed(int(self._rng.integers(2**63)))
        self._pending.clear()
        self._applied = np.zeros_like(self._applied)
        self._applied_issue = -1
        self._t = 0

    def _command_at(self, time_ns: int) -> np.ndarray:
        for release, issued, command in self._pending:
            if release <= time_ns and issued > self._applied_issue:
                self._applied, self._applied_issue = command, issued
        self._pending = [p for p in self._pending if p[1] > self._applied_issue]
        return self._applied

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        """One control period with the commands released so far (see the class docstring)."""
        if self._profile is None:
            raise ProfileError("SubstepLatencyWrapper.step called before reset")
        start = self._t * self.period_ns
        latency = int(self._profile.next_ns())
        self.last_latency_ns = latency
        self._pending.append((start + latency, self._t, np.array(action, dtype=np.float64)))
        runs: list[tuple[np.ndarray, int]] = []
        for j in range(self._frame_skip):
            command = self._command_at(start + j * self.substep_ns)
            if runs and runs[-1][0] is command:
                runs[-1] = (command, runs[-1][1] + 1)
            else:
                runs.append((command, 1))
        reward, terminated, obs = 0.0, False, None
        info: dict[str, Any] = {}
        base = self._base
        try:
            for command, n in runs:
                base.frame_skip = n
                obs, r, terminated, _, info = base.step(command)
                reward += float(r) * n / self._frame_skip
                if terminated:
                    break
        finally:
            base.frame_skip = self._frame_skip
        self._t += 1
        info = {**info, "action_latency_ns": latency}
        return obs, reward, bool(terminated), self._t >= self._limit, info


class ExactLatencyWrapper(SubstepLatencyWrapper):
    """Release each command at its exact release time, as the simulated-time loop does.

    The same delay line, profiles, seeding and episode limit as :class:`SubstepLatencyWrapper`,
    but a command released inside a physics substep takes effect at that instant: the
    period is integrated in spans between release instants by the substep simulator
    (:class:`~tailguard.firmware_sim.tasks.MujocoTask`, shortened integration steps at a
    span's ends), whose rewards are the env's own terms for the time each command was held.
    Termination is the env's rule on the state at the end of the step (the env's step grid).
    So a policy trained through it sees the timing that ``tailguard replay`` and the audit
    judge it under (checked against ``tailguard replay``). Zero latency gives the unwrapped
    env's trajectory, and its rewards to float rounding (the segment terms are summed in
    another order). ``reset`` returns an empty ``info``.

    Raises:
        UnsupportedEnvError: an env the substep simulator does not support.
        ProfileError: a bad spec or bad weights.
    """

    def __init__(self, env: gym.Env[Any, Any], *args: Any, **kwargs: Any) -> None:
        """The arguments of :class:`SubstepLatencyWrapper`."""
        from tailguard.firmware_sim.tasks import MujocoTask

        task = MujocoTask(env)  # an unsupported env is refused before the specs are read
        super().__init__(env, *args, **kwargs)
        self._task = task

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Reset the env through the substep simulator, draw the episode's profile."""
        self._new_episode(seed)
        return self._task.reset(seed), {}  # type: ignore[arg-type]

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        """One control period with each command applied from its release instant."""
        if self._profile is None:
            raise ProfileError("ExactLatencyWrapper.step called before reset")
        task = self._task
        start = self._t * self.period_ns
        stop = start + self.period_ns
        latency = int(self._profile.next_ns())
        self.last_latency_ns = latency
        self._pending.append((start + latency, self._t, np.array(action, dtype=np.float64)))
        command = self._command_at(start)
        releases = sorted({r for r, i, _ in self._pending if start < r < stop})
        reward, now = 0.0, start
        for release in releases:
            newer = self._command_at(release)
            if newer is not command:
                reward += task.run_ns(command, now, release)
                command, now = newer, release
        reward += task.run_ns(command, now, stop)
        self._t += 1
        info = {"action_latency_ns": latency}
        return task.observe(), reward, task.terminated(), self._t >= self._limit, info

"""Timing wrappers (action delay, seeding, period jitter) and the rsl-rl VecEnv adapter."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

gym = pytest.importorskip("gymnasium")

from tailguard.errors import ProfileError  # noqa: E402
from tailguard.firmware_sim.wrappers import (  # noqa: E402
    ActionLatencyWrapper,
    ControlPeriodJitterWrapper,
    FixedDelay,
    LognormalDelay,
    RandomizedDelay,
    UniformDelay,
)


class RecordingEnv(gym.Env[np.ndarray, np.ndarray]):
    """Records every action it receives; terminates after ``terminate_after`` steps."""

    def __init__(self, terminate_after: int = 10_000) -> None:
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.received: list[float] = []
        self.terminate_after = terminate_after
        self.t = 0

    def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(2, np.float32), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.received.append(float(np.asarray(action).reshape(-1)[0]))
        self.t += 1
        obs = np.array([self.t, float(np.asarray(action).reshape(-1)[0])], np.float32)
        return obs, 1.0, self.t >= self.terminate_after, False, {}


class ScriptedDelay:
    """Delays taken from a list, in order."""

    def __init__(self, delays: list[int]) -> None:
        self.delays = list(delays)
        self.i = 0

    def reset(self, rng: np.random.Generator) -> None:
        self.i = 0

    def sample_steps(self, rng: np.random.Generator) -> int:
        d = self.delays[self.i]
        self.i += 1
        return d


def _run(delay: Any, actions: list[float], seed: int = 0) -> list[float]:
    inner = RecordingEnv()
    env = ActionLatencyWrapper(inner, delay, seed=seed)
    env.reset(seed=seed)
    for a in actions:
        env.step(np.array([a], np.float32))
    return inner.received


ACTIONS = [0.1 * (i + 1) for i in range(8)]


def test_zero_delay_is_identity() -> None:
    """With delay 0 every action reaches the env unchanged, in the same step."""
    assert _run(FixedDelay(0), ACTIONS) == pytest.approx(ACTIONS)


def test_fixed_delay_shifts_actions_and_holds_initial() -> None:
    """A fixed delay of 2 applies a_t at step t+2; the initial (zero) action is held before."""
    assert _run(FixedDelay(2), ACTIONS) == pytest.approx([0.0, 0.0, *ACTIONS[:-2]])


def test_newest_arrived_action_wins_and_stale_ones_are_dropped() -> None:
    """An older action arriving after a newer one has been applied is dropped (never reverts)."""
    # a0 delay 3 (arrives t=3), a1 delay 0 (t=1), a2 delay 5 (t=7), a3 delay 0 (t=3)
    got = _run(ScriptedDelay([3, 0, 5, 0, 0, 0, 0, 0]), ACTIONS[:8])
    assert got == pytest.approx([0.0, 0.2, 0.2, 0.4, 0.5, 0.6, 0.7, 0.8])


def test_same_seed_same_delays_and_reset_reseeds() -> None:
    """Identical seeds give identical delay sequences; reset(seed) restarts the sequence."""
    model = LognormalDelay(median_periods=0.8, sigma=1.0, max_steps=4)
    inner = RecordingEnv()
    env = ActionLatencyWrapper(inner, model, seed=5)
    delays = []
    for _ in range(2):
        env.reset(seed=11)
        run = []
        for a in ACTIONS:
            _, _, _, _, info = env.step(np.array([a], np.float32))
            run.append(info["action_delay_steps"])
        delays.append(run)
    assert delays[0] == delays[1]
    assert max(delays[0]) <= 4


def test_lognormal_delay_counts_missed_deadlines() -> None:
    """Lognormal delay = floor(latency/period), capped; its tail frequency matches the model."""
    model = LognormalDelay(median_periods=0.5, sigma=0.9, max_steps=3)
    rng = np.random.default_rng(0)
    samples = np.array([model.sample_steps(rng) for _ in range(20_000)])
    assert samples.min() == 0 and samples.max() == 3
    # P(latency >= 1 period) = P(Z >= ln(2)/0.9) ~= 0.22
    assert abs(np.mean(samples >= 1) - 0.2206) < 0.015


def test_randomized_delay_draws_one_model_per_episode() -> None:
    """RandomizedDelay keeps one model for a whole episode and varies it across episodes."""
    model = RandomizedDelay([FixedDelay(0), FixedDelay(3)])
    rng = np.random.default_rng(0)
    chosen = set()
    for _ in range(20):
        model.reset(rng)
        per_episode = {model.sample_steps(rng) for _ in range(10)}
        assert len(per_episode) == 1
        chosen |= per_episode
    assert chosen == {0, 3}


@pytest.mark.parametrize(
    ("factory", "fragment"),
    [
        (lambda: FixedDelay(-1), "steps must be >= 0"),
        (lambda: UniformDelay(2, 1), "low_steps <= high_steps"),
        (lambda: LognormalDelay(0.0, 1.0, 3), "median_periods > 0"),
        (lambda: LognormalDelay(1.0, -1.0, 3), "sigma >= 0"),
        (lambda: RandomizedDelay([]), "at least one"),
        (
            lambda: ActionLatencyWrapper(gym.make("CartPole-v1"), FixedDelay(0)),
            "needs a Box action space",
        ),
        (
            lambda: ControlPeriodJitterWrapper(RecordingEnv(), 3, 5),
            "needs a MuJoCo env with frame_skip",
        ),
        (lambda: ControlPeriodJitterWrapper(gym.make("Hopper-v5"), 0, 5), "1 <= low_substeps"),
    ],
)
def test_bad_timing_parameters_are_refused(factory: Any, fragment: str) -> None:
    """Out-of-range delay and jitter parameters raise ProfileError with the rule broken."""
    with pytest.raises(ProfileError, match=fragment):
        factory()


def test_period_jitter_varies_substeps_and_restores() -> None:
    """Each step draws 3..5 substeps (seeded); reset and close restore the nominal 4."""
    pytest.importorskip("mujoco")
    env = ControlPeriodJitterWrapper(gym.make("Hopper-v5"), 3, 5, seed=0)
    env.reset(seed=3)
    seen = [env.step(np.zeros(3))[4]["substeps"] for _ in range(30)]
    assert set(seen) == {3, 4, 5}
    env.reset(seed=3)
    assert env.unwrapped.frame_skip == 4
    again = [env.step(np.zeros(3))[4]["substeps"] for _ in range(30)]
    assert again == seen
    env.close()
    assert env.unwrapped.frame_skip == 4


def test_vecenv_adapter_autoresets_and_reports_timeouts() -> None:
    """The rsl-rl VecEnv adapter resets finished envs and flags truncations as time_outs."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("tensordict")
    from tailguard.adapters.rsl_rl_vecenv import GymnasiumVecEnv

    def make_terminating() -> gym.Env:
        return RecordingEnv(terminate_after=3)

    def make_truncating() -> gym.Env:
        return gym.wrappers.TimeLimit(RecordingEnv(), max_episode_steps=2)

    env = GymnasiumVecEnv([make_terminating, make_truncating], seed=0)
    assert (env.num_envs, env.num_obs, env.num_actions) == (2, 2, 1)
    assert tuple(env.get_observations()["policy"].shape) == (2, 2)
    dones_log, timeouts_log = [], []
    for _ in range(6):
        obs, _rewards, dones, extras = env.step(torch.full((2, 1), 5.0))
        dones_log.append(dones.tolist())
        timeouts_log.append(extras["time_outs"].tolist())
        assert obs["policy"].dtype == torch.float32
    assert [d[0] for d in dones_log] == [0, 0, 1, 0, 0, 1]
    assert [d[1] for d in dones_log] == [0, 1, 0, 1, 0, 1]
    assert [t[0] for t in timeouts_log] == [False] * 6
    assert [t[1] for t in timeouts_log] == [False, True, False, True, False, True]
    assert env.envs[0].unwrapped.received[0] == 1.0  # actions are clipped to the bounds
    assert list(env.recent_returns)[:2] == [2.0, 3.0]
    env.close()

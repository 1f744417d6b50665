"""Timing wrappers (latency and period profiles in ns, seeding) and the rsl-rl VecEnv adapter."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

gym = pytest.importorskip("gymnasium")

from tailguard.errors import ProfileError  # noqa: E402
from tailguard.firmware_sim.profile_spec import parse_profile  # noqa: E402
from tailguard.firmware_sim.wrappers import (  # noqa: E402
    ActionLatencyWrapper,
    ControlPeriodJitterWrapper,
    steps_late,
    substeps_for,
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


MS = 1_000_000
PERIOD_NS = 8 * MS


def trace(*steps: int) -> dict:
    """A latency trace (replayed in order) of whole periods, as an empirical profile spec."""
    return {"kind": "empirical", "trace_ns": [k * PERIOD_NS for k in steps]}


def _run(latency: Any, actions: list[float], seed: int = 0) -> list[float]:
    inner = RecordingEnv()
    env = ActionLatencyWrapper(inner, latency, period_ns=PERIOD_NS, seed=seed)
    env.reset(seed=seed)
    for a in actions:
        env.step(np.array([a], np.float32))
    return inner.received


ACTIONS = [0.1 * (i + 1) for i in range(8)]


@pytest.mark.parametrize(
    "spec", ["nominal", "fixed:ns=0", "fixed:ms=7.999", "uniform:lo_ms=0,hi_ms=7"]
)
def test_latency_below_one_period_is_identity(spec: str) -> None:
    """A latency below one period meets its deadline: every action reaches the env at once."""
    assert _run(spec, ACTIONS) == pytest.approx(ACTIONS)


def test_two_periods_of_latency_shift_actions_and_hold_initial() -> None:
    """A fixed 16 ms latency at 8 ms applies a_t at step t+2; zeros are held before."""
    assert _run("fixed:ms=16", ACTIONS) == pytest.approx([0.0, 0.0, *ACTIONS[:-2]])


def test_newest_arrived_action_wins_and_stale_ones_are_dropped() -> None:
    """An older action arriving after a newer one has been applied is dropped (never reverts)."""
    # a0 late 3 (arrives t=3), a1 late 0 (t=1), a2 late 5 (t=7), a3 late 0 (t=3)
    got = _run(trace(3, 0, 5, 0, 0, 0, 0, 0), ACTIONS[:8])
    assert got == pytest.approx([0.0, 0.2, 0.2, 0.4, 0.5, 0.6, 0.7, 0.8])


@pytest.mark.parametrize(
    ("latency_ns", "period_ns", "steps"),
    [
        (0, PERIOD_NS, 0),
        (PERIOD_NS - 1, PERIOD_NS, 0),
        (PERIOD_NS, PERIOD_NS, 1),
        (41 * MS, PERIOD_NS, 5),
    ],
)
def test_steps_late_counts_missed_deadlines(latency_ns: int, period_ns: int, steps: int) -> None:
    """steps_late is floor(latency / period): the deadlines an action missed."""
    assert steps_late(latency_ns, period_ns) == steps


@pytest.mark.parametrize(
    ("period_ns", "substeps"),
    [(6 * MS, 3), (7 * MS, 4), (8 * MS, 4), (10 * MS, 5), (0, 1), (MS, 1)],
)
def test_substeps_for_rounds_the_period_to_the_physics_grid(period_ns: int, substeps: int) -> None:
    """substeps_for is round(period / timestep), at least one substep."""
    assert substeps_for(period_ns, 2 * MS) == substeps


def test_same_seed_same_latencies_and_reset_reseeds() -> None:
    """Identical seeds give identical latency streams; reset(seed) restarts the stream."""
    env = ActionLatencyWrapper(
        RecordingEnv(), "lognormal:median_ms=6.4,sigma=1,cap_ms=32", period_ns=PERIOD_NS, seed=5
    )
    runs = []
    for _ in range(2):
        env.reset(seed=11)
        run = []
        for a in ACTIONS * 4:
            info = env.step(np.array([a], np.float32))[4]
            assert info["action_delay_steps"] == info["action_latency_ns"] // PERIOD_NS
            run.append(info["action_latency_ns"])
        runs.append(run)
    assert runs[0] == runs[1] and len(set(runs[0])) > 1
    assert max(runs[0]) <= 32 * MS


def test_lognormal_latency_tail_frequency_matches_the_profile() -> None:
    """With a lognormal profile the fraction of late actions is the profile's P(L >= period)."""
    spec = "lognormal:median_ms=4,sigma=0.9,cap_ms=24"
    env = ActionLatencyWrapper(RecordingEnv(), spec, period_ns=PERIOD_NS, seed=0)
    env.reset(seed=0)
    steps = np.array(
        [env.step(np.zeros(1, np.float32))[4]["action_delay_steps"] for _ in range(20_000)]
    )
    assert steps.min() == 0 and steps.max() == 3  # the cap: 24 ms = 3 periods
    expected = parse_profile(spec).p_violate(PERIOD_NS - 1)  # P(Z >= ln(2)/0.9) ~= 0.2206
    assert abs(expected - 0.2206) < 0.001
    assert abs(np.mean(steps >= 1) - expected) < 0.015


def test_a_list_of_profiles_draws_one_per_episode() -> None:
    """With several profiles, each episode keeps one and episodes vary among them."""
    env = ActionLatencyWrapper(
        RecordingEnv(), ["nominal", "fixed:ms=24"], period_ns=PERIOD_NS, seed=0
    )
    chosen = set()
    for episode in range(20):
        env.reset(seed=episode)
        per_episode = {
            env.step(np.zeros(1, np.float32))[4]["action_delay_steps"] for _ in range(10)
        }
        assert len(per_episode) == 1
        chosen |= per_episode
    assert chosen == {0, 3}


def test_period_defaults_to_the_mujoco_env_dt() -> None:
    """Without period_ns the wrapper compares latencies with the env's own dt (8 ms, Hopper)."""
    pytest.importorskip("mujoco")
    env = ActionLatencyWrapper(gym.make("Hopper-v5"), "fixed:ms=8", seed=0)
    assert env.period_ns == PERIOD_NS
    env.reset(seed=0)
    assert env.step(np.zeros(3))[4]["action_delay_steps"] == 1
    env.close()


@pytest.mark.parametrize(
    ("factory", "fragment"),
    [
        (lambda: ActionLatencyWrapper(gym.make("CartPole-v1"), "nominal"), "needs a Box action"),
        (lambda: ActionLatencyWrapper(RecordingEnv(), "nominal"), "needs the control period"),
        (lambda: ActionLatencyWrapper(RecordingEnv(), [], period_ns=MS), "at least one"),
        (lambda: ActionLatencyWrapper(RecordingEnv(), "lognormx", period_ns=MS), "did you mean"),
        (
            lambda: ActionLatencyWrapper(
                RecordingEnv(), "pareto:scale_ms=5,alpha=0.01", period_ns=MS
            ),
            "heavy tail without a cap",
        ),
        (
            lambda: ControlPeriodJitterWrapper(RecordingEnv(), "nominal"),
            "needs a MuJoCo env with frame_skip",
        ),
        (lambda: ControlPeriodJitterWrapper(gym.make("Hopper-v5"), "fixed:ms=-1"), ">= 0"),
    ],
)
def test_bad_timing_parameters_are_refused(factory: Any, fragment: str) -> None:
    """Bad envs, periods and profile specs raise ProfileError with the rule broken."""
    with pytest.raises(ProfileError, match=fragment):
        factory()


PERIOD_3_TO_5 = {"kind": "empirical", "counts": {"6000000": 1, "8000000": 1, "10000000": 1}}


def test_period_jitter_varies_substeps_and_restores() -> None:
    """Each step draws 6/8/10 ms = 3..5 substeps (seeded); reset and close restore 4."""
    pytest.importorskip("mujoco")
    env = ControlPeriodJitterWrapper(gym.make("Hopper-v5"), PERIOD_3_TO_5, seed=0)
    assert env.nominal_period_ns == PERIOD_NS
    env.reset(seed=3)
    infos = [env.step(np.zeros(3))[4] for _ in range(30)]
    seen = [info["substeps"] for info in infos]
    assert set(seen) == {3, 4, 5}
    assert all(info["period_ns"] == 2 * MS * info["substeps"] for info in infos)
    env.reset(seed=3)
    assert env.unwrapped.frame_skip == 4
    again = [env.step(np.zeros(3))[4]["substeps"] for _ in range(30)]
    assert again == seen
    env.close()
    assert env.unwrapped.frame_skip == 4


def test_nominal_period_profile_keeps_the_env_period() -> None:
    """The 'nominal' period profile is the env's own period: always its 4 substeps."""
    pytest.importorskip("mujoco")
    env = ControlPeriodJitterWrapper(gym.make("Hopper-v5"), "nominal", seed=0)
    env.reset(seed=0)
    assert {env.step(np.zeros(3))[4]["substeps"] for _ in range(10)} == {4}
    env.close()


def test_training_and_evaluation_scripts_build_their_wrappers() -> None:
    """train_hopper's robust env and evaluate_hopper's conditions build and step."""
    pytest.importorskip("mujoco")
    from tailguard.policies import evaluate_hopper, train_hopper

    env = train_hopper.make_env("robust", seed=0)
    env.reset(seed=0)
    for _ in range(5):
        info = env.step(np.zeros(3))[4]
        assert info["substeps"] in (3, 4, 5) and info["action_delay_steps"] in range(5)
    env.close()
    for spec in evaluate_hopper.CONDITIONS.values():
        if spec is not None:
            parse_profile(spec)


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


def _hopper_actions(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.uniform(-1.0, 1.0, 3) for _ in range(n)]


def _plain_rollout(actions: list[np.ndarray], seed: int) -> list[tuple]:
    env = gym.make("Hopper-v5")
    env.reset(seed=seed)
    out = []
    for a in actions:
        obs, r, term, _trunc, _ = env.step(a)
        out.append((obs, r, term))
        if term:
            break
    env.close()
    return out


def _substep_rollout(latency: str, actions: list[np.ndarray], seed: int) -> list[tuple]:
    from tailguard.firmware_sim.wrappers import SubstepLatencyWrapper

    env = SubstepLatencyWrapper(gym.make("Hopper-v5"), latency, seed=0)
    env.reset(seed=seed)
    out = []
    for a in actions:
        obs, r, term, _trunc, _info = env.step(a)
        out.append((obs, r, term))
        if term:
            break
    env.close()
    return out


def _same(a: list[tuple], b: list[tuple]) -> bool:
    return len(a) == len(b) and all(
        np.array_equal(x[0], y[0]) and x[1] == y[1] and x[2] == y[2]
        for x, y in zip(a, b, strict=True)
    )


def test_substep_latency_zero_is_the_plain_env_bit_for_bit() -> None:
    """With zero latency SubstepLatencyWrapper gives the plain env's observations, rewards and
    terminations exactly (same floats, same step count)."""
    pytest.importorskip("mujoco")
    actions = _hopper_actions(200)
    assert _same(_substep_rollout("nominal", actions, 4), _plain_rollout(actions, 4))


def test_substep_latency_of_one_period_is_a_one_step_late_rollout() -> None:
    """A latency of exactly one period (8 ms) applies a_{t-1} at step t (zeros first): the
    plain env fed the shifted action sequence gives the same floats."""
    pytest.importorskip("mujoco")
    actions = _hopper_actions(200)
    late = [np.zeros(3), *actions[:-1]]
    assert _same(_substep_rollout("fixed:ms=8", actions, 4), _plain_rollout(late, 4))


def test_substep_latency_inside_a_period_differs_and_is_seeded() -> None:
    """A latency of half a period changes the rollout (the old command holds for 2 of 4
    substeps), and the same seeds reproduce a random-latency rollout exactly."""
    pytest.importorskip("mujoco")
    actions = _hopper_actions(100)
    assert not _same(_substep_rollout("fixed:ms=4", actions, 4), _plain_rollout(actions, 4))
    spec = "lognormal:median_ms=2.5,sigma=0.9,cap_ms=40"
    assert _same(_substep_rollout(spec, actions, 4), _substep_rollout(spec, actions, 4))


def test_substep_latency_refuses_non_mujoco_envs_and_bad_weights() -> None:
    """Not a MuJoCo env, or weights that do not match the profiles, raise ProfileError."""
    from tailguard.firmware_sim.wrappers import SubstepLatencyWrapper

    with pytest.raises(ProfileError, match="ActionLatencyWrapper"):
        SubstepLatencyWrapper(RecordingEnv(), "nominal")
    pytest.importorskip("mujoco")
    with pytest.raises(ProfileError, match="positive finite"):
        SubstepLatencyWrapper(gym.make("Hopper-v5"), ["nominal", "fixed:ms=8"], weights=[1.0])


def test_round_up_counts_a_late_command_as_a_whole_step() -> None:
    """round_up=True waits ceil(L / P) steps (the audit's whole-step resolution): a quarter
    period of latency is one step late; zero stays on time."""
    inner = RecordingEnv()
    env = ActionLatencyWrapper(inner, "fixed:ms=2", period_ns=PERIOD_NS, seed=0, round_up=True)
    env.reset(seed=0)
    for a in ACTIONS:
        env.step(np.array([a], np.float32))
    assert inner.received == pytest.approx([0.0, *ACTIONS[:-1]])
    assert _run("fixed:ns=0", ACTIONS) == pytest.approx(ACTIONS)


def test_weights_pick_profiles_in_proportion() -> None:
    """With weights (9, 1) about nine episodes in ten draw the first profile."""
    env = ActionLatencyWrapper(
        RecordingEnv(), ["nominal", "fixed:ms=24"], period_ns=PERIOD_NS, seed=0, weights=[9, 1]
    )
    late = 0
    for episode in range(400):
        env.reset(seed=episode)
        late += env.step(np.zeros(1, np.float32))[4]["action_delay_steps"] == 3
    assert 20 <= late <= 60
    with pytest.raises(ProfileError, match="positive finite"):
        ActionLatencyWrapper(RecordingEnv(), "nominal", period_ns=MS, weights=[0.0])

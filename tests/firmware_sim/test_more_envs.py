"""The gymnasium MuJoCo envs beyond the first four (InvertedPendulum, InvertedDoublePendulum,
Swimmer, Reacher, Pusher, Humanoid, HumanoidStandup) at exact timing: nominal replay is
gymnasium's rollout bit for bit (observations too), one period of latency is the one-step-late
rollout, and a latency inside a physics substep changes the run continuously instead of in
whole env steps."""

from __future__ import annotations

import numpy as np
import pytest
from fsim_helpers import MORE_ENVS, linear_controller, plain_rollout

gym = pytest.importorskip("gymnasium")
pytest.importorskip("mujoco")

from tailguard.audit.tasks import GymStepTask, make_audit_task, task_resolution  # noqa: E402
from tailguard.firmware_sim.loop import SimLoop  # noqa: E402
from tailguard.firmware_sim.profiles import FixedProfile  # noqa: E402
from tailguard.firmware_sim.tasks import SUPPORTED_ENVS, MujocoTask  # noqa: E402

US = 1_000
ENVS = MORE_ENVS
#: env steps for the latency sweeps: short enough that the random linear policy does not
#: drop the pendulums or Humanoid (they fall at steps 10, 5 and 14)
SHORT = {"InvertedPendulum-v5": 6, "InvertedDoublePendulum-v5": 4, "Humanoid-v5": 8}
#: horizon of the bit-identity rollouts (the never-ending envs need no 1000 steps for it)
HORIZON = 200


class Recording:
    """A fixed linear controller that records every observation it is given."""

    def __init__(self, obs_dim: int, act_dim: int, seed: int = 3) -> None:
        self.inner = linear_controller(obs_dim, act_dim, seed)
        self.seen: list[np.ndarray] = []

    def __call__(self, obs: np.ndarray, obs_time_ns: int) -> np.ndarray:
        self.seen.append(np.array(obs, copy=True))
        return self.inner(obs, obs_time_ns)

    def reset(self) -> None:
        self.seen = []


def gym_rollout(
    env_id: str, ctl: Recording, seed: int, action_lag: int = 0, obs_lag: int = 0
) -> tuple:
    """Plain gymnasium (``HORIZON`` steps at most): return, length, terminated and every
    observation the policy saw, actions ``action_lag`` steps late, observations ``obs_lag``
    steps old."""
    ctl.reset()
    out = plain_rollout(env_id, ctl, seed, action_lag, obs_lag, max_episode_steps=HORIZON)
    return (*out, ctl.seen)


def _replay(task, ctl: Recording, seed: int, latency_ns: int = 0) -> tuple:
    loop = SimLoop(task, ctl, latency=FixedProfile(latency_ns) if latency_ns else None)
    r = loop.run_episode(seed)
    return r.ret, r.length, r.terminated, ctl.seen


@pytest.mark.parametrize("env_id", ENVS)
def test_replay_observations_equal_gymnasium_bit_for_bit(env_id: str) -> None:
    """Nominal timing: return, length, termination and every observation the policy sees are
    exactly (==) gymnasium's; one period of latency: exactly the rollout with each action one
    env step late. The env is supported at substep resolution (no whole-step fallback)."""
    assert env_id in SUPPORTED_ENVS
    task = MujocoTask(gym.make(env_id))
    task.max_episode_steps = HORIZON
    ctl = Recording(task.obs_size, task.nu)
    for lag in (0, 1):
        want = gym_rollout(env_id, ctl, 1, action_lag=lag)
        got = _replay(task, ctl, 1, latency_ns=lag * task.period_ns)
        assert got[:3] == want[:3]
        assert len(got[3]) == len(want[3])
        for k, (a, b) in enumerate(zip(got[3], want[3], strict=True)):
            np.testing.assert_array_equal(a, b, err_msg=f"lag {lag}, tick {k}")


@pytest.mark.parametrize("env_id", ENVS)
def test_one_period_observation_delay_equals_the_stale_observation_rollout(env_id: str) -> None:
    """An observation delay of one period is exactly the rollout where the policy sees the
    previous step's observation (delayed observations are kept at step boundaries; the
    Humanoids' include contact forces, computed there as the env does)."""
    task = MujocoTask(gym.make(env_id))
    task.max_episode_steps = HORIZON
    ctl = Recording(task.obs_size, task.nu)
    want = gym_rollout(env_id, ctl, 2, obs_lag=1)
    r = SimLoop(task, ctl, obs_delay=FixedProfile(task.period_ns)).run_episode(2)
    assert (r.ret, r.length, r.terminated) == want[:3]
    np.testing.assert_array_equal(np.array(ctl.seen), np.array(want[3]))


@pytest.mark.parametrize("env_id", ENVS)
def test_latency_inside_a_substep_changes_the_run_continuously(env_id: str) -> None:
    """Latencies of 0.1, 1 and 10 us move the observed trajectory away from nominal in
    proportion (each decade ~10x the deviation: no step at the substep grid), and latencies of
    1/4, 1/2, 3/4 and 1 substep give four different runs, where the whole-step task that
    these envs used to fall back to gives one (every latency rounded up to a period).

    Continuity holds between contact events: on HumanoidStandup (lying on the floor) a
    contact ends between 80 and 90 us of latency and the run jumps there, as any
    perturbation that ends a contact makes it jump; hence the short latencies."""
    task = MujocoTask(gym.make(env_id))
    task.max_episode_steps = SHORT.get(env_id, 20)
    ctl = Recording(task.obs_size, task.nu)
    # The Humanoids' observations end in contact forces, which jump when a contact starts:
    # the deviation is measured on their joint positions and velocities.
    state = task.model.nq - 2 + task.model.nv if "Humanoid" in env_id else task.obs_size
    nominal = np.array(_replay(task, ctl, 1)[3])[:, :state]
    dev = []
    for lat_ns in (100, 1 * US, 10 * US):
        _, n, term, seen = _replay(task, ctl, 1, lat_ns)
        assert (n, term) == (task.max_episode_steps, False)
        dev.append(float(np.abs(np.array(seen)[:, :state] - nominal).max()))
    assert dev[0] > 0.0
    assert 8.0 < dev[1] / dev[0] < 12.0 and 8.0 < dev[2] / dev[1] < 12.0
    sub_ns = task.substep_ns
    runs = [_replay(task, ctl, 1, q * sub_ns // 4) for q in (1, 2, 3, 4)]
    for i in range(4):
        for j in range(i + 1, 4):
            assert not np.array_equal(np.array(runs[i][3]), np.array(runs[j][3]))
    if env_id != "InvertedPendulum-v5":  # its return counts surviving steps only
        assert len({r[0] for r in runs}) == 4
    whole = GymStepTask(gym.make(env_id, max_episode_steps=task.max_episode_steps))
    coarse = [_replay(whole, ctl, 1, q * sub_ns // 4)[3] for q in (1, 4)]
    np.testing.assert_array_equal(np.array(coarse[0]), np.array(coarse[1]))


@pytest.mark.parametrize(
    "env_id", ["InvertedPendulum-v5", "InvertedDoublePendulum-v5", "Humanoid-v5"]
)
def test_falls_end_on_the_env_step_grid(env_id: str) -> None:
    """Ticks every 1.5 periods and a latency of 1/3 substep: a fall still ends the episode
    on the env's step grid, at the first boundary where its rule holds (with a horizon one
    step shorter the episode does not terminate)."""
    task = MujocoTask(gym.make(env_id))
    ctl = Recording(task.obs_size, task.nu)

    def run():
        loop = SimLoop(
            task,
            ctl,
            dt=FixedProfile(task.period_ns * 3 // 2),
            latency=FixedProfile(task.substep_ns // 3),
        )
        return loop.run_episode(0, trace=True)

    r = run()
    assert r.terminated and r.trace is not None
    assert r.sim_time_ns % task.period_ns == 0 and r.env_steps == r.sim_time_ns // task.period_ns
    assert np.any(r.trace.tick_ns % task.period_ns) and r.trace.tick_ns[-1] < r.sim_time_ns
    assert task.terminated()
    task.max_episode_steps = r.env_steps - 1
    earlier = run()
    assert not earlier.terminated and earlier.sim_time_ns == r.sim_time_ns - task.period_ns


@pytest.mark.parametrize("env_id", ENVS)
def test_audit_runs_these_envs_at_substep_resolution(env_id: str) -> None:
    """``tailguard audit --env`` makes the substep task for them, not the whole-step one."""
    task = make_audit_task(env_id)
    assert isinstance(task, MujocoTask) and task_resolution(task) == "substep"


@pytest.mark.filterwarnings("ignore:.*out of date:DeprecationWarning")
def test_v4_pendulum_is_not_taken_for_v5() -> None:
    """InvertedPendulum-v4 rewards 1 even on the falling step (v5: 0): it is not simulated with
    v5's rule but left to the whole-step fallback."""
    from tailguard.errors import TailguardError

    with pytest.raises(TailguardError, match="InvertedPendulum-v5"):
        MujocoTask(gym.make("InvertedPendulum-v4"))


@pytest.mark.filterwarnings("ignore:.*out of date:DeprecationWarning")
@pytest.mark.parametrize("env_id", ["Hopper-v4", "Walker2d-v4"])
def test_v4_locomotion_with_another_reward_goes_to_whole_step(env_id: str) -> None:
    """Hopper-v4 and Walker2d-v4 pay the healthy reward on the falling step too, which the
    segment rewards do not reproduce: refused here, so the audit runs them at whole-step
    resolution with the env's own reward."""
    from tailguard.audit.tasks import make_audit_task
    from tailguard.errors import TailguardError

    with pytest.raises(TailguardError, match="not supported by the substep simulator"):
        MujocoTask(gym.make(env_id))
    assert task_resolution(make_audit_task(env_id)) == "whole-step"

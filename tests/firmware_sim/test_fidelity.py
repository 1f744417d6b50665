"""Timing fidelity of the simulated-time loop: commands, observations and ticks happen at
their exact instants (not on the physics substep grid), episodes end at their horizon, and
nominal timing still reproduces plain gymnasium bit for bit."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from fsim_helpers import MORE_ENVS, linear_controller, plain_rollout

gym = pytest.importorskip("gymnasium")
mujoco = pytest.importorskip("mujoco")

from tailguard.errors import ConfigError  # noqa: E402
from tailguard.firmware_sim.controllers import CallableController, OnnxController  # noqa: E402
from tailguard.firmware_sim.loop import SimLoop  # noqa: E402
from tailguard.firmware_sim.profile_spec import parse_profile  # noqa: E402
from tailguard.firmware_sim.profiles import FixedProfile  # noqa: E402
from tailguard.firmware_sim.replay import TimingSpec, build_loop  # noqa: E402
from tailguard.firmware_sim.tasks import MujocoTask  # noqa: E402

MS = 1_000_000
US = 1_000
ENVS = ["Hopper-v5", "Walker2d-v5", "HalfCheetah-v5", "Ant-v5"]
_ENDLESS = ("Swimmer-v5", "HumanoidStandup-v5")


def _task(env_id: str) -> MujocoTask:
    return MujocoTask(gym.make(env_id))


class Recording:
    """A linear controller that records every observation and timestamp it is given."""

    def __init__(self, task: MujocoTask, seed: int = 0) -> None:
        self.inner = linear_controller(task.obs_size, task.nu, seed)
        self.seen: list[np.ndarray] = []
        self.stamps_ns: list[int] = []

    def __call__(self, obs: np.ndarray, obs_time_ns: int) -> np.ndarray:
        self.seen.append(np.array(obs, copy=True))
        self.stamps_ns.append(obs_time_ns)
        return self.inner(obs, obs_time_ns)

    def reset(self) -> None:
        self.seen, self.stamps_ns = [], []


def reference_observations(
    env_id: str, seed: int, applied: list[tuple[int, np.ndarray]], query_ns: list[int]
) -> list[np.ndarray]:
    """Plain reference: raw MuJoCo on a fresh env, one ``mj_step`` per substep, the command
    switched at its exact time (that step split in two by shortening ``opt.timestep``), and
    the observation at each query instant integrated ahead on a copy of the state from the
    last step boundary. HalfCheetah's observation: qpos[1:], qvel."""
    env = gym.make(env_id)
    env.reset(seed=seed)
    u = env.unwrapped
    model, data = u.model, u.data
    h_s = float(model.opt.timestep)
    sub_ns = round(h_s * 1e9)
    spec = mujoco.mjtState.mjSTATE_INTEGRATION
    state = np.empty(mujoco.mj_stateSize(model, spec))
    scratch = mujoco.MjData(model)

    def step(d: object, duration_ns: int) -> None:
        model.opt.timestep = h_s * (duration_ns / sub_ns)
        mujoco.mj_step(model, d)
        model.opt.timestep = h_s

    changes = sorted(applied, key=lambda c: c[0])
    ctrl = np.zeros(model.nu)
    t_ns, i = 0, 0
    out = []
    for q_ns in query_ns:
        last_change = max([c[0] for c in changes if c[0] <= q_ns], default=0)
        boundary_ns = max(q_ns - q_ns % sub_ns, last_change, t_ns)
        while t_ns < boundary_ns:
            while i < len(changes) and changes[i][0] <= t_ns:
                ctrl = changes[i][1]
                i += 1
            stop_ns = min(t_ns - t_ns % sub_ns + sub_ns, boundary_ns)
            if i < len(changes):
                stop_ns = min(stop_ns, changes[i][0])
            data.ctrl[:] = ctrl
            step(data, stop_ns - t_ns)
            t_ns = stop_ns
        while i < len(changes) and changes[i][0] <= t_ns:
            ctrl = changes[i][1]
            i += 1
        mujoco.mj_getState(model, data, state, spec)
        mujoco.mj_setState(model, scratch, state, spec)
        scratch.ctrl[:] = ctrl
        if q_ns > t_ns:
            step(scratch, q_ns - t_ns)
        out.append(np.concatenate((scratch.qpos[1:], scratch.qvel)))
    return out


def _applied(trace) -> list[tuple[int, np.ndarray]]:
    keep = trace.applied_ns >= 0
    return list(zip(trace.applied_ns[keep].tolist(), trace.actions[keep], strict=True))


# Swimmer and HumanoidStandup never end before 1000 steps: test_more_envs checks them (and
# the others, observations too) on shorter horizons.
@pytest.mark.parametrize("env_id", ENVS + [e for e in MORE_ENVS if e not in _ENDLESS])
def test_nominal_and_one_period_late_are_bit_identical(env_id: str) -> None:
    """Nominal timing gives exactly (==) plain gymnasium's return and length; one period of
    latency gives exactly the rollout with every action one env step late."""
    task = _task(env_id)
    ctl = linear_controller(task.obs_size, task.nu, 3)
    ret, n, term = plain_rollout(env_id, ctl, 1)
    r = SimLoop(task, ctl).run_episode(1)
    assert (r.ret, r.length, r.terminated, r.env_steps) == (ret, n, term, n)
    ret, n, term = plain_rollout(env_id, ctl, 1, action_lag=1)
    r = SimLoop(task, ctl, latency=FixedProfile(task.period_ns)).run_episode(1)
    assert (r.ret, r.length, r.terminated) == (ret, n, term)


def test_return_degrades_smoothly_with_sub_substep_latency() -> None:
    """A short-trained Hopper policy (deterministic ONNX MLP, the RSL-RL policy tailguard
    shipped before the SB3 pair; kept as a test asset because its return degrades without
    the rare chaotic falls of the stronger shipped gait), 8 paired episodes per level:
    latencies 0 .. one period in steps finer than the 2 ms substep give distinct returns (no
    plateau on the substep grid), 20 us keeps the nominal return within 3 %, the trend
    falls (rank correlation <= -0.9) and no level beats a milder one by more than 12 % of
    nominal (monotone within episode noise)."""
    task = _task("Hopper-v5")
    ctl = OnnxController(str(Path(__file__).with_name("assets") / "hopper_rslrl_short.onnx"))
    levels_ns = [0, 20 * US, 250 * US, 500 * US, 1 * MS, 1500 * US, 2 * MS]
    levels_ns += [3 * MS, 4 * MS, 5 * MS, 6 * MS, 7 * MS, 8 * MS]
    means = []
    for lat_ns in levels_ns:
        loop = SimLoop(task, ctl, latency=FixedProfile(lat_ns) if lat_ns else None)
        means.append(np.mean([loop.run_episode(s).ret for s in range(8)]))
    nominal = means[0]
    assert len({round(m, 6) for m in means}) == len(means)
    assert means[1] >= 0.97 * nominal
    ranks = np.argsort(np.argsort(means))
    rho = np.corrcoef(np.arange(len(means)), ranks)[0, 1]
    assert rho <= -0.9
    rises = [means[j] - means[i] for i in range(len(means)) for j in range(i + 1, len(means))]
    assert max(rises) <= 0.12 * nominal
    assert means[-1] < 0.75 * nominal


@pytest.mark.parametrize("delay_ns", [3 * MS, 7 * MS, 23 * MS])
def test_observation_delay_is_exact(delay_ns: int) -> None:
    """On HalfCheetah (10 ms substeps) an observation delay X shows the state exactly X old:
    what the controller sees equals a raw MuJoCo replay of the same commands at tick - X, the
    timestamp handed to it is tick - X, and the trace and JSON say X. A delay under one
    substep is not lost (it differs from fresh observations)."""
    task = _task("HalfCheetah-v5")
    task.max_episode_steps = 60  # a short episode is enough
    ctl = Recording(task)
    r = SimLoop(task, ctl, obs_delay=FixedProfile(delay_ns)).run_episode(2, trace=True)
    tr = r.trace
    assert tr is not None
    seen_ns = (tr.tick_ns - tr.obs_age_ns).tolist()
    assert np.all(tr.obs_age_ns[tr.tick_ns >= delay_ns] == delay_ns)
    assert r.to_dict()["obs_age_ns"]["p50"] == delay_ns
    assert ctl.stamps_ns == seen_ns  # the loop's clock started at 0
    ref = reference_observations("HalfCheetah-v5", 2, _applied(tr), seen_ns)
    for k, (got, want) in enumerate(zip(ctl.seen, ref, strict=True)):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9, err_msg=f"tick {k}")
    fresh = Recording(task)
    SimLoop(task, fresh).run_episode(2)
    assert not np.allclose(ctl.seen[5], fresh.seen[5])


def test_jittered_ticks_and_latency_are_exact() -> None:
    """Tick starts off the substep grid (period jitter) and commands released off it
    (latency): each observation is the state at the exact tick start and each command takes
    effect at its exact release time, as a raw MuJoCo replay of the same commands shows."""
    task = _task("HalfCheetah-v5")
    task.max_episode_steps = 60
    ctl = Recording(task, seed=1)
    loop = SimLoop(
        task,
        ctl,
        latency=parse_profile("uniform:lo_ms=0.01,hi_ms=7"),
        dt=parse_profile("uniform:jitter_ms=3", nominal_ns=task.period_ns),
    )
    r = loop.run_episode(4, trace=True)
    tr = r.trace
    assert tr is not None
    assert np.count_nonzero(tr.tick_ns % task.substep_ns) > 30
    assert np.array_equal(tr.applied_ns[:-1], (tr.tick_ns + tr.latency_ns)[:-1])
    ref = reference_observations("HalfCheetah-v5", 4, _applied(tr), tr.tick_ns.tolist())
    for k, (got, want) in enumerate(zip(ctl.seen, ref, strict=True)):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9, err_msg=f"tick {k}")


@pytest.mark.parametrize(
    "timing",
    [
        {"latency": "fixed:ms=9"},
        {"latency": "fixed:ms=33"},
        {"dt": "uniform:jitter_ms=20"},
        {"latency": "lognormal:median_ms=20,sigma=1,cap_ms=200", "obs_delay": "fixed:ms=7"},
    ],
)
def test_episode_stops_at_its_horizon(timing: dict[str, str]) -> None:
    """With latency or jitter an episode of a never-falling env ends at exactly its horizon
    (1000 steps x 50 ms on HalfCheetah), like the nominal one it is paired with: same
    simulated time, same env steps, and MuJoCo's own clock is at the horizon too."""
    task = _task("HalfCheetah-v5")
    ctl = linear_controller(task.obs_size, task.nu)
    horizon_ns = 1000 * task.period_ns
    nominal = SimLoop(task, ctl).run_episode(0)
    r = build_loop(task, ctl, TimingSpec(**timing)).run_episode(0)
    assert r.sim_time_ns == nominal.sim_time_ns == horizon_ns
    assert r.env_steps == nominal.env_steps == 1000
    assert float(task.data.time) == pytest.approx(horizon_ns / 1e9, abs=1e-9)


@pytest.mark.parametrize("spec", ["fixed:s=1e3", "fixed:s=1e6"])
def test_huge_latency_never_simulates_past_the_horizon(spec: str) -> None:
    """A latency far beyond the episode (1000 s, 11 days) ends it at the horizon: physics
    stops at 8 s (MuJoCo's clock says so), the one tick's command is never applied, and the
    episode takes well under a second of wall time (no physics past the horizon)."""
    task = _task("Hopper-v5")
    ctl = linear_controller(task.obs_size, task.nu)
    loop = build_loop(task, ctl, TimingSpec(latency=spec))
    t0 = time.perf_counter()
    r = loop.run_episode(0, trace=True)
    wall_s = time.perf_counter() - t0
    assert r.trace is not None
    assert r.length == 1 and r.trace.applied_ns.tolist() == [-1]
    assert r.sim_time_ns <= 1000 * task.period_ns
    assert float(task.data.time) <= 8.0 + 1e-9
    assert wall_s < 5.0  # 8 s of Hopper physics is ~40 ms; 1000 s would be seconds


@pytest.mark.parametrize("spec", ["fixed:ms=0", "fixed:ns=10", "mix:0.6*fixed:ms=0+0.4*nominal"])
def test_zero_control_period_is_refused(spec: str) -> None:
    """A control period profile whose median is below 1 us (ticks that do not move time)
    is refused before the loop starts with a ConfigError that names the profile."""
    task = _task("Hopper-v5")
    ctl = linear_controller(task.obs_size, task.nu)
    with pytest.raises(ConfigError, match=r"median of \d+ ns"):
        build_loop(task, ctl, TimingSpec(dt=spec))


def test_termination_is_checked_on_the_env_step_grid() -> None:
    """Ticks every 1.5 periods (12 ms on Hopper): a fall still ends the episode on the env's
    8 ms step grid, at the first step boundary where the env's rule holds (the same episode
    with a horizon one step shorter does not terminate)."""
    task = _task("Hopper-v5")
    ctl = linear_controller(task.obs_size, task.nu, 5)
    loop = SimLoop(task, ctl, dt=FixedProfile(task.period_ns * 3 // 2))
    r = loop.run_episode(0, trace=True)
    assert r.terminated and r.trace is not None
    assert r.sim_time_ns % task.period_ns == 0 and r.env_steps == r.sim_time_ns // task.period_ns
    assert r.trace.tick_ns[-1] < r.sim_time_ns
    assert np.any(r.trace.tick_ns % task.period_ns)
    # The same episode cut one env step earlier: not terminated at that boundary.
    task.max_episode_steps = r.env_steps - 1
    earlier = SimLoop(task, ctl, dt=FixedProfile(task.period_ns * 3 // 2)).run_episode(0)
    assert not earlier.terminated
    assert earlier.sim_time_ns == r.sim_time_ns - task.period_ns


def test_command_released_at_the_episode_end_is_not_applied() -> None:
    """With one period of latency the last tick's command is released exactly at the horizon:
    it is not applied (applied_ns -1) and does not enter the smoothness metric."""
    task = _task("HalfCheetah-v5")
    n_ticks = {"k": 0}

    def policy(obs: np.ndarray) -> np.ndarray:
        n_ticks["k"] += 1
        value = 1.0 if n_ticks["k"] == 1000 else 0.0  # a jump only in the very last tick
        return np.full(task.nu, value, np.float32)

    loop = SimLoop(task, CallableController(policy), latency=FixedProfile(task.period_ns))
    r = loop.run_episode(0, trace=True)
    assert r.trace is not None and r.length == 1000
    assert r.trace.applied_ns[-1] == -1 and np.all(r.trace.applied_ns[:-1] >= 0)
    assert r.max_abs_daction == 0.0 and r.max_abs_d2action == 0.0


def test_grid_timing_for_tasks_without_exact_stepping() -> None:
    """A task without ``run_ns`` (whole-step physics only) still runs, with every event
    rounded up to its substep grid, and the loop says so (``exact_timing`` False)."""

    class WholeSteps:
        def __init__(self, task: MujocoTask) -> None:
            self._t = task
            for name in ("substep_ns", "period_ns", "max_episode_steps", "nu", "obs_size"):
                setattr(self, name, getattr(task, name))
            self.action_dtype, self.action_low = task.action_dtype, task.action_low
            self.action_high = task.action_high
            self.reset, self.run, self.observe = task.reset, task.run, task.observe
            self.terminated = task.terminated

    task = _task("HalfCheetah-v5")
    grid = WholeSteps(task)
    loop = SimLoop(grid, linear_controller(task.obs_size, task.nu), latency=FixedProfile(3 * MS))
    assert not loop.exact_timing and SimLoop(task, loop.controller).exact_timing
    r = loop.run_episode(0, trace=True)
    assert r.trace is not None and r.sim_time_ns == 1000 * task.period_ns
    assert np.all(r.trace.applied_ns[:-1] == r.trace.tick_ns[:-1] + 10 * MS)


@pytest.mark.parametrize("env_id", ["Hopper-v5", "Ant-v5", *MORE_ENVS])
def test_observe_ahead_equals_integrating_the_env_and_leaves_it_untouched(env_id: str) -> None:
    """Looking ahead 1.3 ms from a step boundary (planar observation, Ant's and the
    Humanoids', which read contact forces, InvertedDoublePendulum's constraint force,
    Reacher's and Pusher's body positions) gives bitwise the observation of the env
    integrated to that instant, and the env's own state is unchanged by the look."""
    task = _task(env_id)
    task.reset(0)
    ctrl = np.full(task.nu, 0.3, task.action_dtype)
    task.run_ns(ctrl, 0, 3 * task.substep_ns)
    before = task.save_state()
    ahead = task.observe_ahead(ctrl, 1300 * US)
    np.testing.assert_array_equal(task.save_state(), before)
    start_ns = 3 * task.substep_ns
    task.run_ns(ctrl, start_ns, start_ns + 1300 * US)
    np.testing.assert_array_equal(ahead, task.observe())


@pytest.mark.parametrize("name", ["Hopper-v5", "HalfCheetah-v5", "Swimmer-v5", "mjcf:ant"])
def test_observation_of_a_saved_state_equals_observe(name: str) -> None:
    """``observe_state(save_state())`` is bitwise the task's own observation (the loop
    builds delayed observations from saved states only when they are used)."""
    from tailguard.firmware_sim.replay import make_task

    task = make_task(name)
    task.reset(1)
    task.run_ns(np.full(task.nu, 0.2, task.action_dtype), 0, 3 * task.substep_ns + 700 * US)
    np.testing.assert_array_equal(task.observe_state(task.save_state()), task.observe())

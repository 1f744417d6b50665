"""Simulated-time loop fidelity: it reproduces gymnasium exactly where it should, and delays
actuation, observations and ticks by exactly the sampled amounts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fsim_helpers import linear_controller, plain_rollout, write_linear_onnx

gym = pytest.importorskip("gymnasium")
pytest.importorskip("mujoco")

from tailguard.errors import TailguardError  # noqa: E402
from tailguard.firmware_sim.clock import SimClock  # noqa: E402
from tailguard.firmware_sim.controllers import CallableController, OnnxController  # noqa: E402
from tailguard.firmware_sim.loop import SimLoop  # noqa: E402
from tailguard.firmware_sim.profile_spec import parse_profile  # noqa: E402
from tailguard.firmware_sim.profiles import DropSampler, FixedProfile  # noqa: E402
from tailguard.firmware_sim.tasks import MujocoTask  # noqa: E402

ENVS = ["Hopper-v5", "Walker2d-v5", "HalfCheetah-v5", "Ant-v5"]
MS = 1_000_000


def _task(env_id: str) -> MujocoTask:
    return MujocoTask(gym.make(env_id))


def _controller(task: MujocoTask, seed: int = 0):
    obs_dim = task.env.observation_space.shape[0]
    return linear_controller(obs_dim, task.nu, seed)


@pytest.mark.parametrize("env_id", ENVS)
def test_nominal_replay_equals_plain_rollout(env_id: str) -> None:
    """Under nominal timing the replay's return, length and fall flag equal plain gymnasium's."""
    task = _task(env_id)
    ctl = _controller(task)
    loop = SimLoop(task, ctl)
    for seed in (0, 1):
        ret, n, term = plain_rollout(env_id, ctl, seed)
        r = loop.run_episode(seed)
        assert (r.length, r.terminated) == (n, term)
        assert r.ret == pytest.approx(ret, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("env_id", ENVS)
def test_one_period_latency_equals_one_step_late_rollout(env_id: str) -> None:
    """Latency of exactly one period equals the plain rollout with each action one step late."""
    task = _task(env_id)
    ctl = _controller(task, seed=1)
    loop = SimLoop(task, ctl, latency=FixedProfile(task.period_ns))
    ret, n, term = plain_rollout(env_id, ctl, 2, action_lag=1)
    r = loop.run_episode(2)
    assert (r.length, r.terminated) == (n, term)
    assert r.ret == pytest.approx(ret, rel=1e-9, abs=1e-9)
    assert r.latency_ns["p50"] == r.latency_ns["max"] == task.period_ns
    assert r.dt_ns["max"] == task.period_ns


def test_one_period_obs_delay_equals_stale_obs_rollout() -> None:
    """An observation delay of one period equals the rollout where the policy sees o_{k-1}."""
    task = _task("HalfCheetah-v5")
    ctl = _controller(task, seed=2)
    loop = SimLoop(task, ctl, obs_delay=FixedProfile(task.period_ns))
    ret, n, _ = plain_rollout("HalfCheetah-v5", ctl, 0, obs_lag=1)
    r = loop.run_episode(0)
    assert r.length == n and r.ret == pytest.approx(ret, rel=1e-9)
    assert r.obs_age_ns["p50"] == task.period_ns


@pytest.mark.parametrize("env_id", ["HalfCheetah-v5", "Hopper-v5"])
def test_substep_segments_keep_rewards_consistent(env_id: str) -> None:
    """Stepping one substep per segment keeps the return: equal for HalfCheetah, and for
    Hopper off by at most the fall step's partial healthy reward (< 1)."""
    task = _task(env_id)
    ctl = _controller(task)
    coarse = SimLoop(task, ctl).run_episode(0)
    fine = SimLoop(task, ctl, max_segment_substeps=1).run_episode(0)
    assert fine.length == coarse.length
    if env_id == "HalfCheetah-v5":
        assert fine.ret == pytest.approx(coarse.ret, rel=1e-7)
    else:
        assert 0.0 <= fine.ret - coarse.ret < 1.0


def test_latency_delays_actuation_by_sampled_amount() -> None:
    """Each command takes effect exactly at tick + its sampled latency (not on the substep
    grid), and the physics runs the previous command until then (checked per integration
    step, the shortened ones included)."""
    task = _task("Hopper-v5")
    latency = parse_profile("lognormal:median_ms=3,sigma=0.5,cap_ms=7")
    loop = SimLoop(task, _controller(task), latency=latency)
    r = loop.run_episode(5, trace=True, substep_ctrl=True)
    tr = r.trace
    assert tr is not None and tr.ctrl is not None and tr.ctrl_ns is not None
    expected = parse_profile("lognormal:median_ms=3,sigma=0.5,cap_ms=7")
    expected.reseed(np.random.SeedSequence([5, 1]))
    assert np.array_equal(tr.latency_ns, expected.sample(r.length))
    assert np.array_equal(tr.applied_ns, tr.tick_ns + tr.latency_ns)
    assert np.any(tr.applied_ns % task.substep_ns)  # off the grid: no rounding
    assert len(set(tr.latency_ns.tolist())) > 10
    # Rebuild the command in force at each substep from the trace and compare.
    for t_ns, ctrl in zip(tr.ctrl_ns, tr.ctrl, strict=True):
        k = np.searchsorted(tr.applied_ns, t_ns, side="right") - 1
        want = np.zeros(task.nu) if k < 0 else tr.actions[k].astype(np.float32)
        np.testing.assert_array_equal(ctrl, want)


def test_simulated_inference_is_measured_by_a_wrapped_policy() -> None:
    """A policy wrapped by SimulatedInference takes the sampled latency of clock time, as a
    guard around it would measure; the command is released at that time."""
    task = _task("Hopper-v5")
    base = _controller(task)
    measured: list[int] = []
    holder: dict[str, SimLoop] = {}

    def guard_like(obs: np.ndarray) -> np.ndarray:
        loop = holder["loop"]
        t0 = loop.clock()
        out = loop.inference.wrap(lambda o: base(o, 0))(obs)
        measured.append(loop.clock() - t0)
        return out

    loop = SimLoop(
        task, CallableController(guard_like), latency=parse_profile("uniform:lo_ms=1,hi_ms=5")
    )
    holder["loop"] = loop
    r = loop.run_episode(0, trace=True)
    assert r.trace is not None
    assert measured == r.trace.latency_ns.tolist()


def test_dt_profile_sets_tick_times_and_slow_ticks_slip() -> None:
    """Tick spacing follows the dt profile; a latency above the period delays the next tick."""
    task = _task("HalfCheetah-v5")
    dt = parse_profile("uniform:jitter_ms=10", nominal_ns=task.period_ns)
    r = SimLoop(task, _controller(task), dt=dt).run_episode(3, trace=True)
    assert r.trace is not None
    want = parse_profile("uniform:jitter_ms=10", nominal_ns=task.period_ns)
    want.reseed(np.random.SeedSequence([3, 2]))
    assert np.array_equal(np.diff(r.trace.tick_ns), want.sample(r.length - 1))
    slow = SimLoop(task, _controller(task), latency=FixedProfile(task.period_ns * 3 // 2))
    s = slow.run_episode(0)
    assert s.dt_ns["p50"] == task.period_ns * 3 // 2


def test_dropped_commands_are_never_applied() -> None:
    """A dropped tick's command never takes effect, and drops are counted."""
    task = _task("HalfCheetah-v5")
    drops = DropSampler(0.05, burst_len=2)
    r = SimLoop(task, _controller(task), drops=drops).run_episode(1, trace=True)
    assert r.trace is not None
    assert r.drops == int(r.trace.dropped.sum()) > 0
    assert np.all(r.trace.applied_ns[r.trace.dropped] == -1)
    assert np.all(r.trace.applied_ns[~r.trace.dropped] >= 0)


def test_replay_is_deterministic_and_clock_monotonic() -> None:
    """Same seed, same result under a noisy profile; the shared clock only moves forward."""
    task = _task("Hopper-v5")
    clock = SimClock()
    kwargs = {
        "latency": parse_profile("mix:0.9*nominal+0.1*lognormal:median_ms=4,sigma=1"),
        "dt": parse_profile("gaussian:std_ms=1", nominal_ns=task.period_ns),
        "obs_delay": parse_profile("uniform:lo_ms=0,hi_ms=3"),
        "drops": DropSampler(0.02),
    }
    loop = SimLoop(task, _controller(task), clock=clock, **kwargs)
    a = loop.run_episode(9)
    t_after_first = clock()
    b = loop.run_episode(9)
    assert a.to_dict() == b.to_dict()
    assert t_after_first >= a.sim_time_ns and clock() >= t_after_first + b.sim_time_ns


def test_onnx_controller_replay_equals_plain_rollout(tmp_path: Path) -> None:
    """An ONNX policy run by plain onnxruntime replays exactly like the plain rollout."""
    task = _task("Hopper-v5")
    ctl = OnnxController(write_linear_onnx(tmp_path / "p.onnx", 11, 3))
    ret, n, term = plain_rollout("Hopper-v5", ctl, 4)
    r = SimLoop(task, ctl).run_episode(4)
    assert (r.length, r.terminated) == (n, term) and r.ret == pytest.approx(ret, rel=1e-9)
    assert r.max_abs_daction > 0.0


def test_onnx_controller_binding_equals_session_run(tmp_path: Path) -> None:
    """The IO-bound call gives exactly what ``session.run`` gives, in a new array each call
    (the loop keeps the previous command while the next inference runs)."""
    from tailguard.runtime.onnx_build import mlp_bytes

    path = tmp_path / "mlp.onnx"
    path.write_bytes(mlp_bytes((11, 16, 3), activation="Tanh", seed=3))
    ctl = OnnxController(path)
    assert ctl._binding is not None
    rng = np.random.default_rng(0)
    first = ctl(rng.standard_normal(11), 0)
    for _ in range(20):
        obs = rng.standard_normal(11) * 3.0
        want = ctl.session.run(None, {ctl.input_name: obs.astype(np.float32)[None, :]})[0][0]
        got = ctl(obs, 0)
        assert got.dtype == want.dtype and np.array_equal(got, want)
    assert not np.shares_memory(first, ctl(obs, 0))


def test_unsupported_env_is_rejected() -> None:
    """A non-MuJoCo env raises TailguardError listing the supported envs."""
    with pytest.raises(TailguardError, match="Hopper-v5"):
        MujocoTask(gym.make("Pendulum-v1"))

"""The runtime Guard inside the simulated-time loop: faithful when nothing happens, catches
spikes at the spiking tick, and in deadline mode answers at the deadline in simulated time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fsim_helpers import write_linear_onnx

gym = pytest.importorskip("gymnasium")
pytest.importorskip("mujoco")

from tailguard import CallablePolicy, OnnxPolicy, starter_envelope  # noqa: E402
from tailguard.envelope.model import Envelope  # noqa: E402
from tailguard.firmware_sim.clock import SimClock  # noqa: E402
from tailguard.firmware_sim.controllers import OnnxController  # noqa: E402
from tailguard.firmware_sim.guarded import GuardedController  # noqa: E402
from tailguard.firmware_sim.loop import SimLoop  # noqa: E402
from tailguard.firmware_sim.profile_spec import parse_profile  # noqa: E402
from tailguard.firmware_sim.tasks import MujocoTask  # noqa: E402

MS = 1_000_000


@pytest.fixture(scope="module")
def cheetah() -> MujocoTask:
    """HalfCheetah-v5 (never terminates: every episode is 1000 ticks of 50 ms)."""
    return MujocoTask(gym.make("HalfCheetah-v5"))


@pytest.fixture
def cheetah_onnx(tmp_path: Path) -> Path:
    """A linear ONNX policy for HalfCheetah-v5 (17 -> 6)."""
    return write_linear_onnx(tmp_path / "cheetah.onnx", 17, 6)


def _envelope(task: MujocoTask, policy: OnnxPolicy) -> Envelope:
    return starter_envelope(
        obs_size=task.obs_size,
        action_size=task.nu,
        period_ns=task.period_ns,
        sha256=policy.sha256,
        action_low=list(task.action_low),
        action_high=list(task.action_high),
    )


def _guarded(
    task: MujocoTask, path: Path, **kwargs: Any
) -> tuple[GuardedController, list[tuple[Any, ...]]]:
    policy = OnnxPolicy(path)
    records: list[tuple[Any, ...]] = []
    ctl = GuardedController(
        policy, _envelope(task, policy), keep_ticks=True, recorder=records, **kwargs
    )
    return ctl, records


@pytest.mark.parametrize("env_id", ["Hopper-v5", "HalfCheetah-v5"])
def test_nominal_guarded_replay_equals_bare_replay(env_id: str, tmp_path: Path) -> None:
    """Under nominal timing the guarded replay gives the bare policy's episode (to float
    precision: the guard's ONNX graph folds in the action check), and never intervenes."""
    task = MujocoTask(gym.make(env_id))
    path = write_linear_onnx(tmp_path / "p.onnx", task.obs_size, task.nu)
    bare = SimLoop(task, OnnxController(path)).run_episode(3)
    ctl, _ = _guarded(task, path)
    guarded = SimLoop(task, ctl).run_episode(3)
    assert (guarded.length, guarded.terminated) == (bare.length, bare.terminated)
    assert guarded.ret == pytest.approx(bare.ret, rel=1e-6, abs=1e-9)
    assert guarded.guard is not None
    # No timing violation; at most the odd 1-ulp overshoot of a saturated tanh, clipped.
    assert set(guarded.guard["violations"]) <= {"action_bounds"}
    assert guarded.guard["state_ticks"]["nominal"] == guarded.guard["ticks"] == guarded.length


def test_guard_catches_spike_at_the_spiking_tick(cheetah: MujocoTask, cheetah_onnx: Path) -> None:
    """Each injected latency spike is counted as latency_max at the very tick that spiked,
    and that tick's action is not the policy's (the guard holds)."""
    ctl, records = _guarded(cheetah, cheetah_onnx)
    loop = SimLoop(cheetah, ctl, latency=parse_profile("spikes:every=100,len=1,ms=80,phase=30"))
    r = loop.run_episode(0, trace=True)
    assert r.trace is not None and r.trace.sampled_latency_ns is not None
    spikes = np.flatnonzero(r.trace.sampled_latency_ns > cheetah.period_ns)
    assert spikes.tolist() == list(range(30, 1000, 100))
    viol_t0 = [t0 for kind, _, t0, info in records
               if kind == "violation" and info["kind"] == "latency_max"]  # fmt: skip
    assert viol_t0 == r.trace.tick_ns[spikes].tolist()  # the clock started at 0
    for k in spikes:
        assert ctl.tick_states[k] != "nominal"
        assert ctl.tick_states[k - 1] in ("nominal", "fallback")
    assert r.guard is not None and r.guard["violations"]["latency_max"] == len(spikes)
    assert r.guard["interventions"] >= len(spikes)


def test_deadline_mode_releases_hold_at_the_deadline(
    cheetah: MujocoTask, cheetah_onnx: Path
) -> None:
    """Deadline mode in simulated time: a 120 ms inference against a 10 ms deadline is
    abandoned; the hold action is released at tick + 10 ms, the busy worker makes the next two
    ticks (50 and 100 ms later) miss too, ticks stay on schedule, late results are discarded."""
    deadline_ns = 10 * MS
    ctl, _ = _guarded(cheetah, cheetah_onnx, deadline_ns=deadline_ns, fallback="hold")
    loop = SimLoop(cheetah, ctl, latency=parse_profile("spikes:every=200,len=1,ms=120,phase=50"))
    r = loop.run_episode(1, trace=True, substep_ctrl=True)
    tr = r.trace
    assert tr is not None and tr.sampled_latency_ns is not None
    spikes = np.flatnonzero(tr.sampled_latency_ns > deadline_ns)
    missed = np.flatnonzero(ctl.tick_missed)
    assert missed.tolist() == sorted(int(k) + j for k in spikes for j in range(3))
    assert np.all(np.diff(tr.tick_ns) == cheetah.period_ns)  # no slip: answered in time
    assert np.all(tr.latency_ns[missed] == deadline_ns)
    assert np.all(tr.applied_ns[missed] == tr.tick_ns[missed] + deadline_ns)
    # Discarded: a missed tick's command is the previous tick's (held).
    np.testing.assert_array_equal(tr.actions[missed], tr.actions[missed - 1])
    # The per-substep command confirms it: nothing changes between tick and deadline.
    for k in missed:
        at = np.flatnonzero(tr.ctrl_ns == tr.tick_ns[k] + deadline_ns)[0]
        np.testing.assert_array_equal(tr.ctrl[at], tr.ctrl[at - 1])
    assert r.guard is not None
    assert r.guard["violations"]["deadline_miss"] == len(missed) == r.guard["deadline_misses"]
    assert r.guard["busy_misses"] == 2 * len(spikes)


def test_without_deadline_the_guard_answers_when_inference_ends(
    cheetah: MujocoTask, cheetah_onnx: Path
) -> None:
    """Without deadline mode the guard must wait: the spike tick's (held) action is released
    at the end of the full inference and the next tick slips."""
    ctl, _ = _guarded(cheetah, cheetah_onnx)
    loop = SimLoop(cheetah, ctl, latency=parse_profile("spikes:every=200,len=1,ms=120,phase=50"))
    r = loop.run_episode(1, trace=True)
    assert r.trace is not None
    assert r.trace.latency_ns[50] == 120 * MS
    assert r.trace.tick_ns[51] - r.trace.tick_ns[50] == 120 * MS
    np.testing.assert_array_equal(r.trace.actions[50], r.trace.actions[49])


def test_fallback_policy_acts_in_fallback(cheetah: MujocoTask, cheetah_onnx: Path) -> None:
    """With a second policy as fallback, every FALLBACK tick applies that policy's action."""
    fallback = CallablePolicy(lambda obs: np.full(6, 0.25, np.float32), 17, 6, name="robust")
    ctl, _ = _guarded(cheetah, cheetah_onnx, fallback=fallback)
    # 80 ms every tick: latency p50 and dt window violations push the guard into FALLBACK.
    loop = SimLoop(cheetah, ctl, latency=parse_profile("fixed:ms=80"))
    r = loop.run_episode(0, trace=True)
    assert r.trace is not None
    fb = np.flatnonzero(np.asarray(ctl.tick_states) == "fallback")
    assert len(fb) > 100
    np.testing.assert_allclose(r.trace.actions[fb], 0.25)
    assert r.guard is not None and r.guard["state_ticks"]["fallback"] == len(fb)
    assert r.guard["state_time_ns"]["fallback"] > 0


def test_guarded_replay_is_deterministic_across_episodes(
    cheetah: MujocoTask, cheetah_onnx: Path
) -> None:
    """The same seed gives the same episode and per-episode guard statistics, also when it
    follows another episode (episodes are independent)."""
    spec = "mix:0.95*lognormal:median_ms=5,sigma=0.5+0.05*pareto:scale_ms=40,alpha=1.5"
    results = []
    for _ in range(2):
        ctl, _ = _guarded(cheetah, cheetah_onnx, deadline_ns=30 * MS)
        loop = SimLoop(cheetah, ctl, latency=parse_profile(spec))
        results.append([loop.run_episode(s).to_dict() for s in (4, 7, 4)])
    assert results[0] == results[1]
    first, _, second = results[0]
    assert first["guard"]["deadline_misses"] > 0
    assert first == second


def test_loop_rejects_a_controller_on_another_clock(
    cheetah: MujocoTask, cheetah_onnx: Path
) -> None:
    """A guarded controller and a loop on different clocks is a setup error."""
    ctl, _ = _guarded(cheetah, cheetah_onnx)
    with pytest.raises(ValueError, match="another clock"):
        SimLoop(cheetah, ctl, clock=SimClock())


def test_fallback_latency_delays_the_fallback_action(
    cheetah: MujocoTask, cheetah_onnx: Path
) -> None:
    """With ``fallback_latency`` a fallback policy's call takes simulated time after the main
    inference: FALLBACK ticks release at main + fallback latency, the others at main's."""
    fallback = CallablePolicy(lambda obs: np.full(6, 0.25, np.float32), 17, 6, name="robust")
    ctl, _ = _guarded(
        cheetah, cheetah_onnx, fallback=fallback, fallback_latency=parse_profile("fixed:ms=3")
    )
    loop = SimLoop(cheetah, ctl, latency=parse_profile("fixed:ms=80"))
    r = loop.run_episode(0, trace=True)
    assert r.trace is not None
    states = np.asarray(ctl.tick_states)
    fb = np.flatnonzero(states == "fallback")
    other = np.flatnonzero(states != "fallback")
    assert len(fb) > 100 and len(other) > 0
    assert np.all(r.trace.latency_ns[fb] == 83 * MS)
    assert np.all(r.trace.latency_ns[other] == 80 * MS)


def test_fallback_latency_stream_is_seeded_per_episode(
    cheetah: MujocoTask, cheetah_onnx: Path
) -> None:
    """A random fallback latency is drawn from its own per-episode stream: the same seed
    gives the same release times (also after another episode), another seed others."""
    fallback = CallablePolicy(lambda obs: np.full(6, 0.25, np.float32), 17, 6, name="robust")
    ctl, _ = _guarded(
        cheetah,
        cheetah_onnx,
        fallback=fallback,
        fallback_latency=parse_profile("uniform:lo_ms=1,hi_ms=9"),
    )
    loop = SimLoop(cheetah, ctl, latency=parse_profile("fixed:ms=80"))

    def lat(seed: int) -> np.ndarray:
        tr = loop.run_episode(seed, trace=True).trace
        assert tr is not None
        return tr.latency_ns.copy()

    a, b, a_again = lat(4), lat(5), lat(4)
    np.testing.assert_array_equal(a, a_again)
    assert not np.array_equal(a, b)
    assert len(np.unique(a)) > 10  # drawn per call, not once


def test_process_wide_pause_is_answered_when_it_ends(
    cheetah: MujocoTask, cheetah_onnx: Path
) -> None:
    """``process_wide``: a 120 ms pause against a 10 ms deadline stops the guard too; the
    miss is answered when the pause ends (the tick slips), not at the deadline."""
    ctl, _ = _guarded(
        cheetah, cheetah_onnx, deadline_ns=10 * MS, fallback="hold", process_wide=True
    )
    loop = SimLoop(cheetah, ctl, latency=parse_profile("spikes:every=200,len=1,ms=120,phase=50"))
    r = loop.run_episode(1, trace=True, substep_ctrl=True)
    tr = r.trace
    assert tr is not None
    assert tr.applied_ns[50] == tr.tick_ns[50] + 120 * MS
    assert tr.tick_ns[51] - tr.tick_ns[50] > 120 * MS
    np.testing.assert_array_equal(tr.actions[50], tr.actions[49])  # the late result: discarded
    assert r.guard is not None and r.guard["violations"]["deadline_miss"] >= 1


def test_fallback_latency_needs_a_fallback_policy(cheetah: MujocoTask, cheetah_onnx: Path) -> None:
    """A fallback latency with a hold/zero fallback is refused before the loop starts."""
    from tailguard.errors import ConfigError

    with pytest.raises(ConfigError, match="fallback policy"):
        _guarded(
            cheetah, cheetah_onnx, fallback="hold", fallback_latency=parse_profile("fixed:ms=1")
        )

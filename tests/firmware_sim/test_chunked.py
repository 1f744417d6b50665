"""Chunk policies in simulated time on real MuJoCo Hopper: named delay profiles, paired
episodes, sync pauses and async skips."""

from __future__ import annotations

import numpy as np
import pytest

from tailguard.envelope.chunks import ChunkLimits
from tailguard.envelope.schema import Envelope, PolicyBinding, Recovery, Timing
from tailguard.errors import ConfigError
from tailguard.firmware_sim.chunked import (
    NAMED_CHUNK_PROFILES,
    async_runner,
    chunk_profile,
    chunk_profile_spec,
    run_chunk_episodes,
)
from tailguard.runtime.chunk_guard import ChunkGuard
from tailguard.runtime.chunk_policy import CallableChunkPolicy

pytest.importorskip("mujoco")
PERIOD = 8_000_000


def test_named_profiles_are_exp_delta() -> None:
    p = chunk_profile("exp_delta_long_tail", PERIOD, seed=3)
    assert p.cdf(0) == pytest.approx(0.855) and p.cdf(PERIOD) == pytest.approx(0.95)
    assert p.cdf(3 * PERIOD) == pytest.approx(0.95) and p.cdf(4 * PERIOD) == pytest.approx(1.0)
    d = np.ceil(p.sample(40_000) / PERIOD).astype(int)
    assert set(np.unique(d)) == {0, 1, 4}
    assert abs((d == 4).mean() - 0.05) < 0.006
    capped = chunk_profile("exp_delta_tail_capped", PERIOD)
    assert capped.cdf(2 * PERIOD) == pytest.approx(1.0) and capped.cdf(PERIOD) == pytest.approx(
        0.95
    )
    assert chunk_profile_spec("nominal", PERIOD) == {"kind": "fixed", "ns": 0}
    assert set(NAMED_CHUNK_PROFILES) == {"exp_delta_long_tail", "exp_delta_tail_capped"}
    with pytest.raises(ConfigError, match="unknown chunk delay profile"):
        chunk_profile_spec("exp_delta", PERIOD)


def _policy() -> CallableChunkPolicy:
    gain = np.random.default_rng(0).standard_normal((11, 24)) * 0.05

    def fn(obs: np.ndarray) -> np.ndarray:
        return np.tanh(obs @ gain).reshape(8, 3)

    return CallableChunkPolicy(fn, 11, 3, 8, 5)


def _envelope() -> Envelope:
    return Envelope(
        policy=PolicyBinding(None, 11, 3, (-1.0,) * 3, (1.0,) * 3),
        timing=Timing(period_ns=PERIOD),
        recovery=Recovery(max_hold_ticks=10**6),
        chunks=ChunkLimits(on_exhausted="hold"),
    )


def _run(task, mode: str, latency: str, episodes: int = 2):
    policy = _policy()

    def make(clock, delays):
        runner = async_runner(delays) if mode == "async" else None
        return ChunkGuard(policy, _envelope(), mode=mode, runner=runner, clock=clock)

    return run_chunk_episodes(task, make, latency, episodes, seed=11)


@pytest.fixture(scope="module")
def task():
    from tailguard.firmware_sim.replay import make_task

    t = make_task("Hopper-v5")
    t.max_episode_steps = 120  # short episodes keep the test fast
    return t


def test_nominal_sync_and_async_are_the_same_episode(task) -> None:
    a = _run(task, "sync", "nominal")
    b = _run(task, "async", "nominal")
    for x, y in zip(a, b, strict=True):
        assert x.ret == y.ret and x.steps == y.steps
        np.testing.assert_array_equal(x.actions, y.actions)
        assert set(x.delays) <= {0}


def test_long_tail_async_and_sync_pauses(task) -> None:
    a1 = _run(task, "async", "exp_delta_long_tail", episodes=3)
    a2 = _run(task, "async", "exp_delta_long_tail", episodes=3)
    assert [e.delays for e in a1] == [e.delays for e in a2]  # seeded, paired streams
    assert [e.ret for e in a1] == [e.ret for e in a2]
    for e in a1:
        # d <= 4 < s: every request is at index 5; the chunk lasts to index 7, so a spike of
        # d = 4 > H - s = 3 leaves exactly one tick without an action (unless the episode
        # ends first, which only the last request of an episode can meet)
        spikes = sum(d == 4 for d in e.delays)
        exhausted = e.guard["violations"]["chunk_exhausted"]
        assert spikes - 1 <= exhausted <= spikes
    assert sum(d == 4 for e in a1 for d in e.delays) > 0
    s = _run(task, "sync", "exp_delta_long_tail", episodes=3)
    ticks = np.diff([0] + [e.guard["ticks"] for e in s])  # the guard's ticks per episode
    for e, n in zip(s, ticks, strict=True):
        assert e.guard["violations"]["chunk_exhausted"] == 0  # sync never runs out
        assert len(e.actions) == e.steps
        # every other period of the episode is a pause waiting for a chunk (the last wait
        # may be cut short by the episode's end)
        paused = e.steps - n
        assert sum(e.delays[:-1]) <= paused <= sum(e.delays)

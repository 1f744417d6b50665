"""The chunk-aware guard: its bookkeeping against a plain reference implementation (random
delay sequences), the configured response to d > H - s, per-action checks across the chunk
boundary, the windowed delay estimate and the threaded runner."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tailguard.envelope.chunks import ChunkLimits
from tailguard.envelope.schema import (
    ActionLimits,
    Envelope,
    PolicyBinding,
    Recovery,
    Timing,
)
from tailguard.errors import ConfigError
from tailguard.runtime.chunk_guard import (
    ChunkGuard,
    DelayWindow,
    ScheduledChunkRunner,
    ThreadChunkRunner,
)
from tailguard.runtime.chunk_policy import CallableChunkPolicy
from tailguard.runtime.state import GuardState

PERIOD_NS = 10_000_000


class TickClock:
    """Simulated time: the test advances it one period per tick."""

    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        return self.now


def counting_policy(h: int, s: int, action_size: int = 1) -> CallableChunkPolicy:
    """Chunk n (1-based request number) holds n * 1000 + k at index k: actions decode."""
    calls = itertools.count(1)

    def fn(obs: np.ndarray) -> np.ndarray:
        n = next(calls)
        return np.repeat((n * 1000 + np.arange(h, dtype=np.float64))[:, None], action_size, 1)

    return CallableChunkPolicy(
        fn, obs_size=2, action_size=action_size, horizon=h, execute_horizon=s
    )


def envelope(
    *,
    chunks: ChunkLimits | None = None,
    max_delta: tuple[float, ...] | None = None,
    bounds: tuple[float, float] | None = None,
    responses: dict[str, str] | None = None,
    max_hold_ticks: int = 1_000_000,
    action_size: int = 1,
) -> Envelope:
    low = None if bounds is None else (bounds[0],) * action_size
    high = None if bounds is None else (bounds[1],) * action_size
    return Envelope(
        policy=PolicyBinding(None, 2, action_size, low, high),
        timing=Timing(period_ns=PERIOD_NS),
        actions=ActionLimits(max_delta),
        responses=responses or {},
        recovery=Recovery(recovery_ticks=3, dwell_ns=0, max_hold_ticks=max_hold_ticks),
        chunks=chunks,
    )


def reference(h: int, s: int, delays: list[int], ticks: int, mode: str) -> list[float]:
    """The plain bookkeeping: what is executed on ticks 1..ticks (a held tick repeats)."""
    out: list[float] = []
    cur: tuple[int, int] | None = None  # (request number, tick of index 0)
    inflight: tuple[int, int, int] | None = None  # (request number, tick, ready tick)
    n = 0
    draws = itertools.cycle(delays)
    last = 0.0
    for t in range(1, ticks + 1):
        if inflight is not None and t >= inflight[2]:
            cur, inflight = (inflight[0], inflight[1]), None
        if inflight is None and (cur is None or t - cur[1] >= s):
            n += 1
            if cur is None or mode == "sync":
                cur = (n, t)
            else:
                inflight = (n, t, t + next(draws))
                if inflight[2] <= t:  # d = 0: usable on the requesting tick
                    cur, inflight = (n, t), None
        assert cur is not None
        if t - cur[1] < h:
            last = cur[0] * 1000.0 + (t - cur[1])
        out.append(last)
    return out


def run_guard(guard: ChunkGuard, ticks: int, clock: TickClock | None = None) -> list[np.ndarray]:
    obs = np.zeros(2, np.float32)
    out = []
    for _ in range(ticks):
        out.append(guard.step(obs).copy())
        if clock is not None:
            clock.now += PERIOD_NS
    return out


@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(1, 10),
    s_frac=st.floats(0.0, 1.0),
    delays=st.lists(st.integers(0, 13), min_size=1, max_size=40),
    mode=st.sampled_from(["async", "sync"]),
)
def test_bookkeeping_matches_reference(h: int, s_frac: float, delays: list[int], mode: str) -> None:
    s = 1 + round(s_frac * (h - 1))
    ticks = 120
    draws = itertools.cycle(delays)
    runner = ScheduledChunkRunner(lambda: next(draws)) if mode == "async" else None
    clock = TickClock()
    guard = ChunkGuard(
        counting_policy(h, s),
        envelope(chunks=ChunkLimits(on_exhausted="hold")),
        mode=mode,
        runner=runner,
        clock=clock,
    )
    got = [float(a[0]) for a in run_guard(guard, ticks, clock)]
    want = reference(h, s, delays, ticks, mode)
    assert got == want
    exhausted = guard.stats()["violations"]["chunk_exhausted"]
    assert exhausted == guard.stats()["exhausted_ticks"]
    if mode == "sync" or max(delays) <= min(s, h - s):
        assert exhausted == 0  # with d <= s every request starts at index s
    # the plain path and the general path agree: every delay seen was recorded
    if mode == "async":
        assert all(0 <= d <= 13 for d in guard.delay_history)


@pytest.mark.parametrize("response", ["hold", "fallback", "latch"])
def test_d_above_h_minus_s_gives_exactly_the_configured_response(response: str) -> None:
    h, s, d = 4, 2, 3  # d > H - s = 2: one tick without an action per chunk
    guard = ChunkGuard(
        counting_policy(h, s),
        envelope(chunks=ChunkLimits(on_exhausted=response), bounds=(-1e6, 1e6)),
        fallback="zero",
        mode="async",
        runner=ScheduledChunkRunner(lambda: d),
        clock=TickClock(),
    )
    obs = np.zeros(2, np.float32)
    states = []
    for _ in range(7):
        guard.step(obs)
        states.append(guard.state)
    stats = guard.stats()
    # ticks 1-2 chunk 1 (index 0, 1); request on tick 3 (index 2), chunk 1 lasts to tick 4;
    # tick 5 (r + H - s + 1) has no action: chunk_exhausted, whose response decides the tick
    assert states[:4] == [GuardState.NOMINAL] * 4
    want = {"hold": GuardState.HOLD, "fallback": GuardState.FALLBACK, "latch": GuardState.LATCHED}
    assert states[4] is want[response]
    assert stats["violations"]["chunk_exhausted"] >= 1
    others = {k: v for k, v in stats["violations"].items() if v and k != "chunk_exhausted"}
    assert others == {}
    if response == "latch":
        assert set(states[4:]) == {GuardState.LATCHED}
        assert stats["violations"]["chunk_exhausted"] == 1  # the policy is off once latched
    if response == "hold":
        # chunk 2 arrives on tick 6 (3 + d), executing index 3, and is requested from at
        # once (index 3 >= s); it runs out on tick 7: held again
        assert states[4:] == [GuardState.HOLD, GuardState.NOMINAL, GuardState.HOLD]
        assert stats["violations"]["chunk_exhausted"] == 2


def test_no_violation_when_d_is_within_h_minus_s() -> None:
    guard = ChunkGuard(
        counting_policy(8, 5),
        envelope(chunks=ChunkLimits(on_exhausted="latch", max_delay_ticks=3)),
        mode="async",
        runner=ScheduledChunkRunner(itertools.cycle([0, 1, 3, 2]).__next__),
        clock=TickClock(),
    )
    run_guard(guard, 200)
    st_ = guard.stats()
    assert st_["state"] == "nominal" and not any(st_["violations"].values())
    assert st_["interventions"] == 0


def test_chunk_late_fires_once_per_late_request() -> None:
    guard = ChunkGuard(
        counting_policy(8, 4),
        envelope(chunks=ChunkLimits(max_delay_ticks=1, on_late="log")),
        mode="async",
        runner=ScheduledChunkRunner(itertools.cycle([0, 2, 1, 3]).__next__),
        clock=TickClock(),
    )
    run_guard(guard, 4 * 4 * 10)
    late = guard.stats()["violations"]["chunk_late"]
    delays = list(guard.delay_history)[1:]  # the first chunk is inline
    assert late == sum(d > 1 for d in delays) and late > 0
    assert guard.state is GuardState.NOMINAL  # 'log' changes nothing


def test_rate_limit_applies_across_the_chunk_boundary() -> None:
    # chunks alternate between all-0 and all-1: the jump is at every boundary
    calls = itertools.count()

    def fn(obs: np.ndarray) -> np.ndarray:
        return np.full((12, 2), float(next(calls) % 2))

    def make(resp: str) -> ChunkGuard:
        return ChunkGuard(
            CallableChunkPolicy(fn, 2, 2, 12, 6),
            envelope(max_delta=(0.25, 0.25), responses={"action_rate": resp}, action_size=2),
            mode="async",
            runner=ScheduledChunkRunner(lambda: 1),
            clock=TickClock(),
        )

    clipped = make("clip")
    a = np.array(run_guard(clipped, 60))
    steps = np.abs(np.diff(a, axis=0)).max(axis=1)
    assert steps.max() <= 0.25 + 1e-6
    assert clipped.stats()["violations"]["action_rate"] > 0
    assert a.min() == 0.0 and a.max() == 1.0  # it still follows the chunks, rate-limited
    calls = itertools.count()
    logged = make("log")
    b = np.array(run_guard(logged, 60))
    assert np.abs(np.diff(b, axis=0)).max() == 1.0  # the naive jerk, applied and counted
    assert logged.stats()["violations"]["action_rate"] > 0


def test_bounds_and_nonfinite_rows_are_checked_on_every_executed_action() -> None:
    def fn(obs: np.ndarray) -> np.ndarray:
        c = np.zeros((4, 1))
        c[1] = 5.0  # out of bounds
        c[2] = np.nan
        return c

    guard = ChunkGuard(
        CallableChunkPolicy(fn, 2, 1, 4, 4),
        envelope(bounds=(-1.0, 1.0), max_hold_ticks=100),
        mode="sync",
        clock=TickClock(),
    )
    out = [float(x[0]) for x in run_guard(guard, 8)]
    v = guard.stats()["violations"]
    assert v["action_bounds"] == 2 and v["action_nonfinite"] == 2
    assert out == [0.0, 1.0, 1.0, 0.0] * 2  # clipped, then held (nan), then the next row


def test_envelope_chunking_must_match_the_policy() -> None:
    with pytest.raises(ConfigError, match=r"chunks\.execute_horizon"):
        ChunkGuard(counting_policy(8, 5), envelope(chunks=ChunkLimits(8, 4)), mode="sync")
    with pytest.raises(ConfigError, match="mode"):
        ChunkGuard(counting_policy(8, 5), envelope(), mode="later")


def test_reset_and_observation_checks() -> None:
    clock = TickClock()
    guard = ChunkGuard(
        counting_policy(4, 2),
        envelope(chunks=ChunkLimits(on_exhausted="latch")),
        mode="async",
        runner=ScheduledChunkRunner(lambda: 5),
        clock=clock,
    )
    run_guard(guard, 6, clock)
    assert guard.state is GuardState.LATCHED
    guard.reset()
    assert guard.state is GuardState.NOMINAL
    a = guard.step(np.zeros(2)).copy()
    assert float(a[0]) % 1000 == 0  # a fresh chunk, from index 0
    guard.step(np.zeros(2))
    held = guard.step(np.array([np.nan, 0.0]))  # a request tick with a bad observation
    assert guard.stats()["violations"]["obs_nonfinite"] == 1
    assert float(held[0]) == float(a[0]) + 1  # held the last applied action (index 1)
    bad_shape = guard.step(np.zeros(5))
    assert guard.stats()["violations"]["obs_shape"] == 1 and np.isfinite(bad_shape).all()


def test_policy_error_keeps_the_chunk_and_retries() -> None:
    calls = itertools.count(1)

    def fn(obs: np.ndarray) -> np.ndarray:
        n = next(calls)
        if n == 2:
            raise RuntimeError("inference failed")
        return np.full((6, 1), float(n))

    guard = ChunkGuard(
        CallableChunkPolicy(fn, 2, 1, 6, 2),
        envelope(),
        mode="async",
        runner=ScheduledChunkRunner(lambda: 1),
        clock=TickClock(),
    )
    out = [float(x[0]) for x in run_guard(guard, 8)]
    assert guard.stats()["violations"]["policy_error"] == 1
    # chunk 1 runs on; the failed request (tick 3) is repeated on tick 5, arriving on 6
    assert out[:5] == [1.0] * 5 and out[5] == 3.0


def test_delay_window_evicts_and_excludes_warmup() -> None:
    w = DelayWindow(size=4, warmup=2)
    for d in (9, 9, 1, 2, 3, 4, 5):
        w.add(d)
    assert w.values() == [2, 3, 4, 5]  # warm-up spike forgotten, oldest evicted
    assert w.summary() == {"count": 4, "p50": 3, "p95": 5, "p99": 5, "max": 5}
    w.clear()
    w.add(7)
    assert len(w) == 0 and w.percentile(99) is None
    with pytest.raises(ConfigError):
        DelayWindow(0, 0)


def test_thread_runner_executes_chunks_in_order() -> None:
    h, s = 6, 3
    runner = ThreadChunkRunner()
    guard = ChunkGuard(
        counting_policy(h, s),
        envelope(chunks=ChunkLimits(on_exhausted="hold")),
        mode="async",
        runner=runner,
    )
    with guard:
        values = []
        for _ in range(60):
            values.append(float(guard.step(np.zeros(2))[0]))
            time.sleep(0.0005)
    assert values == sorted(values)  # never back to an older chunk or an earlier index
    st_ = guard.stats()
    assert st_["chunks_installed"] >= 3 and st_["violations"]["policy_error"] == 0
    for v in values:
        assert 0 <= v % 1000 < h


class AlwaysGeneral(ChunkGuard):
    """The same guard with the plain path switched off: every tick is judged in full."""

    def step(self, obs: np.ndarray) -> np.ndarray:
        self._tick += 1
        return self._general(self._tick, obs)


@settings(max_examples=40, deadline=None)
@given(
    delays=st.lists(st.integers(0, 9), min_size=1, max_size=30),
    seed=st.integers(0, 1000),
    rate=st.sampled_from([None, 0.3, 2.0]),
    exhausted=st.sampled_from(["hold", "fallback"]),
)
def test_plain_path_gives_what_the_general_path_gives(
    delays: list[int], seed: int, rate: float | None, exhausted: str
) -> None:
    """Random chunks (some rows out of bounds, some non-finite), limits and delays: the
    plain path is only a shortcut (same actions, states and counts)."""

    def make(cls: type[ChunkGuard]) -> ChunkGuard:
        rng = np.random.default_rng(seed)

        def fn(obs: np.ndarray) -> np.ndarray:
            c = np.cumsum(rng.normal(0, 0.4, (6, 2)), axis=0)
            if rng.random() < 0.2:
                c[rng.integers(6)] = np.nan
            return c

        draws = itertools.cycle(delays)
        return cls(
            CallableChunkPolicy(fn, 2, 2, 6, 3),
            envelope(
                chunks=ChunkLimits(on_exhausted=exhausted, max_delay_ticks=2),
                max_delta=None if rate is None else (rate, rate),
                bounds=(-1.5, 1.5),
                action_size=2,
                max_hold_ticks=4,
            ),
            fallback="zero",
            mode="async",
            runner=ScheduledChunkRunner(lambda: next(draws)),
            clock=TickClock(),
        )

    plain, general = make(ChunkGuard), make(AlwaysGeneral)
    for _ in range(150):
        a = plain.step(np.zeros(2)).copy()
        b = general.step(np.zeros(2)).copy()
        np.testing.assert_array_equal(a, b)
        assert plain.state is general.state
    assert plain.stats() == general.stats()


def test_reset_keeps_the_last_applied_action_for_the_rate_limit() -> None:
    # the plain path applies chunk rows 0, 1, 2 (0.0, 0.1, 0.2); after reset the next
    # chunk starts at 5.0 and the rate limit (0.1 per tick) continues from 0.2
    calls = itertools.count()

    def fn(obs: np.ndarray) -> np.ndarray:
        base = 0.0 if next(calls) == 0 else 5.0
        return (base + 0.1 * np.arange(8))[:, None]

    guard = ChunkGuard(
        CallableChunkPolicy(fn, 2, 1, 8, 8),
        envelope(max_delta=(0.1,)),
        mode="sync",
        clock=TickClock(),
    )
    out = [float(x[0]) for x in run_guard(guard, 3)]
    assert out == pytest.approx([0.0, 0.1, 0.2])
    guard.reset()
    after = float(guard.step(np.zeros(2))[0])
    assert after == pytest.approx(0.3) and guard.stats()["violations"]["action_rate"] == 1


def test_envelope_chunks_section(tmp_path) -> None:
    from tailguard.envelope import envelope_from_dict, load_envelope, save_envelope
    from tailguard.errors import EnvelopeError

    plain = envelope()
    assert plain.chunks is None and "chunks" not in plain.to_dict()  # old files unchanged
    with_chunks = envelope(chunks=ChunkLimits(8, 5, max_delay_ticks=2, on_exhausted="latch"))
    data = with_chunks.to_dict()
    assert data["chunks"]["on_exhausted"] == "latch" and data["chunks"]["max_delay_ticks"] == 2
    save_envelope(with_chunks, tmp_path / "e.json")
    assert load_envelope(tmp_path / "e.json") == with_chunks
    data["chunks"] = {"horizon": 4, "execute_horizon": 5, "on_exhausted": "log", "cap": 1}
    with pytest.raises(EnvelopeError) as err:
        envelope_from_dict(data)
    paths = {p.key_path for p in err.value.problems}
    assert {"chunks.cap", "chunks.execute_horizon", "chunks.on_exhausted"} <= paths

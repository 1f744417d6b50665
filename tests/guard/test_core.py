"""Guard: the state machine, every check in simulated time, recovery hysteresis, safety."""

from __future__ import annotations

import gc
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tg_models import FakeClock, build_mlp, build_sqrt

from tailguard import CallablePolicy, Guard, GuardState, HashMismatchError, OnnxPolicy, Violation
from tailguard.envelope.model import (
    ActionLimits,
    Envelope,
    PolicyBinding,
    Recovery,
    Thresholds,
    Timing,
    Window,
)
from tailguard.errors import ConfigError, EnvelopeError
from tailguard.runtime.events import StateChangeRecord, ViolationRecord
from tailguard.runtime.state import TRANSITIONS, Event, Response, next_state
from tailguard.sinks.flight_recorder import read_flight_record

MS = 1_000_000


def same(a, b) -> bool:
    """Equal as float32 values (the guard returns float32)."""
    return bool(np.allclose(np.asarray(a), np.asarray(b, dtype=np.float32), rtol=0, atol=1e-7))


PERIOD = 10 * MS


def make_env(
    obs_size: int = 4,
    action_size: int = 2,
    *,
    bound: float | None = 1.0,
    max_delta: float | None = None,
    lat: Thresholds | None = None,
    dt: Thresholds | None = None,
    age: int | None = None,
    overruns: int | None = None,
    window: Window | None = None,
    recovery: Recovery | None = None,
    responses: dict | None = None,
    sha256: str | None = None,
    safe_action: str = "hold",
) -> Envelope:
    kwargs = {}
    if responses is not None:
        from tailguard.runtime.state import DEFAULT_RESPONSES

        kwargs["responses"] = {**DEFAULT_RESPONSES, **responses}
    return Envelope(
        policy=PolicyBinding(
            sha256=sha256,
            obs_size=obs_size,
            action_size=action_size,
            action_low=None if bound is None else (-bound,) * action_size,
            action_high=None if bound is None else (bound,) * action_size,
        ),
        timing=Timing(
            period_ns=PERIOD,
            dt=dt or Thresholds(max_ns=3 * PERIOD),
            latency=lat or Thresholds(max_ns=8 * MS),
            obs_age_max_ns=age,
            max_consecutive_overruns=overruns,
        ),
        actions=ActionLimits(max_delta=None if max_delta is None else (max_delta,) * action_size),
        window=window or Window(ticks=100, check_every_ticks=10),
        recovery=recovery or Recovery(recovery_ticks=5, dwell_ns=50 * MS, max_hold_ticks=3),
        safe_action=safe_action,
        **kwargs,
    )


class Scripted:
    """A policy driven by the test: returns ``self.action`` after advancing the clock."""

    def __init__(self, clock: FakeClock, action_size: int = 2) -> None:
        self.clock = clock
        self.action = np.zeros(action_size, np.float32)
        self.latency_ns = 1 * MS
        self.raise_next = False
        self.calls = 0

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        self.calls += 1
        self.clock.advance(self.latency_ns)
        if self.raise_next:
            raise RuntimeError("policy blew up")
        return self.action


def run(guard: Guard, clock: FakeClock, n: int, obs=None, gap_ns: int = PERIOD) -> list[np.ndarray]:
    """n ticks spaced gap_ns apart (tick start to tick start)."""
    obs = np.zeros(4, np.float32) if obs is None else obs
    out = []
    for _ in range(n):
        start = clock.now_ns
        out.append(guard.step(obs).copy())
        clock.now_ns = start + gap_ns
    return out


def scripted_guard(clock: FakeClock, **env_kwargs) -> tuple[Guard, Scripted]:
    fallback = env_kwargs.pop("fallback", "hold")
    s = Scripted(clock)
    g = Guard(CallablePolicy(s, 4, 2), make_env(**env_kwargs), fallback=fallback, clock=clock)
    return g, s


# ---------------------------------------------------------------- the state machine --
# The table itself is checked against an independently written spec in test_state.py.
def test_latched_is_sticky_and_reset_always_returns_to_nominal() -> None:
    """Only RESET leaves LATCHED; RESET from any state gives NOMINAL."""
    for event in Event:
        if (GuardState.LATCHED, event) in TRANSITIONS and event is not Event.RESET:
            assert next_state(GuardState.LATCHED, event) is GuardState.LATCHED
    for state in GuardState:
        assert next_state(state, Event.RESET) is GuardState.NOMINAL


# ----------------------------------------------------------------------- load time --
def test_hash_mismatch_is_refused_unless_overridden(mlp_path: Path) -> None:
    """A policy whose sha256 differs from the envelope's is refused by default."""
    p = OnnxPolicy(mlp_path)
    env = make_env(17, 6, sha256="0" * 64)
    with pytest.raises(HashMismatchError, match="allow_hash_mismatch"):
        Guard(p, env)
    Guard(p, env, allow_hash_mismatch=True)
    Guard(p, make_env(17, 6, sha256=p.sha256))


def test_size_mismatch_is_refused(mlp_path: Path) -> None:
    """An envelope for other obs/action sizes is refused before the loop starts."""
    with pytest.raises(EnvelopeError, match="obs_size 4 / action_size 2"):
        Guard(OnnxPolicy(mlp_path), make_env(4, 2))


@pytest.mark.parametrize(
    ("fallback", "fragment"),
    [("nope", "unknown fallback"), (42, "must be 'hold'")],
)
def test_bad_fallback_is_refused(clock: FakeClock, fallback, fragment) -> None:
    """Unknown fallback names and non-callables are refused with the valid choices."""
    with pytest.raises(ConfigError, match=fragment):
        Guard(CallablePolicy(lambda o: [0, 0], 4, 2), make_env(), fallback=fallback, clock=clock)


def test_clock_must_return_python_int() -> None:
    """A clock returning numpy ints or floats is refused (the hot path needs int ops)."""
    with pytest.raises(TypeError, match="Python int"):
        Guard(CallablePolicy(lambda o: [0, 0], 4, 2), make_env(), clock=lambda: np.int64(5))


# ----------------------------------------------------------- per-tick checks (sim) --
def test_nominal_ticks_pass_the_policy_action_through(clock: FakeClock) -> None:
    """In-envelope ticks return exactly the policy's action and count nothing."""
    g, s = scripted_guard(clock)
    s.action = np.array([0.3, -0.2], np.float32)
    out = run(g, clock, 50)
    assert all(same(a, s.action) for a in out)
    st_ = g.stats()
    assert st_["ticks"] == 50 and sum(st_["violations"].values()) == 0
    assert st_["state_ticks"]["nominal"] == 50 and g.state is GuardState.NOMINAL
    assert st_["latency_ns"]["lifetime"]["p50"] == pytest.approx(1 * MS, rel=0.01)
    assert st_["dt_ns"]["lifetime"]["count"] == 49  # the first tick has no period


def test_latency_cap_holds_the_last_action(clock: FakeClock) -> None:
    """A tick slower than latency.max_ns is answered with the last applied action."""
    g, s = scripted_guard(clock)
    s.action = np.array([0.5, 0.5], np.float32)
    run(g, clock, 3)
    s.action = np.array([-0.5, -0.5], np.float32)
    s.latency_ns = 9 * MS  # cap is 8 ms
    out = run(g, clock, 1)
    assert same(out[0], [0.5, 0.5]) and g.state is GuardState.HOLD
    assert g.stats()["violations"]["latency_max"] == 1
    s.latency_ns = 1 * MS
    out = run(g, clock, 1)
    assert same(out[0], [-0.5, -0.5]) and g.state is GuardState.NOMINAL


def test_dt_cap_hands_over_to_fallback(clock: FakeClock) -> None:
    """A period longer than dt.max_ns switches to the fallback (default response)."""
    g, _ = scripted_guard(clock, fallback="zero")
    run(g, clock, 3)
    clock.advance(5 * PERIOD)
    run(g, clock, 1)
    assert g.state is GuardState.FALLBACK and g.stats()["violations"]["dt_max"] == 1


def test_overrun_streak(clock: FakeClock) -> None:
    """max_consecutive_overruns = 2 allows 2 overruns in a row; the 3rd is the violation."""
    g, s = scripted_guard(
        clock, overruns=2, lat=Thresholds(max_ns=50 * MS), dt=Thresholds(max_ns=100 * MS)
    )
    s.latency_ns = 12 * MS  # > period: an overrun, but under the latency cap
    run(g, clock, 2, gap_ns=13 * MS)
    assert g.stats()["violations"]["overrun_streak"] == 0
    run(g, clock, 1, gap_ns=13 * MS)
    st_ = g.stats()
    assert st_["violations"]["overrun_streak"] == 1 and st_["overruns"] == 3
    assert g.state is GuardState.FALLBACK


def test_obs_age(clock: FakeClock) -> None:
    """An observation older than obs_age_max_ns is a violation (hold)."""
    g, _ = scripted_guard(clock, age=5 * MS)
    g.step(np.zeros(4), obs_timestamp_ns=clock.now_ns - 1 * MS)
    clock.advance(PERIOD)
    g.step(np.zeros(4), obs_timestamp_ns=clock.now_ns - 6 * MS)
    assert g.stats()["violations"]["obs_age"] == 1 and g.state is GuardState.HOLD


@pytest.mark.parametrize(
    ("obs", "kind"),
    [
        (np.array([0, np.nan, 0, 0]), "obs_nonfinite"),
        (np.array([0, 0, np.inf, 0]), "obs_nonfinite"),
        (np.zeros(5), "obs_shape"),
        (np.zeros((4, 1)), "obs_shape"),
        ("not an observation", "obs_shape"),
        (None, "obs_shape"),
        ([0.0, 0.0, float("nan"), 0.0], "obs_nonfinite"),
    ],
)
def test_bad_observations_hold_and_skip_the_policy(clock: FakeClock, obs, kind) -> None:
    """Bad observations are counted, the policy is not run, the last action is held."""
    g, s = scripted_guard(clock)
    s.action = np.array([0.2, 0.1], np.float32)
    run(g, clock, 2)
    calls = s.calls
    out = g.step(obs)
    assert same(out, [0.2, 0.1]) and g.state is GuardState.HOLD
    assert g.stats()["violations"][kind] == 1 and s.calls == calls


def test_list_observation_of_right_size_is_accepted(clock: FakeClock) -> None:
    """A plain list of floats of the right length is a valid observation."""
    g, s = scripted_guard(clock)
    s.action = np.array([0.4, 0.4], np.float32)
    assert same(g.step([0.0, 1.0, 2.0, 3.0]), [0.4, 0.4])
    assert sum(g.stats()["violations"].values()) == 0


def test_policy_exception_is_an_event(clock: FakeClock) -> None:
    """A policy that raises is a counted event with the last action held, not a crash."""
    g, s = scripted_guard(clock)
    run(g, clock, 2)
    s.raise_next = True
    out = run(g, clock, 1)
    assert np.all(np.isfinite(out[0])) and g.stats()["violations"]["policy_error"] == 1


def test_action_bounds_are_clipped(clock: FakeClock) -> None:
    """An out-of-bounds action is clipped (default response CLIP) and counted."""
    g, s = scripted_guard(clock)
    s.action = np.array([3.0, -0.5], np.float32)
    out = run(g, clock, 1)
    assert same(out[0], [1.0, -0.5]) and g.state is GuardState.NOMINAL
    assert g.stats()["violations"]["action_bounds"] == 1


def test_action_rate_is_limited(clock: FakeClock) -> None:
    """A jump above max_delta is limited to prev +- max_delta, tick after tick."""
    g, s = scripted_guard(clock, max_delta=0.1)
    run(g, clock, 1)
    s.action = np.array([0.35, -0.35], np.float32)
    out = run(g, clock, 4)
    np.testing.assert_allclose(out[0], [0.1, -0.1], atol=1e-6)
    np.testing.assert_allclose(out[1], [0.2, -0.2], atol=1e-6)
    np.testing.assert_allclose(out[3], [0.35, -0.35], atol=1e-6)
    assert g.stats()["violations"]["action_rate"] == 3


def test_nonfinite_action_from_onnx_policy_holds(tmp_path: Path, clock: FakeClock) -> None:
    """An ONNX policy that emits NaN (sqrt of a negative) is held, not applied."""
    p = OnnxPolicy(build_sqrt(tmp_path / "s.onnx"))
    g = Guard(p, make_env(4, 2, bound=10.0), clock=clock)
    good = g.step(np.array([4.0, 9.0, 0, 0], np.float32)).copy()
    np.testing.assert_allclose(good, [2.0, 3.0])
    clock.advance(PERIOD)
    out = g.step(np.array([-1.0, 9.0, 0, 0], np.float32))
    np.testing.assert_allclose(out, good)
    assert g.stats()["violations"]["action_nonfinite"] == 1


# ------------------------------------------------------------------ window checks --
def test_window_p99_detects_a_tail_and_recovers(clock: FakeClock) -> None:
    """More than 1% of a 100-tick window above latency p99 triggers latency_p99; it clears."""
    g, s = scripted_guard(
        clock,
        lat=Thresholds(p99_ns=3 * MS, max_ns=8 * MS),
        window=Window(ticks=100, check_every_ticks=10),
        recovery=Recovery(recovery_ticks=5, dwell_ns=0, max_hold_ticks=3),
        fallback="zero",
    )
    run(g, clock, 100)
    s.latency_ns = 4 * MS
    run(g, clock, 1)  # one sample above p99 in 100: allowed
    s.latency_ns = 1 * MS
    run(g, clock, 19)
    assert g.state is GuardState.NOMINAL
    s.latency_ns = 4 * MS
    run(g, clock, 1)  # the second one: 2 > 1 allowed
    s.latency_ns = 1 * MS
    run(g, clock, 10)
    assert g.stats()["violations"]["latency_p99"] == 1 and g.state is GuardState.FALLBACK
    run(g, clock, 150)  # both samples leave the window, then 5 clean ticks
    assert g.state is GuardState.NOMINAL
    assert g.stats()["violations"]["latency_p99"] == 1  # one episode, counted once


def test_window_percentile_matches_nearest_rank_definition(clock: FakeClock) -> None:
    """The window check fires exactly when the nearest-rank p95 of the window exceeds p95_ns."""
    g, s = scripted_guard(
        clock,
        lat=Thresholds(p95_ns=2 * MS, max_ns=8 * MS),
        window=Window(ticks=100, check_every_ticks=1),
    )
    lat = [1 * MS] * 95 + [3 * MS] * 5  # p95 (rank 95) = 1 ms -> fine
    for v in lat:
        s.latency_ns = v
        run(g, clock, 1)
    assert g.stats()["violations"]["latency_p95"] == 0
    s.latency_ns = 3 * MS  # now 6 of the last 100 are high -> rank 95 is 3 ms
    run(g, clock, 1)
    assert g.stats()["violations"]["latency_p95"] == 1


# --------------------------------------------------------- recovery and escalation --
def test_fallback_recovers_only_after_clean_ticks_and_dwell(clock: FakeClock) -> None:
    """Recovery needs recovery_ticks consecutive clean ticks AND dwell_ns in FALLBACK."""
    g, s = scripted_guard(
        clock,
        fallback="zero",
        recovery=Recovery(recovery_ticks=5, dwell_ns=100 * MS, max_hold_ticks=3),
    )
    run(g, clock, 2)
    clock.advance(5 * PERIOD)
    run(g, clock, 1)
    assert g.state is GuardState.FALLBACK
    run(g, clock, 6)  # 6 clean ticks but only 60 ms of dwell
    assert g.state is GuardState.FALLBACK
    s.latency_ns = 9 * MS  # a violation (hold-level) resets the clean streak
    run(g, clock, 1)
    s.latency_ns = 1 * MS
    run(g, clock, 4)  # dwell satisfied now, but only 4 clean ticks since the violation
    assert g.state is GuardState.FALLBACK
    run(g, clock, 1)
    assert g.state is GuardState.NOMINAL


def test_fallback_action_is_used_and_rate_limited(clock: FakeClock) -> None:
    """In FALLBACK the fallback callable acts, limited to bounds and rate."""
    g, _s = scripted_guard(
        clock,
        fallback=lambda obs: np.array([5.0, -5.0]),
        max_delta=0.25,
        recovery=Recovery(recovery_ticks=50, dwell_ns=10**9, max_hold_ticks=3),
    )
    run(g, clock, 2)
    clock.advance(5 * PERIOD)
    out = run(g, clock, 6)
    assert g.state is GuardState.FALLBACK
    np.testing.assert_allclose(out[0], [0.25, -0.25], atol=1e-6)
    np.testing.assert_allclose(out[-1], [1.0, -1.0], atol=1e-6)


def test_hold_streak_escalates_to_fallback(clock: FakeClock) -> None:
    """More than max_hold_ticks consecutive HOLD ticks raise hold_limit (-> FALLBACK)."""
    g, s = scripted_guard(clock, fallback="zero")
    run(g, clock, 2)
    s.raise_next = True
    run(g, clock, 3)
    assert g.state is GuardState.HOLD
    run(g, clock, 1)
    assert g.state is GuardState.FALLBACK and g.stats()["violations"]["hold_limit"] == 1


def test_failing_fallback_latches_until_reset(clock: FakeClock) -> None:
    """A fallback that raises latches a safe stop; only reset() leaves it."""

    def broken(obs):
        raise RuntimeError("fallback broken")

    g, s = scripted_guard(clock, fallback=broken, safe_action="zero")
    s.action = np.array([0.7, 0.7], np.float32)
    run(g, clock, 2)
    clock.advance(5 * PERIOD)
    out = run(g, clock, 1)
    assert g.state is GuardState.LATCHED
    calls = s.calls
    out = run(g, clock, 20)
    assert g.state is GuardState.LATCHED and s.calls == calls  # policy not run while latched
    assert all(same(a, [0.0, 0.0]) for a in out)
    g.reset()
    assert g.state is GuardState.NOMINAL
    out = run(g, clock, 2)
    np.testing.assert_allclose(out[-1], [0.7, 0.7])
    st_ = g.stats()
    assert st_["violations"]["fallback_error"] == 1 and st_["state_ticks"]["latched"] >= 20


def test_latch_response_from_envelope(clock: FakeClock) -> None:
    """A violation configured with 'latch' latches immediately with the held action."""
    g, s = scripted_guard(clock, responses={Violation.POLICY_ERROR: Response.LATCH})
    s.action = np.array([0.3, 0.3], np.float32)
    run(g, clock, 2)
    s.raise_next = True
    out = run(g, clock, 3)
    assert g.state is GuardState.LATCHED
    assert all(same(a, [0.3, 0.3]) for a in out)


# -------------------------------------------------------------------- deadline mode --
def test_inline_deadline_discards_late_results_in_sim_time(clock: FakeClock) -> None:
    """Deadline mode on a simulated clock: a late inference is a miss, its result discarded."""
    s = Scripted(clock)
    g = Guard(
        CallablePolicy(s, 4, 2), make_env(), clock=clock, deadline_ns=2 * MS, deadline_mode="inline"
    )
    s.action = np.array([0.1, 0.1], np.float32)
    run(g, clock, 2)
    s.action = np.array([0.9, 0.9], np.float32)
    s.latency_ns = 3 * MS
    out = run(g, clock, 1)
    assert same(out[0], [0.1, 0.1]) and g.stats()["violations"]["deadline_miss"] == 1


def test_thread_deadline_answers_without_waiting_for_a_stuck_policy() -> None:
    """Deadline mode on the wall clock returns at the deadline while inference is stuck."""
    release = threading.Event()
    state = {"block": False}

    def policy(obs):
        if state["block"]:
            release.wait(5.0)
        return np.array([0.2, 0.2])

    g = Guard(
        CallablePolicy(policy, 4, 2), make_env(lat=Thresholds(max_ns=10**9)), deadline_ns=20 * MS
    )
    try:
        assert same(g.step(np.zeros(4)), [0.2, 0.2])
        state["block"] = True
        out = g.step(np.zeros(4))  # returns after ~20 ms, not 5 s
        assert same(out, [0.2, 0.2]) and g.stats()["violations"]["deadline_miss"] == 1
        g.step(np.zeros(4))  # still busy: an immediate miss, no second inference
        assert g.stats()["violations"]["deadline_miss"] == 2
    finally:
        release.set()
        g.close()


# ------------------------------------------------------------------ safety property --
_CHAOS = st.sampled_from(["ok", "nan", "inf", "big", "short", "raise", "slow", "none"])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    script=st.lists(
        st.tuples(_CHAOS, st.integers(0, 40 * MS), st.sampled_from(["ok", "nan", "bad"])),
        min_size=1,
        max_size=60,
    ),
    fallback=st.sampled_from(["hold", "zero", "callable", "nan_callable"]),
    max_delta=st.one_of(st.none(), st.floats(0.01, 1.0)),
)
def test_step_always_returns_a_safe_action(script, fallback, max_delta) -> None:
    """Whatever the policy, observation or clock do, step() returns finite in-bounds actions."""
    clock = FakeClock()
    mode = {"kind": "ok"}

    def policy(obs):
        k = mode["kind"]
        if k == "raise":
            raise ValueError("boom")
        if k == "slow":
            clock.advance(30 * MS)
        return {
            "ok": [0.5, -0.5],
            "nan": [np.nan, 0.0],
            "inf": [np.inf, 1.0],
            "big": [1e30, -1e30],
            "short": [0.1],
            "none": None,
            "slow": [0.2, 0.2],
        }[k]

    fb = {
        "hold": "hold",
        "zero": "zero",
        "callable": lambda o: [0.9, 0.9],
        "nan_callable": lambda o: [np.nan, np.nan],
    }[fallback]
    g = Guard(CallablePolicy(policy, 4, 2), make_env(max_delta=max_delta), fallback=fb, clock=clock)
    prev = None
    for kind, gap, obs_kind in script:
        mode["kind"] = kind
        obs = {"ok": np.ones(4), "nan": np.full(4, np.nan), "bad": np.ones(7)}[obs_kind]
        a = g.step(obs)
        assert a.shape == (2,) and a.dtype == np.float32
        assert np.all(np.isfinite(a)) and np.all(np.abs(a) <= 1.0)
        if max_delta is not None and prev is not None and g.state is not GuardState.LATCHED:
            assert np.all(np.abs(a - prev) <= max_delta * (1 + 1e-5) + 1e-6)
        prev = a.copy()
        clock.advance(gap)


def test_onnx_guard_never_raises_on_hostile_observations(mlp_path: Path) -> None:
    """The fast path with a real ONNX policy survives hostile inputs and stays in bounds."""
    g = Guard(OnnxPolicy(mlp_path), make_env(17, 6, bound=0.5))
    rng = np.random.default_rng(0)
    hostile = [
        np.full(17, np.inf),
        np.zeros(3),
        np.zeros((2, 17)),
        object(),
        b"x" * 17,
        np.array(["a"] * 17),
        np.full(17, 1e38, np.float64),
        -np.full(17, 1e6),
    ]
    for i in range(400):
        obs = hostile[i % len(hostile)] if i % 3 == 0 else rng.standard_normal(17) * 10
        a = g.step(obs)
        assert np.all(np.isfinite(a)) and np.all(np.abs(a) <= 0.5)


# ---------------------------------------------------------------- resources / books --
def test_no_memory_growth_and_no_gc_in_the_fast_path(mlp_path: Path) -> None:
    """100k nominal ticks allocate nothing that lasts and trigger no GC collection."""
    g = Guard(
        OnnxPolicy(mlp_path),
        make_env(17, 6, bound=None, lat=Thresholds(max_ns=10**9), dt=Thresholds(max_ns=10**9)),
    )
    obs = np.random.default_rng(0).standard_normal(17).astype(np.float32)
    g.warm_up(obs)
    for _ in range(2000):
        g.step(obs)
    collections = []
    gc.callbacks.append(lambda phase, info: collections.append(info) if phase == "start" else None)
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for _ in range(100_000):
            g.step(obs)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
        gc.callbacks.pop()
        gc.unfreeze()
    growth = sum(s.size_diff for s in after.compare_to(before, "filename"))
    assert growth < 64 * 1024, f"grew {growth} bytes"
    assert collections == [], f"{len(collections)} GC collections during the loop"
    assert g.stats()["ticks"] == 102_000


def test_flight_recorder_gets_violations_and_state_changes(
    tmp_path: Path, clock: FakeClock
) -> None:
    """Violations and state changes reach the flight recorder file, in order."""
    s = Scripted(clock)
    path = tmp_path / "guard.tgfr"
    g = Guard(CallablePolicy(s, 4, 2), make_env(), clock=clock, recorder=path)
    run(g, clock, 2)
    g.step(np.full(4, np.nan))
    clock.advance(PERIOD)
    g.step(np.zeros(4))
    g.close()
    log = read_flight_record(path)
    kinds = [(r["kind"], r["fields"].get("kind") or r["fields"].get("to")) for r in log.records]
    assert kinds == [("violation", "obs_nonfinite"), ("state", "hold"), ("state", "nominal")]


def test_reset_clears_recurrent_state_and_window(tmp_path: Path) -> None:
    """reset() zeroes recurrent state; the next tick's dt (across the pause) is not judged."""
    from tg_models import build_recurrent

    clock = FakeClock()
    p = OnnxPolicy(build_recurrent(tmp_path / "gru.onnx", obs_size=4, action_size=2))
    g = Guard(p, make_env(4, 2, bound=None), clock=clock)
    obs = np.ones(4, np.float32)
    first = run(g, clock, 3, obs)
    g.reset()
    clock.advance(10**10)  # a long pause between episodes
    again = run(g, clock, 3, obs)
    np.testing.assert_allclose(first, again, rtol=1e-6)
    assert g.stats()["violations"]["dt_max"] == 0 and g.state is GuardState.NOMINAL


def test_stats_histograms_export(clock: FakeClock) -> None:
    """histograms() returns mergeable copies whose counts match the ticks run."""
    g, _ = scripted_guard(clock)
    run(g, clock, 30)
    h = g.histograms()
    assert h["latency_ns"].total_count == 30 and h["dt_ns"].total_count == 29
    assert h["dt_ns"].value_at_percentile(50) == pytest.approx(PERIOD, rel=0.01)


def test_guard_from_files(tmp_path: Path) -> None:
    """Guard.from_files loads a policy and an envelope JSON written by save_envelope."""
    from tailguard import save_envelope, starter_envelope

    path = build_mlp(tmp_path / "p.onnx")
    p = OnnxPolicy(path)
    save_envelope(
        starter_envelope(obs_size=17, action_size=6, period_ns=PERIOD, sha256=p.sha256),
        tmp_path / "e.json",
    )
    g = Guard.from_files(path, tmp_path / "e.json")
    assert np.all(np.isfinite(g.step(np.zeros(17))))


def test_rounding_overshoot_is_clipped_but_not_counted(clock: FakeClock) -> None:
    """An action 1 ulp past a bound is clipped into bounds without counting a violation."""
    g, s = scripted_guard(clock)
    s.action = np.array([np.nextafter(np.float32(1.0), np.float32(2.0)), 0.0], np.float32)
    out = run(g, clock, 1)
    assert out[0][0] == np.float32(1.0) and g.stats()["violations"]["action_bounds"] == 0
    s.action = np.array([1.01, 0.0], np.float32)
    run(g, clock, 1)
    assert g.stats()["violations"]["action_bounds"] == 1


def test_huge_and_backwards_clock_values_never_raise() -> None:
    """A clock that jumps by 2**62 ns or goes backwards is counted, never raised."""
    clock = FakeClock()
    g = Guard(
        CallablePolicy(lambda o: [0.0, 0.0], 4, 2),
        make_env(lat=Thresholds(), dt=Thresholds()),
        clock=clock,
    )
    for jump in (PERIOD, 2**62, -(2**61), PERIOD, 2**62 - 1) * 400:
        clock.now_ns = max(0, clock.now_ns + jump)
        assert np.all(np.isfinite(g.step(np.zeros(4))))
    st_ = g.stats()
    assert st_["ticks"] == 2000 and st_["faults"].get("histogram_errors", 0) == 0
    assert st_["faults"]["clock_backwards"] == 400  # every -2**61 jump, nothing else


def test_a_clock_going_backwards_inside_a_tick_is_counted_not_recorded() -> None:
    """Negative latencies from the nominal path are faults, kept out of the histograms."""
    reads = [10**9]  # the constructor's probe, then (start, end) per tick
    for k in range(300):
        start = 10**9 + k * PERIOD
        reads += [start, start - 1000 if k % 3 == 2 else start + 500]
    clock = iter(reads).__next__

    g = Guard(CallablePolicy(lambda o: [0.0, 0.0], 4, 2), make_env(), clock=clock)
    for _ in range(300):
        g.step(np.zeros(4, np.float32))
    st_ = g.stats()
    assert st_["faults"]["clock_backwards"] == 100
    assert st_["latency_ns"]["lifetime"]["count"] == 200
    assert sum(st_["violations"].values()) == 0


# ------------------------------------------- documented semantics (runtime/state.py) --
class Records:
    """A sink keeping what the guard emits."""

    def __init__(self) -> None:
        self.items: list[tuple] = []

    def append(self, record: tuple) -> None:
        self.items.append(record)

    def kinds(self) -> list[tuple[str, str]]:
        return [(r[0], r[3].get("kind") or r[3].get("to") or "") for r in self.items]


@pytest.mark.parametrize(
    "make_obs",
    [
        lambda: np.zeros(4, np.float32),
        lambda: np.zeros(4),
        lambda: [0.0, 0.0, 0.0, 0.0],
        lambda: (0.0, 0.0, 0.0, 0.0),
        lambda: np.zeros((1, 4), np.float32),
    ],
    ids=["float32", "float64", "list", "tuple", "row"],
)
def test_every_accepted_observation_type_is_timed(clock: FakeClock, make_obs) -> None:
    """Two 6 ms ticks in a 100-tick window with a 5 ms p99 threshold are flagged whatever
    the observation's type: the inference is timed for lists as for arrays."""
    g, s = scripted_guard(
        clock,
        lat=Thresholds(p99_ns=5 * MS, max_ns=8 * MS),
        window=Window(ticks=100, check_every_ticks=10),
        fallback="zero",
    )
    obs = make_obs()
    run(g, clock, 100, obs=obs)
    for _ in range(2):
        s.latency_ns = 6 * MS
        run(g, clock, 1, obs=obs)
        s.latency_ns = 1 * MS
        run(g, clock, 5, obs=obs)
    run(g, clock, 10, obs=obs)
    st_ = g.stats()
    assert st_["violations"]["latency_p99"] == 1 and g.state is GuardState.FALLBACK
    assert st_["latency_ns"]["lifetime"]["max"] >= 6 * MS
    assert sum(v for k, v in st_["violations"].items() if k != "latency_p99") == 0


def test_overruns_on_every_other_tick_are_not_a_streak(clock: FakeClock) -> None:
    """A clean tick between two overruns ends the streak, on the plain path too."""
    g, s = scripted_guard(
        clock, overruns=1, lat=Thresholds(max_ns=50 * MS), dt=Thresholds(max_ns=100 * MS)
    )
    run(g, clock, 3)
    for _ in range(20):
        s.latency_ns = 12 * MS  # an overrun
        run(g, clock, 1, gap_ns=13 * MS)
        s.latency_ns = 1 * MS  # a clean (plain-path) tick
        run(g, clock, 1)
    st_ = g.stats()
    assert st_["overruns"] == 20 and st_["violations"]["overrun_streak"] == 0
    assert g.state is GuardState.NOMINAL


@pytest.mark.parametrize("limit", [1, 3])
def test_max_consecutive_overruns_allows_that_many_in_a_row(clock: FakeClock, limit) -> None:
    """max_consecutive_overruns = N: N overruns in a row are allowed, the (N+1)-th is
    overrun_streak (the same rule as max_hold_ticks)."""
    g, s = scripted_guard(
        clock, overruns=limit, lat=Thresholds(max_ns=50 * MS), dt=Thresholds(max_ns=100 * MS)
    )
    run(g, clock, 2)
    s.latency_ns = 12 * MS
    run(g, clock, limit, gap_ns=13 * MS)
    assert g.stats()["violations"]["overrun_streak"] == 0 and g.state is GuardState.NOMINAL
    run(g, clock, 1, gap_ns=13 * MS)
    assert g.stats()["violations"]["overrun_streak"] == 1 and g.state is GuardState.FALLBACK


def test_a_rejected_observation_in_fallback_holds_instead_of_feeding_the_fallback(
    clock: FakeClock,
) -> None:
    """In FALLBACK a NaN observation gets the configured obs_nonfinite response (hold):
    the last applied action, no fallback_error, no latch; the fallback acts again after."""
    seen: list[np.ndarray] = []

    def fallback(obs):
        seen.append(obs.copy())
        return np.tanh(obs[:2])

    g, _ = scripted_guard(
        clock,
        fallback=fallback,
        recovery=Recovery(recovery_ticks=100, dwell_ns=10**12, max_hold_ticks=3),
    )
    run(g, clock, 2)
    clock.advance(5 * PERIOD)
    obs = np.array([0.5, -0.5, 0, 0], np.float32)
    before = run(g, clock, 2, obs=obs)[-1]
    assert g.state is GuardState.FALLBACK and len(seen) == 2
    held = run(g, clock, 1, obs=np.array([np.nan, 0, 0, 0]))[0]
    st_ = g.stats()
    assert same(held, before) and g.state is GuardState.FALLBACK and len(seen) == 2
    assert st_["violations"]["obs_nonfinite"] == 1 and st_["violations"]["fallback_error"] == 0
    run(g, clock, 1, obs=obs)
    assert len(seen) == 3 and all(np.isfinite(x).all() for x in seen)


@pytest.mark.parametrize("start", ["nominal", "hold"])
@pytest.mark.parametrize("stamp", ["123", float("nan"), float("inf"), b"x", [1, 2]])
def test_a_timestamp_that_is_not_a_number_is_an_obs_age_violation(
    clock: FakeClock, start: str, stamp
) -> None:
    """With the age check on, a timestamp that is not a finite number never raises or
    latches: it is obs_age (the observation's freshness cannot be established)."""
    g, _s = scripted_guard(clock, age=5 * MS)
    run(g, clock, 2)
    if start == "hold":
        g.step(np.full(4, np.nan))
        clock.advance(PERIOD)
        assert g.state is GuardState.HOLD
    out = g.step(np.zeros(4), obs_timestamp_ns=stamp)
    st_ = g.stats()
    assert np.isfinite(out).all() and st_["violations"]["obs_age"] == 1
    assert g.state is GuardState.HOLD and "internal_error" not in st_["faults"]


def test_obs_age_accepts_zero_to_max_and_refuses_a_future_timestamp(clock: FakeClock) -> None:
    """Ages 0 and obs_age_max_ns pass; one more ns, or a timestamp ahead of the clock, fail."""
    g, _ = scripted_guard(clock, age=5 * MS)
    for age, bad in ((0, 0), (5 * MS, 0), (5 * MS + 1, 1), (-1, 1)):
        clock.advance(PERIOD)
        before = g.stats()["violations"]["obs_age"]
        g.step(np.zeros(4), obs_timestamp_ns=clock.now_ns - age)
        assert g.stats()["violations"]["obs_age"] - before == bad, age
        clock.advance(PERIOD)
        g.step(np.zeros(4))  # back to NOMINAL


def test_timestamps_are_ignored_when_the_age_check_is_off(clock: FakeClock) -> None:
    """Without obs_age_max_ns any timestamp, even garbage, changes nothing."""
    g, _ = scripted_guard(clock)
    for stamp in ("123", float("nan"), None, 5, -(10**15)):
        g.step(np.zeros(4), obs_timestamp_ns=stamp)
        clock.advance(PERIOD)
    assert sum(g.stats()["violations"].values()) == 0 and g.state is GuardState.NOMINAL


def test_the_first_action_is_not_rate_limited_against_zeros(clock: FakeClock) -> None:
    """The first tick has no previous applied action: 0.9 with max_delta 0.1 stays 0.9
    (bounds still apply); from then on the rate limit holds, also across reset()."""
    g, s = scripted_guard(clock, max_delta=0.1)
    s.action = np.array([0.9, 1.5], np.float32)
    first = run(g, clock, 1)[0]
    np.testing.assert_allclose(first, [0.9, 1.0], atol=1e-6)
    st_ = g.stats()["violations"]
    assert st_["action_rate"] == 0 and st_["action_bounds"] == 1
    s.action = np.array([0.0, 0.0], np.float32)
    np.testing.assert_allclose(run(g, clock, 1)[0], [0.8, 0.9], atol=1e-6)
    g.reset()
    np.testing.assert_allclose(run(g, clock, 1)[0], [0.7, 0.8], atol=1e-6)


def test_zero_fallback_ramps_at_max_delta_and_the_latched_stop_is_immediate(
    clock: FakeClock,
) -> None:
    """fallback="zero" reaches zero at max_delta per tick (the rate limit applies to every
    applied action outside LATCHED); the latched safe action "zero" applies at once."""
    g, s = scripted_guard(
        clock,
        fallback="zero",
        max_delta=0.25,
        recovery=Recovery(recovery_ticks=100, dwell_ns=10**12, max_hold_ticks=3),
        safe_action="zero",
    )
    s.action = np.array([0.5, -0.5], np.float32)
    run(g, clock, 3)
    clock.advance(5 * PERIOD)
    out = run(g, clock, 3)
    assert g.state is GuardState.FALLBACK
    np.testing.assert_allclose(out[0], [0.25, -0.25], atol=1e-6)
    np.testing.assert_allclose(out[1], [0.0, 0.0], atol=1e-6)
    g2, s2 = scripted_guard(clock, max_delta=0.25, safe_action="zero")
    s2.action = np.array([0.5, -0.5], np.float32)
    run(g2, clock, 3)
    g2.request_trip("test")
    np.testing.assert_allclose(run(g2, clock, 1)[0], [0.0, 0.0])
    assert g2.state is GuardState.LATCHED


def test_dt_window_is_judged_once_it_holds_w_samples(clock: FakeClock) -> None:
    """At start-up the period window is judged from tick W+1 (tick 1 has no period), the
    latency window from tick W: each with W samples and the allowance for W."""
    g, _ = scripted_guard(
        clock,
        dt=Thresholds(p99_ns=12 * MS, max_ns=3 * PERIOD),
        window=Window(ticks=10, check_every_ticks=1),
        fallback="zero",
    )
    run(g, clock, 1)
    run(g, clock, 1, gap_ns=15 * MS)  # tick 3 starts 15 ms after tick 2: a long period
    run(g, clock, 7)  # ticks 3..9
    run(g, clock, 1)  # tick 10: the period window holds 9 samples: not judged yet
    assert g.stats()["violations"]["dt_p99"] == 0 and g.state is GuardState.NOMINAL
    run(g, clock, 1)  # tick 11: 10 samples, one above p99 with allowance 0
    assert g.stats()["violations"]["dt_p99"] == 1 and g.state is GuardState.FALLBACK


def test_after_reset_windows_wait_until_full_as_at_start_up(clock: FakeClock) -> None:
    """After reset() a window is judged again only once it holds W samples."""
    g, s = scripted_guard(
        clock,
        lat=Thresholds(p99_ns=3 * MS, max_ns=8 * MS),
        window=Window(ticks=10, check_every_ticks=1),
        fallback="zero",
    )
    run(g, clock, 30)
    g.reset()
    s.latency_ns = 4 * MS  # above p99; allowance for 10 samples is 0
    run(g, clock, 1)
    s.latency_ns = 1 * MS
    run(g, clock, 8)  # 9 samples since the reset: not judged
    assert g.stats()["violations"]["latency_p99"] == 0 and g.state is GuardState.NOMINAL
    run(g, clock, 1)  # the 10th: judged
    assert g.stats()["violations"]["latency_p99"] == 1 and g.state is GuardState.FALLBACK


def test_a_reset_command_restarts_the_windows_with_the_tick_it_is_applied_on(
    clock: FakeClock,
) -> None:
    """A reset requested from another thread applies at the start of a tick; that tick's
    samples are the first of the new windows (judged once they hold W samples)."""
    g, s = scripted_guard(
        clock,
        lat=Thresholds(p99_ns=3 * MS, max_ns=8 * MS),
        window=Window(ticks=10, check_every_ticks=1),
        fallback="zero",
    )
    run(g, clock, 30)
    g.request_reset("test")
    s.latency_ns = 4 * MS  # the reset tick: above p99, allowance for 10 samples is 0
    run(g, clock, 1)
    s.latency_ns = 1 * MS
    run(g, clock, 8)
    assert g.stats()["violations"]["latency_p99"] == 0 and g.state is GuardState.NOMINAL
    run(g, clock, 1)  # 10 samples since the reset tick, the reset tick's among them
    assert g.stats()["violations"]["latency_p99"] == 1 and g.state is GuardState.FALLBACK


def test_emergency_latch_goes_through_the_table(clock: FakeClock) -> None:
    """An internal error latches through the transition table: a state record, a counted
    transition and time accounted to LATCHED, and the held action."""
    records = Records()
    s = Scripted(clock)
    s.action = np.array([0.3, 0.3], np.float32)
    g = Guard(CallablePolicy(s, 4, 2), make_env(), clock=clock, telemetry=None, recorder=records)
    run(g, clock, 3)

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    g._judge = broken
    g.step(np.full(4, np.nan))  # leaves the plain path, hits the bug
    clock.advance(PERIOD)
    assert g.state is GuardState.LATCHED
    del g._judge
    out = run(g, clock, 3)
    assert all(same(a, [0.3, 0.3]) for a in out)
    changes = [r for r in records.items if r[0] == "state"]
    assert len(changes) == 1 and isinstance(changes[0], StateChangeRecord)
    assert changes[0].old is GuardState.NOMINAL and changes[0].new is GuardState.LATCHED
    assert changes[0].fields["cause"] == ["internal_error"]
    st_ = g.stats()
    assert st_["transitions"] == 1 and st_["faults"]["internal_error"] == 1
    assert st_["state_time_ns"]["latched"] == 3 * PERIOD


def test_records_are_typed(clock: FakeClock) -> None:
    """What the guard emits are typed records that unpack as (kind, tick, t_ns, fields)."""
    records = Records()
    g = Guard(CallablePolicy(lambda o: [0.0, 0.0], 4, 2), make_env(), clock=clock, recorder=records)
    run(g, clock, 2)
    g.step(np.full(4, np.nan))
    violation, change = records.items
    assert isinstance(violation, ViolationRecord) and violation.violation is Violation.OBS_NONFINITE
    kind, tick, t_ns, fields = change
    assert (kind, tick, t_ns) == ("state", 3, clock.now_ns) and fields["to"] == "hold"


def test_a_late_exception_never_becomes_the_next_ticks_policy_error() -> None:
    """Thread deadline mode: an inference that raises after its deadline is counted as a
    late error; the next good tick is clean."""
    import time as _time

    release = threading.Event()
    mode = {"block": False, "raise": False}

    def policy(obs):
        if mode["block"]:
            release.wait(5.0)
        if mode["raise"]:
            raise RuntimeError("late")
        return np.array([0.2, 0.2])

    g = Guard(
        CallablePolicy(policy, 4, 2),
        make_env(lat=Thresholds(max_ns=10**9), dt=Thresholds(max_ns=10**10)),
        deadline_ns=20 * MS,
        clock=_time.monotonic_ns,
    )
    try:
        g.step(np.zeros(4))
        mode["block"] = mode["raise"] = True
        g.step(np.zeros(4))  # misses its deadline
        release.set()
        assert g._deadline.wait_idle(5.0)
        mode["block"] = mode["raise"] = False
        g.step(np.zeros(4))
        st_ = g.stats()
        assert st_["violations"]["deadline_miss"] == 1 and st_["violations"]["policy_error"] == 0
        assert st_["faults"]["late_results"] == 1 and st_["faults"]["late_errors"] == 1
    finally:
        release.set()
        g.close()


def test_a_policy_that_checks_the_observation_saves_the_guards_test(tmp_path: Path) -> None:
    """With an ONNX policy whose check vector tests the observation (fold_observation),
    step() skips its own test; a NaN observation still gets obs_nonfinite's configured
    response (not an action violation), its output is not applied and its recurrent state
    does not advance."""
    from tg_models import build_recurrent

    clock = FakeClock()
    path = build_recurrent(tmp_path / "gru.onnx", obs_size=4, action_size=2)
    obs = np.ones(4, np.float32)
    nan = np.array([np.nan, 1, 1, 1], np.float32)

    import inspect

    folds = "fold_observation" in inspect.signature(OnnxPolicy).parameters
    kwargs = {"fold_observation": True} if folds else {}

    def guard(responses=None) -> Guard:
        p = OnnxPolicy(path, **kwargs)
        return Guard(p, make_env(4, 2, bound=None, responses=responses), clock=clock)

    reference = run(guard(), clock, 6, obs)
    g = guard()
    assert g._obs_test is (not g.policy.checks_observation)
    out = run(g, clock, 3, obs) + run(g, clock, 1, nan) + run(g, clock, 3, obs)
    st_ = g.stats()["violations"]
    assert st_["obs_nonfinite"] == 1 and st_["action_nonfinite"] == 0
    np.testing.assert_array_equal(out[3], out[2])  # held
    np.testing.assert_allclose(out[4:], reference[3:], rtol=1e-6)  # state did not advance
    g = guard({Violation.OBS_NONFINITE: Response.FALLBACK})
    run(g, clock, 2, obs)
    run(g, clock, 1, nan)
    assert g.state is GuardState.FALLBACK and g.stats()["violations"]["obs_nonfinite"] == 1

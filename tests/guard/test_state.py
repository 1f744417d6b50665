"""The transition table and decide(): every state, event, response and streak boundary."""

from __future__ import annotations

import itertools

import pytest

from tailguard.errors import IllegalTransitionError
from tailguard.runtime.state import (
    ALLOWED_RESPONSES,
    DEFAULT_RESPONSES,
    OBSERVATION_CHECKS,
    REJECTED_OBSERVATION,
    TRANSITIONS,
    ActionSource,
    Event,
    GuardState,
    Hysteresis,
    Response,
    Violation,
    decide,
    next_state,
)

N, H, F, L = GuardState.NOMINAL, GuardState.HOLD, GuardState.FALLBACK, GuardState.LATCHED
WINDOW = {
    Violation.DT_P50,
    Violation.DT_P95,
    Violation.DT_P99,
    Violation.LATENCY_P50,
    Violation.LATENCY_P95,
    Violation.LATENCY_P99,
    Violation.ACTION_SATURATION,
    Violation.ACTION_FROZEN,
    Violation.ACTION_CHATTER,
}
PER_TICK = [v for v in Violation if v not in WINDOW and v is not Violation.HOLD_LIMIT]
RULE = Hysteresis(recovery_ticks=3, dwell_ns=100, max_hold_ticks=2)
SEVERITY = {L: 4, F: 3, H: 2, N: 0}

# The state machine written out independently of TRANSITIONS, as the design states it:
# TICK_OK leaves HOLD; FALLBACK is left only by RECOVERED (and RESET); LATCHED only by RESET.
SPEC = {
    N: {Event.TICK_OK: N, Event.HOLD: H, Event.FALLBACK: F, Event.LATCH: L, Event.RESET: N},
    H: {Event.TICK_OK: N, Event.HOLD: H, Event.FALLBACK: F, Event.LATCH: L, Event.RESET: N},
    F: {
        Event.TICK_OK: F,
        Event.HOLD: F,
        Event.FALLBACK: F,
        Event.LATCH: L,
        Event.RECOVERED: N,
        Event.RESET: N,
    },
    L: {Event.TICK_OK: L, Event.HOLD: L, Event.FALLBACK: L, Event.LATCH: L, Event.RESET: N},
}


def responses(**overrides: Response) -> dict[Violation, Response]:
    out = dict(DEFAULT_RESPONSES)
    out.update({Violation(k): r for k, r in overrides.items()})
    return out


def run(state, viols=(), window=frozenset(), resp=None, **kw):
    args = {
        "hold_streak": 0,
        "clean_streak": 0,
        "in_state_ns": 0,
        "action_ok": True,
        "fallback_reads_obs": False,
    }
    args.update(kw)
    return decide(state, list(viols), set(window), resp or DEFAULT_RESPONSES, RULE, **args)


# ------------------------------------------------------------------ the table --
@pytest.mark.parametrize("state", list(GuardState))
@pytest.mark.parametrize("event", list(Event))
def test_table_matches_the_written_spec_or_refuses(state: GuardState, event: Event) -> None:
    """next_state gives the spec's state for every pair the spec defines; any other pair
    raises an error naming both the state and the event."""
    if event in SPEC[state]:
        assert next_state(state, event) is SPEC[state][event]
    else:
        with pytest.raises(IllegalTransitionError) as info:
            next_state(state, event)
        assert state.value in str(info.value) and event.value in str(info.value)
    assert set(TRANSITIONS) == {(s, e) for s, events in SPEC.items() for e in events}


# ------------------------------------------------------------------ decide() --
def test_a_clean_tick_changes_nothing_in_nominal() -> None:
    """No violation in NOMINAL: TICK_OK, stays NOMINAL, the policy acts, streaks are zero."""
    d = run(N, hold_streak=0)
    assert (d.event, d.state, d.source, d.violations) == (Event.TICK_OK, N, ActionSource.POLICY, ())
    assert d.hold_streak == 0 and d.clean_streak == 0
    assert run(N, action_ok=False).source is ActionSource.HOLD  # nothing usable to apply


@pytest.mark.parametrize("state", [N, H])
@pytest.mark.parametrize(
    ("violation", "response"),
    [(v, r) for v in PER_TICK for r in sorted(ALLOWED_RESPONSES[v], key=lambda r: r.severity)],
)
def test_each_response_moves_nominal_and_hold_as_documented(state, violation, response) -> None:
    """One violation in NOMINAL/HOLD: log/clip -> NOMINAL with the policy's action, hold ->
    HOLD with the last action, fallback -> FALLBACK, latch -> LATCHED with the safe action."""
    d = run(state, [violation], resp=responses(**{violation.value: response}))
    expect = {
        Response.LOG: (N, ActionSource.POLICY),
        Response.CLIP: (N, ActionSource.POLICY),
        Response.HOLD: (H, ActionSource.HOLD),
        Response.FALLBACK: (F, ActionSource.FALLBACK),
        Response.LATCH: (L, ActionSource.SAFE),
    }[response]
    assert (d.state, d.source) == expect
    assert d.violations == (violation,)
    assert d.hold_streak == (1 if response is Response.HOLD else 0)


def test_the_worst_response_of_a_tick_decides() -> None:
    """Several violations: the most severe response wins, whatever the order."""
    viols = [Violation.ACTION_BOUNDS, Violation.LATENCY_MAX, Violation.DT_MAX]
    for order in itertools.permutations(viols):
        assert run(N, order).state is F  # clip < hold < fallback
    assert run(N, [*viols, Violation.FALLBACK_ERROR]).state is L


@pytest.mark.parametrize("limit", [Response.FALLBACK, Response.LATCH])
def test_hold_limit_fires_on_the_tick_after_max_hold_ticks(limit: Response) -> None:
    """max_hold_ticks = N allows N held ticks in a row; the (N+1)-th is hold_limit."""
    resp = responses(hold_limit=limit)
    streak = 0
    state = N
    for k in range(1, RULE.max_hold_ticks + 1):
        d = run(state, [Violation.POLICY_ERROR], resp=resp, hold_streak=streak)
        assert d.state is H and Violation.HOLD_LIMIT not in d.violations and d.hold_streak == k
        state, streak = d.state, d.hold_streak
    d = run(state, [Violation.POLICY_ERROR], resp=resp, hold_streak=streak)
    assert d.violations == (Violation.POLICY_ERROR, Violation.HOLD_LIMIT)
    assert d.state is (F if limit is Response.FALLBACK else L) and d.hold_streak == 0


def test_any_tick_that_is_not_held_ends_the_hold_streak() -> None:
    """A clean tick, a clipped tick or a fallback tick resets the hold streak to 0."""
    for viols in ([], [Violation.ACTION_BOUNDS], [Violation.DT_MAX]):
        assert run(H, viols, hold_streak=RULE.max_hold_ticks).hold_streak == 0


@pytest.mark.parametrize("clean", range(0, 5))
@pytest.mark.parametrize("in_state_ns", [0, 99, 100, 10**9])
def test_recovery_needs_clean_ticks_and_dwell(clean: int, in_state_ns: int) -> None:
    """FALLBACK recovers on the tick that makes recovery_ticks clean ticks in a row, once
    dwell_ns has passed; until then it counts and stays."""
    d = run(F, clean_streak=clean, in_state_ns=in_state_ns)
    recovers = clean + 1 >= RULE.recovery_ticks and in_state_ns >= RULE.dwell_ns
    assert d.event is (Event.RECOVERED if recovers else Event.TICK_OK)
    assert d.state is (N if recovers else F)
    assert d.clean_streak == (0 if recovers else clean + 1)
    assert d.source is (ActionSource.POLICY if recovers else ActionSource.FALLBACK)


@pytest.mark.parametrize("viols", [[Violation.LATENCY_MAX], [Violation.DT_MAX]])
def test_a_violation_in_fallback_restarts_the_recovery_count(viols) -> None:
    """In FALLBACK, anything worse than log/clip sets the clean count back to 0."""
    d = run(F, viols, clean_streak=10, in_state_ns=10**9)
    assert d.state is F and d.clean_streak == 0


def test_window_violations_act_in_nominal_and_hold_only() -> None:
    """An active window violation counts and acts in NOMINAL/HOLD; in FALLBACK it does not
    act again but blocks recovery; in LATCHED it is ignored."""
    w = {Violation.LATENCY_P99}
    for state in (N, H):
        d = run(state, window=w)
        assert d.violations == (Violation.LATENCY_P99,) and d.state is F
    d = run(F, window=w, clean_streak=10, in_state_ns=10**9)
    assert d.violations == () and d.state is F and d.clean_streak == 0
    d = run(L, window=w)
    assert d.violations == () and d.state is L


@pytest.mark.parametrize("violation", sorted(OBSERVATION_CHECKS, key=lambda v: v.value))
@pytest.mark.parametrize("reads_obs", [False, True])
def test_in_fallback_a_hold_on_the_observation_holds(violation, reads_obs) -> None:
    """In FALLBACK a hold response to an observation check holds the last action this tick
    (the fallback is not run on it) and counts as a held tick; state stays FALLBACK."""
    resp = {**DEFAULT_RESPONSES, violation: Response.HOLD}  # obs_range defaults to fallback
    d = run(F, [violation], resp=resp, fallback_reads_obs=reads_obs)
    assert (d.state, d.source, d.hold_streak) == (F, ActionSource.HOLD, 1)


def test_in_fallback_a_hold_about_the_policy_lets_the_fallback_act() -> None:
    """In FALLBACK a hold-level violation of the policy (slow, raised, NaN action) does not
    stop the fallback, which does not depend on the policy's output."""
    for v in (Violation.LATENCY_MAX, Violation.POLICY_ERROR, Violation.ACTION_NONFINITE):
        d = run(F, [v], fallback_reads_obs=True)
        assert (d.state, d.source, d.hold_streak) == (F, ActionSource.FALLBACK, 0)


@pytest.mark.parametrize("violation", sorted(REJECTED_OBSERVATION, key=lambda v: v.value))
@pytest.mark.parametrize("state", [N, H, F])
def test_a_rejected_observation_never_reaches_a_fallback_that_reads_it(violation, state) -> None:
    """With response fallback on a rejected observation, a fallback that reads observations
    is not run (the tick holds); "hold"/"zero" fallbacks act."""
    resp = responses(**{violation.value: Response.FALLBACK})
    assert run(state, [violation], resp=resp, fallback_reads_obs=True).source is ActionSource.HOLD
    d = run(state, [violation], resp=resp, fallback_reads_obs=False)
    assert (d.state, d.source) == (F, ActionSource.FALLBACK)


_ALL_VIOLATION_SETS = [()] + [(v,) for v in PER_TICK] + list(itertools.combinations(PER_TICK, 2))


@pytest.mark.parametrize("state", list(GuardState))
def test_exhaustive_invariants(state: GuardState) -> None:
    """Over every state x every set of up to two per-tick violations x window activity x
    streak and dwell boundaries x flags: decide() never raises, its state is the table's
    answer for its event, LATCHED is sticky with the safe action, counted violations are
    the tick's own plus what acts, and the source matches the state."""
    windows = [frozenset(), frozenset({Violation.DT_P99})]
    checked = 0
    for viols, window, hold, clean, dwell, ok, reads in itertools.product(
        _ALL_VIOLATION_SETS, windows, (0, 1, 2), (0, 2, 5), (0, 100), (True, False), (True, False)
    ):
        d = run(
            state,
            viols,
            window,
            hold_streak=hold,
            clean_streak=clean,
            in_state_ns=dwell,
            action_ok=ok,
            fallback_reads_obs=reads,
        )
        checked += 1
        assert d.state is SPEC[state][d.event]
        assert d.violations[: len(viols)] == tuple(viols)
        extra = set(d.violations[len(viols) :])
        assert extra <= set(window) | {Violation.HOLD_LIMIT}
        if state is L:
            assert d.state is L and d.source is ActionSource.SAFE
        if d.state is L:
            assert d.source is ActionSource.SAFE
        elif d.state is H:
            assert d.source is ActionSource.HOLD and d.hold_streak >= 1
        elif d.state is N:
            assert d.source is (ActionSource.POLICY if ok else ActionSource.HOLD)
        if d.source is ActionSource.POLICY:
            worst = max((DEFAULT_RESPONSES[v].severity for v in d.violations), default=0)
            assert worst <= Response.CLIP.severity
        if d.event is Event.RECOVERED:
            assert state is F and clean + 1 >= RULE.recovery_ticks and dwell >= RULE.dwell_ns
        if state is not F or d.state is not F:
            assert d.clean_streak == 0
        # escalation never lowers severity: the new state is at least what the tick's
        # own worst response asks for (LATCHED is the top; FALLBACK absorbs hold).
        asked = max((DEFAULT_RESPONSES[v].severity for v in viols), default=0)
        if state is not F and asked >= Response.HOLD.severity:
            assert SEVERITY[d.state] >= asked
    assert checked == len(_ALL_VIOLATION_SETS) * 2 * 3 * 3 * 2 * 2 * 2

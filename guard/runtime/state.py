"""The guard's states, the violations it detects, and its one transition table.

Every state change of a ``Guard`` goes through :func:`next_state`. Enum values are stable
lowercase strings: they appear in logs, flight-recorder files and telemetry.
"""

from __future__ import annotations

from enum import Enum

from tailguard.errors import IllegalTransitionError

__all__ = [
    "GuardState",
    "Violation",
    "Response",
    "Event",
    "TRANSITIONS",
    "DEFAULT_RESPONSES",
    "ALLOWED_RESPONSES",
    "event_for",
    "next_state",
]


class GuardState(Enum):
    """Who is in charge of the action this tick."""

    NOMINAL = "nominal"  # the policy's (checked, possibly clipped) action
    HOLD = "hold"  # this tick repeats the last applied action
    FALLBACK = "fallback"  # the fallback controller, until recovery conditions hold
    LATCHED = "latched"  # safe stop; sticky until Guard.reset()


class Violation(Enum):
    """Everything the guard checks. Per-tick checks first, then window checks."""

    LATENCY_MAX = "latency_max"  # one tick's latency above the envelope's tail cap
    DT_MAX = "dt_max"  # one tick's period above the cap
    OVERRUN_STREAK = "overrun_streak"  # too many consecutive ticks past their deadline
    OBS_AGE = "obs_age"  # observation older than allowed
    OBS_NONFINITE = "obs_nonfinite"
    OBS_SHAPE = "obs_shape"  # wrong shape, wrong type, not convertible
    ACTION_NONFINITE = "action_nonfinite"
    ACTION_BOUNDS = "action_bounds"  # outside [action_low, action_high]
    ACTION_RATE = "action_rate"  # |action - previous applied action| above max_delta
    POLICY_ERROR = "policy_error"  # the policy raised
    DEADLINE_MISS = "deadline_miss"  # deadline mode: inference did not finish in time
    HOLD_LIMIT = "hold_limit"  # too many consecutive HOLD ticks
    FALLBACK_ERROR = "fallback_error"  # the fallback controller failed or produced garbage
    DT_P50 = "dt_p50"
    DT_P95 = "dt_p95"
    DT_P99 = "dt_p99"
    LATENCY_P50 = "latency_p50"
    LATENCY_P95 = "latency_p95"
    LATENCY_P99 = "latency_p99"


class Response(Enum):
    """What the guard does about a violation. Ordered by severity."""

    LOG = "log"  # count it (and record it), change nothing
    CLIP = "clip"  # apply the action limited to bounds / rate (action checks only)
    HOLD = "hold"  # repeat the last applied action this tick
    FALLBACK = "fallback"  # hand control to the fallback controller
    LATCH = "latch"  # safe stop until reset()

    @property
    def severity(self) -> int:
        return _SEVERITY[self]


_SEVERITY = {
    Response.LOG: 0,
    Response.CLIP: 1,
    Response.HOLD: 2,
    Response.FALLBACK: 3,
    Response.LATCH: 4,
}


class Event(Enum):
    """Inputs of the state machine (one per tick, plus recovery and reset)."""

    TICK_OK = "tick_ok"  # nothing worse than LOG/CLIP this tick
    HOLD = "hold"
    FALLBACK = "fallback"
    LATCH = "latch"
    RECOVERED = "recovered"  # recovery conditions held for the dwell time
    RESET = "reset"  # explicit Guard.reset()


_S, _E = GuardState, Event
#: The whole state machine. A missing (state, event) pair is an illegal transition.
TRANSITIONS: dict[tuple[GuardState, Event], GuardState] = {
    (_S.NOMINAL, _E.TICK_OK): _S.NOMINAL,
    (_S.NOMINAL, _E.HOLD): _S.HOLD,
    (_S.NOMINAL, _E.FALLBACK): _S.FALLBACK,
    (_S.NOMINAL, _E.LATCH): _S.LATCHED,
    (_S.NOMINAL, _E.RESET): _S.NOMINAL,
    (_S.HOLD, _E.TICK_OK): _S.NOMINAL,
    (_S.HOLD, _E.HOLD): _S.HOLD,
    (_S.HOLD, _E.FALLBACK): _S.FALLBACK,
    (_S.HOLD, _E.LATCH): _S.LATCHED,
    (_S.HOLD, _E.RESET): _S.NOMINAL,
    # In FALLBACK, clean ticks only count towards recovery; RECOVERED hands control back.
    (_S.FALLBACK, _E.TICK_OK): _S.FALLBACK,
    (_S.FALLBACK, _E.HOLD): _S.FALLBACK,
    (_S.FALLBACK, _E.FALLBACK): _S.FALLBACK,
    (_S.FALLBACK, _E.LATCH): _S.LATCHED,
    (_S.FALLBACK, _E.RECOVERED): _S.NOMINAL,
    (_S.FALLBACK, _E.RESET): _S.NOMINAL,
    # LATCHED is sticky: only an explicit reset leaves it.
    (_S.LATCHED, _E.TICK_OK): _S.LATCHED,
    (_S.LATCHED, _E.HOLD): _S.LATCHED,
    (_S.LATCHED, _E.FALLBACK): _S.LATCHED,
    (_S.LATCHED, _E.LATCH): _S.LATCHED,
    (_S.LATCHED, _E.RESET): _S.NOMINAL,
}
del _S, _E

_EVENT_FOR = {
    Response.LOG: Event.TICK_OK,
    Response.CLIP: Event.TICK_OK,
    Response.HOLD: Event.HOLD,
    Response.FALLBACK: Event.FALLBACK,
    Response.LATCH: Event.LATCH,
}

_ACTION_CHECKS = frozenset({Violation.ACTION_BOUNDS, Violation.ACTION_RATE})

#: Which responses make sense for which violation. CLIP only applies to action limits;
#: a non-finite action cannot be logged and applied, nor can a policy that raised.
ALLOWED_RESPONSES: dict[Violation, frozenset[Response]] = {
    v: (
        frozenset(Response)
        if v in _ACTION_CHECKS
        else frozenset({Response.HOLD, Response.FALLBACK, Response.LATCH})
        if v
        in {
            Violation.OBS_NONFINITE,
            Violation.OBS_SHAPE,
            Violation.ACTION_NONFINITE,
            Violation.POLICY_ERROR,
            Violation.DEADLINE_MISS,
        }
        else frozenset({Response.FALLBACK, Response.LATCH})
        if v in {Violation.HOLD_LIMIT, Violation.FALLBACK_ERROR}
        else frozenset(Response) - {Response.CLIP}
    )
    for v in Violation
}

#: Responses used when an envelope does not say otherwise. Conservative: anything that
#: means the action cannot be trusted holds; anything that means the loop's timing left
#: the audited envelope hands over to the fallback; a failing fallback latches.
DEFAULT_RESPONSES: dict[Violation, Response] = {
    Violation.LATENCY_MAX: Response.HOLD,
    Violation.DT_MAX: Response.FALLBACK,
    Violation.OVERRUN_STREAK: Response.FALLBACK,
    Violation.OBS_AGE: Response.HOLD,
    Violation.OBS_NONFINITE: Response.HOLD,
    Violation.OBS_SHAPE: Response.HOLD,
    Violation.ACTION_NONFINITE: Response.HOLD,
    Violation.ACTION_BOUNDS: Response.CLIP,
    Violation.ACTION_RATE: Response.CLIP,
    Violation.POLICY_ERROR: Response.HOLD,
    Violation.DEADLINE_MISS: Response.HOLD,
    Violation.HOLD_LIMIT: Response.FALLBACK,
    Violation.FALLBACK_ERROR: Response.LATCH,
    Violation.DT_P50: Response.FALLBACK,
    Violation.DT_P95: Response.FALLBACK,
    Violation.DT_P99: Response.FALLBACK,
    Violation.LATENCY_P50: Response.FALLBACK,
    Violation.LATENCY_P95: Response.FALLBACK,
    Violation.LATENCY_P99: Response.FALLBACK,
}


def event_for(response: Response) -> Event:
    """The state-machine event a response produces."""
    return _EVENT_FOR[response]


def next_state(state: GuardState, event: Event) -> GuardState:
    """Apply one event to a state.

    Raises:
        IllegalTransitionError: the (state, event) pair is not in ``TRANSITIONS``.
    """
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalTransitionError(
            f"event '{event.value}' is not accepted in state '{state.value}'; "
            f"accepted there: {sorted(e.value for (s, e) in TRANSITIONS if s is state)}"
        ) from None

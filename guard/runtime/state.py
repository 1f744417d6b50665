"""The guard's states, what it checks, its one transition table and its decision rule.

Every state change of a ``Guard`` goes through :func:`next_state`; what a tick's violations
do (which event, hold escalation, recovery hysteresis, window gating, who acts) is the pure
function :func:`decide`. Enum values are stable lowercase strings: they appear in logs,
flight-recorder files and telemetry.

The guard's semantics, in one place (``Guard`` and its tests follow this text):

* **Responses.** ``log`` counts (and records) a violation and changes nothing -- on the
  action checks too: the policy's action is applied as it is, outside bounds or rate if so
  (a shadow-mode trial). ``clip`` applies the action limited to the bounds and the rate
  window. ``hold`` repeats the last applied action this tick. ``fallback`` hands control to
  the fallback controller until recovery. ``latch`` stops safely until ``Guard.reset()``.
  The worst response among a tick's violations decides the tick (``Response.severity``).
* **States.** NOMINAL applies the policy's (checked, possibly clipped) action; HOLD repeats
  the last applied action; FALLBACK applies the fallback controller's action; LATCHED
  applies the safe action (``safe_action``: zeros clipped to bounds, or the last applied
  action) and does not run the policy. Only RESET leaves LATCHED.
* **The fallback and the observation.** In FALLBACK a ``hold`` response to an observation
  check (``obs_shape``, ``obs_nonfinite``, ``obs_age``) holds the last applied action this
  tick, as in NOMINAL: the fallback is not run on an observation the envelope says not to
  act on. Whatever the response, a fallback that reads the observation (a callable or a
  policy) is never handed one the guard rejected (``obs_shape``, ``obs_nonfinite``): that
  tick holds the last applied action instead (no ``fallback_error``). Violations about the
  policy's own output or timing do not stop the fallback, which does not depend on them.
* **Limits on the applied action.** Outside LATCHED, every applied action is within the
  bounds and within ``max_delta`` of the previous applied action, unless ``log`` was
  configured for that action check. This holds for the fallback's output too: a
  ``"zero"`` fallback reaches zero at ``max_delta`` per tick. The safe action of LATCHED is
  an emergency stop and is applied at once. The first tick after the guard is built has no
  previous applied action: the rate limit does not apply to it (bounds do); ``reset()``
  keeps the last applied action, so the rate limit stays continuous across it.
* **Hold escalation.** A held tick is one answered with the last applied action because of
  a ``hold`` response. ``max_hold_ticks`` = N allows N held ticks in a row; the (N+1)-th
  in a row is ``hold_limit`` (whose response then applies). Any tick that is not held
  ends the streak.
* **Overrun streak.** An overrun is a tick whose latency exceeds ``period_ns``.
  ``max_consecutive_overruns`` = N allows N overruns in a row; the (N+1)-th consecutive
  overrun is ``overrun_streak``. Any tick that is not an overrun ends the streak, on every
  path through ``step()``.
* **Recovery.** FALLBACK returns to NOMINAL on the tick on which both hold: at least
  ``recovery_ticks`` consecutive clean ticks in FALLBACK (nothing worse than ``log`` /
  ``clip``, no window violation active) and at least ``dwell_ns`` since FALLBACK was
  entered. Any other tick restarts the count.
* **Windows.** Each percentile check covers the last ``window.ticks`` (W) samples of its
  quantity and is evaluated every ``check_every_ticks``. A window is judged only once it
  holds W samples since the start or the last ``reset()`` (latency: from the W-th tick;
  period: from the (W+1)-th, since the first tick has no period), always with the allowance
  for W samples: p_q <= T <=> at most W - ceil(q*W) samples > T. An active window
  violation counts once per episode and acts (its response) in NOMINAL and HOLD; in
  FALLBACK it does not act again but blocks recovery; in LATCHED it is ignored.
* **Observations and timestamps.** Any real array-like of shape [O] or [1, O] is accepted
  (numpy arrays of any real dtype, lists, tuples, ...) and every accepted kind is timed the
  same way (the conversion is part of the tick's latency). ``obs_timestamp_ns`` is ignored
  unless the envelope sets ``timing.obs_age_max_ns``; then the age ``tick start -
  obs_timestamp_ns`` must be a number in [0, obs_age_max_ns]: anything else -- too old,
  ahead of the guard's clock, NaN, infinite, not a number -- is ``obs_age``.
* **Observation range** (envelope ``observations``). A finite observation with an element
  below ``low - tolerance * (high - low)`` or above ``high + tolerance * (high - low)``
  (float32) is ``obs_range``, a per-tick observation check. The policy still runs on it,
  and a fallback may read it (it is not a rejected observation).
* **Action window rules** (envelope ``action_rules``). They judge the policy's own output
  (also in FALLBACK, where the policy still runs; not in LATCHED) on the window cadence:
  the check ticks ``k * check_every_ticks`` are the samples (with ``chatter``, the two
  ticks before each are sampled too: in NOMINAL the tick before hands in its predecessor's
  applied action, the policy's own unless that tick intervened, else the sample is
  skipped). ``saturation``: an element within ``margin`` of
  the action range of a bound (or beyond it) on more than ``fraction`` of the samples in
  the last ``window.ticks`` ticks. ``chatter``: an element whose change ``a_t - a_{t-1}``
  flips sign against ``a_{t-1} - a_{t-2}``, both larger than ``min_delta``, on more than
  ``fraction`` of the samples. ``frozen``: since some sample at least ``ticks`` ticks ago
  no action element has moved more than ``epsilon`` from its value there, while some
  observation element has moved more than ``obs_delta``. A sample without a usable action
  (rejected observation, policy error, non-finite action) restarts the frozen run and is
  left out of the fractions. They are window violations (judged once the window is full,
  active while the condition holds, counted once per episode).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass
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
    "OBSERVATION_CHECKS",
    "REJECTED_OBSERVATION",
    "ActionSource",
    "Hysteresis",
    "Decision",
    "event_for",
    "next_state",
    "decide",
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
    # Envelope schema 2: the observation range (per tick) and the action window rules
    # (evaluated on the window cadence; see "Action window rules" above).
    OBS_RANGE = "obs_range"  # an observation element outside the envelope's range
    ACTION_SATURATION = "action_saturation"  # an action element at a bound too often
    ACTION_FROZEN = "action_frozen"  # actions stopped changing while observations did
    ACTION_CHATTER = "action_chatter"  # an action element's change flips sign too often


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
    Violation.OBS_RANGE: Response.FALLBACK,
    Violation.ACTION_SATURATION: Response.LOG,
    Violation.ACTION_FROZEN: Response.FALLBACK,
    Violation.ACTION_CHATTER: Response.LOG,
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


#: Checks about the observation itself (not the policy's output or the loop's timing).
OBSERVATION_CHECKS = frozenset(
    {Violation.OBS_SHAPE, Violation.OBS_NONFINITE, Violation.OBS_AGE, Violation.OBS_RANGE}
)
#: Observations the guard refuses to hand to anyone (the policy or a fallback).
REJECTED_OBSERVATION = frozenset({Violation.OBS_SHAPE, Violation.OBS_NONFINITE})


class ActionSource(Enum):
    """Where the action applied on a tick comes from."""

    POLICY = "policy"  # the policy's action of this tick (limited as the responses say)
    HOLD = "hold"  # the last applied action, repeated
    FALLBACK = "fallback"  # the fallback controller's action
    SAFE = "safe"  # the latched safe action


@dataclass(frozen=True, slots=True)
class Hysteresis:
    """The envelope's recovery rules as :func:`decide` needs them.

    Attributes:
        recovery_ticks: consecutive clean ticks in FALLBACK needed to recover, >= 1.
        dwell_ns: minimum time in FALLBACK before recovering, ns, >= 0.
        max_hold_ticks: held ticks allowed in a row; one more is ``hold_limit``, >= 1.
    """

    recovery_ticks: int
    dwell_ns: int
    max_hold_ticks: int


@dataclass(frozen=True, slots=True)
class Decision:
    """What one tick does (the result of :func:`decide`).

    Attributes:
        event: the state machine's input this tick.
        state: the state after the event (``TRANSITIONS[(state, event)]``).
        source: who supplies this tick's action.
        violations: what counts this tick: the tick's own violations, the window
            violations that act in this state, then ``hold_limit`` if it was reached.
        hold_streak: held ticks in a row, this one included.
        clean_streak: clean ticks in a row in FALLBACK, this one included (0 elsewhere).
    """

    event: Event
    state: GuardState
    source: ActionSource
    violations: tuple[Violation, ...]
    hold_streak: int
    clean_streak: int


def _worst(responses: Mapping[Violation, Response], viols: Sequence[Violation]) -> Response:
    worst = Response.LOG
    for v in viols:
        r = responses[v]
        if r.severity > worst.severity:
            worst = r
    return worst


def decide(
    state: GuardState,
    tick_violations: Sequence[Violation],
    window_active: Set[Violation],
    responses: Mapping[Violation, Response],
    rule: Hysteresis,
    *,
    hold_streak: int,
    clean_streak: int,
    in_state_ns: int,
    action_ok: bool,
    fallback_reads_obs: bool,
) -> Decision:
    """Decide one tick (pure: no clock, no I/O, no mutation). See the module docstring.

    Args:
        state: the state at the start of the decision.
        tick_violations: the per-tick violations found this tick (no window kinds).
        window_active: window violations active after this tick's window evaluation.
        responses: the envelope's response per violation (complete).
        rule: recovery ticks, dwell and the hold limit.
        hold_streak: held ticks in a row before this tick.
        clean_streak: clean FALLBACK ticks in a row before this tick.
        in_state_ns: time since ``state`` was entered, ns (at this tick's start).
        action_ok: the policy produced a usable (finite) action this tick.
        fallback_reads_obs: the fallback controller reads the observation (a callable or
            a policy, not ``"hold"`` / ``"zero"``).

    Returns:
        The :class:`Decision`.
    """
    viols = list(tick_violations)
    if window_active and state in (GuardState.NOMINAL, GuardState.HOLD):
        viols.extend(sorted(window_active, key=lambda v: v.value))
    worst = _worst(responses, viols)
    event = _EVENT_FOR[worst]
    # A hold response to an observation check holds in FALLBACK too; elsewhere any hold
    # response holds (LATCHED never holds: it applies its safe action).
    obs_hold = any(responses[v] is Response.HOLD for v in viols if v in OBSERVATION_CHECKS)
    held = event is Event.HOLD and (
        state in (GuardState.NOMINAL, GuardState.HOLD)
        or (state is GuardState.FALLBACK and obs_hold)
    )
    if held:
        hold_streak += 1
        if hold_streak > rule.max_hold_ticks:
            viols.append(Violation.HOLD_LIMIT)
            limit = responses[Violation.HOLD_LIMIT]
            if limit.severity > worst.severity:
                worst = limit
            event = _EVENT_FOR[worst]
            held = event is Event.HOLD
    if not held:
        hold_streak = 0
    if state is GuardState.FALLBACK:
        if event is Event.TICK_OK and not window_active:
            clean_streak += 1
            if clean_streak >= rule.recovery_ticks and in_state_ns >= rule.dwell_ns:
                event = Event.RECOVERED
        else:
            clean_streak = 0
    new = next_state(state, event)
    if new is not GuardState.FALLBACK or state is not GuardState.FALLBACK:
        clean_streak = 0  # counted only while in FALLBACK; entering it starts from zero
    if new is GuardState.LATCHED:
        source = ActionSource.SAFE
    elif held or new is GuardState.HOLD:
        source = ActionSource.HOLD
    elif new is GuardState.FALLBACK:
        rejected = fallback_reads_obs and any(v in REJECTED_OBSERVATION for v in viols)
        source = ActionSource.HOLD if rejected else ActionSource.FALLBACK
    else:
        source = ActionSource.POLICY if action_ok else ActionSource.HOLD
    return Decision(event, new, source, tuple(viols), hold_streak, clean_streak)

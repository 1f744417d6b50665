"""The envelope's schema: frozen dataclasses, each validated on construction.

Each dataclass runs its rule from ``rules`` in ``__post_init__`` and raises
:class:`~tailguard.errors.EnvelopeError` listing every problem found; nested sections are
type-checked first. Objects are never mutated: derive new ones with ``dataclasses.replace``
or the ``with_*`` helpers (both validate again). The JSON layout mirrors these classes (see
``json_io``).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import Any, TypeVar

from tailguard.envelope import rules
from tailguard.envelope.checks import check_instance, float_tuple, freeze, is_int
from tailguard.envelope.chunks import ChunkLimits
from tailguard.envelope.problems import INVALID, Problems, did_you_mean
from tailguard.envelope.rules import SCHEMA_VERSION, as_enum
from tailguard.errors import EnvelopeError
from tailguard.runtime.state import DEFAULT_RESPONSES, Response, Violation

__all__ = [
    "ActionLimits",
    "ActionRules",
    "ChatterRule",
    "Envelope",
    "FrozenRule",
    "ObservationRange",
    "PolicyBinding",
    "Provenance",
    "Recovery",
    "SaturationRule",
    "Thresholds",
    "Timing",
    "Window",
]


def _values(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


def _validate(
    obj: Any,
    rule: Callable[[Problems, Mapping[str, Any]], object],
    sections: Mapping[str, type] | None = None,
    optional: frozenset[str] = frozenset(),
) -> Any:
    """Type-checks nested sections, runs the rule, raises on problems, normalizes integers.

    Returns:
        What the rule returns (the complete responses, for ``Envelope``).
    """
    p = Problems()
    values = _values(obj)
    for name, cls in (sections or {}).items():
        if values[name] is None and name in optional:
            continue
        if not check_instance(p, name, values[name], cls):
            values[name] = INVALID
    result = rule(p, values)
    if p.items:
        raise EnvelopeError(p.items)
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if is_int(value) and type(value) is not int:  # e.g. numpy.int64 -> int
            object.__setattr__(obj, f.name, int(value))
    return result


_T = TypeVar("_T")


def _known_fields(cls: type[_T]) -> type[_T]:
    """Make an unknown keyword a TypeError that names the valid fields (did you mean ...?).

    The dataclass's own message ("got an unexpected keyword argument") gives no hint; the
    JSON loader gives one for unknown keys, and Python callers get the same help.
    """
    init = cls.__init__
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        for key in kwargs:
            if key not in names:
                hint = did_you_mean(key, names) or "valid fields: " + ", ".join(names)
                raise TypeError(f"{cls.__name__} has no field {key!r}; {hint}")
        init(self, *args, **kwargs)

    cls.__init__ = __init__  # type: ignore[method-assign]
    return cls


def _thaw(value: Any) -> Any:
    """Read-only mappings back to dicts (nested), for pickling; the constructor re-freezes."""
    if isinstance(value, MappingProxyType):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_thaw(v) for v in value)
    return value


def _reduce(obj: Any) -> tuple[Any, tuple[Any, ...]]:
    """``__reduce__`` of a section holding read-only mappings: rebuilt (and validated) by
    its constructor, so envelopes can be pickled to worker processes and deep-copied."""
    return type(obj), tuple(_thaw(getattr(obj, f.name)) for f in dataclasses.fields(obj))


def _to_json(value: Any) -> Any:
    """Plain JSON data (dicts, lists) from envelope objects; str-keyed objects are sorted."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Mapping):
        items = list(value.items())
        if all(isinstance(k, str) for k, _ in items):
            items.sort(key=lambda kv: kv[0])
        return {(k.value if isinstance(k, Enum) else k): _to_json(v) for k, v in items}
    if isinstance(value, list | tuple):
        return [_to_json(v) for v in value]
    return value


@_known_fields
@dataclass(frozen=True)
class Thresholds:
    """Percentile thresholds and a tail cap on one timing quantity (dt or latency).

    A value of None disables that check. Set values must satisfy
    ``p50_ns <= p95_ns <= p99_ns <= max_ns``.

    Attributes:
        p50_ns: window median above this is a violation, ns.
        p95_ns: window 95th percentile above this is a violation, ns.
        p99_ns: window 99th percentile above this is a violation, ns.
        max_ns: per-tick tail cap: any single tick above it is a violation, ns.

    Raises:
        EnvelopeError: a value is not a positive integer or the order is broken.
    """

    p50_ns: int | None = None
    p95_ns: int | None = None
    p99_ns: int | None = None
    max_ns: int | None = None

    def __post_init__(self) -> None:
        _validate(self, rules.check_thresholds)


_TIMING_SECTIONS: dict[str, type] = {"dt": Thresholds, "latency": Thresholds}


@_known_fields
@dataclass(frozen=True)
class PolicyBinding:
    """Which policy the envelope belongs to, and the shape of its input and output.

    Attributes:
        sha256: hex sha256 of the ONNX file's bytes (stored lowercase); None = not bound.
        obs_size: flat observation length (float32 elements).
        action_size: flat action length.
        action_low: lower action bounds, ``action_size`` finite floats, or None.
        action_high: upper action bounds, elementwise above ``action_low``, or None.
            Both bounds are set or neither.

    Raises:
        EnvelopeError: any field is out of range or the bounds are inconsistent.
    """

    sha256: str | None
    obs_size: int
    action_size: int
    action_low: tuple[float, ...] | None = None
    action_high: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        _validate(self, rules.check_policy)
        if self.sha256 is not None:
            object.__setattr__(self, "sha256", self.sha256.lower())
        object.__setattr__(self, "action_low", float_tuple(self.action_low))
        object.__setattr__(self, "action_high", float_tuple(self.action_high))


@_known_fields
@dataclass(frozen=True)
class Timing:
    """Timing conditions of the control loop.

    Attributes:
        period_ns: nominal control period, ns, > 0.
        dt: thresholds on the measured period between tick starts.
        latency: thresholds on tick start -> action out.
        obs_age_max_ns: maximum observation age (tick start minus the observation's
            timestamp), ns; None disables the check.
        max_consecutive_overruns: at most this many ticks in a row may end past
            ``start + period_ns``; one more is a violation (``overrun_streak``). None
            disables the check.

    Raises:
        EnvelopeError: any field is out of range or of the wrong type.
    """

    period_ns: int
    dt: Thresholds = Thresholds()
    latency: Thresholds = Thresholds()
    obs_age_max_ns: int | None = None
    max_consecutive_overruns: int | None = None

    def __post_init__(self) -> None:
        _validate(self, rules.check_timing, _TIMING_SECTIONS)


@_known_fields
@dataclass(frozen=True)
class ActionLimits:
    """Limits on how the action may change.

    Attributes:
        max_delta: per-element maximum ``|a_t - a_{t-1}|`` per tick, all > 0, length
            ``policy.action_size`` (checked by ``Envelope``); None disables the check.

    Raises:
        EnvelopeError: a value is not a positive finite number.
    """

    max_delta: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        _validate(self, rules.check_actions)
        object.__setattr__(self, "max_delta", float_tuple(self.max_delta))


@_known_fields
@dataclass(frozen=True)
class Window:
    """The sliding window the percentile checks run over.

    Attributes:
        ticks: window length in ticks, 10 <= ticks <= ``MAX_WINDOW_TICKS``.
        check_every_ticks: evaluate the percentiles every this many ticks,
            1 <= check_every_ticks <= ticks.

    Raises:
        EnvelopeError: a value is out of range.
    """

    ticks: int = 500
    check_every_ticks: int = 10

    def __post_init__(self) -> None:
        _validate(self, rules.check_window)


@_known_fields
@dataclass(frozen=True)
class Recovery:
    """Hysteresis for leaving FALLBACK, and the limit on consecutive HOLD ticks.

    Attributes:
        recovery_ticks: consecutive clean ticks needed to leave FALLBACK, >= 1.
        dwell_ns: minimum time spent in FALLBACK before recovering, ns, >= 0.
        max_hold_ticks: consecutive HOLD ticks before ``Violation.HOLD_LIMIT``, >= 1.

    Raises:
        EnvelopeError: a value is out of range.
    """

    recovery_ticks: int = 50
    dwell_ns: int = 500_000_000
    max_hold_ticks: int = 5

    def __post_init__(self) -> None:
        _validate(self, rules.check_recovery)


@_known_fields
@dataclass(frozen=True)
class Provenance:
    """Where the envelope's numbers come from.

    Attributes:
        source: "init" (starter placeholders), "audit" (measured in simulation) or
            "manual" (written by hand).
        audited: True only if the thresholds were measured; never True for "init".
        tool_version: tailguard version that wrote the envelope.
        created_utc: ISO 8601 creation time, or "".
        notes: free text for humans.
        results: audit results as plain JSON data, stored read-only (nested
            ``MappingProxyType`` and tuples).

    Raises:
        EnvelopeError: a field has the wrong type or value.
    """

    source: str
    audited: bool
    tool_version: str = ""
    created_utc: str = ""
    notes: str = ""
    results: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _validate(self, rules.check_provenance)
        object.__setattr__(self, "results", freeze(self.results))

    __reduce__ = _reduce


def _floats(obj: Any, *names: str) -> None:
    """Store validated numbers as Python floats (a missing one, INVALID, stays as it is)."""
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            object.__setattr__(obj, name, float(value))


@_known_fields
@dataclass(frozen=True)
class ObservationRange:
    """The observations the policy was audited on: per element ``[low, high]``.

    An element below ``low - tolerance * (high - low)`` or above ``high + tolerance *
    (high - low)`` is ``Violation.OBS_RANGE`` (the guard tests it inside the policy's check
    vector, see ``runtime/policy.py``). The audit writes ``low``/``high`` from nominal
    episodes (a quantile plus a margin, both recorded in ``provenance.results``).

    Attributes:
        low: per-element lower bounds, ``policy.obs_size`` finite floats.
        high: per-element upper bounds, each >= its ``low``.
        tolerance: allowed excursion beyond either bound, as a fraction of the element's
            range ``high - low``, >= 0.

    Raises:
        EnvelopeError: a value is not finite, the lengths differ or ``low > high``.
    """

    low: tuple[float, ...]
    high: tuple[float, ...]
    tolerance: float = 0.05

    def __post_init__(self) -> None:
        _validate(self, rules.check_observations)
        object.__setattr__(self, "low", float_tuple(self.low))
        object.__setattr__(self, "high", float_tuple(self.high))
        _floats(self, "tolerance")

    def limits(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The bounds the guard enforces: ``low``/``high`` widened by the tolerance."""
        t = self.tolerance
        pairs = list(zip(self.low, self.high, strict=True))
        return (
            tuple(lo - t * (hi - lo) for lo, hi in pairs),
            tuple(hi + t * (hi - lo) for lo, hi in pairs),
        )


@_known_fields
@dataclass(frozen=True)
class SaturationRule:
    """``Violation.ACTION_SATURATION``: an action element pinned at a bound.

    Attributes:
        fraction: fires when an element is at a bound on more than this fraction of the
            window's samples, 0 <= fraction < 1.
        margin: "at a bound" means within ``margin * (high - low)`` of it (or beyond),
            0 <= margin < 0.5.

    Raises:
        EnvelopeError: a value is out of range.
    """

    fraction: float
    margin: float = 0.01

    def __post_init__(self) -> None:
        _validate(self, rules.check_saturation)
        _floats(self, "fraction", "margin")


@_known_fields
@dataclass(frozen=True)
class FrozenRule:
    """``Violation.ACTION_FROZEN``: the actions stopped changing while the observations did.

    Attributes:
        ticks: fires once no action element has moved more than ``epsilon`` for at least
            this many ticks, 2 <= ticks <= ``MAX_WINDOW_TICKS`` ...
        epsilon: largest change of an action element that still counts as unchanged, >= 0.
        obs_delta: ... while some observation element moved more than this, > 0.

    Raises:
        EnvelopeError: a value is out of range.
    """

    ticks: int
    epsilon: float = 1e-4
    obs_delta: float = 0.05

    def __post_init__(self) -> None:
        _validate(self, rules.check_frozen)
        _floats(self, "epsilon", "obs_delta")


@_known_fields
@dataclass(frozen=True)
class ChatterRule:
    """``Violation.ACTION_CHATTER``: an action element whose direction flips tick after tick.

    Attributes:
        fraction: fires when an element's change flips sign on more than this fraction of
            the window's samples, 0 <= fraction < 1.
        min_delta: a flip counts only when the change and the one before are both larger
            than this (sensor noise is not chatter), >= 0.

    Raises:
        EnvelopeError: a value is out of range.
    """

    fraction: float
    min_delta: float = 0.0

    def __post_init__(self) -> None:
        _validate(self, rules.check_chatter)
        _floats(self, "fraction", "min_delta")


_RULE_SECTIONS: dict[str, type] = {
    "saturation": SaturationRule,
    "frozen": FrozenRule,
    "chatter": ChatterRule,
}


@_known_fields
@dataclass(frozen=True)
class ActionRules:
    """Window rules on the policy's actions (each None = off). What each judges, and on
    which ticks, is stated in ``tailguard.runtime.state`` ("Action window rules").

    Attributes:
        saturation: an element at a bound too often.
        frozen: no change while the observation changes.
        chatter: the change flips sign too often.

    Raises:
        EnvelopeError: a rule is not a rule object.
    """

    saturation: SaturationRule | None = None
    frozen: FrozenRule | None = None
    chatter: ChatterRule | None = None

    def __post_init__(self) -> None:
        _validate(self, rules.check_action_rules, _RULE_SECTIONS, frozenset(_RULE_SECTIONS))

    @property
    def any(self) -> bool:
        """True when at least one rule is on."""
        return any(getattr(self, name) is not None for name in _RULE_SECTIONS)


_ENVELOPE_SECTIONS: dict[str, type] = {
    "policy": PolicyBinding,
    "timing": Timing,
    "actions": ActionLimits,
    "window": Window,
    "recovery": Recovery,
    "provenance": Provenance,
    "observations": ObservationRange,
    "action_rules": ActionRules,
    "chunks": ChunkLimits,
}
#: Sections an envelope may leave out (None).
_OPTIONAL_SECTIONS = frozenset({"observations", "chunks"})


def _default_responses() -> Mapping[Violation, Response]:
    return MappingProxyType(dict(DEFAULT_RESPONSES))


@_known_fields
@dataclass(frozen=True)
class Envelope:
    """The validated timing and action conditions a policy tolerates.

    Attributes:
        policy: the policy binding (hash, sizes, bounds).
        timing: period, dt and latency thresholds, observation age, overruns.
        actions: action-change limits.
        window: percentile window length and check cadence.
        responses: response per violation; complete (missing entries take
            ``DEFAULT_RESPONSES``) and read-only. Keys and values may be given as enums
            or their string values.
        recovery: hysteresis and dwell for leaving FALLBACK, HOLD limit.
        safe_action: "hold" (repeat the last applied action) or "zero" (zeros clipped
            to the action bounds).
        provenance: where the numbers come from.
        observations: the audited observation range (schema 2), or None (no range
            check; then absent from the JSON).
        action_rules: window rules on the actions (schema 2); all off by default (and
            then absent from the JSON).
        schema_version: a version this tailguard reads (``OLDEST_SCHEMA_VERSION`` to
            ``SCHEMA_VERSION``); a valid envelope is migrated to ``SCHEMA_VERSION``.
        chunks: optional limits for an action-chunk policy (``envelope.chunks``); None
            for a per-tick policy (and then absent from the JSON).

    Raises:
        EnvelopeError: with every problem found (key paths relative to the envelope).
    """

    policy: PolicyBinding
    timing: Timing
    actions: ActionLimits = ActionLimits()
    window: Window = Window()
    responses: Mapping[Violation, Response] = field(default_factory=_default_responses)
    recovery: Recovery = Recovery()
    safe_action: str = "hold"
    provenance: Provenance = Provenance(source="manual", audited=False)
    observations: ObservationRange | None = None
    action_rules: ActionRules = ActionRules()
    schema_version: int = SCHEMA_VERSION
    chunks: ChunkLimits | None = None

    def __post_init__(self) -> None:
        responses = _validate(self, rules.check_envelope, _ENVELOPE_SECTIONS, _OPTIONAL_SECTIONS)
        # Migration: an older schema's envelope is the same envelope in the newest schema
        # (version 1 lacks only the optional version-2 sections).
        object.__setattr__(self, "schema_version", SCHEMA_VERSION)
        object.__setattr__(
            self, "responses", MappingProxyType({v: responses[v] for v in Violation})
        )

    __reduce__ = _reduce

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready plain data in schema order; ``envelope_from_dict`` reads it back equal."""
        data: dict[str, Any] = _to_json(self)
        if data.get("observations", ()) is None:  # no range check: no observations key
            del data["observations"]
        if not self.action_rules.any:  # no action rule: no action_rules key
            del data["action_rules"]
        if data.get("chunks", ()) is None:  # a per-tick policy's envelope: no chunks key
            del data["chunks"]
        return {"schema_version": data.pop("schema_version"), **data}

    def digest(self) -> str:
        """sha256 (hex) of the canonical JSON of this envelope: identifies it in telemetry."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def with_policy_hash(self, sha256: str | None) -> Envelope:
        """A copy bound to another policy file hash (hex sha256), or unbound with None."""
        return dataclasses.replace(self, policy=dataclasses.replace(self.policy, sha256=sha256))

    def with_responses(
        self, overrides: Mapping[Violation, Response] | Mapping[str, str]
    ) -> Envelope:
        """A copy with some responses replaced; the others are kept."""
        merged: dict[Any, Any] = dict(self.responses)
        for key, value in overrides.items():
            merged[as_enum(Violation, key) or key] = value
        return dataclasses.replace(self, responses=merged)

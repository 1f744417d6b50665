"""Envelopes: the versioned, validated timing and action conditions a policy tolerates.

The offline audit writes an envelope; the runtime guard enforces it. On disk it is a JSON
file whose layout mirrors the dataclasses below (only the marked keys are required)::

    {
      "schema_version": 1,                                      # required
      "policy": {"sha256": null, "obs_size": 11, "action_size": 3,   # sizes required
                 "action_low": [-1, -1, -1], "action_high": [1, 1, 1]},
      "timing": {"period_ns": 20000000,                         # required
                 "dt":      {"p50_ns": ..., "p95_ns": ..., "p99_ns": ..., "max_ns": ...},
                 "latency": {"p50_ns": ..., "p95_ns": ..., "p99_ns": ..., "max_ns": ...},
                 "obs_age_max_ns": null, "max_consecutive_overruns": 3},
      "actions": {"max_delta": [0.5, 0.5, 0.5]},
      "window": {"ticks": 500, "check_every_ticks": 10},
      "responses": {"latency_max": "hold", "dt_p99": "fallback"},   # others: defaults
      "recovery": {"recovery_ticks": 50, "dwell_ns": 500000000, "max_hold_ticks": 5},
      "safe_action": "hold",
      "provenance": {"source": "manual", "audited": false, "tool_version": "",
                     "created_utc": "", "notes": "", "results": {}}
    }

Every rule lives in one ``_check_*`` function per section. The dataclasses run it in
``__post_init__`` and the JSON loader runs it on the raw values, so an envelope built in
Python and one read from a file obey the same rules. The loader reports *all* problems of
a file at once (``EnvelopeError.problems``), each with a dotted key path such as
``timing.latency.p99_ns``. Envelope objects are frozen and never mutated: derive new ones
with ``dataclasses.replace`` or the ``with_*`` helpers (both validate again).
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import json
import math
import numbers
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from types import MappingProxyType
from typing import Any

from tailguard.errors import EnvelopeError, EnvelopeProblem
from tailguard.runtime.state import ALLOWED_RESPONSES, DEFAULT_RESPONSES, Response, Violation

__all__ = [
    "MAX_WINDOW_TICKS",
    "PROVENANCE_SOURCES",
    "SAFE_ACTIONS",
    "SCHEMA_VERSION",
    "ActionLimits",
    "Envelope",
    "PolicyBinding",
    "Provenance",
    "Recovery",
    "Thresholds",
    "Timing",
    "Window",
    "check_envelope_file",
    "envelope_from_dict",
    "load_envelope",
    "save_envelope",
    "starter_envelope",
]

#: The newest envelope schema this tailguard reads and the one it writes.
SCHEMA_VERSION = 1
#: ``Envelope.safe_action`` values: repeat the last applied action, or zeros clipped to bounds.
SAFE_ACTIONS = ("hold", "zero")
#: ``Provenance.source`` values: a starter file, an audit result, or written by hand.
PROVENANCE_SOURCES = ("init", "audit", "manual")
#: Upper bound of ``Window.ticks``; keeps the guard's window buffers bounded.
MAX_WINDOW_TICKS = 1_000_000

# Integers are handed to numpy int64 arithmetic in the guard; larger values would overflow.
_INT64_MAX = 2**63 - 1
_MAX_RESULTS_DEPTH = 32
_NS = "an integer number of nanoseconds"
_HEX_DIGITS = frozenset("0123456789abcdef")
_THRESHOLD_KEYS = ("p50_ns", "p95_ns", "p99_ns", "max_ns")
_VIOLATION_NAMES = tuple(v.value for v in Violation)


class _Invalid:
    """Marks a value that is missing or was already reported (e.g. a nested section)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<invalid>"


_INVALID: Any = _Invalid()


# --------------------------------------------------------------------------------------
# Problem collection and value checks (shared by __post_init__ and the JSON loader)
# --------------------------------------------------------------------------------------


class _Problems:
    """Collects problems under a dotted key-path prefix; children share one list."""

    __slots__ = ("items", "prefix")

    def __init__(self, prefix: str = "", items: list[EnvelopeProblem] | None = None) -> None:
        self.prefix = prefix
        self.items: list[EnvelopeProblem] = [] if items is None else items

    def key(self, name: str) -> str:
        if not name:
            return self.prefix
        if not self.prefix or name.startswith("["):
            return self.prefix + name
        return f"{self.prefix}.{name}"

    def add(self, name: str, expected: str, actual: str, hint: str = "") -> None:
        self.items.append(EnvelopeProblem(self.key(name), expected, actual, hint))

    def child(self, name: str) -> _Problems:
        return _Problems(self.key(name), self.items)


def _type_name(value: Any) -> str:
    """The JSON name of a value's type (what a user editing the file would call it)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, numbers.Integral):
        return "integer"
    if isinstance(value, numbers.Real):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list | tuple):
        return "array"
    return type(value).__name__


def _show(value: Any, limit: int = 60) -> str:
    """A short JSON-like rendering of a value for a problem report."""
    if isinstance(value, Enum):
        value = value.value
    try:
        text = json.dumps(value, default=repr)
    except (TypeError, ValueError, RecursionError):
        text = f"<{_type_name(value)}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _show_typed(value: Any) -> str:
    return "null" if value is None else f"{_show(value)} ({_type_name(value)})"


def _did_you_mean(word: str, options: Sequence[str]) -> str:
    matches = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f"did you mean '{matches[0]}'?" if matches else ""


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _int_hint(value: Any, what: str) -> str:
    if isinstance(value, bool):
        return "true/false is not a number"
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return f"write {int(value)}, without a decimal point or exponent"
    if what == _NS and isinstance(value, float | str):
        return "give whole nanoseconds as a number, e.g. 20 ms is 20000000"
    if isinstance(value, str) and value.strip().lstrip("-").isdecimal():
        return "remove the quotes"
    return ""


def _check_int(
    p: _Problems,
    name: str,
    value: Any,
    *,
    minimum: int,
    maximum: int = _INT64_MAX,
    nullable: bool = False,
    what: str = "an integer",
) -> bool:
    """Checks an integer field; True when the value is usable (in range, or an allowed null)."""
    if value is _INVALID:
        return False
    if value is None and nullable:
        return True
    expected = f"{what} >= {minimum}" + (" or null" if nullable else "")
    if not _is_int(value):
        p.add(name, expected, _show_typed(value), _int_hint(value, what))
        return False
    if value < minimum:
        p.add(name, expected, _show(value))
        return False
    if value > maximum:
        p.add(name, f"{what} <= {maximum}", _show(value))
        return False
    return True


def _as_list(value: Any) -> Any:
    """numpy arrays arrive as arrays in Python; treat them as the lists JSON would give."""
    if hasattr(value, "tolist") and not isinstance(value, str | bytes):
        return value.tolist()
    return value


def _check_numbers(
    p: _Problems,
    name: str,
    value: Any,
    *,
    length: int | None,
    length_key: str = "action_size",
    positive: bool = False,
) -> bool:
    """Checks a nullable array of finite floats; True when usable (null or all good)."""
    if value is _INVALID:
        return False
    if value is None:
        return True
    value = _as_list(value)
    expected = f"an array of {'positive ' if positive else ''}finite numbers or null"
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Sequence):
        p.add(name, expected, _show_typed(value))
        return False
    ok = True
    for i, item in enumerate(value):
        if isinstance(item, bool) or not isinstance(item, numbers.Real):
            p.add(f"{name}[{i}]", "a number", _show_typed(item))
            ok = False
            continue
        try:
            number = float(item)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            p.add(
                f"{name}[{i}]", "a finite number", _show(item), "NaN and infinity are not allowed"
            )
            ok = False
        elif positive and number <= 0.0:
            p.add(f"{name}[{i}]", "a number > 0", _show(item), "use null to disable the check")
            ok = False
    if length is not None and len(value) != length:
        p.add(
            name,
            f"{length} numbers ({length_key} = {length})",
            f"{len(value)} numbers",
            "give one entry per action element",
        )
        ok = False
    return ok


def _float_tuple(value: Any) -> tuple[float, ...] | None:
    return None if value is None else tuple(float(x) for x in _as_list(value))


def _check_choice(p: _Problems, name: str, value: Any, choices: Sequence[str]) -> bool:
    if value is _INVALID:
        return False
    if isinstance(value, str) and value in choices:
        return True
    hint = _did_you_mean(value, choices) if isinstance(value, str) else ""
    p.add(name, "one of " + ", ".join(f"'{c}'" for c in choices), _show_typed(value), hint)
    return False


def _check_str(p: _Problems, name: str, value: Any) -> bool:
    if value is _INVALID:
        return False
    if isinstance(value, str):
        return True
    p.add(name, "a string", _show_typed(value))
    return False


def _check_instance(p: _Problems, name: str, value: Any, cls: type) -> bool:
    if value is _INVALID:
        return False
    if isinstance(value, cls):
        return True
    p.add(name, f"a {cls.__name__}", _show_typed(value), f"build it with {cls.__name__}(...)")
    return False


def _check_json_value(p: _Problems, name: str, value: Any, depth: int) -> None:
    """Audit results must be plain JSON: they are written back to the envelope file."""
    if depth > _MAX_RESULTS_DEPTH:
        p.add(name, f"at most {_MAX_RESULTS_DEPTH} levels of nesting", "deeper nesting")
        return
    if value is None or isinstance(value, bool | str) or _is_int(value):
        return
    if isinstance(value, numbers.Real):
        try:
            finite = math.isfinite(float(value))
        except OverflowError:
            finite = False
        if not finite:
            p.add(name, "a finite number", _show(value), "NaN and infinity are not valid JSON")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                p.add(f"{name}.{key!r}", "a string key", _show_typed(key))
                continue
            _check_json_value(p, f"{name}.{key}", item, depth + 1)
        return
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_json_value(p, f"{name}[{i}]", item, depth + 1)
        return
    p.add(name, "a JSON value (null, boolean, number, string, array, object)", _show_typed(value))


def _freeze(value: Any) -> Any:
    """Deep read-only copy of checked JSON data: objects -> MappingProxyType, arrays -> tuple."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    if _is_int(value):
        return int(value)
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    return value


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


def _values(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


def _validate(obj: Any, checker: Callable[[_Problems, Mapping[str, Any]], object]) -> None:
    """Runs a section checker on a dataclass, raises on problems, normalizes integers."""
    p = _Problems()
    checker(p, _values(obj))
    if p.items:
        raise EnvelopeError(p.items)
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if _is_int(value) and type(value) is not int:  # e.g. numpy.int64 -> int
            object.__setattr__(obj, f.name, int(value))


# --------------------------------------------------------------------------------------
# Section checkers: one per dataclass, on a mapping of field name -> raw value
# --------------------------------------------------------------------------------------


def _check_thresholds(p: _Problems, v: Mapping[str, Any]) -> None:
    usable = [
        key
        for key in _THRESHOLD_KEYS
        if _check_int(p, key, v[key], minimum=1, nullable=True, what=_NS) and v[key] is not None
    ]
    for low_key, high_key in itertools.pairwise(usable):
        if v[low_key] > v[high_key]:
            p.add(
                high_key,
                f"a value >= {low_key} ({v[low_key]})",
                _show(v[high_key]),
                "thresholds must satisfy p50_ns <= p95_ns <= p99_ns <= max_ns",
            )


def _is_sha256(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and set(value.lower()) <= _HEX_DIGITS


def _check_policy(p: _Problems, v: Mapping[str, Any]) -> None:
    sha = v["sha256"]
    if sha is not None and sha is not _INVALID and not _is_sha256(sha):
        p.add(
            "sha256",
            "64 hex digits (sha256 of the ONNX file's bytes) or null",
            _show_typed(sha),
            "compute it with: sha256sum policy.onnx",
        )
    _check_int(p, "obs_size", v["obs_size"], minimum=1)
    size_ok = _check_int(p, "action_size", v["action_size"], minimum=1)
    size = v["action_size"] if size_ok else None
    low, high = v["action_low"], v["action_high"]
    low_ok = _check_numbers(p, "action_low", low, length=size)
    high_ok = _check_numbers(p, "action_high", high, length=size)
    if low is _INVALID or high is _INVALID:
        return
    if (low is None) != (high is None):
        p.add(
            "action_low" if low is None else "action_high",
            "an array of numbers (action_low and action_high go together)",
            "null",
            "give both bounds or neither",
        )
    elif low_ok and high_ok and low is not None and size is not None:
        for i, (lo, hi) in enumerate(
            zip(_float_tuple(low) or (), _float_tuple(high) or (), strict=True)
        ):
            if not lo < hi:
                p.add(
                    f"action_high[{i}]",
                    f"a number > action_low[{i}] ({lo})",
                    _show(hi),
                    "each upper bound must be above its lower bound",
                )


def _check_timing(p: _Problems, v: Mapping[str, Any]) -> None:
    _check_int(p, "period_ns", v["period_ns"], minimum=1, what=_NS)
    _check_instance(p, "dt", v["dt"], Thresholds)
    _check_instance(p, "latency", v["latency"], Thresholds)
    _check_int(p, "obs_age_max_ns", v["obs_age_max_ns"], minimum=1, nullable=True, what=_NS)
    _check_int(
        p,
        "max_consecutive_overruns",
        v["max_consecutive_overruns"],
        minimum=1,
        nullable=True,
        what="an integer number of ticks",
    )


def _check_actions(p: _Problems, v: Mapping[str, Any]) -> None:
    _check_numbers(p, "max_delta", v["max_delta"], length=None, positive=True)


def _check_window(p: _Problems, v: Mapping[str, Any]) -> None:
    ticks, every = v["ticks"], v["check_every_ticks"]
    what = "an integer number of ticks"
    ticks_ok = _check_int(p, "ticks", ticks, minimum=10, maximum=MAX_WINDOW_TICKS, what=what)
    every_ok = _check_int(p, "check_every_ticks", every, minimum=1, what=what)
    if ticks_ok and every_ok and every > ticks:
        p.add(
            "check_every_ticks",
            f"at most ticks ({ticks})",
            _show(every),
            "the window is checked at least once per window length",
        )


def _check_recovery(p: _Problems, v: Mapping[str, Any]) -> None:
    what = "an integer number of ticks"
    _check_int(p, "recovery_ticks", v["recovery_ticks"], minimum=1, what=what)
    _check_int(p, "dwell_ns", v["dwell_ns"], minimum=0, what=_NS)
    _check_int(p, "max_hold_ticks", v["max_hold_ticks"], minimum=1, what=what)


def _check_provenance(p: _Problems, v: Mapping[str, Any]) -> None:
    source_ok = _check_choice(p, "source", v["source"], PROVENANCE_SOURCES)
    audited = v["audited"]
    if audited is not _INVALID and not isinstance(audited, bool):
        p.add("audited", "true or false", _show_typed(audited))
    elif audited is True and source_ok and v["source"] == "init":
        p.add(
            "audited",
            "false for source 'init'",
            "true",
            "starter envelopes hold placeholder thresholds; run the audit for audited ones",
        )
    _check_str(p, "tool_version", v["tool_version"])
    _check_str(p, "notes", v["notes"])
    created = v["created_utc"]
    if _check_str(p, "created_utc", created) and created:
        try:
            datetime.fromisoformat(created)
        except ValueError:
            p.add(
                "created_utc",
                "an ISO 8601 time such as '2025-01-31T12:00:00Z' or an empty string",
                _show(created),
            )
    results = v["results"]
    if results is not _INVALID:
        if isinstance(results, Mapping):
            _check_json_value(p, "results", results, depth=0)
        else:
            p.add("results", "an object (audit results)", _show_typed(results))


def _as_enum(cls: type[Enum], value: Any) -> Any:
    if isinstance(value, cls):
        return value
    if isinstance(value, str):
        try:
            return cls(value)
        except ValueError:
            return None
    return None


def _refusal_hint(violation: Violation, response: Response) -> str:
    if response is Response.CLIP:
        return "'clip' only applies to action_bounds and action_rate"
    if response is Response.LOG:
        return f"after '{violation.value}' there is no trustworthy action, so 'log' is not enough"
    if response is Response.HOLD:
        return f"holding again cannot end '{violation.value}'; it must escalate"
    return f"'{response.value}' is not allowed for '{violation.value}'"


def _check_responses(p: _Problems, value: Any) -> dict[Violation, Response] | None:
    """Checks response overrides; returns the complete mapping (defaults filled in) or None."""
    if value is _INVALID:
        return None
    if not isinstance(value, Mapping):
        p.add("responses", "an object mapping violation names to responses", _show_typed(value))
        return None
    merged = dict(DEFAULT_RESPONSES)
    seen: set[Violation] = set()
    ok = True
    for name in getattr(value, "duplicates", ()):
        p.add(f"responses.{name}", "each key at most once", "a repeated key", "remove the copies")
        ok = False
    for key, given in value.items():
        violation = _as_enum(Violation, key)
        name = key.value if isinstance(key, Enum) else str(key)
        if violation is None:
            hint = _did_you_mean(name, _VIOLATION_NAMES) or "valid names: " + ", ".join(
                _VIOLATION_NAMES
            )
            p.add(f"responses.{name}", "a violation name", f"unknown violation {name!r}", hint)
            ok = False
            continue
        if violation in seen:
            p.add(f"responses.{name}", "each violation at most once", "given twice")
            ok = False
            continue
        seen.add(violation)
        allowed = sorted(ALLOWED_RESPONSES[violation], key=lambda r: r.severity)
        response = _as_enum(Response, given)
        if response is None or response not in allowed:
            allowed_names = [r.value for r in allowed]
            if response is not None:
                hint = _refusal_hint(violation, response)
            elif isinstance(given, str):
                hint = _did_you_mean(given, allowed_names)
            else:
                hint = ""
            expected = "one of " + ", ".join(f"'{r}'" for r in allowed_names)
            p.add(f"responses.{violation.value}", expected, _show(given), hint)
            ok = False
            continue
        merged[violation] = response
    return merged if ok else None


def _check_version(p: _Problems, version: Any) -> None:
    if version is _INVALID:
        return
    if not _is_int(version):
        hint = _int_hint(version, "an integer")
        p.add("schema_version", f"the integer {SCHEMA_VERSION}", _show_typed(version), hint)
    elif version > SCHEMA_VERSION:
        p.add(
            "schema_version",
            f"a schema version <= {SCHEMA_VERSION} (the newest this tailguard reads)",
            _show(version),
            "the envelope was written by a newer tailguard; upgrade tailguard",
        )
    elif version != SCHEMA_VERSION:
        p.add("schema_version", f"the integer {SCHEMA_VERSION}", _show(version))


def _check_envelope(p: _Problems, v: Mapping[str, Any]) -> dict[Violation, Response] | None:
    """Checks the top level and cross-section rules; returns the complete responses."""
    _check_version(p, v["schema_version"])
    policy_ok = _check_instance(p, "policy", v["policy"], PolicyBinding)
    _check_instance(p, "timing", v["timing"], Timing)
    actions_ok = _check_instance(p, "actions", v["actions"], ActionLimits)
    _check_instance(p, "window", v["window"], Window)
    _check_instance(p, "recovery", v["recovery"], Recovery)
    _check_instance(p, "provenance", v["provenance"], Provenance)
    responses = _check_responses(p, v["responses"])
    _check_choice(p, "safe_action", v["safe_action"], SAFE_ACTIONS)
    if policy_ok and actions_ok:
        size = v["policy"].action_size
        max_delta = v["actions"].max_delta
        if max_delta is not None and len(max_delta) != size:
            p.add(
                "actions.max_delta",
                f"{size} numbers (policy.action_size = {size})",
                f"{len(max_delta)} numbers",
                "give one entry per action element",
            )
    return responses


# --------------------------------------------------------------------------------------
# The envelope dataclasses
# --------------------------------------------------------------------------------------


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
        _validate(self, _check_thresholds)


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
        _validate(self, _check_policy)
        if self.sha256 is not None:
            object.__setattr__(self, "sha256", self.sha256.lower())
        object.__setattr__(self, "action_low", _float_tuple(self.action_low))
        object.__setattr__(self, "action_high", _float_tuple(self.action_high))


@dataclass(frozen=True)
class Timing:
    """Timing conditions of the control loop.

    Attributes:
        period_ns: nominal control period, ns, > 0.
        dt: thresholds on the measured period between tick starts.
        latency: thresholds on tick start -> action out.
        obs_age_max_ns: maximum observation age (tick start minus the observation's
            timestamp), ns; None disables the check.
        max_consecutive_overruns: this many ticks in a row ending past
            ``start + period_ns`` is a violation; None disables the check.

    Raises:
        EnvelopeError: any field is out of range or of the wrong type.
    """

    period_ns: int
    dt: Thresholds = Thresholds()
    latency: Thresholds = Thresholds()
    obs_age_max_ns: int | None = None
    max_consecutive_overruns: int | None = None

    def __post_init__(self) -> None:
        _validate(self, _check_timing)


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
        _validate(self, _check_actions)
        object.__setattr__(self, "max_delta", _float_tuple(self.max_delta))


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
        _validate(self, _check_window)


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
        _validate(self, _check_recovery)


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
        _validate(self, _check_provenance)
        object.__setattr__(self, "results", _freeze(self.results))


def _default_responses() -> Mapping[Violation, Response]:
    return MappingProxyType(dict(DEFAULT_RESPONSES))


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
        schema_version: must be ``SCHEMA_VERSION``.

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
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        p = _Problems()
        responses = _check_envelope(p, _values(self))
        if p.items or responses is None:
            raise EnvelopeError(p.items)
        object.__setattr__(
            self, "responses", MappingProxyType({v: responses[v] for v in Violation})
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready plain data in schema order; ``envelope_from_dict`` reads it back equal."""
        data: dict[str, Any] = _to_json(self)
        return {"schema_version": data.pop("schema_version"), **data}

    def digest(self) -> str:
        """sha256 (hex) of the canonical JSON of this envelope: identifies it in telemetry."""
        import hashlib

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
            merged[_as_enum(Violation, key) or key] = value
        return dataclasses.replace(self, responses=merged)


# --------------------------------------------------------------------------------------
# Loading from plain data and files
# --------------------------------------------------------------------------------------

_SECTION_CHECKERS: dict[type, Callable[[_Problems, Mapping[str, Any]], None]] = {
    Thresholds: _check_thresholds,
    PolicyBinding: _check_policy,
    Timing: _check_timing,
    ActionLimits: _check_actions,
    Window: _check_window,
    Recovery: _check_recovery,
    Provenance: _check_provenance,
}
_SECTIONS: dict[str, type] = {
    "policy": PolicyBinding,
    "timing": Timing,
    "actions": ActionLimits,
    "window": Window,
    "recovery": Recovery,
    "provenance": Provenance,
}
#: Key order of an envelope file: the version first, then the sections.
_TOP_LEVEL_ORDER = (
    "schema_version",
    *(f.name for f in dataclasses.fields(Envelope) if f.name != "schema_version"),
)
_NESTED: dict[type, dict[str, type]] = {Timing: {"dt": Thresholds, "latency": Thresholds}}
#: Required keys per object, with what is expected there.
_REQUIRED: dict[type, dict[str, str]] = {
    Envelope: {
        "schema_version": f"the integer {SCHEMA_VERSION}",
        "policy": "an object with at least obs_size and action_size",
        "timing": "an object with at least period_ns",
    },
    PolicyBinding: {
        "obs_size": "the flat observation length (an integer >= 1)",
        "action_size": "the flat action length (an integer >= 1)",
    },
    Timing: {"period_ns": "the nominal control period (an integer number of nanoseconds)"},
}
#: Defaults in JSON for fields the dataclasses require.
_JSON_DEFAULTS: dict[tuple[type, str], Any] = {
    (PolicyBinding, "sha256"): None,
    (Provenance, "source"): "manual",
    (Provenance, "audited"): False,
}


def _default(cls: type, f: dataclasses.Field[Any]) -> Any:
    if (cls, f.name) in _JSON_DEFAULTS:
        return _JSON_DEFAULTS[(cls, f.name)]
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return _INVALID


def _check_keys(p: _Problems, raw: Mapping[Any, Any], cls: type) -> None:
    allowed = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in allowed:
            name = key if isinstance(key, str) else repr(key)
            hint = _did_you_mean(name, allowed) or "valid keys here: " + ", ".join(allowed)
            p.add(name, "a known key", f"unknown key {name!r}", hint)
    for key in getattr(raw, "duplicates", ()):
        p.add(key, "each key at most once", "a repeated key", "JSON keeps only the last copy")
    for key, expected in _REQUIRED.get(cls, {}).items():
        if key not in raw:
            p.add(key, expected, "nothing (required key missing)")


def _raw_values(p: _Problems, raw: Mapping[Any, Any], cls: type) -> dict[str, Any]:
    """Field values for ``cls`` from a JSON object: given, default, nested or _INVALID."""
    nested = _NESTED.get(cls, {}) if cls is not Envelope else _SECTIONS
    values = {}
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            values[f.name] = _default(cls, f)
        elif f.name in nested:
            values[f.name] = _load_section(p.child(f.name), raw[f.name], nested[f.name])
        else:
            values[f.name] = raw[f.name]
    return values


def _load_section(p: _Problems, raw: Any, cls: type) -> Any:
    """An instance of ``cls`` from a JSON object, or _INVALID with the problems added to p."""
    if not isinstance(raw, Mapping):
        names = ", ".join(f.name for f in dataclasses.fields(cls))
        p.add("", f"an object with keys from: {names}", _show_typed(raw), "omit it for defaults")
        return _INVALID
    before = len(p.items)
    _check_keys(p, raw, cls)
    values = _raw_values(p, raw, cls)
    _SECTION_CHECKERS[cls](p, values)
    if len(p.items) > before:
        return _INVALID
    return cls(**values)


def envelope_from_dict(
    data: Mapping[str, Any], path: str | os.PathLike[str] | None = None
) -> Envelope:
    """Validate plain (JSON) data and build an Envelope.

    Args:
        data: the parsed JSON object (layout in the module docstring).
        path: file the data came from; used in error messages only.

    Returns:
        The validated envelope.

    Raises:
        EnvelopeError: with every problem found. For a schema version newer than
            ``SCHEMA_VERSION`` only that problem is reported (the rest of the file
            follows rules this version does not know).
    """
    p = _Problems()
    if not isinstance(data, Mapping):
        p.add("", "a JSON object with the envelope sections", _show_typed(data))
        raise EnvelopeError(p.items, _path_str(path))
    version: Any = data.get("schema_version")
    if _is_int(version) and version > SCHEMA_VERSION:
        _check_version(p, version)
        raise EnvelopeError(p.items, _path_str(path))
    _check_keys(p, data, Envelope)
    values = _raw_values(p, data, Envelope)
    responses = _check_envelope(p, values)
    if p.items or responses is None:
        # Report in file order: the top-level keys were checked after the sections.
        order = {name: i for i, name in enumerate(_TOP_LEVEL_ORDER)}
        p.items.sort(key=lambda pr: order.get(pr.key_path.split(".")[0], len(order)))
        raise EnvelopeError(p.items, _path_str(path))
    return Envelope(**{**values, "responses": responses})


def _path_str(path: str | os.PathLike[str] | None) -> str | None:
    return None if path is None else os.fspath(path)


class _JsonObject(dict[str, Any]):
    """A parsed JSON object that remembers keys given more than once."""

    duplicates: tuple[str, ...] = ()


def _object_pairs(pairs: list[tuple[str, Any]]) -> _JsonObject:
    obj = _JsonObject(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        repeated: list[str] = []
        for key, _ in pairs:
            if key in seen and key not in repeated:
                repeated.append(key)
            seen.add(key)
        obj.duplicates = tuple(repeated)
    return obj


def _file_error(
    path: str | os.PathLike[str], expected: str, actual: str, hint: str = ""
) -> EnvelopeError:
    return EnvelopeError([EnvelopeProblem("", expected, actual, hint)], _path_str(path))


def load_envelope(path: str | os.PathLike[str]) -> Envelope:
    """Read and validate an envelope JSON file.

    Args:
        path: the envelope file.

    Returns:
        The validated envelope.

    Raises:
        EnvelopeError: the file cannot be read, is not UTF-8 JSON (line and column are
            given), or fails validation (every problem listed).
    """
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise _file_error(path, "a readable envelope file", f"{exc.strerror or exc}") from exc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _file_error(
            path,
            "UTF-8 JSON text",
            f"a byte that is not UTF-8 at offset {exc.start}",
            "pass the envelope .json file, not the policy",
        ) from exc
    try:
        data = json.loads(text, object_pairs_hook=_object_pairs)
    except json.JSONDecodeError as exc:
        raise _file_error(
            path, "valid JSON", f"{exc.msg} at line {exc.lineno}, column {exc.colno}"
        ) from exc
    except (ValueError, RecursionError) as exc:  # absurd nesting or integer length
        raise _file_error(
            path, "JSON of a sane size and depth", str(exc) or type(exc).__name__
        ) from exc
    return envelope_from_dict(data, path)


def save_envelope(envelope: Envelope, path: str | os.PathLike[str]) -> None:
    """Write an envelope as pretty JSON (schema key order, trailing newline), atomically.

    Args:
        envelope: the envelope to write.
        path: target file; replaced in one step, so readers never see half a file.

    Raises:
        EnvelopeError: the file cannot be written.
    """
    text = json.dumps(envelope.to_dict(), indent=2, allow_nan=False) + "\n"
    target = Path(path)
    tmp_name = ""
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp_name, target.stat().st_mode & 0o777 if target.exists() else 0o644)
        os.replace(tmp_name, target)
    except OSError as exc:
        if tmp_name:
            Path(tmp_name).unlink(missing_ok=True)
        raise EnvelopeError(
            f"cannot write the envelope: {exc.strerror or exc}", _path_str(path)
        ) from exc


def check_envelope_file(path: str | os.PathLike[str]) -> list[EnvelopeProblem]:
    """Every problem of an envelope file; ``[]`` when it is valid.

    Used by ``tailguard envelope check``; never raises for a bad file.
    """
    try:
        load_envelope(path)
    except EnvelopeError as exc:
        return list(exc.problems) or [EnvelopeProblem("", "a valid envelope", exc.message)]
    return []


# --------------------------------------------------------------------------------------
# Starter envelope
# --------------------------------------------------------------------------------------


def _scaled(period_ns: int, percent: int) -> int:
    return max(1, (period_ns * percent + 50) // 100)


def starter_envelope(
    *,
    obs_size: int,
    action_size: int,
    period_ns: int,
    sha256: str | None = None,
    action_low: Sequence[float] | None = None,
    action_high: Sequence[float] | None = None,
    tool_version: str = "",
) -> Envelope:
    """A first envelope with PLACEHOLDER thresholds derived from the control period.

    The thresholds are fixed multiples of ``period_ns`` (dt p50/p95/p99/max = 1.05/1.2/
    1.5/3x, latency = 0.25/0.5/0.75/1.0x), at most 3 consecutive overruns, a window of
    about 2 s checked 10 times per window. Nobody measured that the policy tolerates them:
    provenance says source "init", audited False, and explains how to get audited ones.

    Args:
        obs_size: flat observation length.
        action_size: flat action length.
        period_ns: nominal control period, ns.
        sha256: hex sha256 of the ONNX file, or None to leave the envelope unbound.
        action_low: lower action bounds (``action_size`` floats) or None.
        action_high: upper action bounds or None.
        tool_version: tailguard version to record.

    Returns:
        A valid, unaudited envelope.

    Raises:
        EnvelopeError: an argument is out of range.
    """
    low: Any = action_low  # PolicyBinding checks and converts the bounds
    high: Any = action_high
    p = _Problems("timing")
    if not _check_int(p, "period_ns", period_ns, minimum=1, what=_NS):
        raise EnvelopeError(p.items)
    ticks = min(MAX_WINDOW_TICKS, max(10, (2_000_000_000 + period_ns // 2) // period_ns))
    period_ms = period_ns / 1e6
    notes = (
        f"PLACEHOLDER thresholds, NOT audited: fixed multiples of the {period_ms:g} ms period "
        "(dt p50/p95/p99/max = 1.05/1.2/1.5/3x, latency p50/p95/p99/max = 0.25/0.5/0.75/1.0x). "
        "Nobody has measured that this policy tolerates them. To get audited thresholds, run "
        "the tailguard timing audit of this policy in simulation, which measures the tolerated "
        "dt/latency boundary and writes an envelope with provenance source 'audit'; or set them "
        "by hand from your own measurements and change provenance source to 'manual'."
    )
    return Envelope(
        policy=PolicyBinding(
            sha256=sha256,
            obs_size=obs_size,
            action_size=action_size,
            action_low=low,
            action_high=high,
        ),
        timing=Timing(
            period_ns=period_ns,
            dt=Thresholds(*(_scaled(period_ns, k) for k in (105, 120, 150, 300))),
            latency=Thresholds(*(_scaled(period_ns, k) for k in (25, 50, 75, 100))),
            max_consecutive_overruns=3,
        ),
        window=Window(ticks=ticks, check_every_ticks=max(1, ticks // 10)),
        provenance=Provenance(
            source="init",
            audited=False,
            tool_version=tool_version,
            created_utc=datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
            notes=notes,
        ),
    )

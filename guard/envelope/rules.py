"""Every rule an envelope obeys, one function per section, on a mapping of field -> value.

The dataclasses in ``schema`` run these in ``__post_init__``; the JSON loader builds the
dataclasses, so an envelope built in Python and one read from a file obey the same rules,
checked once. Nested sections (``Timing.dt``, ``Envelope.policy``, ...) are type-checked
by ``schema`` before a rule runs; a rule sees ``INVALID`` for a section that failed and
skips the cross-field checks that need it.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from datetime import datetime
from enum import Enum
from typing import Any

from tailguard.envelope.checks import (
    NS,
    check_choice,
    check_float,
    check_int,
    check_json_value,
    check_numbers,
    check_str,
    float_tuple,
    int_hint,
    is_int,
)
from tailguard.envelope.problems import INVALID, Problems, did_you_mean, show, show_typed
from tailguard.runtime.state import ALLOWED_RESPONSES, DEFAULT_RESPONSES, Response, Violation

__all__ = [
    "MAX_RESULTS_DEPTH",
    "MAX_WINDOW_TICKS",
    "PROVENANCE_SOURCES",
    "SAFE_ACTIONS",
    "OLDEST_SCHEMA_VERSION",
    "SCHEMA_VERSION",
    "as_enum",
    "check_action_rules",
    "check_actions",
    "check_chatter",
    "check_envelope",
    "check_frozen",
    "check_observations",
    "check_policy",
    "check_provenance",
    "check_recovery",
    "check_responses",
    "check_saturation",
    "check_thresholds",
    "check_timing",
    "check_version",
    "check_window",
]

#: The newest envelope schema this tailguard reads and the one it writes. Version 2 added
#: the optional ``observations`` and ``action_rules`` sections; a version-1 envelope (which
#: has neither) reads as it always did and is written back as version 2.
SCHEMA_VERSION = 2
#: The oldest envelope schema this tailguard reads.
OLDEST_SCHEMA_VERSION = 1
#: Sections a version-1 envelope cannot have (added by version 2).
_V2_SECTIONS = ("observations", "action_rules")
#: ``Envelope.safe_action`` values: repeat the last applied action, or zeros clipped to bounds.
SAFE_ACTIONS = ("hold", "zero")
#: ``Provenance.source`` values: a starter file, an audit result, or written by hand.
PROVENANCE_SOURCES = ("init", "audit", "manual")
#: Upper bound of ``Window.ticks``; keeps the guard's window buffers bounded.
MAX_WINDOW_TICKS = 1_000_000
#: Nesting levels allowed inside ``Provenance.results``.
MAX_RESULTS_DEPTH = 32

_TICKS = "an integer number of ticks"
_HEX_DIGITS = frozenset("0123456789abcdef")
_THRESHOLD_KEYS = ("p50_ns", "p95_ns", "p99_ns", "max_ns")
_VIOLATION_NAMES = tuple(v.value for v in Violation)


def check_thresholds(p: Problems, v: Mapping[str, Any]) -> None:
    """``Thresholds``: positive ns or null, ordered p50 <= p95 <= p99 <= max where set."""
    usable = [
        key
        for key in _THRESHOLD_KEYS
        if check_int(p, key, v[key], minimum=1, nullable=True, what=NS) and v[key] is not None
    ]
    for low_key, high_key in itertools.pairwise(usable):
        if v[low_key] > v[high_key]:
            p.add(
                high_key,
                f"a value >= {low_key} ({v[low_key]})",
                show(v[high_key]),
                "thresholds must satisfy p50_ns <= p95_ns <= p99_ns <= max_ns",
            )


def _is_sha256(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and set(value.lower()) <= _HEX_DIGITS


def check_policy(p: Problems, v: Mapping[str, Any]) -> None:
    """``PolicyBinding``: a sha256 or null, sizes >= 1, both bounds or neither, low < high."""
    sha = v["sha256"]
    if sha is not None and sha is not INVALID and not _is_sha256(sha):
        p.add(
            "sha256",
            "64 hex digits (sha256 of the ONNX file's bytes) or null",
            show_typed(sha),
            "compute it with: sha256sum policy.onnx",
        )
    check_int(p, "obs_size", v["obs_size"], minimum=1)
    size_ok = check_int(p, "action_size", v["action_size"], minimum=1)
    size = v["action_size"] if size_ok else None
    low, high = v["action_low"], v["action_high"]
    low_ok = check_numbers(p, "action_low", low, length=size)
    high_ok = check_numbers(p, "action_high", high, length=size)
    if low is INVALID or high is INVALID:
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
            zip(float_tuple(low) or (), float_tuple(high) or (), strict=True)
        ):
            if not lo < hi:
                p.add(
                    f"action_high[{i}]",
                    f"a number > action_low[{i}] ({lo})",
                    show(hi),
                    "each upper bound must be above its lower bound",
                )


def check_timing(p: Problems, v: Mapping[str, Any]) -> None:
    """``Timing``'s own fields (``dt`` and ``latency`` are checked as sections)."""
    check_int(p, "period_ns", v["period_ns"], minimum=1, what=NS)
    check_int(p, "obs_age_max_ns", v["obs_age_max_ns"], minimum=1, nullable=True, what=NS)
    check_int(
        p,
        "max_consecutive_overruns",
        v["max_consecutive_overruns"],
        minimum=1,
        nullable=True,
        what=_TICKS,
    )


def check_actions(p: Problems, v: Mapping[str, Any]) -> None:
    """``ActionLimits``: positive finite deltas or null (length checked by the envelope)."""
    check_numbers(p, "max_delta", v["max_delta"], length=None, positive=True)


def check_observations(p: Problems, v: Mapping[str, Any]) -> None:
    """``ObservationRange``: equal-length finite ``low <= high``, ``tolerance >= 0``
    (length against ``policy.obs_size`` is checked by the envelope)."""
    low, high = v["low"], v["high"]
    low_ok = check_numbers(p, "low", low, length=None)
    high_ok = check_numbers(p, "high", high, length=None)
    for name, value in (("low", low), ("high", high)):
        if value is None:
            p.add(name, "an array of finite numbers (one per observation element)", "null")
    check_float(p, "tolerance", v["tolerance"], minimum=0.0, what="a fraction of the range")
    if not (low_ok and high_ok) or low is None or high is None:
        return
    lows, highs = float_tuple(low) or (), float_tuple(high) or ()
    if len(lows) != len(highs):
        p.add(
            "high",
            f"{len(lows)} numbers (as many as low)",
            f"{len(highs)} numbers",
            "give one low and one high per observation element",
        )
        return
    for i, (lo, hi) in enumerate(zip(lows, highs, strict=True)):
        if not lo <= hi:
            p.add(f"high[{i}]", f"a number >= low[{i}] ({lo})", show(hi))


_FRACTION = "a fraction"


def check_saturation(p: Problems, v: Mapping[str, Any]) -> None:
    """``SaturationRule``: 0 <= fraction < 1, 0 <= margin < 0.5."""
    check_float(
        p, "fraction", v["fraction"], minimum=0.0, maximum=1.0, below_maximum=True, what=_FRACTION
    )
    check_float(
        p, "margin", v["margin"], minimum=0.0, maximum=0.5, below_maximum=True, what=_FRACTION
    )


def check_frozen(p: Problems, v: Mapping[str, Any]) -> None:
    """``FrozenRule``: 2 <= ticks <= MAX_WINDOW_TICKS, epsilon >= 0, obs_delta > 0."""
    check_int(p, "ticks", v["ticks"], minimum=2, maximum=MAX_WINDOW_TICKS, what=_TICKS)
    check_float(p, "epsilon", v["epsilon"], minimum=0.0)
    check_float(p, "obs_delta", v["obs_delta"], minimum=0.0, above_minimum=True)


def check_chatter(p: Problems, v: Mapping[str, Any]) -> None:
    """``ChatterRule``: 0 <= fraction < 1, min_delta >= 0."""
    check_float(
        p, "fraction", v["fraction"], minimum=0.0, maximum=1.0, below_maximum=True, what=_FRACTION
    )
    check_float(p, "min_delta", v["min_delta"], minimum=0.0)


def check_action_rules(p: Problems, v: Mapping[str, Any]) -> None:
    """``ActionRules``: its rules are checked as sections; nothing of its own."""


def check_window(p: Problems, v: Mapping[str, Any]) -> None:
    """``Window``: 10 <= ticks <= MAX_WINDOW_TICKS, 1 <= check_every_ticks <= ticks."""
    ticks, every = v["ticks"], v["check_every_ticks"]
    ticks_ok = check_int(p, "ticks", ticks, minimum=10, maximum=MAX_WINDOW_TICKS, what=_TICKS)
    every_ok = check_int(p, "check_every_ticks", every, minimum=1, what=_TICKS)
    if ticks_ok and every_ok and every > ticks:
        p.add(
            "check_every_ticks",
            f"at most ticks ({ticks})",
            show(every),
            "the window is checked at least once per window length",
        )


def check_recovery(p: Problems, v: Mapping[str, Any]) -> None:
    """``Recovery``: recovery_ticks >= 1, dwell_ns >= 0, max_hold_ticks >= 1."""
    check_int(p, "recovery_ticks", v["recovery_ticks"], minimum=1, what=_TICKS)
    check_int(p, "dwell_ns", v["dwell_ns"], minimum=0, what=NS)
    check_int(p, "max_hold_ticks", v["max_hold_ticks"], minimum=1, what=_TICKS)


def check_provenance(p: Problems, v: Mapping[str, Any]) -> None:
    """``Provenance``: a known source, never audited for "init", ISO time, JSON results."""
    source_ok = check_choice(p, "source", v["source"], PROVENANCE_SOURCES)
    audited = v["audited"]
    if audited is not INVALID and not isinstance(audited, bool):
        p.add("audited", "true or false", show_typed(audited))
    elif audited is True and source_ok and v["source"] == "init":
        p.add(
            "audited",
            "false for source 'init'",
            "true",
            "starter envelopes hold placeholder thresholds; run the audit for audited ones",
        )
    check_str(p, "tool_version", v["tool_version"])
    check_str(p, "notes", v["notes"])
    created = v["created_utc"]
    if check_str(p, "created_utc", created) and created:
        try:
            datetime.fromisoformat(created)
        except ValueError:
            p.add(
                "created_utc",
                "an ISO 8601 time such as '2025-01-31T12:00:00Z' or an empty string",
                show(created),
            )
    results = v["results"]
    if results is not INVALID:
        if isinstance(results, Mapping):
            check_json_value(p, "results", results, depth=0, max_depth=MAX_RESULTS_DEPTH)
        else:
            p.add("results", "an object (audit results)", show_typed(results))


def as_enum(cls: type[Enum], value: Any) -> Any:
    """``value`` as a member of ``cls`` (given as the member or its string value), or None."""
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


def check_responses(p: Problems, value: Any) -> dict[Violation, Response] | None:
    """Checks response overrides; returns the complete mapping (defaults filled in) or None."""
    if value is INVALID:
        return None
    if not isinstance(value, Mapping):
        p.add("responses", "an object mapping violation names to responses", show_typed(value))
        return None
    merged = dict(DEFAULT_RESPONSES)
    seen: set[Violation] = set()
    ok = True
    for name in getattr(value, "duplicates", ()):
        p.add(f"responses.{name}", "each key at most once", "a repeated key", "remove the copies")
        ok = False
    for key, given in value.items():
        violation = as_enum(Violation, key)
        name = key.value if isinstance(key, Enum) else str(key)
        if violation is None:
            hint = did_you_mean(name, _VIOLATION_NAMES) or "valid names: " + ", ".join(
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
        response = as_enum(Response, given)
        if response is None or response not in allowed:
            allowed_names = [r.value for r in allowed]
            if response is not None:
                hint = _refusal_hint(violation, response)
            elif isinstance(given, str):
                hint = did_you_mean(given, allowed_names)
            else:
                hint = ""
            expected = "one of " + ", ".join(f"'{r}'" for r in allowed_names)
            p.add(f"responses.{violation.value}", expected, show(given), hint)
            ok = False
            continue
        merged[violation] = response
    return merged if ok else None


def check_version(p: Problems, version: Any) -> None:
    """``schema_version`` is one this tailguard reads (OLDEST_SCHEMA_VERSION to
    SCHEMA_VERSION); a newer one asks to upgrade tailguard."""
    if version is INVALID:
        return
    readable = f"an integer from {OLDEST_SCHEMA_VERSION} to {SCHEMA_VERSION}"
    if not is_int(version):
        hint = int_hint(version, "an integer")
        p.add("schema_version", readable, show_typed(version), hint)
    elif version > SCHEMA_VERSION:
        p.add(
            "schema_version",
            f"a schema version <= {SCHEMA_VERSION} (the newest this tailguard reads)",
            show(version),
            "the envelope was written by a newer tailguard; upgrade tailguard",
        )
    elif version < OLDEST_SCHEMA_VERSION:
        p.add("schema_version", readable, show(version))


def _section_used(section: Any) -> bool:
    """A version-2 section that says something: observations given, or any action rule."""
    if section is INVALID or section is None:
        return False
    fields = ("saturation", "frozen", "chatter")
    if all(hasattr(section, name) for name in fields):
        return any(getattr(section, name) is not None for name in fields)
    return True


def _check_observations_fit(p: Problems, policy: Any, observations: Any) -> None:
    if policy is INVALID or observations is INVALID or observations is None:
        return
    size = policy.obs_size
    if len(observations.low) != size:
        p.add(
            "observations.low",
            f"{size} numbers (policy.obs_size = {size})",
            f"{len(observations.low)} numbers",
            "give one entry per observation element",
        )


def _check_rules_fit(p: Problems, policy: Any, rules: Any) -> None:
    if policy is INVALID or rules is INVALID:
        return
    if rules.saturation is not None and policy.action_low is None:
        p.add(
            "action_rules.saturation",
            "policy.action_low and policy.action_high (saturation is judged against them)",
            "an envelope without action bounds",
            "set the action bounds, or remove the saturation rule",
        )


def check_envelope(p: Problems, v: Mapping[str, Any]) -> dict[Violation, Response] | None:
    """``Envelope``'s own fields and the cross-section rules; returns the complete responses.

    The sections (``policy``, ``timing``, ...) arrive type-checked or as ``INVALID``.
    """
    check_version(p, v["schema_version"])
    version = v["schema_version"]
    if is_int(version) and version < 2:
        for name in _V2_SECTIONS:
            if _section_used(v[name]):
                p.add(
                    name,
                    f"no {name} section in a schema_version {version} envelope",
                    "one",
                    f"{name} needs schema_version 2 or later; set schema_version to 2",
                )
    responses = check_responses(p, v["responses"])
    check_choice(p, "safe_action", v["safe_action"], SAFE_ACTIONS)
    policy, actions = v["policy"], v["actions"]
    _check_observations_fit(p, policy, v["observations"])
    _check_rules_fit(p, policy, v["action_rules"])
    if policy is not INVALID and actions is not INVALID:
        size = policy.action_size
        max_delta = actions.max_delta
        if max_delta is not None and len(max_delta) != size:
            p.add(
                "actions.max_delta",
                f"{size} numbers (policy.action_size = {size})",
                f"{len(max_delta)} numbers",
                "give one entry per action element",
            )
    return responses

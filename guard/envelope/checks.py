"""Value checks shared by every envelope rule: integers, number arrays, choices, JSON data.

Each ``check_*`` adds its problems to a :class:`~tailguard.envelope.problems.Problems` and
returns whether the value is usable, so a rule can go on to cross-field checks only with
values that passed. A value that is ``INVALID`` (missing, or already reported) is skipped
without a second report.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from tailguard.envelope.problems import INVALID, Problems, did_you_mean, show, show_typed

__all__ = [
    "INT64_MAX",
    "NS",
    "as_list",
    "check_choice",
    "check_float",
    "check_instance",
    "check_int",
    "check_json_value",
    "check_numbers",
    "check_str",
    "float_tuple",
    "freeze",
    "int_hint",
    "is_int",
]

#: Integers are handed to numpy int64 arithmetic in the guard; larger values would overflow.
INT64_MAX = 2**63 - 1
#: How a nanosecond field is described in a problem.
NS = "an integer number of nanoseconds"


def is_int(value: Any) -> bool:
    """True for integers (Python or numpy), False for booleans."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def int_hint(value: Any, what: str) -> str:
    """How to turn a value that is not an integer into one (or "" when there is no advice)."""
    if isinstance(value, bool):
        return "true/false is not a number"
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return f"write {int(value)}, without a decimal point or exponent"
    if what == NS and isinstance(value, float | str):
        return "give whole nanoseconds as a number, e.g. 20 ms is 20000000"
    if isinstance(value, str) and value.strip().lstrip("-").isdecimal():
        return "remove the quotes"
    return ""


def check_int(
    p: Problems,
    name: str,
    value: Any,
    *,
    minimum: int,
    maximum: int = INT64_MAX,
    nullable: bool = False,
    what: str = "an integer",
) -> bool:
    """Checks an integer field; True when the value is usable (in range, or an allowed null)."""
    if value is INVALID:
        return False
    if value is None and nullable:
        return True
    expected = f"{what} >= {minimum}" + (" or null" if nullable else "")
    if not is_int(value):
        p.add(name, expected, show_typed(value), int_hint(value, what))
        return False
    if value < minimum:
        p.add(name, expected, show(value))
        return False
    if value > maximum:
        p.add(name, f"{what} <= {maximum}", show(value))
        return False
    return True


def check_float(
    p: Problems,
    name: str,
    value: Any,
    *,
    minimum: float,
    maximum: float = math.inf,
    above_minimum: bool = False,
    below_maximum: bool = False,
    what: str = "a number",
) -> bool:
    """Checks a finite number in a range (each end closed unless told open); True if usable."""
    if value is INVALID:
        return False
    low = f"> {minimum:g}" if above_minimum else f">= {minimum:g}"
    high = (
        ""
        if maximum == math.inf
        else (f" and < {maximum:g}" if below_maximum else f" and <= {maximum:g}")
    )
    expected = f"{what} {low}{high}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        p.add(name, expected, show_typed(value))
        return False
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        p.add(name, expected, show(value), "NaN and infinity are not allowed")
        return False
    too_low = number <= minimum if above_minimum else number < minimum
    too_high = number >= maximum if below_maximum else number > maximum
    if too_low or too_high:
        p.add(name, expected, show(value))
        return False
    return True


def as_list(value: Any) -> Any:
    """numpy arrays arrive as arrays in Python; treat them as the lists JSON would give."""
    if hasattr(value, "tolist") and not isinstance(value, str | bytes):
        return value.tolist()
    return value


def check_numbers(
    p: Problems,
    name: str,
    value: Any,
    *,
    length: int | None,
    length_key: str = "action_size",
    positive: bool = False,
) -> bool:
    """Checks a nullable array of finite floats; True when usable (null or all good)."""
    if value is INVALID:
        return False
    if value is None:
        return True
    value = as_list(value)
    expected = f"an array of {'positive ' if positive else ''}finite numbers or null"
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Sequence):
        p.add(name, expected, show_typed(value))
        return False
    ok = True
    for i, item in enumerate(value):
        if isinstance(item, bool) or not isinstance(item, numbers.Real):
            p.add(f"{name}[{i}]", "a number", show_typed(item))
            ok = False
            continue
        try:
            number = float(item)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            p.add(f"{name}[{i}]", "a finite number", show(item), "NaN and infinity are not allowed")
            ok = False
        elif positive and number <= 0.0:
            p.add(f"{name}[{i}]", "a number > 0", show(item), "use null to disable the check")
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


def float_tuple(value: Any) -> tuple[float, ...] | None:
    """A checked number array as a tuple of floats (None stays None)."""
    return None if value is None else tuple(float(x) for x in as_list(value))


def check_choice(p: Problems, name: str, value: Any, choices: Sequence[str]) -> bool:
    """Checks that a value is one of ``choices``, with a did-you-mean hint for near misses."""
    if value is INVALID:
        return False
    if isinstance(value, str) and value in choices:
        return True
    hint = did_you_mean(value, choices) if isinstance(value, str) else ""
    p.add(name, "one of " + ", ".join(f"'{c}'" for c in choices), show_typed(value), hint)
    return False


def check_str(p: Problems, name: str, value: Any) -> bool:
    """Checks that a value is a string."""
    if value is INVALID:
        return False
    if isinstance(value, str):
        return True
    p.add(name, "a string", show_typed(value))
    return False


def check_instance(p: Problems, name: str, value: Any, cls: type) -> bool:
    """Checks that a nested section given in Python is an instance of its dataclass."""
    if value is INVALID:
        return False
    if isinstance(value, cls):
        return True
    p.add(name, f"a {cls.__name__}", show_typed(value), f"build it with {cls.__name__}(...)")
    return False


# Exact types that are plain JSON as they are: checked and frozen without further tests
# (the abstract ``numbers`` checks cost ~1 µs each, which adds up in large audit results).
_PLAIN = frozenset({str, int, bool, type(None)})


def _check_json_item(p: Problems, name: str, value: Any, depth: int, max_depth: int) -> None:
    kind = type(value)
    if kind in _PLAIN:
        return
    if kind is float:
        if not math.isfinite(value):
            p.add(name, "a finite number", show(value), "NaN and infinity are not valid JSON")
        return
    check_json_value(p, name, value, depth=depth, max_depth=max_depth)


def check_json_value(p: Problems, name: str, value: Any, *, depth: int, max_depth: int) -> None:
    """Checks plain JSON data (finite numbers, string keys) at most ``max_depth`` levels deep."""
    if depth > max_depth:
        p.add(name, f"at most {max_depth} levels of nesting", "deeper nesting")
        return
    kind = type(value)
    if kind in _PLAIN or kind is float:
        _check_json_item(p, name, value, depth, max_depth)
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            if type(item) not in _PLAIN:
                _check_json_item(p, f"{name}[{i}]", item, depth + 1, max_depth)
    elif isinstance(value, dict | Mapping):
        for key, item in value.items():
            if type(key) is not str:
                p.add(f"{name}.{key!r}", "a string key", show_typed(key))
            elif type(item) not in _PLAIN:
                _check_json_item(p, f"{name}.{key}", item, depth + 1, max_depth)
    elif is_int(value) or isinstance(value, bool | str) or value is None:
        return
    elif isinstance(value, numbers.Real):  # e.g. numpy.float32
        try:
            finite = math.isfinite(float(value))
        except OverflowError:
            finite = False
        if not finite:
            p.add(name, "a finite number", show(value), "NaN and infinity are not valid JSON")
    else:
        p.add(
            name, "a JSON value (null, boolean, number, string, array, object)", show_typed(value)
        )


def freeze(value: Any) -> Any:
    """Deep read-only copy of checked JSON data: objects -> MappingProxyType, arrays -> tuple."""
    kind = type(value)
    if kind in _PLAIN or kind is float:
        return value
    if isinstance(value, list | tuple):
        return tuple(freeze(v) for v in value)
    if isinstance(value, dict | Mapping):
        return MappingProxyType({k: freeze(v) for k, v in value.items()})
    if is_int(value):
        return int(value)
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    return value

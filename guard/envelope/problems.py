"""Collecting envelope problems: dotted key paths, short renderings of bad values, hints.

Every rule in ``rules`` adds to one :class:`Problems` list instead of raising, so a file
with five mistakes gets one error listing all five. This module knows nothing about the
envelope's sections; it is the vocabulary the rules speak.
"""

from __future__ import annotations

import difflib
import json
import numbers
from collections.abc import Mapping, Sequence
from enum import Enum
from typing import Any

from tailguard.errors import EnvelopeProblem

__all__ = ["INVALID", "Problems", "did_you_mean", "show", "show_typed", "type_name"]


class _Invalid:
    """Marks a value that is missing or was already reported (e.g. a nested section)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<invalid>"


#: A value the rules skip: required but missing, or a section whose problems are reported.
INVALID: Any = _Invalid()


class Problems:
    """Collects problems under a dotted key-path prefix; children share one list.

    Args:
        prefix: key path of the object being checked, e.g. ``timing.latency``.
        items: the shared list (a new one when None).
    """

    __slots__ = ("items", "prefix")

    def __init__(self, prefix: str = "", items: list[EnvelopeProblem] | None = None) -> None:
        self.prefix = prefix
        self.items: list[EnvelopeProblem] = [] if items is None else items

    def key(self, name: str) -> str:
        """The full key path of ``name`` under this prefix (``[i]`` joins without a dot)."""
        if not name:
            return self.prefix
        if not self.prefix or name.startswith("["):
            return self.prefix + name
        return f"{self.prefix}.{name}"

    def add(self, name: str, expected: str, actual: str, hint: str = "") -> None:
        """Record one problem at ``name`` (relative to the prefix)."""
        self.items.append(EnvelopeProblem(self.key(name), expected, actual, hint))

    def child(self, name: str) -> Problems:
        """A collector for the object at ``name`` that adds to the same list."""
        return Problems(self.key(name), self.items)


def type_name(value: Any) -> str:
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


def show(value: Any, limit: int = 60) -> str:
    """A short JSON-like rendering of a value for a problem report."""
    if isinstance(value, Enum):
        value = value.value
    try:
        text = json.dumps(value, default=repr)
    except (TypeError, ValueError, RecursionError):
        text = f"<{type_name(value)}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def show_typed(value: Any) -> str:
    """``show(value)`` followed by its JSON type name; just ``null`` for None."""
    return "null" if value is None else f"{show(value)} ({type_name(value)})"


def did_you_mean(word: str, options: Sequence[str]) -> str:
    """A "did you mean 'x'?" hint for the closest option, or "" when nothing is close."""
    matches = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f"did you mean '{matches[0]}'?" if matches else ""

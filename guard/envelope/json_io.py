"""Envelope files: bounded reading, one parse, every problem at once; atomic writing.

On disk an envelope is a JSON file whose layout mirrors the dataclasses in ``schema``
(only the marked keys are required)::

    {
      "schema_version": 2,                                      # required
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
                     "created_utc": "", "notes": "", "results": {}},
      "observations": {"low": [...], "high": [...], "tolerance": 0.05},   # schema 2
      "action_rules": {"saturation": {"fraction": 0.5, "margin": 0.01},   # schema 2
                       "frozen": {"ticks": 100, "epsilon": 1e-4, "obs_delta": 0.05},
                       "chatter": {"fraction": 0.5, "min_delta": 0.01}}
    }

A version-1 file (no ``observations``, no ``action_rules``) reads as before and is
migrated to the current version; the version-2 sections are refused in a version-1 file.

A file comes from outside, so reading is bounded before any work: at most
``MAX_ENVELOPE_BYTES`` bytes and ``MAX_NESTING_DEPTH`` levels of nesting. The text is
parsed once and each object is validated once, by building its dataclass; problems are
reported with dotted key paths (``timing.latency.p99_ns``) in file order. Unknown keys
are problems with a "did you mean" hint.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tailguard.envelope.checks import is_int
from tailguard.envelope.chunks import ChunkLimits
from tailguard.envelope.problems import INVALID, Problems, did_you_mean, show_typed
from tailguard.envelope.rules import SCHEMA_VERSION, check_version
from tailguard.envelope.schema import (
    ActionLimits,
    ActionRules,
    ChatterRule,
    Envelope,
    FrozenRule,
    ObservationRange,
    PolicyBinding,
    Provenance,
    Recovery,
    SaturationRule,
    Thresholds,
    Timing,
    Window,
)
from tailguard.errors import EnvelopeError, EnvelopeProblem

__all__ = [
    "MAX_ENVELOPE_BYTES",
    "MAX_NESTING_DEPTH",
    "check_envelope_file",
    "envelope_from_dict",
    "load_envelope",
    "read_envelope_file",
    "save_envelope",
]

#: Largest envelope file read. A hand-written envelope is ~2 KB; audit results stay far
#: below this. Reading, parsing and validating a file of this size takes well under a second.
MAX_ENVELOPE_BYTES = 4 * 1024 * 1024
#: Deepest nesting of objects and arrays in an envelope file (the schema needs 3 levels,
#: audit results up to ``rules.MAX_RESULTS_DEPTH`` more).
MAX_NESTING_DEPTH = 64

_SECTIONS: dict[str, type] = {
    "policy": PolicyBinding,
    "timing": Timing,
    "actions": ActionLimits,
    "window": Window,
    "recovery": Recovery,
    "provenance": Provenance,
    "chunks": ChunkLimits,  # optional: only action-chunk policies' envelopes have it
}
_SECTIONS.update(observations=ObservationRange, action_rules=ActionRules)  # schema 2
_NESTED: dict[type, dict[str, type]] = {
    Envelope: _SECTIONS,
    ActionRules: {"saturation": SaturationRule, "frozen": FrozenRule, "chatter": ChatterRule},
    Timing: {"dt": Thresholds, "latency": Thresholds},
}
#: Key order of an envelope file: the version first, then the sections.
_TOP_LEVEL_ORDER = (
    "schema_version",
    *(f.name for f in dataclasses.fields(Envelope) if f.name != "schema_version"),
)
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
    ObservationRange: {
        "low": "the lower bound of each observation element (an array of numbers)",
        "high": "the upper bound of each observation element (an array of numbers)",
    },
    SaturationRule: {"fraction": "the fraction of samples at a bound that fires the rule"},
    FrozenRule: {"ticks": "how many ticks without change fire the rule (an integer)"},
    ChatterRule: {"fraction": "the fraction of samples with a sign flip that fires the rule"},
}
#: Defaults in JSON for fields the dataclasses require.
_JSON_DEFAULTS: dict[tuple[type, str], Any] = {
    (PolicyBinding, "sha256"): None,
    (Provenance, "source"): "manual",
    (Provenance, "audited"): False,
}
# A JSON string literal (escapes included): brackets inside strings are not nesting.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


# --------------------------------------------------------------------------------------
# Plain data -> Envelope
# --------------------------------------------------------------------------------------


def _default(cls: type, f: dataclasses.Field[Any]) -> Any:
    if (cls, f.name) in _JSON_DEFAULTS:
        return _JSON_DEFAULTS[(cls, f.name)]
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return INVALID


def _check_keys(p: Problems, raw: Mapping[Any, Any], cls: type) -> None:
    """Unknown keys (with a did-you-mean hint), repeated keys, missing required keys."""
    allowed = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in allowed:
            name = key if isinstance(key, str) else repr(key)
            hint = did_you_mean(name, allowed) or "valid keys here: " + ", ".join(allowed)
            p.add(name, "a known key", f"unknown key {name!r}", hint)
    for key in getattr(raw, "duplicates", ()):
        p.add(key, "each key at most once", "a repeated key", "JSON keeps only the last copy")
    for key, expected in _REQUIRED.get(cls, {}).items():
        if key not in raw:
            p.add(key, expected, "nothing (required key missing)")


def _build(p: Problems, raw: Mapping[Any, Any], cls: type) -> Any:
    """An instance of ``cls`` from a JSON object, or INVALID with the problems added to p.

    Nested sections are built first; the dataclass then validates its own fields once.
    """
    before = len(p.items)
    _check_keys(p, raw, cls)
    nested = _NESTED.get(cls, {})
    values = {}
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            values[f.name] = _default(cls, f)
        elif f.name in nested and raw[f.name] is None and _default(cls, f) is None:
            values[f.name] = None  # an optional section given as null: off
        elif f.name in nested:
            values[f.name] = _load_section(p.child(f.name), raw[f.name], nested[f.name])
        else:
            values[f.name] = raw[f.name]
    try:
        obj = cls(**values)
    except EnvelopeError as exc:
        for problem in exc.problems:
            p.add(problem.key_path, problem.expected, problem.actual, problem.hint)
        return INVALID
    return obj if len(p.items) == before else INVALID


def _load_section(p: Problems, raw: Any, cls: type) -> Any:
    if not isinstance(raw, Mapping):
        names = ", ".join(f.name for f in dataclasses.fields(cls))
        p.add("", f"an object with keys from: {names}", show_typed(raw), "omit it for defaults")
        return INVALID
    return _build(p, raw, cls)


def _path_str(path: str | os.PathLike[str] | None) -> str | None:
    return None if path is None else os.fspath(path)


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
    p = Problems()
    if not isinstance(data, Mapping):
        p.add("", "a JSON object with the envelope sections", show_typed(data))
        raise EnvelopeError(p.items, _path_str(path))
    version: Any = data.get("schema_version")
    if is_int(version) and version > SCHEMA_VERSION:
        check_version(p, version)
        raise EnvelopeError(p.items, _path_str(path))
    envelope = _build(p, data, Envelope)
    if p.items:
        # Report in file order: the top-level keys were checked after the sections.
        order = {name: i for i, name in enumerate(_TOP_LEVEL_ORDER)}
        p.items.sort(key=lambda pr: order.get(pr.key_path.split(".")[0], len(order)))
        raise EnvelopeError(p.items, _path_str(path))
    return envelope  # type: ignore[no-any-return]


# --------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------


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


def _read_bounded(path: str | os.PathLike[str]) -> bytes:
    """The file's bytes, refusing anything that is not a regular file of a bounded size."""
    limit = MAX_ENVELOPE_BYTES
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; no effect on regular files.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as exc:
        raise _file_error(path, "a readable envelope file", f"{exc.strerror or exc}") from exc
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise _file_error(path, "an envelope file", "a directory")
        if not stat.S_ISREG(info.st_mode):
            raise _file_error(path, "a regular envelope file", "a device, pipe or socket")
        if info.st_size > limit:
            raise _file_error(
                path,
                f"an envelope file of at most {limit} bytes",
                f"{info.st_size} bytes",
                "is this an envelope? audit results this large belong in a separate file",
            )
        raw = bytearray()
        while len(raw) <= limit:  # read at most limit + 1: the file may grow after fstat
            chunk = os.read(fd, limit + 1 - len(raw))
            if not chunk:
                break
            raw += chunk
    except OSError as exc:
        raise _file_error(path, "a readable envelope file", f"{exc.strerror or exc}") from exc
    finally:
        os.close(fd)
    if len(raw) > limit:
        raise _file_error(
            path, f"an envelope file of at most {limit} bytes", f"more than {limit} bytes"
        )
    return bytes(raw)


def _nesting_depth(raw: bytes) -> int:
    """How deep objects and arrays nest in JSON text (brackets inside strings do not count)."""
    brackets = _JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    if not brackets:
        return 0
    codes = np.frombuffer(brackets, dtype=np.uint8)
    opens = (codes == ord("[")) | (codes == ord("{"))
    return int(np.cumsum(opens.astype(np.int8) * 2 - 1, dtype=np.int32).max())


def _parse(path: str | os.PathLike[str], raw: bytes) -> Any:
    """The JSON data in ``raw``, bounded in depth; every failure is an EnvelopeError."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _file_error(
            path,
            "UTF-8 JSON text",
            f"a byte that is not UTF-8 at offset {exc.start}",
            "pass the envelope .json file, not the policy",
        ) from exc
    # Bounded before parsing: the parser recurses once per level.
    depth = _nesting_depth(raw)
    if depth > MAX_NESTING_DEPTH:
        raise _file_error(
            path,
            f"JSON nested at most {MAX_NESTING_DEPTH} levels deep",
            f"{depth} levels of nesting",
        )
    try:
        return json.loads(text, object_pairs_hook=_object_pairs)
    except json.JSONDecodeError as exc:
        raise _file_error(
            path, "valid JSON", f"{exc.msg} at line {exc.lineno}, column {exc.colno}"
        ) from exc
    except (ValueError, RecursionError) as exc:  # e.g. an integer with 5000 digits
        raise _file_error(path, "JSON of a sane size", str(exc) or type(exc).__name__) from exc


def load_envelope(path: str | os.PathLike[str]) -> Envelope:
    """Read and validate an envelope JSON file.

    Args:
        path: the envelope file, at most ``MAX_ENVELOPE_BYTES`` bytes and
            ``MAX_NESTING_DEPTH`` levels deep.

    Returns:
        The validated envelope.

    Raises:
        EnvelopeError: the file cannot be read, is too large or too deep (the size and
            the limit are given), is not UTF-8 JSON (line and column are given), or fails
            validation (every problem listed).
    """
    return envelope_from_dict(_parse(path, _read_bounded(path)), path)


def read_envelope_file(
    path: str | os.PathLike[str],
) -> tuple[Envelope | None, list[EnvelopeProblem]]:
    """Read an envelope file once: the envelope and ``[]``, or None and every problem.

    For ``tailguard envelope check``, which reports problems and, for a valid file, what
    it holds; never raises for a bad file.

    Args:
        path: the envelope file.

    Returns:
        ``(envelope, [])`` for a valid file, ``(None, problems)`` otherwise.
    """
    try:
        return load_envelope(path), []
    except EnvelopeError as exc:
        return None, list(exc.problems) or [EnvelopeProblem("", "a valid envelope", exc.message)]


def check_envelope_file(path: str | os.PathLike[str]) -> list[EnvelopeProblem]:
    """Every problem of an envelope file; ``[]`` when it is valid. Never raises for a bad file.

    To use the envelope as well, call :func:`read_envelope_file` (one read and parse).
    """
    return read_envelope_file(path)[1]


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

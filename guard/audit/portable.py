"""The files a work unit reads, and the same unit with those files somewhere else.

A :class:`~tailguard.audit.units.WorkUnit` names its inputs by path: the ONNX policy, a
fallback ONNX policy, and measured profile files inside its condition's profile specs
(``empirical:PATH``, also as a ``mix`` term or a JSON ``{"kind": "empirical", "path": ...}``).
An executor whose workers share no filesystem with this process sends those files by content
and rewrites the unit to the worker's copies (:func:`relocate`); the results do not depend
on where a file lies (paths only appear in messages).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tailguard.audit.units import WorkUnit

__all__ = ["file_digest", "relocate", "spec_files", "unit_files"]

_SPEC_FIELDS = ("latency", "dt", "obs_delay")


def _mix_terms(rest: str) -> list[str]:
    # The profile parser's own split of a mix's terms (one grammar, one definition).
    from tailguard.firmware_sim.profile_spec import _MIX_TERM

    return _MIX_TERM.split(rest)


def _map_json(obj: Any, fn: Callable[[str], str]) -> Any:
    if isinstance(obj, str):
        return _map_text(obj, fn)
    if isinstance(obj, Mapping):
        out = {k: _map_json(v, fn) for k, v in obj.items()}
        if str(obj.get("kind", "")).lower() == "empirical" and isinstance(obj.get("path"), str):
            out["path"] = fn(obj["path"])
        return out
    if isinstance(obj, list):
        return [_map_json(v, fn) for v in obj]
    return obj


def _map_text(spec: str, fn: Callable[[str], str]) -> str:
    text = spec.strip()
    if text.startswith("{"):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            return spec  # the parser refuses it, with its own message
        return json.dumps(_map_json(obj, fn), sort_keys=True)
    kind, sep, rest = text.partition(":")
    kind = kind.strip().lower()
    if kind == "empirical" and rest.strip():
        return f"empirical:{fn(rest.strip())}"
    if kind == "mix":
        terms = []
        for term in _mix_terms(rest):
            w, star, sub = term.partition("*")
            terms.append(f"{w}{star}{_map_text(sub, fn)}" if star else term)
        return f"{kind}{sep}" + "+".join(terms)
    return spec


def spec_files(spec: str) -> list[str]:
    """The files a profile spec reads (in order, repeats kept)."""
    found: list[str] = []

    def keep(path: str) -> str:
        found.append(path)
        return path

    _map_text(spec, keep)
    return found


def unit_files(unit: WorkUnit) -> list[str]:
    """Every file ``unit`` reads, without repeats: policy, fallback policy, profile files."""
    paths = [unit.target.policy]
    if unit.guard is not None and unit.guard.fallback not in ("hold", "zero"):
        paths.append(unit.guard.fallback)
    for name in _SPEC_FIELDS:
        paths.extend(spec_files(getattr(unit.condition, name)))
    return list(dict.fromkeys(paths))


def relocate(unit: WorkUnit, where: Mapping[str, str]) -> WorkUnit:
    """``unit`` with every file it reads replaced by ``where[path]`` (paths not in ``where``
    are kept)."""

    def fn(path: str) -> str:
        return where.get(path, path)

    cond = dataclasses.replace(
        unit.condition, **{k: _map_text(getattr(unit.condition, k), fn) for k in _SPEC_FIELDS}
    )
    target = dataclasses.replace(unit.target, policy=fn(unit.target.policy))
    guard = unit.guard
    if guard is not None and guard.fallback not in ("hold", "zero"):
        guard = dataclasses.replace(guard, fallback=fn(guard.fallback))
    return dataclasses.replace(unit, target=target, condition=cond, guard=guard)


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()

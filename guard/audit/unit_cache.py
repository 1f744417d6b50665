"""``CachingExecutor``: finished work units kept on disk, so an interrupted run resumes
without redoing them.

Each finished unit's outcomes are written (atomically, as JSON: numbers round-trip exactly,
nothing is executed on reading) under a key of everything its episodes depend on — env,
seed, episode range, condition, guard settings, and the **content** (sha256) of every file
it reads — never the paths. A unit whose file is present and readable is not run again; an
unreadable or oversized file is ignored and the unit re-run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tailguard.audit.executor import Executor
from tailguard.audit.portable import file_digest, relocate, unit_files
from tailguard.audit.units import EpisodeOutcome, UnitResult, WorkUnit

__all__ = ["MAX_UNIT_FILE_BYTES", "CachingExecutor", "unit_key"]

#: Largest unit file read back, bytes (a unit of 5 Hopper episodes is ~0.5 MB).
MAX_UNIT_FILE_BYTES = 256 << 20
_FORMAT = "tailguard.unit/1"
_FIELDS = tuple(f.name for f in dataclasses.fields(EpisodeOutcome))

OnResult = Callable[[UnitResult], None]


def unit_key(unit: WorkUnit, digests: dict[str, str]) -> str:
    """sha256 of what the unit's episodes depend on (file contents by ``digests``)."""
    from tailguard import __version__

    content = relocate(unit, {p: "sha256:" + digests[p] for p in unit_files(unit)})
    doc = {
        "format": _FORMAT,
        "tool_version": __version__,
        "fields": _FIELDS,
        "unit": dataclasses.asdict(content),
    }
    text = json.dumps(doc, sort_keys=True, default=list)
    return hashlib.sha256(text.encode()).hexdigest()


def _encode(e: EpisodeOutcome) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in _FIELDS:
        v = getattr(e, name)
        if isinstance(v, np.ndarray):
            out[name] = {"ndarray": str(v.dtype), "shape": list(v.shape), "data": v.tolist()}
        else:
            out[name] = v
    return out


def _decode(doc: dict[str, Any]) -> EpisodeOutcome:
    values: dict[str, Any] = {}
    for name in _FIELDS:
        v = doc[name]
        if isinstance(v, dict) and set(v) == {"ndarray", "shape", "data"}:
            v = np.asarray(v["data"], dtype=np.dtype(v["ndarray"])).reshape(v["shape"])
        values[name] = v
    return EpisodeOutcome(**values)


def _same(a: EpisodeOutcome, b: EpisodeOutcome) -> bool:
    for name in _FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        if isinstance(x, np.ndarray):
            if not (
                isinstance(y, np.ndarray) and x.dtype == y.dtype and np.array_equal(x, y, True)
            ):
                return False
        elif type(x) is not type(y) or (x != y and not (x != x and y != y)):  # NaN == NaN
            return False
    return True


class CachingExecutor:
    """Runs on ``inner`` only the units ``folder`` has no finished result for.

    Args:
        inner: the executor that runs the rest.
        folder: where finished units are kept (created on first write).
    """

    def __init__(self, inner: Executor, folder: str | Path) -> None:
        self.inner = inner
        self.folder = Path(folder)
        self.reused = 0

    @property
    def workers(self) -> int | None:
        """The inner executor's workers."""
        return getattr(self.inner, "workers", None)

    def _path(self, key: str) -> Path:
        return self.folder / f"{key}.json"

    def _load(self, unit: WorkUnit, key: str) -> UnitResult | None:
        path = self._path(key)
        try:
            if not path.is_file() or path.stat().st_size > MAX_UNIT_FILE_BYTES:
                return None
            doc = json.loads(path.read_bytes())
            if doc.get("format") != _FORMAT or doc.get("key") != key:
                return None
            episodes = [_decode(e) for e in doc["episodes"]]
        except (OSError, ValueError, KeyError, TypeError):
            return None  # unreadable: the unit runs again
        if [e.episode for e in episodes] != list(range(unit.start, unit.stop)):
            return None
        return UnitResult(unit, episodes)

    def _store(self, key: str, result: UnitResult) -> None:
        doc = {"format": _FORMAT, "key": key, "episodes": [_encode(e) for e in result.episodes]}
        try:
            text = json.dumps(doc)
        except (TypeError, ValueError):
            return  # not JSON-representable: this unit is simply not kept
        back = [_decode(e) for e in json.loads(text)["episodes"]]
        if not all(_same(a, b) for a, b in zip(result.episodes, back, strict=True)):
            return  # would not read back exactly: not kept
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".part-")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, self._path(key))

    def run(self, units: Sequence[WorkUnit], on_result: OnResult | None = None) -> list[UnitResult]:
        """Reuse the finished units, run the others on ``inner`` (each kept as it finishes);
        results in the order of ``units``."""
        digests: dict[str, str] = {}
        for unit in units:
            for p in unit_files(unit):
                if p not in digests:
                    digests[p] = file_digest(p)
        keys = [unit_key(u, digests) for u in units]
        results: dict[int, UnitResult] = {}
        todo: list[int] = []
        for i, (unit, key) in enumerate(zip(units, keys, strict=True)):
            got = self._load(unit, key)
            if got is None:
                todo.append(i)
            else:
                results[i] = got
        self.reused = len(results)
        for i in sorted(results):
            if on_result is not None:
                on_result(results[i])

        def keep(res: UnitResult) -> None:
            # A pool hands back copies of the units: the key is of their content.
            self._store(unit_key(res.unit, digests), res)
            if on_result is not None:
                on_result(res)

        ran = self.inner.run([units[i] for i in todo], keep) if todo else []
        for i, res in zip(todo, ran, strict=True):
            results[i] = res
        return [results[i] for i in range(len(units))]

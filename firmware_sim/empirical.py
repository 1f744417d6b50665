"""Loading recorded timing data for empirical profiles, with bounded memory and work.

Three sources, all reduced to ``(values_ns, weights)`` (a histogram) or ``values_ns`` (a trace):

- an HdrHistogram V2 compressed base64 string (what HdrHistogram tools and the guard's
  histogram export produce), decoded by :mod:`tailguard.stats.codecs` (the one decoder);
  each recorded bucket becomes its *highest equivalent value*, as HdrHistogram reports
  percentiles;
- a ``{value_ns: count}`` mapping;
- a per-tick trace: a sequence of nanosecond values (flight recorder, hardware benchmark).

Files: ``.npy`` (a 1-D integer or float trace), ``.json`` (an object with exactly one of
``hdr``, ``counts`` or ``trace_ns``, a bare list = trace, or a bare ``{value: count}``
object), or any other text file holding either one HdrHistogram base64 string or one
integer per line (a trace).

Bounds (files and inline specs come from outside; each limit is checked before the work it
guards): a file holds at most :data:`MAX_PROFILE_FILE_BYTES` (a JSON file
:data:`MAX_JSON_FILE_BYTES`, a text line 4096 characters); a trace at most
:data:`MAX_TRACE_VALUES` values (a ``.npy`` header declaring more is refused before any
data is read); a histogram at most :data:`MAX_HISTOGRAM_BUCKETS` distinct values; every
value lies in ``[0, MAX_DURATION_NS]`` (2**62 - 1 ns, about 146 years); counts are finite
and non-negative (counts whose sum would overflow to infinity are scaled down by their
largest one, so that the sampled proportions stay right).
"""

from __future__ import annotations

import array
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tailguard.errors import ConfigError, ProfileError
from tailguard.stats import NEVER_NS
from tailguard.stats.codecs import decode_hdr_buckets

__all__ = [
    "MAX_DURATION_NS",
    "MAX_HISTOGRAM_BUCKETS",
    "MAX_JSON_FILE_BYTES",
    "MAX_PROFILE_FILE_BYTES",
    "MAX_TRACE_VALUES",
    "RecordedTiming",
    "decode_hdr_histogram",
    "load_recorded_timing",
    "timing_from_json",
]

#: Largest duration a recorded value (and any profile sample) may have, ns.
MAX_DURATION_NS = NEVER_NS
#: Largest profile file read, bytes.
MAX_PROFILE_FILE_BYTES = 32 * 2**20
#: Largest JSON profile file read, bytes (JSON numbers cost ~30 bytes each once parsed).
MAX_JSON_FILE_BYTES = 16 * 2**20
#: Most values in a trace (over an hour of ticks at 1 kHz).
MAX_TRACE_VALUES = 4_000_000
#: Most distinct values in a histogram (``counts`` entries or decoded buckets).
MAX_HISTOGRAM_BUCKETS = 1 << 20
_MAX_LINE_CHARS = 4096


@dataclass(frozen=True)
class RecordedTiming:
    """Recorded timing data, as a histogram or as a per-tick trace.

    Attributes:
        values_ns: int64 values, shape (n,). Sorted and unique for a histogram; tick order
            for a trace.
        weights: float64 counts, shape (n,), for a histogram; ``None`` for a trace.
    """

    values_ns: np.ndarray
    weights: np.ndarray | None

    @property
    def is_trace(self) -> bool:
        """True when the values are a per-tick trace (replayed in order)."""
        return self.weights is None


def decode_hdr_histogram(text: str | bytes) -> RecordedTiming:
    """Decode an HdrHistogram V2 compressed, base64 string (bounded, see the module docstring).

    Args:
        text: the base64 string (``HISTF...``), str or bytes; surrounding whitespace ignored.

    Returns:
        A histogram: each non-empty bucket's highest equivalent value (ns) and its count.

    Raises:
        ProfileError: not base64, wrong cookie, corrupt payload, beyond the bounds, or no
            recorded values.
    """
    try:
        buckets = decode_hdr_buckets(text, max_buckets=MAX_HISTOGRAM_BUCKETS)
    except ConfigError as exc:
        raise ProfileError(exc.message) from None
    highest, counts = buckets.highest, buckets.counts
    if counts.size == 0:
        raise ProfileError("HdrHistogram holds no recorded values")
    if int(highest[-1]) > MAX_DURATION_NS:
        raise ProfileError(
            f"HdrHistogram records a value of {int(highest[-1])} ns, above the largest "
            f"duration a profile may return ({MAX_DURATION_NS} ns)"
        )
    return _histogram(highest, counts.astype(np.float64))


def _histogram(values_ns: np.ndarray, weights: np.ndarray) -> RecordedTiming:
    """A histogram of sorted unique values; refuses one without any positive count."""
    if not float(weights.max(initial=0.0)) > 0:
        raise ProfileError("histogram holds no recorded values (all counts are zero)")
    return RecordedTiming(np.asarray(values_ns, np.int64), np.asarray(weights, np.float64))


_DURATION_RANGE = f"[0, {MAX_DURATION_NS}] ns (2**62 - 1 ns, about 146 years)"


def _from_counts(counts: Mapping[Any, Any]) -> RecordedTiming:
    if len(counts) > MAX_HISTOGRAM_BUCKETS:
        raise ProfileError(
            f"histogram has {len(counts)} entries; at most {MAX_HISTOGRAM_BUCKETS} are accepted"
        )
    values: list[int] = []
    weights: list[float] = []
    for key, count in counts.items():
        try:
            if isinstance(key, bool) or isinstance(count, bool):
                raise TypeError
            value_ns, weight = int(key), float(count)
        except (TypeError, ValueError, OverflowError):
            raise ProfileError(
                f"histogram entries must be {{value_ns: count}} with an integer value and a "
                f"numeric count, got {key!r}: {count!r}"
            ) from None
        if not 0 <= value_ns <= MAX_DURATION_NS:
            raise ProfileError(f"histogram value {key!r} outside {_DURATION_RANGE}")
        if not (weight >= 0 and math.isfinite(weight)):
            raise ProfileError(
                f"histogram entry {key!r}: {count!r}: a count must be finite and non-negative"
            )
        if weight > 0:
            values.append(value_ns)
            weights.append(weight)
    if not values:
        raise ProfileError("histogram holds no recorded values (all counts are zero)")
    uniq, inverse = np.unique(np.asarray(values, np.int64), return_inverse=True)
    w = np.asarray(weights, np.float64)
    with np.errstate(over="ignore"):
        finite_total = bool(np.isfinite(w.sum()))
    if not finite_total:  # counts near 1e308 add up to infinity: scale them down
        w = w / w.max()
    return _histogram(uniq, np.bincount(inverse, weights=w))


def _from_trace(trace: Sequence[Any] | np.ndarray) -> RecordedTiming:
    if not isinstance(trace, np.ndarray | Sequence) or isinstance(trace, str | bytes):
        raise ProfileError(f"a trace must be a sequence of ns, got {type(trace).__name__}")
    if len(trace) > MAX_TRACE_VALUES:
        raise ProfileError(
            f"a trace of {len(trace)} values is longer than the {MAX_TRACE_VALUES} accepted"
        )
    try:
        arr = np.asarray(trace)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ProfileError(f"a trace must be a 1-D sequence of numbers of ns: {exc}") from None
    if arr.ndim != 1 or arr.size == 0:
        raise ProfileError(f"a trace must be a non-empty 1-D sequence of ns, got shape {arr.shape}")
    if arr.dtype.kind == "O" and all(isinstance(x, int) and not isinstance(x, bool) for x in arr):
        first = next(i for i, x in enumerate(arr.tolist()) if not 0 <= x <= MAX_DURATION_NS)
        raise ProfileError(
            f"trace value {arr[first]} ns at index {first} is outside {_DURATION_RANGE}"
        )
    if arr.dtype.kind not in "iuf":
        raise ProfileError(f"a trace must hold numbers of ns, got dtype {arr.dtype}")
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        first = int(np.flatnonzero(~np.isfinite(arr))[0])
        raise ProfileError(f"a trace must hold finite numbers of ns; index {first} is {arr[first]}")
    negative = np.flatnonzero(arr < 0)
    if negative.size:
        first = int(negative[0])
        raise ProfileError(
            f"a trace must not hold negative durations; index {first} is {arr[first]} ns"
        )
    # float(MAX_DURATION_NS) rounds up to 2**62, so compare floats with >= 2**62.
    above = arr >= 2.0**62 if arr.dtype.kind == "f" else arr > MAX_DURATION_NS
    if np.any(above):
        first = int(np.flatnonzero(above)[0])
        raise ProfileError(
            f"trace value {arr[first]:g} ns at index {first} is outside {_DURATION_RANGE}"
        )
    return RecordedTiming(np.rint(arr).astype(np.int64), None)


def timing_from_json(obj: Any) -> RecordedTiming:
    """Build recorded timing from decoded JSON (see the module docstring for the shapes).

    Raises:
        ProfileError: an unknown shape, or data outside the bounds of the module docstring.
    """
    if isinstance(obj, list):
        return _from_trace(obj)
    if not isinstance(obj, Mapping):
        raise ProfileError(f"expected a JSON object or list, got {type(obj).__name__}")
    sources = [k for k in ("hdr", "counts", "trace_ns") if k in obj]
    if len(sources) > 1:
        raise ProfileError(f"give exactly one of hdr, counts, trace_ns; got {sources}")
    if sources == ["hdr"]:
        if not isinstance(obj["hdr"], str):
            raise ProfileError(f"'hdr' must be a base64 string, got {type(obj['hdr']).__name__}")
        return decode_hdr_histogram(obj["hdr"])
    if sources == ["counts"]:
        if not isinstance(obj["counts"], Mapping):
            raise ProfileError("'counts' must be an object {value_ns: count}")
        return _from_counts(obj["counts"])
    if sources == ["trace_ns"]:
        return _from_trace(obj["trace_ns"])
    return _from_counts(obj)


def load_recorded_timing(path: str | Path) -> RecordedTiming:
    """Load recorded timing from a file (``.npy``, ``.json`` or text), within the bounds.

    Raises:
        ProfileError: the file is missing, unreadable, too large, or holds no usable values;
            the message names the file.
    """
    p = Path(path)
    if not p.is_file():
        raise ProfileError("empirical profile file not found", path=p)
    try:
        size = p.stat().st_size
        if size > MAX_PROFILE_FILE_BYTES:
            raise ProfileError(
                f"empirical profile file is {size} bytes, larger than the "
                f"{MAX_PROFILE_FILE_BYTES} accepted"
            )
        if p.suffix == ".npy":
            return _from_trace(_read_npy(p))
        if p.suffix == ".json":
            if size > MAX_JSON_FILE_BYTES:
                raise ProfileError(
                    f"JSON profile file is {size} bytes, larger than the {MAX_JSON_FILE_BYTES} "
                    "accepted; store long traces as .npy or one integer per line"
                )
            return timing_from_json(json.loads(p.read_bytes()))
        with p.open("rb") as f:
            start = f.read(64).lstrip()
        if start.startswith(b"HISTF"):
            return decode_hdr_histogram(p.read_bytes())
        return _from_trace(_read_text_trace(p))
    except ProfileError as exc:
        raise ProfileError(exc.message, path=p) from None
    except RecursionError:
        raise ProfileError("cannot read empirical profile: JSON nests too deep", path=p) from None
    except (OSError, ValueError) as exc:
        raise ProfileError(f"cannot read empirical profile: {exc}", path=p) from None


def _read_npy(path: Path) -> np.ndarray:
    """A 1-D numeric ``.npy`` array, its header checked against the bounds before reading."""
    with path.open("rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ProfileError(f"unsupported .npy format version {version}; save with np.save")
        except ProfileError:
            raise
        except Exception as exc:  # numpy's header parser also raises SyntaxError, TokenError
            raise ProfileError(f"not a readable .npy file: {type(exc).__name__}: {exc}") from None
        if len(shape) != 1 or dtype.kind not in "iuf" or dtype.hasobject:
            raise ProfileError(
                f"a .npy trace must be 1-D integers or floats, got shape {shape} dtype {dtype}"
            )
        (n,) = shape
        if n > MAX_TRACE_VALUES:
            raise ProfileError(
                f".npy header declares {n} values; a trace holds at most {MAX_TRACE_VALUES}"
            )
        data_bytes = path.stat().st_size - f.tell()
        if data_bytes != n * dtype.itemsize:
            raise ProfileError(
                f".npy header declares {n} values ({n * dtype.itemsize} bytes) but the file "
                f"holds {data_bytes} bytes of data"
            )
        return np.fromfile(f, dtype=dtype, count=n)


def _read_text_trace(path: Path) -> np.ndarray:
    """Integers, whitespace separated (one per line), read line by line within the bounds."""
    values = array.array("q")
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(iter(lambda: f.readline(_MAX_LINE_CHARS + 1), ""), 1):
            if len(line) > _MAX_LINE_CHARS:
                raise ProfileError(
                    f"text profile line {line_no} is longer than {_MAX_LINE_CHARS} characters; "
                    "write one integer ns per line"
                )
            for token in line.split():
                try:
                    value = int(token)
                except ValueError:
                    raise ProfileError(
                        "text profile must hold one HdrHistogram base64 string or one integer "
                        f"ns per line; line {line_no} holds {token[:40]!r}"
                    ) from None
                if not 0 <= value <= MAX_DURATION_NS:
                    raise ProfileError(
                        f"trace value {token[:40]} ns on line {line_no} is outside "
                        f"{_DURATION_RANGE}"
                    )
                if len(values) >= MAX_TRACE_VALUES:
                    raise ProfileError(
                        f"a trace holds at most {MAX_TRACE_VALUES} values; line {line_no} is "
                        "beyond that"
                    )
                values.append(value)
    return np.frombuffer(values, dtype=np.int64) if values else np.empty(0, np.int64)

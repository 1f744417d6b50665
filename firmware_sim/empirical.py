"""Loading recorded timing data for empirical profiles.

Three sources, all reduced to ``(values_ns, weights)`` (a histogram) or ``values_ns`` (a trace):

- an HdrHistogram V2 compressed base64 string (what HdrHistogram tools and the guard's
  histogram export produce); each recorded bucket becomes its *highest equivalent value*,
  as HdrHistogram reports percentiles;
- a ``{value_ns: count}`` mapping;
- a per-tick trace: a sequence of nanosecond values (flight recorder, hardware benchmark).

Files: ``.npy`` (a 1-D integer trace), ``.json`` (an object with exactly one of ``hdr``,
``counts`` or ``trace_ns``, a bare list = trace, or a bare ``{value: count}`` object), or any
other text file holding either one HdrHistogram base64 string or one integer per line (a
trace). The HdrHistogram decoder is our own (no extra dependency).
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tailguard.errors import ProfileError

__all__ = ["RecordedTiming", "decode_hdr_histogram", "load_recorded_timing", "timing_from_json"]

# HdrHistogram encoding cookies, with the word-size nibble (bits 4..7) masked out.
_COOKIE_V2 = 0x1C849303
_COOKIE_V2_COMPRESSED = 0x1C849304
_HEADER = struct.Struct(">iiiiqqd")  # cookie, payload len, offset, digits, lowest, highest, ratio


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


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """Decode one ZigZag LEB128 value (at most 9 bytes, the 9th carrying 8 bits)."""
    value = 0
    for i in range(9):
        if pos >= len(buf):
            raise ProfileError("truncated HdrHistogram payload")
        byte = buf[pos]
        pos += 1
        if i == 8:
            value |= byte << 56
            break
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            break
    return (value >> 1) ^ -(value & 1), pos


def decode_hdr_histogram(text: str | bytes) -> RecordedTiming:
    """Decode an HdrHistogram V2 compressed, base64 string.

    Args:
        text: the base64 string (``HISTF...``), str or bytes; surrounding whitespace ignored.

    Returns:
        A histogram: each non-empty bucket's highest equivalent value (ns) and its count.

    Raises:
        ProfileError: not base64, wrong cookie, corrupt payload or no recorded values.
    """
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ProfileError(f"not a base64 HdrHistogram string: {exc}") from None
    if len(raw) < 8:
        raise ProfileError("HdrHistogram string too short")
    cookie, length = struct.unpack(">ii", raw[:8])
    if cookie & ~0xF0 != _COOKIE_V2_COMPRESSED:
        raise ProfileError(
            f"unsupported HdrHistogram cookie 0x{cookie & 0xFFFFFFFF:08x}; "
            "expected a V2 compressed histogram (base64 'HISTF...')"
        )
    try:
        payload = zlib.decompress(raw[8 : 8 + length])
    except zlib.error as exc:
        raise ProfileError(f"corrupt HdrHistogram payload: {exc}") from None
    if len(payload) < _HEADER.size:
        raise ProfileError("HdrHistogram payload shorter than its header")
    cookie2, counts_len, offset, digits, lowest, _highest, _ratio = _HEADER.unpack_from(payload)
    if cookie2 & ~0xF0 != _COOKIE_V2:
        raise ProfileError(f"unsupported inner HdrHistogram cookie 0x{cookie2 & 0xFFFFFFFF:08x}")
    if offset != 0 or not 0 <= digits <= 5 or lowest < 1:
        raise ProfileError(
            f"unsupported HdrHistogram header (offset={offset}, digits={digits}, lowest={lowest})"
        )
    sub_bucket_count_mag = int(np.ceil(np.log2(2 * 10**digits)))
    half_mag = max(sub_bucket_count_mag - 1, 0)
    half_count = 1 << half_mag
    unit_mag = int(np.floor(np.log2(lowest)))
    values: list[int] = []
    counts: list[int] = []
    body = payload[_HEADER.size : _HEADER.size + counts_len]
    pos, index = 0, 0
    while pos < len(body):
        count, pos = _read_varint(body, pos)
        if count < 0:
            index -= count  # a run of empty buckets
            continue
        if count > 0:
            bucket = (index >> half_mag) - 1
            sub = (index & (half_count - 1)) + half_count
            if bucket < 0:
                sub -= half_count
                bucket = 0
            low = sub << (bucket + unit_mag)
            values.append(low + (1 << (bucket + unit_mag)) - 1)
            counts.append(count)
        index += 1
    if not values:
        raise ProfileError("HdrHistogram holds no recorded values")
    return RecordedTiming(np.asarray(values, np.int64), np.asarray(counts, np.float64))


def _from_counts(counts: Mapping[Any, Any]) -> RecordedTiming:
    items: list[tuple[int, float]] = []
    for key, count in counts.items():
        try:
            value_ns, weight = int(key), float(count)
        except (TypeError, ValueError):
            raise ProfileError(
                f"histogram entries must be {{value_ns: count}} integers, got {key!r}: {count!r}"
            ) from None
        if value_ns < 0 or weight < 0 or not np.isfinite(weight):
            raise ProfileError(f"histogram entry {key!r}: {count!r} must be non-negative")
        if weight > 0:
            items.append((value_ns, weight))
    if not items:
        raise ProfileError("histogram holds no recorded values (all counts are zero)")
    items.sort()
    values = np.asarray([v for v, _ in items], np.int64)
    weights = np.asarray([w for _, w in items], np.float64)
    uniq, inverse = np.unique(values, return_inverse=True)
    return RecordedTiming(uniq, np.bincount(inverse, weights=weights))


def _from_trace(trace: Sequence[Any] | np.ndarray) -> RecordedTiming:
    arr = np.asarray(trace)
    if arr.ndim != 1 or arr.size == 0:
        raise ProfileError(f"a trace must be a non-empty 1-D sequence of ns, got shape {arr.shape}")
    if arr.dtype.kind not in "iuf" or not np.all(np.isfinite(arr)):
        raise ProfileError(f"a trace must hold finite numbers of ns, got dtype {arr.dtype}")
    if np.any(arr < 0):
        raise ProfileError("a trace must not hold negative durations")
    return RecordedTiming(np.rint(arr).astype(np.int64), None)


def timing_from_json(obj: Any) -> RecordedTiming:
    """Build recorded timing from decoded JSON (see the module docstring for the shapes)."""
    if isinstance(obj, list):
        return _from_trace(obj)
    if not isinstance(obj, Mapping):
        raise ProfileError(f"expected a JSON object or list, got {type(obj).__name__}")
    sources = [k for k in ("hdr", "counts", "trace_ns") if k in obj]
    if len(sources) > 1:
        raise ProfileError(f"give exactly one of hdr, counts, trace_ns; got {sources}")
    if sources == ["hdr"]:
        return decode_hdr_histogram(str(obj["hdr"]))
    if sources == ["counts"]:
        if not isinstance(obj["counts"], Mapping):
            raise ProfileError("'counts' must be an object {value_ns: count}")
        return _from_counts(obj["counts"])
    if sources == ["trace_ns"]:
        return _from_trace(obj["trace_ns"])
    return _from_counts(obj)


def load_recorded_timing(path: str | Path) -> RecordedTiming:
    """Load recorded timing from a file (``.npy``, ``.json`` or text).

    Raises:
        ProfileError: the file is missing, unreadable or holds no usable values.
    """
    p = Path(path)
    if not p.is_file():
        raise ProfileError("empirical profile file not found", path=p)
    try:
        if p.suffix == ".npy":
            return _from_trace(np.load(p, allow_pickle=False))
        text = p.read_text()
        if p.suffix == ".json":
            return timing_from_json(json.loads(text))
    except ProfileError as exc:
        raise ProfileError(exc.message, path=p) from None
    except (OSError, ValueError) as exc:
        raise ProfileError(f"cannot read empirical profile: {exc}", path=p) from None
    tokens = text.split()
    if len(tokens) == 1 and tokens[0].startswith("HISTF"):
        try:
            return decode_hdr_histogram(tokens[0])
        except ProfileError as exc:
            raise ProfileError(exc.message, path=p) from None
    try:
        return _from_trace([int(t) for t in tokens])
    except ValueError:
        raise ProfileError(
            "text profile must hold one HdrHistogram base64 string or one integer ns per line",
            path=p,
        ) from None
    except ProfileError as exc:
        raise ProfileError(exc.message, path=p) from None

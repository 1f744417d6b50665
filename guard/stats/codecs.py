"""Codecs of :class:`~tailguard.stats.histogram.LogLinearHistogram`: HdrHistogram V2, hgrm, sparse.

Three formats, each a pair of plain functions (the histogram's ``to_*``/``from_*`` methods
call them):

- HdrHistogram V2 compressed, base64 (:func:`encode_hdr_base64`, :func:`decode_hdr_base64`):
  what HdrHistogram's Java, C, Python, Go and Rust ports read and write;
- HdrHistogram's percentile-distribution text, ``.hgrm`` (:func:`format_hgrm`), what its
  plotter and ``HistogramLogProcessor`` read;
- the sparse telemetry snapshot (:func:`to_sparse`, :func:`from_sparse`): non-empty buckets
  as plain ints and lists, JSON and msgpack safe.

Decoding is bounded before any large allocation or loop, because blobs come from files and
sockets (a 100 kB deflate stream can inflate to 100 MB):

- the layout the header declares may need at most :data:`MAX_DECODE_BUCKETS` buckets
  (four significant digits over the whole int64 range fit; five need fewer than 2**31 ns);
- the payload may declare at most 9 bytes per bucket (the longest varint) and is inflated
  only up to the length it declares; more output is refused;
- every entry must land at or below the bucket of ``highest_trackable_value``, and a run of
  empty buckets is never followed by another empty entry (every HdrHistogram encoder merges
  neighbouring empty buckets into one run), so the number of entries is at most twice the
  number of non-empty buckets.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import itertools
import math
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from tailguard.errors import ConfigError
from tailguard.stats.histogram import LogLinearHistogram, counts_length

__all__ = [
    "MAX_DECODE_BUCKETS",
    "HdrBuckets",
    "decode_hdr_base64",
    "decode_hdr_buckets",
    "encode_hdr_base64",
    "format_hgrm",
    "from_sparse",
    "to_sparse",
]

#: Largest layout (counts entries) a decoder accepts: 16 MiB of counts.
MAX_DECODE_BUCKETS = 1 << 21

_SPARSE_FORMAT = "tailguard.loglinear"
_SPARSE_VERSION = 1
_SPARSE_KEYS = (
    "format",
    "version",
    "significant_digits",
    "highest_trackable_value",
    "indices",
    "counts",
    "clamped_count",
    "invalid_count",
)

# HdrHistogram V2 encoding constants (cookie base | 0x10 word-size nibble, as Java writes).
_V2_ENCODING_COOKIE = 0x1C849303 | 0x10
_V2_COMPRESSED_COOKIE = 0x1C849304 | 0x10
_COOKIE_BASE_MASK = ~0xF0 & 0xFFFFFFFF
_EXTERNAL_HEADER = struct.Struct(">II")  # cookie, compressed length
# cookie, payload length, normalizing offset, digits, lowest, highest, conversion ratio
_PAYLOAD_HEADER = struct.Struct(">IIiiqqd")
_INT64_MAX = 2**63 - 1
_MAX_VARINT_BYTES = 9


# --------------------------------------------------------------------- sparse (telemetry)


def to_sparse(hist: LogLinearHistogram) -> dict[str, Any]:
    """Non-empty buckets and layout as plain ints/strs/lists (JSON and msgpack safe)."""
    view = np.frombuffer(hist.counts, dtype=np.int64)
    nonzero = np.flatnonzero(view)
    return {
        "format": _SPARSE_FORMAT,
        "version": _SPARSE_VERSION,
        "significant_digits": hist.significant_digits,
        "highest_trackable_value": hist.highest_trackable_value,
        "indices": nonzero.tolist(),
        "counts": view[nonzero].tolist(),
        "clamped_count": hist.clamped_count,
        "invalid_count": hist.invalid_count,
    }


def from_sparse(data: Mapping[str, Any]) -> LogLinearHistogram:
    """Rebuild a histogram from :func:`to_sparse` output.

    Raises:
        ConfigError: wrong format/version, missing or unknown keys, bad layout, indices
            not strictly increasing or out of range, counts not positive. Every problem
            found is listed.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"sparse histogram must be a mapping, got {type(data).__name__}")
    problems = []
    for key in data:
        if key not in _SPARSE_KEYS:
            close = difflib.get_close_matches(str(key), _SPARSE_KEYS, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            problems.append(f"unknown key '{key}'{hint}")
    problems += [f"missing key '{key}'" for key in _SPARSE_KEYS if key not in data]
    if problems:
        raise ConfigError("invalid sparse histogram: " + "; ".join(problems))
    if data["format"] != _SPARSE_FORMAT or data["version"] != _SPARSE_VERSION:
        raise ConfigError(
            f"invalid sparse histogram: expected format '{_SPARSE_FORMAT}' version "
            f"{_SPARSE_VERSION}, got '{data['format']}' version {data['version']}"
        )
    counts_len = counts_length(data["significant_digits"], data["highest_trackable_value"])
    if counts_len > MAX_DECODE_BUCKETS:
        raise ConfigError(_layout_too_large(counts_len))
    indices, counts = data["indices"], data["counts"]
    for name, seq in (("indices", indices), ("counts", counts)):
        if not isinstance(seq, list | tuple) or not all(
            isinstance(x, int) and not isinstance(x, bool) for x in seq
        ):
            problems.append(f"'{name}' must be a list of ints")
    for name in ("clamped_count", "invalid_count"):
        value = data[name]
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _INT64_MAX:
            problems.append(f"'{name}' must be an int in [0, 2**63 - 1], got {value!r}")
    if not problems:
        if len(indices) != len(counts):
            problems.append(
                f"'indices' and 'counts' differ in length ({len(indices)} vs {len(counts)})"
            )
        if any(b <= a for a, b in itertools.pairwise(indices)):
            problems.append("'indices' must be strictly increasing")
        if indices and not (indices[0] >= 0 and indices[-1] < counts_len):
            problems.append(f"'indices' must lie in [0, {counts_len})")
        if any(not 0 < c <= _INT64_MAX for c in counts):
            problems.append("'counts' must be positive int64 values")
    if problems:
        raise ConfigError("invalid sparse histogram: " + "; ".join(problems))
    hist = LogLinearHistogram(data["significant_digits"], data["highest_trackable_value"])
    if indices:
        view = np.frombuffer(hist.counts, dtype=np.int64)
        view[np.asarray(indices, dtype=np.int64)] = np.asarray(counts, dtype=np.int64)
    hist.clamped_count = data["clamped_count"]
    hist.invalid_count = data["invalid_count"]
    return hist


# ------------------------------------------------------------------ HdrHistogram V2 base64


def encode_hdr_base64(hist: LogLinearHistogram) -> str:
    """HdrHistogram V2 compressed encoding, base64 (what ``HdrHistogram.decode`` reads).

    Payload header (cookie, length, normalizing offset 0, digits, lowest value 1,
    highest trackable value, conversion ratio 1.0), then the counts up to the last
    non-empty bucket as ZigZag LEB128 varints, runs of >= 2 empty buckets written as
    one negative run length; zlib-deflated behind the compressed-format header.
    The clamped/invalid counters are not part of the format and are not kept.
    """
    view = np.frombuffer(hist.counts, dtype=np.int64)
    nonzero = np.flatnonzero(view)
    counts = view[nonzero].tolist()
    out = bytearray()
    previous = -1
    for index, count in zip(nonzero.tolist(), counts, strict=True):
        gap = index - previous - 1
        if gap == 1:
            _put_zigzag(out, 0)
        elif gap > 1:
            _put_zigzag(out, -gap)
        _put_zigzag(out, count)
        previous = index
    header = _PAYLOAD_HEADER.pack(
        _V2_ENCODING_COOKIE,
        len(out),
        0,
        hist.significant_digits,
        1,
        hist.highest_trackable_value,
        1.0,
    )
    compressed = zlib.compress(header + bytes(out))
    blob = _EXTERNAL_HEADER.pack(_V2_COMPRESSED_COOKIE, len(compressed)) + compressed
    return base64.b64encode(blob).decode("ascii")


@dataclass(frozen=True)
class HdrBuckets:
    """The non-empty buckets of a decoded HdrHistogram, for any ``lowest_discernible_value``.

    Attributes:
        significant_digits: as encoded.
        lowest_discernible_value: as encoded (1 for integer nanoseconds).
        highest_trackable_value: as encoded.
        lowest: lowest value of each non-empty bucket, int64 (n,), increasing.
        highest: highest equivalent value of each non-empty bucket, int64 (n,).
        counts: count of each non-empty bucket, int64 (n,), positive.
    """

    significant_digits: int
    lowest_discernible_value: int
    highest_trackable_value: int
    lowest: npt.NDArray[np.int64]
    highest: npt.NDArray[np.int64]
    counts: npt.NDArray[np.int64]


def decode_hdr_base64(
    encoded: str | bytes, *, max_buckets: int = MAX_DECODE_BUCKETS
) -> LogLinearHistogram:
    """Decode an HdrHistogram V2 compressed base64 histogram (Java, C, Python, Go, Rust).

    Only ``lowest_discernible_value == 1`` and a normalizing offset of 0 are supported
    (what HdrHistogram uses for integer nanoseconds; :func:`decode_hdr_buckets` reads any
    lowest value); the conversion ratio is ignored. Surrounding whitespace is ignored.

    Args:
        encoded: the base64 text (``HISTF...``), str or bytes.
        max_buckets: largest layout accepted, counts entries (see the module docstring).

    Raises:
        ConfigError: anything malformed, unsupported or beyond the bounds; nothing else.
    """
    return _decode(encoded, max_buckets, unit_only=True)[1]


def decode_hdr_buckets(
    encoded: str | bytes, *, max_buckets: int = MAX_DECODE_BUCKETS
) -> HdrBuckets:
    """Decode an HdrHistogram V2 compressed base64 histogram into its non-empty buckets.

    Like :func:`decode_hdr_base64` (same bounds, same errors), but any
    ``lowest_discernible_value >= 1`` is accepted: its layout is the unit layout scaled by
    ``2**floor(log2(lowest))``, as in HdrHistogram.

    Raises:
        ConfigError: anything malformed, unsupported or beyond the bounds; nothing else.
    """
    lowest_discernible, unit = _decode(encoded, max_buckets, unit_only=False)
    shift = lowest_discernible.bit_length() - 1
    low, width, counts = unit.occupied_buckets()
    top = low + (width - 1)  # highest value of each bucket in the unit layout
    if counts.size and (int(top[-1]) << shift) + (1 << shift) - 1 > _INT64_MAX:
        raise ConfigError("HdrHistogram records values beyond the int64 range")
    return HdrBuckets(
        significant_digits=unit.significant_digits,
        lowest_discernible_value=lowest_discernible,
        highest_trackable_value=unit.highest_trackable_value << shift,
        lowest=low << shift,
        highest=(top << shift) + ((1 << shift) - 1),
        counts=counts,
    )


def _decode(
    encoded: str | bytes, max_buckets: int, *, unit_only: bool
) -> tuple[int, LogLinearHistogram]:
    """(lowest_discernible_value, counts in the unit layout) of an encoded histogram."""
    if isinstance(encoded, str):
        try:
            encoded = encoded.strip().encode("ascii")
        except UnicodeEncodeError:
            raise ConfigError("not a base64 HdrHistogram: non-ASCII characters") from None
    elif isinstance(encoded, bytes | bytearray | memoryview):
        encoded = bytes(encoded).strip()
    else:
        raise ConfigError(f"not a base64 HdrHistogram: got {type(encoded).__name__}")
    # base64 of 9 bytes per bucket compresses to less; anything longer is not ours to read.
    if len(encoded) > 2 * _MAX_VARINT_BYTES * max_buckets:
        raise ConfigError(
            f"HdrHistogram text of {len(encoded)} characters is longer than any histogram of "
            f"at most {max_buckets} buckets can be"
        )
    try:
        blob = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ConfigError(f"not a base64 HdrHistogram: {exc}") from None
    if len(blob) < _EXTERNAL_HEADER.size:
        raise ConfigError(f"HdrHistogram blob too short ({len(blob)} bytes)")
    cookie, length = _EXTERNAL_HEADER.unpack_from(blob)
    if cookie & _COOKIE_BASE_MASK != _V2_COMPRESSED_COOKIE & _COOKIE_BASE_MASK:
        raise ConfigError(
            f"unsupported HdrHistogram cookie 0x{cookie:08x}; expected V2 compressed "
            f"0x{_V2_COMPRESSED_COOKIE:08x} (base64 'HISTF...')"
        )
    if length != len(blob) - _EXTERNAL_HEADER.size:
        raise ConfigError(
            f"HdrHistogram length field says {length} bytes, "
            f"found {len(blob) - _EXTERNAL_HEADER.size}"
        )
    inflater = zlib.decompressobj()
    head = _inflate(inflater, blob[_EXTERNAL_HEADER.size :], _PAYLOAD_HEADER.size)
    if len(head) < _PAYLOAD_HEADER.size:
        raise ConfigError(f"HdrHistogram payload too short ({len(head)} bytes)")
    cookie, payload_len, offset, digits, lowest, highest, _ratio = _PAYLOAD_HEADER.unpack(head)
    if cookie & _COOKIE_BASE_MASK != _V2_ENCODING_COOKIE & _COOKIE_BASE_MASK:
        raise ConfigError(f"unsupported HdrHistogram payload cookie 0x{cookie:08x}")
    if offset != 0 or lowest < 1 or (unit_only and lowest != 1):
        raise ConfigError(
            "only HdrHistograms with lowest_discernible_value=1 and normalizing offset 0 "
            f"are supported; got {lowest} and {offset}"
        )
    if highest < 2 * lowest:
        raise ConfigError(
            f"HdrHistogram highest_trackable_value {highest} must be >= 2 * "
            f"lowest_discernible_value ({lowest})"
        )
    unit_highest = highest >> (lowest.bit_length() - 1)
    counts_len = counts_length(digits, unit_highest)  # validates digits and highest
    if counts_len > max_buckets:
        raise ConfigError(_layout_too_large(counts_len, max_buckets))
    if payload_len > _MAX_VARINT_BYTES * counts_len:
        raise ConfigError(
            f"HdrHistogram payload length field says {payload_len} bytes, more than a "
            f"histogram of {counts_len} buckets can need ({_MAX_VARINT_BYTES * counts_len})"
        )
    # Inflate one byte more than declared: output beyond the declared length is refused
    # without ever being produced in full.
    body = _inflate(inflater, inflater.unconsumed_tail, payload_len + 1)
    if len(body) > payload_len or inflater.unconsumed_tail:
        raise ConfigError(
            f"HdrHistogram payload inflates beyond the {payload_len} bytes its header declares"
        )
    if len(body) != payload_len:
        raise ConfigError(
            f"HdrHistogram payload length field says {payload_len} bytes, found {len(body)}"
        )
    hist = LogLinearHistogram(digits, unit_highest)
    _fill_from_varints(hist, memoryview(body))
    return lowest, hist


def _inflate(inflater: Any, data: bytes, max_length: int) -> bytes:
    try:
        return bytes(inflater.decompress(data, max_length))
    except zlib.error as exc:
        raise ConfigError(f"HdrHistogram payload does not inflate: {exc}") from None


def _layout_too_large(counts_len: int, max_buckets: int = MAX_DECODE_BUCKETS) -> str:
    return (
        f"histogram layout needs {counts_len} buckets, more than the {max_buckets} accepted; "
        "record with fewer significant digits or a lower highest_trackable_value"
    )


def _fill_from_varints(hist: LogLinearHistogram, data: memoryview) -> None:
    """Decode ZigZag LEB128 counts (negative = run of empty buckets) into ``hist.counts``."""
    index, pos, end = 0, 0, len(data)
    # Encoders write counts up to the highest recorded value, never past highest_trackable.
    counts, limit = hist.counts, hist.index_of(hist.highest_trackable_value) + 1
    previous_empty = False
    while pos < end:
        raw, shift = 0, 0
        while True:
            if pos >= end:
                raise ConfigError("HdrHistogram counts end inside a varint")
            byte = data[pos]
            pos += 1
            if shift == 56:  # the 9th byte carries 8 bits
                raw |= byte << 56
                break
            raw |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
            shift += 7
        value = (raw >> 1) ^ -(raw & 1)
        if value <= 0:
            if previous_empty:
                raise ConfigError(
                    f"HdrHistogram entry at byte {pos - 1}: two empty entries in a row (every "
                    "encoder writes neighbouring empty buckets as one run); not a valid payload"
                )
            previous_empty = True
            index += 1 if value == 0 else -value
            if index > limit:
                raise ConfigError(
                    f"HdrHistogram run of empty buckets reaches index {index}, beyond the "
                    f"{limit} buckets up to its highest_trackable_value"
                )
            continue
        previous_empty = False
        if index >= limit:
            raise ConfigError(f"HdrHistogram count at index {index} beyond {limit} buckets")
        counts[index] = value
        index += 1


def _put_zigzag(out: bytearray, value: int) -> None:
    """Append ``value`` as HdrHistogram's ZigZag LEB128 (at most 9 bytes, the 9th full)."""
    raw = (value << 1) if value >= 0 else ((-value) << 1) - 1
    for _ in range(8):
        if raw < 0x80:
            out.append(raw)
            return
        out.append((raw & 0x7F) | 0x80)
        raw >>= 7
    out.append(raw & 0xFF)


# ------------------------------------------------------------------------------ hgrm text


def format_hgrm(
    hist: LogLinearHistogram, value_scale: float = 1.0, ticks_per_half_distance: int = 5
) -> str:
    """HdrHistogram's percentile-distribution text (``.hgrm``), as Java prints it.

    Columns Value (divided by ``value_scale``), Percentile (0..1), TotalCount and
    1/(1-Percentile), then ``#[Mean ...]``, ``#[Max ...]`` and ``#[Buckets ...]``
    footer lines. HdrHistogram's plotter and ``HistogramLogProcessor`` read this.

    Args:
        hist: the histogram.
        value_scale: divisor for printed values, e.g. 1000.0 to print microseconds.
        ticks_per_half_distance: report lines per halving of the distance to 100 %.

    Raises:
        ConfigError: ``value_scale`` not positive or ``ticks_per_half_distance`` < 1.
    """
    if not value_scale > 0 or not math.isfinite(value_scale):
        raise ConfigError(f"value_scale must be a positive number, got {value_scale!r}")
    if ticks_per_half_distance < 1:
        raise ConfigError(f"ticks_per_half_distance must be >= 1, got {ticks_per_half_distance!r}")
    digits = hist.significant_digits
    row = f"%12.{digits}f %2.12f %10d %14.2f\n"
    last_row = f"%12.{digits}f %2.12f %10d\n"
    lines = [f"{'Value':>12} {'Percentile':>14} {'TotalCount':>10} {'1/(1-Percentile)':>14}\n\n"]
    view = np.frombuffer(hist.counts, dtype=np.int64)
    nonzero = np.flatnonzero(view)
    if nonzero.size:
        cumulative = np.cumsum(view[nonzero])
        total = int(cumulative[-1])
        reached = 100.0 * cumulative.astype(np.float64) / float(total)
        lowest, width = hist.bucket_bounds(nonzero)
        highest = (lowest + width - 1).tolist()
        level = 0.0
        while True:
            j = int(np.searchsorted(reached, level, side="left"))
            lines.append(
                row
                % (
                    highest[j] / value_scale,
                    level / 100.0,
                    cumulative[j],
                    1.0 / (1.0 - level / 100.0),
                )
            )
            if j == nonzero.size - 1:
                break
            # Java: ticks * 2**(floor(log2(100 / (100 - level))) + 1) steps per halving.
            halvings = int(math.log(100.0 / (100.0 - level)) / math.log(2)) + 1
            level += 100.0 / (ticks_per_half_distance * 2**halvings)
            if level >= 100.0:
                break
        lines.append(last_row % (highest[-1] / value_scale, 1.0, total))
    lines.append(
        f"#[Mean    = %12.{digits}f, StdDeviation   = %12.{digits}f]\n"
        % (hist.mean / value_scale, hist.stddev / value_scale)
    )
    lines.append(
        f"#[Max     = %12.{digits}f, Total count    = %12d]\n"
        % (hist.max_value / value_scale, hist.total_count)
    )
    lines.append(
        f"#[Buckets = {hist.bucket_count:12d}, SubBuckets     = {hist.sub_bucket_count:12d}]\n"
    )
    return "".join(lines)

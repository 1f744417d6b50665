"""Log-linear latency histograms with HdrHistogram's layout and semantics: layout, record, query.

The file formats (HdrHistogram V2 base64, ``.hgrm`` text, the sparse telemetry snapshot)
live in :mod:`tailguard.stats.codecs`; the ``to_*``/``from_*`` methods here call them.

HOT PATH: :meth:`LogLinearHistogram.record` runs once per tick per measured quantity, and
the guard may inline its index computation (see :attr:`LogLinearHistogram.counts`). Keep
it allocation-free and branch-light; ``bench/bench_histogram.py`` measures it.

Layout (identical to HdrHistogram with ``lowest_discernible_value=1``, so counts indices,
encodings and percentiles agree with HdrHistogram tools):

- ``sub_bucket_count = 2**ceil(log2(2 * 10**significant_digits))``, ``sub_bits`` its log2,
  ``half_bits = sub_bits - 1``.
- Values ``0 <= v < sub_bucket_count`` are counted exactly (index ``v``).
- A larger value ``v`` with ``b = v.bit_length() - sub_bits > 0`` lands at index
  ``(b << half_bits) + (v >> b)``: a bucket of width ``2**b`` starting at
  ``(v >> b) << b``. This equals HdrHistogram's
  ``((bucket_index + 1) << half_bits) + sub_bucket_index - 2**half_bits`` with
  ``bucket_index = b`` and ``sub_bucket_index = v >> b``.

Precision guarantee: a value ``v`` is reported back (as a percentile, minimum or maximum)
as a value ``r`` of its own bucket, so ``|r - v| < v * 2**-half_bits``; values below
``sub_bucket_count`` are exact. :attr:`LogLinearHistogram.relative_precision` is that bound
(``2**-7 = 0.78 %`` for the default two significant digits).

Thread safety: none. One thread records; snapshots for telemetry go through :meth:`copy`
or :meth:`to_sparse` from that same thread.
"""

from __future__ import annotations

import array
import math
import numbers
import operator
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from tailguard.errors import ConfigError
from tailguard.stats.percentile import nearest_rank

__all__ = ["LogLinearHistogram", "counts_length"]

_INT64_MAX = 2**63 - 1
_MAX_DIGITS = 5


class LogLinearHistogram:
    """Counts of non-negative integer values (nanoseconds) in log-linear buckets.

    Args:
        significant_digits: decimal digits of precision, 1..5 (HdrHistogram's
            ``significant_figures``); 2 gives a relative error below 0.78 %.
        highest_trackable_value: largest value counted as itself, >= 2; larger values are
            clamped to it (and counted in ``clamped_count``). Default ``2**40`` ns ≈ 18 min.

    Attributes:
        significant_digits: as given.
        highest_trackable_value: as given.
        sub_bucket_count: buckets per power of two (256 for two digits).
        sub_bits: ``log2(sub_bucket_count)``.
        half_bits: ``sub_bits - 1``.
        bucket_count: HdrHistogram's bucket count for this range.
        counts_len: length of ``counts``, ``(bucket_count + 1) << half_bits``.
        counts: ``array.array('q')`` of per-bucket counts. The same object for the
            histogram's whole life (``reset`` zeroes it in place), so a hot loop may hold it
            and do ``counts[idx] += 1`` itself. ``np.frombuffer(counts, np.int64)`` is a
            zero-copy view.
        clamped_count: values recorded out of range (negative -> 0, too large -> highest).
        invalid_count: values that were not numbers at all (NaN, None, ...); not recorded.

    Raises:
        ConfigError: ``significant_digits`` outside 1..5 or ``highest_trackable_value``
            outside ``[2, 2**63 - 1]``.
    """

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by content

    def __init__(self, significant_digits: int = 2, highest_trackable_value: int = 2**40) -> None:
        _check_layout_args(significant_digits, highest_trackable_value)
        self.significant_digits = significant_digits
        self.highest_trackable_value = highest_trackable_value
        # Smallest power of two >= 2 * 10**d, computed in integers (no float log rounding).
        self.sub_bits = (2 * 10**significant_digits - 1).bit_length()
        self.half_bits = self.sub_bits - 1
        self.sub_bucket_count = 1 << self.sub_bits
        self.bucket_count = _bucket_count(self.sub_bucket_count, highest_trackable_value)
        self.counts_len = (self.bucket_count + 1) << self.half_bits
        self.counts = array.array("q", bytes(8 * self.counts_len))
        self.clamped_count = 0
        self.invalid_count = 0
        self._view: npt.NDArray[np.int64] = np.frombuffer(self.counts, dtype=np.int64)
        self._mask = self.sub_bucket_count - 1
        # record() takes its fast path for indices strictly below the top value's bucket;
        # that bucket may hold values above highest_trackable_value, so it is checked exactly.
        self._top_index = self.index_of(highest_trackable_value)
        self._pow2 = np.left_shift(np.int64(1), np.arange(63, dtype=np.int64))

    # ----------------------------------------------------------------------------- layout

    def index_of(self, value: int) -> int:
        """Counts index of ``value`` (HdrHistogram's ``counts_index_for``).

        Raises:
            ConfigError: ``value`` is negative or above ``highest_trackable_value``.
        """
        if not 0 <= value <= self.highest_trackable_value:
            raise ConfigError(
                f"value {value} outside [0, {self.highest_trackable_value}] (nanoseconds)"
            )
        b = value.bit_length() - self.sub_bits
        return (b << self.half_bits) + (value >> b) if b > 0 else value

    def lowest_equivalent_value(self, value: int) -> int:
        """Smallest value counted in the same bucket as ``value``."""
        b = max(value.bit_length() - self.sub_bits, 0)
        return (value >> b) << b

    def highest_equivalent_value(self, value: int) -> int:
        """Largest value counted in the same bucket as ``value``."""
        b = max(value.bit_length() - self.sub_bits, 0)
        return (((value >> b) + 1) << b) - 1

    @property
    def relative_precision(self) -> float:
        """Bound on relative error: every reported value ``r`` for a recorded ``v`` has
        ``|r - v| < v * relative_precision`` (exact below ``sub_bucket_count``)."""
        return 2.0**-self.half_bits

    def bucket_bounds(
        self, indices: npt.ArrayLike
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """Lowest value (ns) and width (ns) of the buckets at counts ``indices``.

        Returns:
            Two int64 arrays shaped like ``indices``; a bucket holds
            ``[lowest, lowest + width - 1]``.
        """
        return self._bounds_of_indices(np.asarray(indices, dtype=np.int64))

    def _bounds_of_indices(
        self, idx: npt.NDArray[np.int64]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """Lowest value and width of the buckets at ``idx`` (vectorized)."""
        half = self.half_bits
        half_count = np.int64(1 << half)
        shift = np.maximum((idx >> half) - 1, 0)
        sub = np.where(idx < half_count, idx, (idx & (half_count - 1)) + half_count)
        return sub << shift, np.left_shift(np.int64(1), shift)

    # ------------------------------------------------------------------------- recording

    def record(self, value: int) -> None:
        """Count one value (nanoseconds). O(1); never raises.

        Negative values count as 0 and values above ``highest_trackable_value`` as that
        value, both also counted in ``clamped_count``. Floats are truncated; NaN and
        non-numbers only increment ``invalid_count``.
        """
        try:
            if value >= 0:
                b = (value | self._mask).bit_length() - self.sub_bits
                i = (b << self.half_bits) + (value >> b)
                if i < self._top_index:
                    self.counts[i] += 1
                    return
        except (TypeError, AttributeError):  # floats, numpy scalars, junk: slow path
            pass
        self._record_slow(value)

    def _record_slow(self, value: object) -> None:
        """Everything :meth:`record` does not handle inline: clamping and conversions."""
        try:
            v = operator.index(value)  # type: ignore[arg-type]
        except TypeError:
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                self.invalid_count += 1
                return
            f = float(value)
            if math.isnan(f):
                self.invalid_count += 1
                return
            if f > self.highest_trackable_value:
                v = self.highest_trackable_value + 1  # also +inf
            elif f < 0.0:
                v = -1  # also -inf
            else:
                v = int(f)
        if v < 0:
            self.clamped_count += 1
            v = 0
        elif v > self.highest_trackable_value:
            self.clamped_count += 1
            v = self.highest_trackable_value
        self.counts[self.index_of(v)] += 1

    def record_many(self, values: npt.ArrayLike) -> None:
        """Count every value of an array (any shape), with the same clamping as :meth:`record`.

        Integer and float arrays are vectorized; other dtypes fall back to :meth:`record`.
        """
        arr = np.asarray(values).ravel()
        if arr.size == 0:
            return
        hi = self.highest_trackable_value
        kind = arr.dtype.kind
        if kind == "f":
            nan = np.isnan(arr)
            self.invalid_count += int(nan.sum())
            arr = arr[~nan]
            # float(hi) may round up to 2**63, which does not fit in int64: test both.
            low, high = arr < 0, (arr > hi) | (arr >= 2.0**63)
            # Cast only values known to fit in int64; clamp the rest afterwards.
            ints = np.where(low | high, 0, arr).astype(np.int64)
        elif kind in "iub":
            low = arr < 0 if kind == "i" else np.zeros(arr.shape, dtype=bool)
            high = arr > hi
            ints = np.where(low | high, 0, arr).astype(np.int64)
        else:
            for item in arr.tolist():
                self.record(item)
            return
        self.clamped_count += int(low.sum()) + int(high.sum())
        ints[high] = hi
        if ints.size:
            self.record_valid(ints)

    def record_valid(self, ints: npt.NDArray[np.int64]) -> None:
        """Count a non-empty int64 array already known to lie in [0, highest_trackable_value].

        The lean path of :meth:`record_many` (no clamping, no dtype handling) for callers
        that validated their values, like the guard folding its tick ring.
        """
        bit_length = np.searchsorted(self._pow2, ints | self._mask, side="right")
        shift = bit_length - self.sub_bits
        idx = (shift << self.half_bits) + (ints >> shift)
        # Count over the occupied index range only: latency samples cluster, so this is a
        # few hundred bins instead of all counts_len.
        lo = int(idx.min())
        counts = np.bincount(idx - lo)
        self._view[lo : lo + counts.size] += counts

    # --------------------------------------------------------------------------- queries

    @property
    def total_count(self) -> int:
        """Number of values recorded (clamped ones included, invalid ones not)."""
        return int(self._view.sum())

    def value_at_percentile(self, percentile: float) -> int:
        """Value at a percentile, with HdrHistogram (Java) semantics.

        The target rank is ``max(1, ceil(p' * N / 100))`` where ``N`` is the total count
        and ``p'`` is ``percentile`` lowered by one ulp (so ``99.9`` of 1000 values is rank
        999, not 1000 from binary rounding): the nearest-rank definition. The answer is the
        *highest* value of the bucket holding the value of that rank (for ``percentile ==
        0``, the *lowest* value of the first non-empty bucket), so it is never below the
        true value at that rank and above it by less than ``relative_precision`` of it.
        Returns 0 for an empty histogram. (The C and Python ports round the rank to nearest
        instead of up; they agree whenever ``p * N / 100`` is an integer.)

        Args:
            percentile: in [0, 100].

        Raises:
            ConfigError: ``percentile`` outside [0, 100] or NaN.
        """
        return self.percentiles((percentile,))[percentile]

    def percentiles(self, percentiles: Iterable[float]) -> dict[float, int]:
        """Several :meth:`value_at_percentile` answers from one pass over the counts.

        Returns:
            ``{percentile: value}`` (nanoseconds), keys as given.

        Raises:
            ConfigError: any percentile outside [0, 100] or NaN.
        """
        keys = [float(p) for p in percentiles]
        bad = sorted({p for p in keys if not 0.0 <= p <= 100.0}, key=str)
        if bad:
            raise ConfigError(f"percentiles must be in [0, 100]; got {bad}")
        # Window queries run every k ticks with the GIL held: one cumsum and one
        # searchsorted over the counts; the few per-percentile steps stay in plain Python.
        cumulative = np.cumsum(self._view)
        total = int(cumulative[-1])
        if total == 0:
            return dict.fromkeys(keys, 0)
        ranks = [nearest_rank(p, total) for p in keys]
        found = np.searchsorted(cumulative, ranks, side="left").tolist()
        result = {}
        for p, index in zip(keys, found, strict=True):
            lowest, width = self._bucket_at(min(index, self.counts_len - 1))
            result[p] = lowest if p == 0.0 else lowest + width - 1
        return result

    def _bucket_at(self, index: int) -> tuple[int, int]:
        """Lowest value and width of the bucket at counts index ``index``."""
        if index < self.sub_bucket_count:
            return index, 1
        half = self.half_bits
        shift = (index >> half) - 1
        return ((index & ((1 << half) - 1)) + (1 << half)) << shift, 1 << shift

    def _occupied_range(self) -> tuple[int, int] | None:
        """First and last non-empty counts index, or None when empty."""
        occupied = self._view != 0
        first = int(occupied.argmax())
        if not occupied[first]:
            return None
        return first, self.counts_len - 1 - int(occupied[::-1].argmax())

    @property
    def min_value(self) -> int:
        """Lowest value of the lowest non-empty bucket (0 when empty)."""
        occupied = self._occupied_range()
        return 0 if occupied is None else self._bucket_at(occupied[0])[0]

    @property
    def max_value(self) -> int:
        """Highest value of the highest non-empty bucket (0 when empty)."""
        occupied = self._occupied_range()
        if occupied is None:
            return 0
        lowest, width = self._bucket_at(occupied[1])
        return lowest + width - 1

    def occupied_buckets(
        self,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """(lowest value, width, count) of every non-empty bucket, in value order."""
        nonzero = np.flatnonzero(self._view)
        lowest, width = self._bounds_of_indices(nonzero)
        return lowest, width, self._view[nonzero].copy()

    def _medians_and_counts(self) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """Per non-empty bucket: HdrHistogram's median-equivalent value and the count."""
        lowest, width, counts = self.occupied_buckets()
        medians = (lowest + (width >> 1)).astype(np.float64)
        return medians, counts.astype(np.float64)

    @property
    def mean(self) -> float:
        """Mean (nanoseconds) over bucket midpoints, as HdrHistogram computes it; 0.0 if empty."""
        medians, counts = self._medians_and_counts()
        total = counts.sum()
        return float((medians * counts).sum() / total) if total else 0.0

    @property
    def stddev(self) -> float:
        """Population standard deviation (nanoseconds) over bucket midpoints; 0.0 if empty."""
        medians, counts = self._medians_and_counts()
        total = counts.sum()
        if not total:
            return 0.0
        mean = (medians * counts).sum() / total
        return float(math.sqrt(((medians - mean) ** 2 * counts).sum() / total))

    # ----------------------------------------------------------------------- combination

    def _check_layout(self, other: object) -> LogLinearHistogram:
        if not isinstance(other, LogLinearHistogram):
            raise TypeError(f"expected a LogLinearHistogram, got {type(other).__name__}")
        if (other.significant_digits, other.highest_trackable_value) != (
            self.significant_digits,
            self.highest_trackable_value,
        ):
            raise ConfigError(
                "histogram layouts differ: expected significant_digits="
                f"{self.significant_digits}, highest_trackable_value="
                f"{self.highest_trackable_value}; got {other.significant_digits}, "
                f"{other.highest_trackable_value}. Create both with the same arguments."
            )
        return other

    def merge(self, other: LogLinearHistogram) -> None:
        """Add ``other``'s counts (and clamped/invalid counters) into this histogram.

        Raises:
            TypeError: ``other`` is not a ``LogLinearHistogram``.
            ConfigError: ``other`` has a different layout.
        """
        other = self._check_layout(other)
        self._view += other._view
        self.clamped_count += other.clamped_count
        self.invalid_count += other.invalid_count

    def copy(self) -> LogLinearHistogram:
        """An independent histogram with the same layout, counts and counters."""
        clone = LogLinearHistogram(self.significant_digits, self.highest_trackable_value)
        clone._view[:] = self._view
        clone.clamped_count = self.clamped_count
        clone.invalid_count = self.invalid_count
        return clone

    def reset(self) -> None:
        """Zero every count and counter in place (``counts`` stays the same object)."""
        self._view[:] = 0
        self.clamped_count = 0
        self.invalid_count = 0

    def __eq__(self, other: object) -> bool:
        """Same layout and same bucket counts (the clamped/invalid counters are ignored)."""
        if not isinstance(other, LogLinearHistogram):
            return NotImplemented
        return (
            self.significant_digits == other.significant_digits
            and self.highest_trackable_value == other.highest_trackable_value
            and bool(np.array_equal(self._view, other._view))
        )

    def __repr__(self) -> str:
        return (
            f"LogLinearHistogram(significant_digits={self.significant_digits}, "
            f"highest_trackable_value={self.highest_trackable_value}, "
            f"total_count={self.total_count})"
        )

    # ------------------------------------------------------- codecs (tailguard.stats.codecs)

    def to_sparse(self) -> dict[str, Any]:
        """Non-empty buckets and layout as plain ints/strs/lists (see ``codecs.to_sparse``)."""
        from tailguard.stats import codecs

        return codecs.to_sparse(self)

    @classmethod
    def from_sparse(cls, data: Mapping[str, Any]) -> LogLinearHistogram:
        """Rebuild a histogram from :meth:`to_sparse` output (see ``codecs.from_sparse``).

        Raises:
            ConfigError: malformed snapshot; every problem found is listed.
        """
        from tailguard.stats import codecs

        return codecs.from_sparse(data)

    def to_hdr_base64(self) -> str:
        """HdrHistogram V2 compressed encoding, base64 (see ``codecs.encode_hdr_base64``)."""
        from tailguard.stats import codecs

        return codecs.encode_hdr_base64(self)

    @classmethod
    def from_hdr_base64(cls, encoded: str | bytes) -> LogLinearHistogram:
        """Decode an HdrHistogram V2 compressed base64 histogram, with bounded memory and
        work (see ``codecs.decode_hdr_base64``).

        Raises:
            ConfigError: anything malformed, unsupported or beyond the decoder's bounds.
        """
        from tailguard.stats import codecs

        return codecs.decode_hdr_base64(encoded)

    def to_hgrm(self, value_scale: float = 1.0, ticks_per_half_distance: int = 5) -> str:
        """HdrHistogram's percentile-distribution text (see ``codecs.format_hgrm``).

        Raises:
            ConfigError: ``value_scale`` not positive or ``ticks_per_half_distance`` < 1.
        """
        from tailguard.stats import codecs

        return codecs.format_hgrm(self, value_scale, ticks_per_half_distance)


def counts_length(significant_digits: int, highest_trackable_value: int) -> int:
    """Length of the counts array of a layout, computed without allocating it.

    Raises:
        ConfigError: ``significant_digits`` outside 1..5 or ``highest_trackable_value``
            outside ``[2, 2**63 - 1]``.
    """
    _check_layout_args(significant_digits, highest_trackable_value)
    sub_bits = (2 * 10**significant_digits - 1).bit_length()
    return (_bucket_count(1 << sub_bits, highest_trackable_value) + 1) << (sub_bits - 1)


def _bucket_count(sub_bucket_count: int, highest_trackable_value: int) -> int:
    bucket_count = 1
    while sub_bucket_count << (bucket_count - 1) <= highest_trackable_value:
        bucket_count += 1
    return bucket_count


def _check_layout_args(significant_digits: object, highest_trackable_value: object) -> None:
    if (
        isinstance(significant_digits, bool)
        or not isinstance(significant_digits, int)
        or not 1 <= significant_digits <= _MAX_DIGITS
    ):
        raise ConfigError(
            f"significant_digits must be an int in 1..{_MAX_DIGITS}, got {significant_digits!r}"
        )
    if (
        isinstance(highest_trackable_value, bool)
        or not isinstance(highest_trackable_value, int)
        or not 2 <= highest_trackable_value <= _INT64_MAX
    ):
        raise ConfigError(
            "highest_trackable_value must be an int in [2, 2**63 - 1] (nanoseconds), "
            f"got {highest_trackable_value!r}"
        )

"""tailguard.stats.histogram and .codecs: HdrHistogram layout, precision, percentiles, encodings."""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import math
import struct
import zlib
from fractions import Fraction

import msgpack
import numpy as np
import pytest
from hdrh.histogram import HdrHistogram
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tailguard.errors import ConfigError
from tailguard.stats import codecs
from tailguard.stats.codecs import MAX_DECODE_BUCKETS, _put_zigzag
from tailguard.stats.histogram import LogLinearHistogram, counts_length

HIGHEST_NS = 2**40
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Latency-like values: mostly 10 us .. 10 ms, with exact small values and the range edges.
latencies = st.one_of(
    st.integers(0, 600),
    st.integers(10_000, 10_000_000),
    st.integers(0, HIGHEST_NS),
    st.sampled_from([255, 256, 257, 511, 512, 513, HIGHEST_NS - 1, HIGHEST_NS]),
)
value_lists = st.lists(latencies, min_size=1, max_size=300)
percentile_values = st.one_of(
    st.floats(0.0, 100.0, allow_nan=False),
    st.sampled_from([0.0, 0.1, 1.0, 25.0, 50.0, 90.0, 95.0, 99.0, 99.9, 99.99, 100.0]),
)


# ------------------------------------------------------------------ reference model


def reference_rank(percentile: float, n: int) -> int:
    """The documented rank: max(1, ceil(nextafter(p, -inf) * n / 100)), clamped to [1, n]."""
    requested = min(max(math.nextafter(percentile, -math.inf), 0.0), 100.0)
    return min(max(math.ceil(requested * n / 100.0), 1), n)


def reference_value_at_percentile(values: list[int], percentile: float) -> int:
    """Plain nearest-rank percentile of a sorted list, no buckets."""
    ordered = sorted(values)
    return ordered[reference_rank(percentile, len(ordered)) - 1]


def hdr_twin(values: list[int], digits: int = 2, highest: int = HIGHEST_NS) -> HdrHistogram:
    """The hdrhistogram package's histogram of the same values."""
    hdr = HdrHistogram(1, highest, digits)
    for value in values:
        hdr.record_value(value)
    return hdr


def filled(values: list[int], digits: int = 2, highest: int = HIGHEST_NS) -> LogLinearHistogram:
    hist = LogLinearHistogram(digits, highest)
    for value in values:
        hist.record(value)
    return hist


def hdr_counts(hdr: HdrHistogram) -> list[int]:
    return [hdr.get_count_at_index(i) for i in range(hdr.counts_len)]


# ------------------------------------------------------------------------- layout


@pytest.mark.parametrize("digits", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("highest", [2, 255, 256, 1000, 2**20, 2**40, 2**62, 2**63 - 1])
def test_layout_matches_hdrhistogram(digits: int, highest: int) -> None:
    """sub-bucket count, bucket count and counts length equal hdrhistogram's."""
    ours = LogLinearHistogram(digits, highest)
    hdr = HdrHistogram(1, highest, digits)
    assert ours.sub_bucket_count == hdr.sub_bucket_count == 1 << ours.sub_bits
    assert ours.half_bits == hdr.sub_bucket_half_count_magnitude == ours.sub_bits - 1
    assert ours.bucket_count == hdr.bucket_count
    assert ours.counts_len == hdr.counts_len == len(ours.counts)


def test_default_layout() -> None:
    """Two digits give 256 sub-buckets (8 bits, half 7) and an int64 array of counts."""
    hist = LogLinearHistogram()
    assert (hist.sub_bucket_count, hist.sub_bits, hist.half_bits) == (256, 8, 7)
    assert hist.highest_trackable_value == HIGHEST_NS
    assert hist.counts.typecode == "q"
    assert hist.index_of(HIGHEST_NS) < hist.counts_len


def bucket_edges(hist: LogLinearHistogram) -> list[int]:
    """Values on both sides of every bucket and half-bucket boundary up to the top."""
    edges = {0, 1, hist.highest_trackable_value}
    for shift in range(hist.highest_trackable_value.bit_length() + 1):
        for base in (hist.sub_bucket_count >> 1, hist.sub_bucket_count):
            for delta in (-1, 0, 1):
                value = (base << shift) + delta
                if 0 <= value <= hist.highest_trackable_value:
                    edges.add(value)
    return sorted(edges)


@pytest.mark.parametrize("digits", [1, 2, 3])
def test_index_formula_matches_hdrhistogram_at_bucket_edges(digits: int) -> None:
    """The inline index formula, index_of and hdrhistogram's counts index agree at every edge."""
    hist = LogLinearHistogram(digits)
    hdr = HdrHistogram(1, HIGHEST_NS, digits)
    sub_bits, half_bits = hist.sub_bits, hist.half_bits
    for v in bucket_edges(hist):
        b = v.bit_length() - sub_bits
        inline = (b << half_bits) + (v >> b) if b > 0 else v
        assert inline == hist.index_of(v) == hdr.get_counts_array_index(v), v


@SETTINGS
@given(st.integers(0, HIGHEST_NS))
def test_index_and_equivalent_values_match_hdrhistogram(value: int) -> None:
    """Counts index and lowest/highest equivalent values equal hdrhistogram's for any value."""
    hist = LogLinearHistogram()
    hdr = HdrHistogram(1, HIGHEST_NS, 2)
    assert hist.index_of(value) == hdr.get_counts_array_index(value)
    assert hist.lowest_equivalent_value(value) == hdr.get_lowest_equivalent_value(value)
    assert hist.highest_equivalent_value(value) == hdr.get_highest_equivalent_value(value)


@pytest.mark.parametrize("digits", [1, 2, 3])
def test_bucket_bounds_match_hdrhistogram_for_every_index(digits: int) -> None:
    """bucket_bounds(i) is [value_from_index(i), highest_equivalent] as in hdrhistogram."""
    hist = LogLinearHistogram(digits)
    hdr = HdrHistogram(1, HIGHEST_NS, digits)
    lowest, width = hist.bucket_bounds(np.arange(hist.counts_len))
    for index in range(hist.counts_len):
        low = hdr.get_value_from_index(index)
        assert lowest[index] == low, index
        assert lowest[index] + width[index] - 1 == hdr.get_highest_equivalent_value(low)


@pytest.mark.parametrize("digits", [1, 2, 3, 4, 5])
def test_relative_precision_is_at_least_the_significant_digits(digits: int) -> None:
    """relative_precision is 2**-half_bits and never coarser than 10**-significant_digits."""
    hist = LogLinearHistogram(digits)
    assert hist.relative_precision == 2.0**-hist.half_bits
    assert hist.relative_precision <= 10.0**-digits


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([1, 2, 3]), st.integers(0, HIGHEST_NS))
def test_bucket_bounds_respect_relative_precision(digits: int, value: int) -> None:
    """Every value's bucket [lo, hi] contains it and hi - lo < lo * relative_precision."""
    hist = LogLinearHistogram(digits)
    lo = hist.lowest_equivalent_value(value)
    hi = hist.highest_equivalent_value(value)
    assert lo <= value <= hi
    assert hi - value < value * hist.relative_precision or hi == value
    assert value - lo < value * hist.relative_precision or lo == value
    if value < hist.sub_bucket_count:
        assert lo == hi == value


def test_counts_is_a_zero_copy_numpy_buffer() -> None:
    """np.frombuffer(counts) shares memory with the histogram, before and after reset()."""
    hist = LogLinearHistogram()
    counts = hist.counts
    view = np.frombuffer(counts, np.int64)
    hist.record(1000)
    assert view[hist.index_of(1000)] == 1
    hist.reset()
    assert hist.counts is counts and not view.any()
    counts[hist.index_of(5)] += 3  # what an inlined hot path does
    assert hist.total_count == 3 and hist.value_at_percentile(50) == 5


# ---------------------------------------------------------------------- recording


@SETTINGS
@given(value_lists)
def test_recorded_counts_equal_hdrhistogram(values: list[int]) -> None:
    """record() puts every value in the same bucket hdrhistogram does."""
    assert list(filled(values).counts) == hdr_counts(hdr_twin(values))


@SETTINGS
@given(
    st.lists(
        st.one_of(
            st.integers(-(2**62), 2**62),
            st.floats(-1e13, 1e13, allow_nan=False),
            st.sampled_from([math.inf, -math.inf, math.nan]),
        ),
        max_size=200,
    )
)
def test_record_many_equals_record_one_by_one(values: list[float]) -> None:
    """record_many on an int or float array gives the same counts and counters as record()."""
    as_float = np.asarray(values, dtype=np.float64)
    as_int = np.asarray([int(v) for v in values if math.isfinite(v)], dtype=np.int64)
    for array in (as_float, as_int):
        one_by_one = LogLinearHistogram()
        for item in array.tolist():
            one_by_one.record(item)
        vectorized = LogLinearHistogram()
        vectorized.record_many(array)
        assert vectorized == one_by_one
        assert vectorized.clamped_count == one_by_one.clamped_count
        assert vectorized.invalid_count == one_by_one.invalid_count


def test_record_many_clamps_floats_at_the_int64_limit() -> None:
    """With highest 2**63 - 1, floats at or above 2**63 clamp instead of overflowing."""
    hist = LogLinearHistogram(2, 2**63 - 1)
    hist.record_many(np.array([2.0**63, 1e30, 2.0**62, -1e30]))
    assert hist.clamped_count == 3 and hist.total_count == 4
    assert hist.counts[hist.index_of(2**63 - 1)] == 2 and hist.counts[0] == 1


def test_record_many_handles_uint64_and_object_arrays() -> None:
    """Huge unsigned values clamp; object arrays fall back to record() without raising."""
    hist = LogLinearHistogram()
    hist.record_many(np.array([5, 2**64 - 1], dtype=np.uint64))
    hist.record_many(np.array([7, None, "x"], dtype=object))
    assert hist.total_count == 3 and hist.clamped_count == 1 and hist.invalid_count == 2
    assert hist.max_value == hist.highest_equivalent_value(HIGHEST_NS)


@pytest.mark.parametrize(
    ("value", "recorded_as", "clamped", "invalid"),
    [
        (-1, 0, 1, 0),
        (-(2**70), 0, 1, 0),
        (HIGHEST_NS, HIGHEST_NS, 0, 0),
        (HIGHEST_NS + 1, HIGHEST_NS, 1, 0),
        (2**80, HIGHEST_NS, 1, 0),
        (math.inf, HIGHEST_NS, 1, 0),
        (-math.inf, 0, 1, 0),
        (12.9, 12, 0, 0),
        (np.int64(300), 300, 0, 0),
        (np.float32(7.5), 7, 0, 0),
        (True, 1, 0, 0),
        (math.nan, None, 0, 1),
        (None, None, 0, 1),
        ("123", None, 0, 1),
        (object(), None, 0, 1),
    ],
)
def test_record_clamps_and_counts_out_of_range_values(
    value: object, recorded_as: int | None, clamped: int, invalid: int
) -> None:
    """record() never raises: out-of-range values clamp and are counted, junk is counted."""
    hist = LogLinearHistogram()
    hist.record(value)  # type: ignore[arg-type]
    assert (hist.clamped_count, hist.invalid_count) == (clamped, invalid)
    if recorded_as is None:
        assert hist.total_count == 0
    else:
        assert hist.total_count == 1
        assert hist.counts[hist.index_of(recorded_as)] == 1


def test_values_in_the_top_bucket_above_the_limit_are_clamped() -> None:
    """A value sharing the top value's bucket but above it still counts as clamped."""
    hist = LogLinearHistogram(2, 1000)
    assert hist.highest_equivalent_value(1000) > 1000
    hist.record(1001)
    hist.record(1000)
    assert hist.clamped_count == 1 and hist.counts[hist.index_of(1000)] == 2


# ---------------------------------------------------------------------- percentiles


@SETTINGS
@given(value_lists, st.lists(percentile_values, min_size=1, max_size=8))
def test_percentiles_match_reference_within_precision(
    values: list[int], percentiles: list[float]
) -> None:
    """value_at_percentile is the bucket top of the nearest-rank value, within precision."""
    hist = filled(values)
    answers = hist.percentiles(percentiles)
    for p in percentiles:
        expected = reference_value_at_percentile(values, p)
        got = answers[p]
        assert got == hist.value_at_percentile(p)
        if p == 0.0:
            assert got == hist.lowest_equivalent_value(expected)
        else:
            assert got == hist.highest_equivalent_value(expected)
        assert abs(got - expected) < expected * hist.relative_precision or got == expected


@SETTINGS
@given(value_lists, st.lists(percentile_values, min_size=1, max_size=5))
def test_percentiles_match_hdrhistogram(values: list[int], percentiles: list[float]) -> None:
    """Our percentiles equal hdrhistogram's at the same target rank (it rounds, we ceil)."""
    hist, hdr = filled(values), hdr_twin(values)
    n = len(values)
    for p in percentiles:
        ours = hist.value_at_percentile(p)
        if p == 0.0:
            assert ours == hdr.get_value_at_percentile(0.0)
            continue
        rank = reference_rank(p, n)
        assert ours == hdr.get_value_at_percentile(100.0 * rank / n)
        if max(int(p * n / 100 + 0.5), 1) == rank:  # both rank rules agree here
            assert ours == hdr.get_value_at_percentile(p)


@pytest.mark.parametrize(
    ("values", "percentile", "expected"),
    [
        (list(range(1, 1001)), 99.9, 999),
        (list(range(1, 1001)), 50.0, 500),
        (list(range(1, 1001)), 0.0, 1),
        (list(range(1, 1001)), 0.05, 1),
        (list(range(1, 1001)), 100.0, 1000),
        ([10, 20, 30], 50.0, 20),
        ([10, 20, 30], 33.3, 10),
        ([10, 20, 30], 66.7, 30),
        ([10, 20, 30], 66.6, 20),
        ([42], 99.0, 42),
    ],
)
def test_rank_is_nearest_rank_of_the_decimal_percentile(
    values: list[int], percentile: float, expected: int
) -> None:
    """Exact small values: the answer is the ceil(p * N / 100)-th smallest value."""
    hist = filled(values, digits=3)
    assert hist.value_at_percentile(percentile) == expected
    nearest_rank = max(math.ceil(Fraction(str(percentile)) * len(values) / 100), 1)
    assert sorted(values)[nearest_rank - 1] == expected


@SETTINGS
@given(value_lists)
def test_min_max_mean_stddev_match_hdrhistogram(values: list[int]) -> None:
    """min/max (bucket bounds), mean and stddev (bucket midpoints) equal hdrhistogram's."""
    hist, hdr = filled(values), hdr_twin(values)
    assert hist.total_count == hdr.get_total_count() == len(values)
    assert hist.min_value == hdr.get_min_value()
    assert hist.max_value == hdr.get_max_value()
    assert hist.mean == pytest.approx(hdr.get_mean_value(), rel=1e-12)
    assert hist.stddev == pytest.approx(hdr.get_stddev(), rel=1e-9, abs=1e-9)
    assert abs(hist.mean - np.mean(values)) <= np.mean(values) * hist.relative_precision


def test_empty_histogram_queries_are_zero() -> None:
    """An empty histogram answers 0 everywhere instead of raising."""
    hist = LogLinearHistogram()
    assert hist.total_count == 0
    assert hist.percentiles([0.0, 50.0, 100.0]) == {0.0: 0, 50.0: 0, 100.0: 0}
    assert (hist.min_value, hist.max_value, hist.mean, hist.stddev) == (0, 0, 0.0, 0.0)


@pytest.mark.parametrize("percentile", [-0.1, 100.01, math.nan, math.inf])
def test_percentile_out_of_range_raises(percentile: float) -> None:
    """Percentiles outside [0, 100] raise ValueError naming the range."""
    hist = filled([1, 2, 3])
    with pytest.raises(ValueError, match=r"in \[0, 100\]"):
        hist.value_at_percentile(percentile)


# ---------------------------------------------------------------- merge, copy, eq


@SETTINGS
@given(value_lists, value_lists)
def test_merge_equals_recording_everything_into_one(first: list[int], second: list[int]) -> None:
    """merge(a, b) has exactly the counts of one histogram that saw both inputs."""
    merged = filled(first)
    merged.record(-1)
    other = filled(second)
    merged.merge(other)
    together = filled([*first, -1, *second])
    assert merged == together
    assert merged.clamped_count == together.clamped_count == 1
    assert merged.percentiles([50.0, 99.0]) == together.percentiles([50.0, 99.0])


def test_copy_is_independent_and_reset_keeps_the_array() -> None:
    """copy() shares nothing; reset() zeroes counts and counters in place."""
    hist = filled([5, 500, 50_000, -3])
    clone = hist.copy()
    assert clone == hist and clone.counts is not hist.counts
    assert clone.clamped_count == 1
    clone.record(7)
    assert clone != hist
    counts = hist.counts
    hist.reset()
    assert hist.counts is counts and hist.total_count == 0 and hist.clamped_count == 0
    assert hist == LogLinearHistogram()


@pytest.mark.parametrize(
    ("other", "error", "fragment"),
    [
        (LogLinearHistogram(3), ValueError, "layouts differ"),
        (LogLinearHistogram(2, 2**30), ValueError, "highest_trackable_value=1099511627776"),
        (HdrHistogram(1, HIGHEST_NS, 2), TypeError, "expected a LogLinearHistogram"),
    ],
)
def test_merge_rejects_other_layouts(other: object, error: type, fragment: str) -> None:
    """merge() refuses histograms of another layout or type with a clear message."""
    with pytest.raises(error, match=fragment):
        LogLinearHistogram().merge(other)  # type: ignore[arg-type]


def test_equality_needs_same_layout() -> None:
    """Histograms with equal counts but different layouts are not equal."""
    assert LogLinearHistogram(2) != LogLinearHistogram(3)
    assert LogLinearHistogram(2, 2**30) != LogLinearHistogram(2)
    assert LogLinearHistogram() != "histogram"


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ((0,), "significant_digits"),
        ((6,), "significant_digits"),
        ((2.0,), "significant_digits"),
        ((True,), "significant_digits"),
        ((2, 1), "highest_trackable_value"),
        ((2, 2**63), "highest_trackable_value"),
        ((2, 1e9), "highest_trackable_value"),
    ],
)
def test_bad_constructor_arguments_raise(args: tuple[object, ...], fragment: str) -> None:
    """Out-of-range or non-int layout arguments raise ValueError naming the argument."""
    with pytest.raises(ValueError, match=fragment):
        LogLinearHistogram(*args)  # type: ignore[arg-type]


# ------------------------------------------------------------- HdrHistogram base64


@SETTINGS
@given(st.sampled_from([1, 2, 3]), value_lists)
def test_base64_is_decoded_by_hdrhistogram_with_equal_counts(
    digits: int, values: list[int]
) -> None:
    """hdrh decodes our V2 blob to the same layout, counts and percentiles."""
    hist = filled(values, digits)
    decoded = HdrHistogram.decode(hist.to_hdr_base64())
    assert decoded.significant_figures == digits
    assert decoded.highest_trackable_value == HIGHEST_NS
    assert hdr_counts(decoded) == list(hist.counts)
    assert decoded.get_total_count() == hist.total_count
    assert decoded.get_value_at_percentile(100.0) == hist.value_at_percentile(100.0)


@SETTINGS
@given(value_lists)
def test_base64_round_trips_both_ways(values: list[int]) -> None:
    """Ours -> ours and hdrh -> ours both reproduce the counts exactly."""
    hist = filled(values)
    assert LogLinearHistogram.from_hdr_base64(hist.to_hdr_base64()) == hist
    assert LogLinearHistogram.from_hdr_base64(hdr_twin(values).encode()) == hist


def test_base64_header_matches_hdrhistogram_and_large_counts_survive() -> None:
    """Payload header bytes equal hdrh's; counts needing 9-byte varints round-trip."""
    hist = filled([3, 3_000, 3_000_000])
    hdr = hdr_twin([3, 3_000, 3_000_000])
    ours = zlib.decompress(base64.b64decode(hist.to_hdr_base64())[8:])
    theirs = zlib.decompress(base64.b64decode(hdr.encode())[8:])
    assert ours[:4] == theirs[:4] and ours[8:40] == theirs[8:40]
    hist.counts[hist.index_of(70)] = 2**62 - 1  # hdrh's decoder drops bit 63 of a count
    hist.counts[hist.index_of(80)] = 2**56 + 5
    decoded = HdrHistogram.decode(hist.to_hdr_base64())
    assert hdr_counts(decoded) == list(hist.counts)
    hist.counts[hist.index_of(90)] = 2**63 - 1
    assert LogLinearHistogram.from_hdr_base64(hist.to_hdr_base64()) == hist


def test_empty_histogram_encodes() -> None:
    """An empty histogram encodes, and decodes (by us and hdrh) as empty."""
    blob = LogLinearHistogram().to_hdr_base64()
    assert LogLinearHistogram.from_hdr_base64(blob) == LogLinearHistogram()
    assert HdrHistogram.decode(blob).get_total_count() == 0


def _blob(payload_header: tuple[int, ...], varints: bytes = b"", cookie: int = 0x1C849314) -> str:
    payload = struct.pack(">IIiiqqd", *payload_header) + varints
    compressed = zlib.compress(payload)
    return base64.b64encode(struct.pack(">II", cookie, len(compressed)) + compressed).decode()


_GOOD_HEADER = (0x1C849313, 0, 0, 2, 1, HIGHEST_NS, 1.0)


@pytest.mark.parametrize(
    ("blob", "fragment"),
    [
        ("not base64 !!", "base64"),
        (base64.b64encode(b"abc").decode(), "too short"),
        (_blob(_GOOD_HEADER, cookie=0x1C849301), "cookie"),
        (
            base64.b64encode(struct.pack(">II", 0x1C849314, 99) + b"xyz").decode(),
            "length field",
        ),
        (base64.b64encode(struct.pack(">II", 0x1C849314, 3) + b"xyz").decode(), "inflate"),
        (_blob((0x1C849999, 0, 0, 2, 1, HIGHEST_NS, 1.0)), "payload cookie"),
        (_blob((0x1C849313, 5, 0, 2, 1, HIGHEST_NS, 1.0)), "payload length"),
        (_blob((0x1C849313, 0, 0, 2, 1000, HIGHEST_NS, 1.0)), "lowest_discernible_value=1"),
        (_blob((0x1C849313, 0, 4, 2, 1, HIGHEST_NS, 1.0)), "normalizing offset"),
        (_blob((0x1C849313, 0, 0, 7, 1, HIGHEST_NS, 1.0)), "significant_digits"),
        (_blob((0x1C849313, 0, 0, 2, 1, 1, 1.0)), "highest_trackable_value"),
        (_blob((0x1C849313, 1, 0, 2, 1, HIGHEST_NS, 1.0), b"\x80"), "inside a varint"),
        (_blob((0x1C849313, 4, 0, 2, 1, 300, 1.0), b"\xff\x0f\x02\x02"), "beyond"),
    ],
)
def test_malformed_base64_raises_config_error(blob: str, fragment: str) -> None:
    """Every malformed or unsupported blob raises ConfigError saying what is wrong."""
    with pytest.raises(ConfigError, match=fragment):
        LogLinearHistogram.from_hdr_base64(blob)


def test_decompression_is_bounded() -> None:
    """A small blob that inflates past the length its header declares is refused."""
    bomb = _blob(_GOOD_HEADER, bytes(65 * 2**20))
    assert len(bomb) < 200_000
    with pytest.raises(ConfigError, match="inflates beyond the 0 bytes"):
        LogLinearHistogram.from_hdr_base64(bomb)


def test_declared_payload_longer_than_the_layout_can_need_is_refused() -> None:
    """A header declaring more than 9 bytes per bucket is refused before inflating the rest."""
    hist = LogLinearHistogram()
    blob = _blob((0x1C849313, 9 * hist.counts_len + 1, 0, 2, 1, HIGHEST_NS, 1.0), b"\x02")
    with pytest.raises(ConfigError, match="more than a histogram of 4480 buckets can need"):
        LogLinearHistogram.from_hdr_base64(blob)


def test_layout_beyond_the_decoder_bound_is_refused_before_allocating() -> None:
    """Five digits over the int64 range (6.2M buckets) exceed MAX_DECODE_BUCKETS: refused."""
    blob = _blob((0x1C849313, 0, 0, 5, 1, 2**63 - 1, 1.0))
    assert counts_length(5, 2**63 - 1) > MAX_DECODE_BUCKETS
    with pytest.raises(ConfigError, match="buckets, more than the"):
        LogLinearHistogram.from_hdr_base64(blob)


def _zero_runs(n_runs: int, run: int) -> bytes:
    out = bytearray()
    for _ in range(n_runs):
        _put_zigzag(out, -run)
    return bytes(out)


@pytest.mark.parametrize(
    ("varints", "fragment"),
    [
        # 22 KB of consecutive empty runs: every encoder merges them, so the 2nd one is refused.
        (_zero_runs(11_000, 1), "two empty entries in a row"),
        (bytes(22_000), "two empty entries in a row"),
        (_zero_runs(1, 2**62), "beyond the 4353 buckets up to its highest_trackable_value"),
        (b"\x02" + _zero_runs(1, 4352) + b"\x02", "index 4353 beyond 4353 buckets"),
    ],
)
def test_runs_of_empty_buckets_are_structurally_bounded(varints: bytes, fragment: str) -> None:
    """Run lengths never reach past the layout and never follow another empty entry."""
    blob = _blob((0x1C849313, len(varints), 0, 2, 1, HIGHEST_NS, 1.0), varints)
    with pytest.raises(ConfigError, match=fragment):
        LogLinearHistogram.from_hdr_base64(blob)


def test_methods_and_codec_functions_are_one_codec() -> None:
    """The histogram's to_*/from_* methods give exactly what the codecs module gives."""
    hist = filled([1, 300, 70_000, 9_000_000])
    assert hist.to_hdr_base64() == codecs.encode_hdr_base64(hist)
    assert codecs.decode_hdr_base64(hist.to_hdr_base64()) == hist
    assert hist.to_hgrm(value_scale=1000.0) == codecs.format_hgrm(hist, 1000.0)
    assert hist.to_sparse() == codecs.to_sparse(hist)
    assert codecs.from_sparse(hist.to_sparse()) == hist


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_decoding_garbage_either_parses_or_raises_config_error(data: st.DataObject) -> None:
    """Fuzz: any byte-mutated valid blob or random string parses or raises ConfigError only."""
    good = bytearray(base64.b64decode(filled([1, 300, 70_000, 9_000_000]).to_hdr_base64()))
    payload = bytearray(zlib.decompress(bytes(good[8:])))
    for _ in range(data.draw(st.integers(1, 4))):
        payload[data.draw(st.integers(0, len(payload) - 1))] = data.draw(st.integers(0, 255))
    compressed = zlib.compress(bytes(payload))
    candidates = [
        base64.b64encode(struct.pack(">II", 0x1C849314, len(compressed)) + compressed),
        data.draw(st.binary(max_size=64)),
        data.draw(st.text(max_size=64)),
    ]
    for candidate in candidates:
        with contextlib.suppress(ConfigError):
            LogLinearHistogram.from_hdr_base64(candidate)


# --------------------------------------------------------------------------- hgrm


def parse_hgrm(text: str) -> tuple[list[tuple[float, float, int]], dict[str, float]]:
    """Minimal .hgrm reader, as HdrHistogram's plotter parses it."""
    lines = text.splitlines()
    assert lines[0].split() == ["Value", "Percentile", "TotalCount", "1/(1-Percentile)"]
    assert lines[1] == ""
    rows, footer = [], {}
    for line in lines[2:]:
        if line.startswith("#["):
            for part in line.strip("#[]").split(","):
                key, value = part.split("=")
                footer[key.strip()] = float(value)
            continue
        fields = line.split()
        assert len(fields) in (3, 4)
        rows.append((float(fields[0]), float(fields[1]), int(fields[2])))
        if len(fields) == 4:
            assert float(fields[3]) == pytest.approx(1 / (1 - float(fields[1])), rel=1e-2)
    return rows, footer


@SETTINGS
@given(value_lists, st.sampled_from([1.0, 1000.0]))
def test_hgrm_text_parses_and_agrees_with_queries(values: list[int], scale: float) -> None:
    """hgrm rows are monotonic, end at 100 % and the total, footer agrees with queries."""
    hist = filled(values)
    rows, footer = parse_hgrm(hist.to_hgrm(value_scale=scale))
    assert rows[0][1] == 0.0 and rows[-1][1] == 1.0 and rows[-1][2] == len(values)
    for (v1, p1, c1), (v2, p2, c2) in itertools.pairwise(rows):
        assert v1 <= v2 and p1 <= p2 and c1 <= c2
    assert rows[-1][0] == pytest.approx(hist.max_value / scale, abs=0.01)
    for value, fraction, _ in rows[1:-1]:
        at = hist.value_at_percentile(fraction * 100.0)
        assert value == pytest.approx(at / scale, abs=0.01)
    assert footer["Total count"] == len(values)
    assert footer["Max"] == pytest.approx(hist.max_value / scale, abs=0.01)
    assert footer["Mean"] == pytest.approx(hist.mean / scale, abs=0.01)
    assert (footer["Buckets"], footer["SubBuckets"]) == (hist.bucket_count, 256)


def test_hgrm_percentile_ticks_follow_java() -> None:
    """Ticks halve the distance to 100 % every 5 lines: 0, 0.1 .. 0.5, 0.55 .. 0.75, 0.775."""
    hist = LogLinearHistogram()
    hist.record_many(np.arange(1, 100_001))
    rows, _ = parse_hgrm(hist.to_hgrm())
    expected = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.775, 0.8]
    assert [round(p, 6) for _, p, _ in rows[: len(expected)]] == expected


def test_hgrm_of_empty_histogram_has_only_header_and_footer() -> None:
    """An empty histogram prints the header and the three footer lines."""
    rows, footer = parse_hgrm(LogLinearHistogram().to_hgrm())
    assert rows == [] and footer["Total count"] == 0


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"value_scale": 0.0}, "value_scale"),
        ({"value_scale": math.nan}, "value_scale"),
        ({"ticks_per_half_distance": 0}, "ticks_per_half_distance"),
    ],
)
def test_hgrm_bad_arguments_raise(kwargs: dict[str, float], fragment: str) -> None:
    """Non-positive scale or tick count raise ValueError naming the argument."""
    with pytest.raises(ValueError, match=fragment):
        LogLinearHistogram().to_hgrm(**kwargs)  # type: ignore[arg-type]


# ------------------------------------------------------------------------- sparse


@SETTINGS
@given(st.sampled_from([1, 2, 3]), value_lists)
def test_sparse_round_trips_through_json_and_msgpack(digits: int, values: list[int]) -> None:
    """to_sparse -> JSON/msgpack -> from_sparse reproduces counts and counters."""
    hist = filled([*values, -5], digits)
    sparse = hist.to_sparse()
    for restored in (
        LogLinearHistogram.from_sparse(json.loads(json.dumps(sparse))),
        LogLinearHistogram.from_sparse(msgpack.unpackb(msgpack.packb(sparse))),
    ):
        assert restored == hist
        assert restored.clamped_count == hist.clamped_count == 1


def _sparse(**changes: object) -> dict[str, object]:
    data = filled([10, 20, 3000]).to_sparse()
    data.update(changes)
    return {k: v for k, v in data.items() if v is not ...}


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ([1, 2], "must be a mapping"),
        (_sparse(indice=[1]), "did you mean 'indices'"),
        (_sparse(counts=...), "missing key 'counts'"),
        (_sparse(format="other"), "expected format"),
        (_sparse(version=2), "expected format"),
        (_sparse(significant_digits=9), "significant_digits"),
        (_sparse(indices=[1, "2", 3]), "'indices' must be a list of ints"),
        (_sparse(counts=[1, 2]), "differ in length"),
        (_sparse(indices=[10, 5, 20]), "strictly increasing"),
        (_sparse(indices=[0, 1, 10**6]), "must lie in"),
        (_sparse(counts=[1, 0, 2]), "positive"),
        (_sparse(clamped_count=-1), r"'clamped_count' must be an int in \[0"),
        (_sparse(significant_digits=5, highest_trackable_value=2**63 - 1), "buckets"),
    ],
)
def test_bad_sparse_input_raises(data: object, fragment: str) -> None:
    """Malformed sparse snapshots raise ValueError with the offending key."""
    with pytest.raises(ValueError, match=fragment):
        LogLinearHistogram.from_sparse(data)  # type: ignore[arg-type]


def test_occupied_buckets_cover_exactly_what_was_recorded() -> None:
    """occupied_buckets() lists each non-empty bucket once, with its values and counts."""
    h = LogLinearHistogram(2, 2**40)
    values = [0, 1, 255, 256, 257, 1000, 1000, 10**6, 10**9]
    for v in values:
        h.record(v)
    lowest, width, counts = h.occupied_buckets()
    assert counts.sum() == len(values) and (np.diff(lowest) > 0).all()
    for v in values:
        (i,) = np.flatnonzero((lowest <= v) & (v < lowest + width))
        assert counts[i] >= 1

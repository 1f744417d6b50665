"""Histogram hot path, window query and HdrHistogram decoding, next to the hdrhistogram package.

Run for real with::

    python -m pytest bench/bench_histogram.py --benchmark-enable -p no:cacheprovider

Each record benchmark records ``VALUES_PER_ROUND`` latency-like values per round, so the
time per ``record`` call is the round time divided by ``VALUES_PER_ROUND`` (also stored as
``extra_info["ns_per_value"]``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from tailguard.runtime.tick_ring import TelemetryRing
from tailguard.stats import codecs
from tailguard.stats.histogram import LogLinearHistogram
from tailguard.stats.percentile import percentiles

VALUES_PER_ROUND = 1000
WINDOW_TICKS = 1000
SIGNIFICANT_DIGITS = 2
HIGHEST_NS = 2**40
PERCENTILES = (50.0, 95.0, 99.0)


def latencies_ns(n: int, seed: int = 0) -> list[int]:
    """Inference-latency-like values: lognormal around 200 us with 1 % 5..20 ms spikes."""
    rng = np.random.default_rng(seed)
    values = rng.lognormal(mean=np.log(200_000.0), sigma=0.3, size=n)
    spikes = rng.random(n) < 0.01
    values[spikes] = rng.uniform(5e6, 20e6, size=int(spikes.sum()))
    return [int(v) for v in values]


def _record_all(record: Callable[[int], Any], values: list[int]) -> Callable[[], None]:
    def run() -> None:
        for value in values:
            record(value)

    return run


def _note_per_value(benchmark: Any) -> None:
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None) is not None:
        benchmark.extra_info["ns_per_value"] = stats.stats.median / VALUES_PER_ROUND * 1e9


@pytest.mark.benchmark(group="record")
def bench_record(benchmark: Any) -> None:
    """LogLinearHistogram.record, one call per value."""
    hist = LogLinearHistogram(SIGNIFICANT_DIGITS, HIGHEST_NS)
    benchmark(_record_all(hist.record, latencies_ns(VALUES_PER_ROUND)))
    _note_per_value(benchmark)
    assert hist.total_count % VALUES_PER_ROUND == 0 and hist.total_count > 0


@pytest.mark.benchmark(group="record")
def bench_record_hdrhistogram(benchmark: Any) -> None:
    """hdrhistogram's HdrHistogram.record_value at the same precision and range."""
    hdrh = pytest.importorskip("hdrh.histogram")
    hdr = hdrh.HdrHistogram(1, HIGHEST_NS, SIGNIFICANT_DIGITS)
    benchmark(_record_all(hdr.record_value, latencies_ns(VALUES_PER_ROUND)))
    _note_per_value(benchmark)
    assert hdr.get_total_count() % VALUES_PER_ROUND == 0 and hdr.get_total_count() > 0


@pytest.mark.benchmark(group="record")
def bench_record_guard_path(benchmark: Any) -> None:
    """What Guard.step pays per recorded value: one array store into its tick ring (inlined
    in the hot path), then one ``record_valid`` over the ring slice (``Guard._flush_ring``
    does it every 1024 ticks; here every 1000 values). The slice copies the dt column
    too, so this slightly over-counts."""
    hist = LogLinearHistogram(SIGNIFICANT_DIGITS, HIGHEST_NS)
    ring = TelemetryRing(VALUES_PER_ROUND)
    store = ring.latency_ns
    ticks = [(tick & ring.mask, v) for tick, v in enumerate(latencies_ns(VALUES_PER_ROUND), 1)]

    def run() -> None:
        for j, value in ticks:
            store[j] = value
        hist.record_valid(ring.slice(1, VALUES_PER_ROUND)[1])

    benchmark(run)
    _note_per_value(benchmark)
    assert hist.total_count % VALUES_PER_ROUND == 0 and hist.total_count > 0
    ref = LogLinearHistogram(SIGNIFICANT_DIGITS, HIGHEST_NS)
    ref.record_many(np.asarray([v for _, v in ticks], dtype=np.int64))
    rounds = hist.total_count // VALUES_PER_ROUND
    assert np.array_equal(np.asarray(hist.counts), np.asarray(ref.counts) * rounds)


@pytest.mark.benchmark(group="record")
def bench_record_many(benchmark: Any) -> None:
    """LogLinearHistogram.record_many on a numpy array of the same values."""
    hist = LogLinearHistogram(SIGNIFICANT_DIGITS, HIGHEST_NS)
    values = np.asarray(latencies_ns(VALUES_PER_ROUND), dtype=np.int64)
    benchmark(hist.record_many, values)
    _note_per_value(benchmark)
    assert hist.total_count % VALUES_PER_ROUND == 0 and hist.total_count > 0


@pytest.mark.benchmark(group="window-query")
def bench_percentile_window(benchmark: Any) -> None:
    """p50/p95/p99 of a window histogram holding ~1000 ticks (GIL held for all of it)."""
    window = LogLinearHistogram(SIGNIFICANT_DIGITS, HIGHEST_NS)
    values = latencies_ns(WINDOW_TICKS, seed=1)
    for value in values:
        window.record(value)
    result = benchmark(window.percentiles, PERCENTILES)
    exact = percentiles(values, PERCENTILES)
    for p in PERCENTILES:
        assert exact[p] <= result[p] <= exact[p] * (1 + window.relative_precision)


@pytest.mark.benchmark(group="window-query")
def bench_percentile_window_hdrhistogram(benchmark: Any) -> None:
    """The same query through hdrhistogram's get_percentile_to_value_dict."""
    hdrh = pytest.importorskip("hdrh.histogram")
    hdr = hdrh.HdrHistogram(1, HIGHEST_NS, SIGNIFICANT_DIGITS)
    for value in latencies_ns(WINDOW_TICKS, seed=1):
        hdr.record_value(value)
    result = benchmark(hdr.get_percentile_to_value_dict, list(PERCENTILES))
    assert set(result) == set(PERCENTILES)


@pytest.mark.benchmark(group="hdr-decode")
def bench_hdr_decode_window(benchmark: Any) -> None:
    """Decoding a guard-sized HdrHistogram blob (latency-like values, two digits)."""
    hist = LogLinearHistogram(SIGNIFICANT_DIGITS, HIGHEST_NS)
    hist.record_many(np.asarray(latencies_ns(10_000, seed=2)))
    blob = hist.to_hdr_base64()
    assert benchmark(codecs.decode_hdr_base64, blob) == hist


@pytest.mark.benchmark(group="hdr-decode")
def bench_hdr_decode_densest_accepted(benchmark: Any) -> None:
    """The costliest blob the decoder accepts: every bucket of a 4-digit, 2**62 ns layout set.

    About 1 kB of base64 for 0.8 M buckets: this is the CPU bound a hostile blob can reach
    (the layout bound, ``MAX_DECODE_BUCKETS``, caps it); anything larger is refused first.
    """
    hist = LogLinearHistogram(4, 2**62)
    view = np.frombuffer(hist.counts, dtype=np.int64)
    view[: hist.index_of(2**62)] = 1
    blob = hist.to_hdr_base64()
    benchmark.extra_info.update({"blob_chars": len(blob), "buckets": hist.counts_len})
    assert codecs.decode_hdr_base64(blob) == hist
    benchmark.pedantic(codecs.decode_hdr_base64, args=(blob,), rounds=3, iterations=1)

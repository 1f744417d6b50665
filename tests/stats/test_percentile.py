"""One percentile definition: every caller's p50/p95/p99 equals tailguard.stats.percentile's."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tailguard.errors import ConfigError
from tailguard.monitor.stats import PERCENTILES as MONITOR_PERCENTILES
from tailguard.monitor.stats import MonitorState
from tailguard.protocol.telemetry_wire import SCHEMA_VERSION
from tailguard.stats.histogram import LogLinearHistogram
from tailguard.stats.percentile import nearest_rank, percentile, percentiles

REPO = Path(__file__).resolve().parents[2]
PS = (50.0, 95.0, 99.0)


def _bench_module(name: str) -> ModuleType:
    """A bench/ file imported by path (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"_tg_{name}", REPO / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------ the callers


def via_histogram(values: np.ndarray, ps: tuple[float, ...]) -> dict[float, int]:
    hist = LogLinearHistogram()
    hist.record_many(values)
    return hist.percentiles(ps)


def via_monitor(values: np.ndarray, ps: tuple[float, ...]) -> dict[float, int]:
    """The monitor's window percentiles over one ticks message (latency and dt alike)."""
    n = len(values)
    body = {
        "v": SCHEMA_VERSION,
        "type": "ticks",
        "seq": 0,
        "gid": "g",
        "t_ns": 0,
        "first_tick": 10,  # not the first tick: its dt counts
        "n": n,
        "dt_ns": np.asarray(values, "<i8").tobytes(),
        "latency_ns": np.asarray(values, "<i8").tobytes(),
        "flags": bytes(8 * n),
        "lost": 0,
    }
    state = MonitorState(window_s=10.0)
    state.ingest(msgpack.packb(body), now_ns=1)
    metrics = state.metrics(now_ns=1)
    out = {}
    for p in ps:
        key = "p" + f"{p:g}".replace(".", "")
        assert metrics[f"latency_{key}_ns"] == metrics[f"dt_{key}_ns"]
        out[p] = metrics[f"latency_{key}_ns"]
    return out


def via_bench_pacer(values: np.ndarray, ps: tuple[float, ...]) -> dict[float, int]:
    tails = _bench_module("bench_pacer")._tails_us(np.asarray(values, np.int64))
    names = {50.0: "p50_us", 99.0: "p99_us", 99.9: "p99_9_us"}
    return {p: round(tails[names[p]] * 1000) for p in ps}


def via_firmware_sim_loop(values: np.ndarray, ps: tuple[float, ...]) -> dict[float, int]:
    from tailguard.firmware_sim.loop import percentiles_ns

    out = percentiles_ns(np.asarray(values, np.int64))
    return {p: out["p" + f"{p:g}".replace(".", "")] for p in ps}


Caller = Callable[[np.ndarray, tuple[float, ...]], dict[float, int]]
CALLERS = [
    pytest.param(via_histogram, PS, id="stats.histogram"),
    pytest.param(via_monitor, tuple(MONITOR_PERCENTILES), id="monitor.stats"),
    pytest.param(via_bench_pacer, (50.0, 99.0, 99.9), id="bench.bench_pacer"),
    pytest.param(via_firmware_sim_loop, PS, id="firmware_sim.loop"),
]

# Distinct values below the histogram's exact range (256 for two digits), so every caller
# must give exactly the reference value; n = 100 is where nearest rank and "higher" differ.
SAMPLES = {
    "n=1": np.array([42]),
    "n=100": np.random.default_rng(0).permutation(np.arange(101, 201)),
    "n=1000 dups": np.random.default_rng(1).integers(0, 256, 1000),
    "n=7": np.array([9, 3, 200, 3, 77, 0, 150]),
}


@pytest.mark.parametrize(("caller", "ps"), CALLERS)
@pytest.mark.parametrize("name", list(SAMPLES))
def test_every_caller_agrees_with_the_one_definition(
    caller: Caller, ps: tuple[float, ...], name: str
) -> None:
    """Every p50/p95/p99 tailguard reports equals percentiles() on the same samples."""
    values = SAMPLES[name]
    assert caller(values, ps) == percentiles(values, ps)


# ------------------------------------------------------------- hand-computed cases


def test_single_sample_is_every_percentile() -> None:
    """With n = 1 every percentile, p0 and p100 included, is that sample."""
    assert percentiles([7], (0.0, 50.0, 99.0, 99.9, 100.0)) == dict.fromkeys(
        (0.0, 50.0, 99.0, 99.9, 100.0), 7
    )


def test_hundred_samples_p99_is_rank_99() -> None:
    """Of 1..100, p50 = 50, p95 = 95, p99 = 99 (rank 99, not 100), p100 = 100, p0 = 1."""
    values = np.arange(100, 0, -1)
    assert nearest_rank(99.0, 100) == 99
    assert percentiles(values, (0.0, 50.0, 95.0, 99.0, 100.0)) == {
        0.0: 1,
        50.0: 50,
        95.0: 95,
        99.0: 99,
        100.0: 100,
    }


def test_p999_of_thousand_is_rank_999() -> None:
    """99.9 of 1000 is rank 999 (the 1000th value is p100 only)."""
    assert nearest_rank(99.9, 1000) == 999
    assert percentile(np.arange(1, 1001), 99.9) == 999


def test_types_empty_and_bad_percentiles() -> None:
    """Integer samples give ints, floats give floats, empty gives 0; p outside [0, 100] raises."""
    assert type(percentile(np.array([1, 2, 3], np.int64), 50)) is int
    assert percentile([0.5, 1.5], 50) == 0.5 and type(percentile([0.5, 1.5], 50)) is float
    assert percentiles([], (50.0, 99.0)) == {50.0: 0, 99.0: 0}
    for bad in (-1.0, 100.5, float("nan")):
        with pytest.raises(ConfigError, match=r"\[0, 100\]"):
            percentile([1, 2], bad)


# -------------------------------------------------------------- against the histogram

_pcts = st.one_of(
    st.floats(0.0, 100.0, allow_nan=False),
    st.sampled_from([0.0, 1.0, 50.0, 90.0, 95.0, 99.0, 99.9, 99.99, 100.0]),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 255), min_size=1, max_size=400), st.lists(_pcts, min_size=1))
def test_histogram_equals_the_definition_below_its_exact_range(
    values: list[int], ps: list[float]
) -> None:
    """Below sub_bucket_count the histogram is exact: its percentiles are percentiles()'s."""
    hist = LogLinearHistogram()
    assert max(values) < hist.sub_bucket_count
    hist.record_many(np.asarray(values))
    assert hist.percentiles(ps) == percentiles(values, ps)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 2**40), min_size=1, max_size=300), _pcts)
def test_histogram_is_the_definition_within_its_precision(values: list[int], p: float) -> None:
    """Over the whole range the histogram answers the bucket top of the same rank's value."""
    hist = LogLinearHistogram()
    hist.record_many(np.asarray(values))
    exact = percentile(values, p)
    got = hist.value_at_percentile(p)
    if p == 0.0:
        assert got == hist.lowest_equivalent_value(exact)
    else:
        assert got == hist.highest_equivalent_value(exact)

"""`tailguard bench`: summaries, HdrHistogram files, empirical profiles, verdicts, the CLI."""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tailguard.envelope.model import Envelope, PolicyBinding, Thresholds, Timing, save_envelope
from tailguard.runtime.onnx_build import write_mlp
from tailguard.runtime.policy import CallablePolicy
from tailguard.stats.histogram import LogLinearHistogram
from tailguard.tools import bench_cli, bench_cyclictest, bench_report
from tailguard.tools.cli import main

MS = 1_000_000
US = 1_000


class SimClock:
    """Simulated integer-ns clock: reads are free, sleep() and the policy advance it."""

    def __init__(self) -> None:
        self.now_ns = 10**9

    def __call__(self) -> int:
        return self.now_ns

    def sleep(self, seconds: float) -> None:
        self.now_ns += round(seconds * 1e9)


def _sim_run(
    latencies_ns: list[int], period_ns: int, envelope: Envelope | None = None
) -> bench_cli.LoopResult:
    """Run the measured loop in simulated time; tick i's inference takes latencies_ns[i]."""
    clock = SimClock()
    it: Iterator[int] = iter(latencies_ns)

    def fn(obs: np.ndarray) -> np.ndarray:
        clock.now_ns += next(it)
        return np.zeros(2, np.float32)

    policy = CallablePolicy(fn, 3, 2)
    env = envelope or Envelope(
        policy=PolicyBinding(sha256=None, obs_size=3, action_size=2),
        timing=Timing(period_ns=period_ns),
    )
    return bench_cli.run_guarded_loop(
        policy,
        env,
        rate_hz=1e9 / period_ns,
        n_ticks=len(latencies_ns),
        obs=np.zeros(3, np.float32),
        clock=clock,
        sleep=clock.sleep,
        spin_ns=0,
        warmup_ticks=0,
        freeze_gc=False,
    )


def _envelope(period_ns: int, latency: Thresholds, dt: Thresholds | None = None) -> Envelope:
    return Envelope(
        policy=PolicyBinding(sha256=None, obs_size=3, action_size=2),
        timing=Timing(period_ns=period_ns, latency=latency, dt=dt or Thresholds()),
    )


# ------------------------------------------------------------------- summaries and files


@pytest.fixture
def lognormal_hist() -> LogLinearHistogram:
    rng = np.random.default_rng(7)
    h = LogLinearHistogram(2, 2**40)
    h.record_many(np.rint(rng.lognormal(np.log(80_000), 0.6, 50_000)).astype(np.int64))
    return h


def test_summary_matches_histogram(lognormal_hist: LogLinearHistogram) -> None:
    """summarize() reports exactly the histogram's own percentiles, max and count."""
    s = bench_report.summarize(lognormal_hist)
    assert s["count"] == 50_000
    for key, p in bench_report.PERCENTILES:
        assert s[key] == lognormal_hist.value_at_percentile(p)
    assert s["max"] == lognormal_hist.max_value
    assert s["p50"] <= s["p90"] <= s["p99"] <= s["p999"] <= s["max"]


def test_written_hdr_files_decode_to_the_summary(
    tmp_path: Path, lognormal_hist: LogLinearHistogram
) -> None:
    """The .hdr file decodes (ours and the hdrhistogram package) to the summarized numbers."""
    from hdrh.histogram import HdrHistogram

    bench_report.write_histograms(tmp_path, {"latency_ns": lognormal_hist})
    text = (tmp_path / "latency_ns.hdr").read_text().strip()
    s = bench_report.summarize(lognormal_hist)
    ours = LogLinearHistogram.from_hdr_base64(text)
    theirs = HdrHistogram.decode(text)
    for key, p in bench_report.PERCENTILES:
        assert ours.value_at_percentile(p) == s[key]
    assert theirs.get_total_count() == s["count"]
    assert theirs.get_max_value() == s["max"]
    assert abs(theirs.get_value_at_percentile(50) - s["p50"]) <= s["p50"] * 0.008
    hgrm = (tmp_path / "latency_ns.hgrm").read_text()
    assert f"Total count    = {s['count']:>12}" in hgrm


def test_empirical_profile_round_trips_through_parse_profile(
    tmp_path: Path, lognormal_hist: LogLinearHistogram
) -> None:
    """Sampling empirical:PATH reproduces the recorded quantiles within sampling error."""
    from tailguard.firmware_sim.profile_spec import parse_profile

    path = tmp_path / "empirical_profile.json"
    data = bench_report.empirical_profile(
        lognormal_hist, "latency_ns", rate_hz=500.0, policy="p.onnx", usage="x"
    )
    bench_report.write_json(path, data)
    profile = parse_profile(f"empirical:{path}", seed=3)
    n = 200_000
    samples = np.sort(profile.sample(n))
    total = lognormal_hist.total_count
    for q in (0.5, 0.9, 0.99):
        # The sample quantile lies between the recorded quantiles at q -/+ 5 standard errors.
        se = math.sqrt(q * (1 - q) / n) + math.sqrt(q * (1 - q) / total)
        lo = lognormal_hist.value_at_percentile(100 * max(q - 5 * se, 0.0))
        hi = lognormal_hist.value_at_percentile(100 * min(q + 5 * se, 1.0))
        got = int(samples[math.ceil(q * n) - 1])
        assert lo <= got <= hi, (q, lo, got, hi)
    assert samples[-1] <= lognormal_hist.max_value


# ----------------------------------------------------------- the loop in simulated time


def test_simulated_loop_measures_exactly() -> None:
    """With free clock reads: lateness 0, dt = period, latency = inference, overhead 0."""
    period = 2 * MS
    lat = [300 * US + 1000 * (i % 7) for i in range(400)]
    r = _sim_run(lat, period)
    h = r.hists
    assert h["wakeup_lateness_ns"].max_value == 0
    assert h["dt_ns"].total_count == 399
    dt = h["dt_ns"]
    assert dt.min_value == dt.lowest_equivalent_value(period)
    assert dt.max_value == dt.highest_equivalent_value(period)
    assert h["inference_ns"].total_count == 400
    assert bench_report.summarize(h["inference_ns"]) == bench_report.summarize(h["latency_ns"])
    assert h["guard_overhead_ns"].max_value == 0
    assert r.missed_cycles == 0 and r.max_overrun_streak == 0
    assert np.allclose(r.step_us, np.asarray(lat) / 1000.0)


def test_simulated_spike_counts_missed_cycles_and_overruns() -> None:
    """A 3.5-period inference skips 3 slots, makes one overrun and one 4-period dt."""
    period = 1 * MS
    lat = [100 * US] * 50 + [3500 * US] + [100 * US] * 49
    r = _sim_run(lat, period)
    assert r.missed_cycles == 3
    assert r.max_overrun_streak == 1
    dt = r.hists["dt_ns"]
    assert dt.max_value == dt.highest_equivalent_value(4 * period)
    assert r.guard_stats["overruns"] == 1


def test_stop_request_ends_a_slow_run_early_with_the_ticks_it_ran() -> None:
    """At 0.01 Hz a stop request mid-wait ends the run; the result covers only ticks run."""
    clock = SimClock()
    policy = CallablePolicy(lambda obs: np.zeros(2, np.float32), 3, 2)
    env = Envelope(
        policy=PolicyBinding(sha256=None, obs_size=3, action_size=2),
        timing=Timing(period_ns=100 * 10**9),
    )
    stop_at_ns = clock.now_ns + 250 * 10**9  # during the third wait
    r = bench_cli.run_guarded_loop(
        policy,
        env,
        rate_hz=0.01,
        n_ticks=10,
        obs=np.zeros(3, np.float32),
        clock=clock,
        sleep=clock.sleep,
        spin_ns=0,
        warmup_ticks=0,
        freeze_gc=False,
        should_stop=lambda: clock.now_ns >= stop_at_ns,
    )
    assert r.ticks == 2 and len(r.step_us) == 2 and len(r.lateness_us) == 2
    assert r.hists["step_ns"].total_count == 2
    assert stop_at_ns <= clock.now_ns <= stop_at_ns + 50 * MS


def test_n_ticks_out_of_range_is_a_config_error() -> None:
    """n_ticks outside 1..MAX_TICKS raises ConfigError naming it, before the guard is built."""
    from tailguard.errors import ConfigError

    policy = CallablePolicy(lambda obs: np.zeros(2, np.float32), 3, 2)
    env = Envelope(
        policy=PolicyBinding(sha256=None, obs_size=3, action_size=2), timing=Timing(period_ns=MS)
    )
    for bad in (0, bench_cli.MAX_TICKS + 1, 2.5):
        with pytest.raises(ConfigError, match="n_ticks"):
            bench_cli.run_guarded_loop(
                policy, env, rate_hz=1000.0, n_ticks=bad, obs=np.zeros(3, np.float32)
            )


# 1000 ticks at 1 kHz: latency 200 us, 2 % of ticks at 900 us (so p99 = 900 us).
_LAT = [900 * US if i % 50 == 7 else 200 * US for i in range(1000)]

VERDICT_CASES = [
    # (latency thresholds, dt thresholds, fits, fails_first)
    (Thresholds(300 * US, 950 * US, 1000 * US, 2 * MS), None, True, "latency.p99"),
    (Thresholds(300 * US, 400 * US, 500 * US, 2 * MS), None, False, "latency.p99"),
    (Thresholds(150 * US, None, None, None), None, False, "latency.p50"),
    (Thresholds(None, None, None, 800 * US), None, False, "latency.max"),
    (
        Thresholds(None, None, None, 5 * MS),
        Thresholds(None, None, 990 * US, None),
        False,
        "dt.p99",
    ),
]


@pytest.mark.parametrize(("latency", "dt", "fits", "first"), VERDICT_CASES)
def test_envelope_verdict_on_simulated_runs(
    latency: Thresholds, dt: Thresholds | None, fits: bool, first: str
) -> None:
    """The verdict fits iff every threshold holds; fails_first is the smallest margin."""
    env = _envelope(MS, latency, dt)
    r = _sim_run(_LAT, MS, env)
    v = bench_report.envelope_verdict(env, r.hists["dt_ns"], r.hists["latency_ns"])
    assert v.fits is fits
    assert v.fails_first == first
    assert all(c.ok == (c.measured_ns <= c.limit_ns) for c in v.checks)
    assert set(v.failing) == {c.name for c in v.checks if not c.ok}
    text = bench_report.format_verdict(v)
    assert ("FITS" in text) is fits and first in text


def test_verdict_checks_overrun_streak_and_reports_unmeasurable() -> None:
    """max_consecutive_overruns is judged from the streak; obs age is listed as not checked."""
    env = Envelope(
        policy=PolicyBinding(sha256=None, obs_size=3, action_size=2),
        timing=Timing(period_ns=MS, obs_age_max_ns=5 * MS, max_consecutive_overruns=2),
    )
    h = LogLinearHistogram()
    h.record(MS)
    v = bench_report.envelope_verdict(env, h, h, max_overrun_streak=3)
    assert not v.fits and v.failing == ("max_consecutive_overruns",)
    assert any("obs_age" in n for n in v.not_checked)


# ------------------------------------------------------------------------------ warnings

_GOOD = {
    "affinity": [2],
    "governor": {2: "performance"},
    "onnxruntime_threads": {"intra_op": 1, "inter_op": 1},
    "sched_policy": "SCHED_FIFO",
}

WARNING_CASES = [
    ({**_GOOD, "affinity": [0, 1]}, False, True, "no CPU pinning"),
    ({**_GOOD, "governor": {2: "powersave"}}, True, True, "powersave"),
    ({**_GOOD, "onnxruntime_threads": {"intra_op": 4}}, True, True, "4 intra-op threads"),
    (_GOOD, True, False, "GC not frozen"),
    ({**_GOOD, "sched_policy": "SCHED_OTHER"}, True, True, "SCHED_OTHER"),
]


@pytest.mark.parametrize(("info", "pinned", "frozen", "fragment"), WARNING_CASES)
def test_timing_warnings(info: dict[str, Any], pinned: bool, frozen: bool, fragment: str) -> None:
    """Each timing hazard produces exactly one warning naming it."""
    warnings = bench_report.timing_warnings(info, pinned=pinned, gc_frozen=frozen)
    assert len(warnings) == 1 and fragment in warnings[0]


def test_no_warnings_for_a_tuned_machine() -> None:
    """Pinned, performance governor, one thread, GC frozen, SCHED_FIFO: no warnings."""
    assert bench_report.timing_warnings(_GOOD, pinned=True, gc_frozen=True) == []


def test_fifo_not_permitted_becomes_a_note(monkeypatch: pytest.MonkeyPatch) -> None:
    """A refused SCHED_FIFO is reported and the run continues."""

    def refuse(*args: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "sched_setscheduler", refuse)
    notes: list[str] = []
    assert bench_cli._set_scheduling(None, 80, notes) is False
    assert len(notes) == 1 and "not permitted" in notes[0] and "SCHED_OTHER" in notes[0]


def test_cyclictest_missing_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without cyclictest on PATH the comparison names the rt-tests package."""
    monkeypatch.setattr(bench_cyclictest.shutil, "which", lambda name: None)
    out = bench_cli.run_cyclictest(1000.0, 1.0, cpu=None, fifo_priority=None)
    assert out["available"] is False and "rt-tests" in out["note"]


def test_bench_cost_measurement_has_its_fields() -> None:
    """measure_bench_cost is the clock time per tick the measured loop adds over the bare one."""
    step_ns = 1000
    reads = [0]

    def clock() -> int:  # advances step_ns on every read: each read costs exactly step_ns
        reads[0] += 1
        return reads[0] * step_ns

    blocks, per_block = 4, 200
    cost = bench_cli.measure_bench_cost(blocks=blocks, per_block=per_block, clock=clock)
    # Per block, two reads bracket the measured loop and two the bare loop; every other
    # read is the measured loop's own per-tick bookkeeping, which is what it reports.
    own_reads = reads[0] / blocks - 4
    assert own_reads >= per_block  # the measured loop reads the clock on every tick
    added_ns = round(own_reads * step_ns / per_block, 1)
    assert cost == {
        "median_ns": added_ns,
        "p90_ns": added_ns,
        "max_ns": added_ns,
        "blocks": blocks,
        "ticks_per_block": per_block,
    }


# ----------------------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def small_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bench_policy") / "small.onnx"
    write_mlp(path, (17, 64, 64, 6), seed=1)
    return path


USAGE_CASES = [
    (["--rate-hz", "0"], "--rate-hz"),
    (["--duration-s", "-1"], "--duration-s"),
    (["--duration-s", "1e9"], "ticks"),
    (["--cpu", "4096"], "--cpu 4096"),
    (["--fifo", "0"], "1..99"),
    (["--threads", "0"], "--threads"),
]


@pytest.mark.parametrize(("extra", "fragment"), USAGE_CASES)
def test_cli_usage_errors(
    small_policy: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    fragment: str,
) -> None:
    """Bad arguments exit 2 with a message naming the flag, before anything runs."""
    rc = main(["bench", "--policy", str(small_policy), "--out", str(tmp_path / "o"), *extra])
    assert rc == 2
    assert fragment in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_cli_refuses_an_envelope_for_another_period(
    small_policy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--rate-hz 100 with a 20 ms envelope is refused (exit 1) before anything runs."""
    from tailguard.envelope.model import save_envelope, starter_envelope
    from tailguard.runtime.policy import OnnxPolicy

    pol = OnnxPolicy(small_policy)
    env = tmp_path / "env20.json"
    save_envelope(
        starter_envelope(obs_size=pol.obs_size, action_size=pol.action_size, period_ns=20 * MS),
        env,
    )
    argv = ["bench", "--policy", str(small_policy), "--envelope", str(env), "--rate-hz", "100"]
    rc = main([*argv, "--duration-s", "1", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 1 and "20000000" in err and "--rate-hz 100" in err
    assert not (tmp_path / "o").exists()


def test_cli_runs_two_seconds_and_writes_everything(
    small_policy: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A real 2 s run writes summary, histograms, PNG and a loadable empirical profile."""
    from tailguard.firmware_sim.profile_spec import parse_profile

    monkeypatch.setattr(bench_cyclictest.shutil, "which", lambda name: None)
    out = tmp_path / "out"
    rc = main(
        [
            "bench",
            "--policy",
            str(small_policy),
            "--rate-hz",
            "200",
            "--duration-s",
            "2",
            "--compare-cyclictest",
            "--no-progress",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    expected = {"summary.json", "timing.png", "empirical_profile.json", "empirical_dt_profile.json"}
    for metric in ("wakeup_lateness_ns", "dt_ns", "latency_ns", "inference_ns"):
        expected |= {f"{metric}.hdr", f"{metric}.hgrm"}
    assert expected <= {p.name for p in out.iterdir()}
    assert set(summary["files"]) == {p.name for p in out.iterdir()}
    assert summary["ticks"] == 400
    assert summary["cyclictest"]["available"] is False
    assert summary["verdict"] is None
    for key in ("cpu", "cores", "affinity", "sched_policy", "governor", "onnxruntime_threads"):
        assert key in summary["machine"]
    # Every summarized number is what the written histogram says.
    for name, s in summary["metrics_ns"].items():
        h = LogLinearHistogram.from_hdr_base64((out / f"{name}.hdr").read_text().strip())
        assert s == bench_report.summarize(h)
    assert summary["metrics_ns"]["inference_ns"]["count"] == 400
    assert summary["metrics_ns"]["dt_ns"]["count"] == 399
    profile = parse_profile(f"empirical:{out / 'empirical_profile.json'}")
    assert profile.sample(100).min() >= 0
    printed = capsys.readouterr().out
    assert "wakeup_lateness_ns" in printed and "rt-tests" in printed


def test_cli_envelope_that_does_not_fit_exits_1(
    small_policy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An envelope whose latency cap no machine meets gives the verdict and exit code 1."""
    env = Envelope(
        policy=PolicyBinding(sha256=None, obs_size=17, action_size=6),
        timing=Timing(period_ns=5 * MS, latency=Thresholds(None, None, None, 1)),
    )
    save_envelope(env, tmp_path / "env.json")
    out = tmp_path / "out"
    rc = main(
        [
            "bench",
            "--policy",
            str(small_policy),
            "--envelope",
            str(tmp_path / "env.json"),
            "--duration-s",
            "0.3",
            "--no-progress",
            "--out",
            str(out),
        ]
    )
    assert rc == 1
    verdict = json.loads((out / "summary.json").read_text())["verdict"]
    assert verdict["fits"] is False and verdict["fails_first"] == "latency.max"
    assert "DOES NOT FIT" in capsys.readouterr().out


def test_plot_skipped_with_a_note_without_matplotlib(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lognormal_hist: LogLinearHistogram
) -> None:
    """Without matplotlib write_plot writes nothing and says how to install it."""
    import builtins

    real_import = builtins.__import__

    def fake_import(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    note = bench_report.write_plot(
        tmp_path / "t.png", {"x": lognormal_hist}, {"y": np.ones(3)}, MS, "t"
    )
    assert note is not None and "tailguard[report]" in note
    assert not (tmp_path / "t.png").exists()


def test_chunk_flush_covers_every_tick() -> None:
    """Runs that are not a multiple of CHUNK still record every tick."""
    n = bench_cli.CHUNK * 2 + 3
    r = _sim_run([50 * US] * n, MS)
    assert r.hists["step_ns"].total_count == n
    assert r.lateness_us.size == n and r.step_us.size == n
    assert list(itertools.islice(r.step_us, 0, 3)) == [50.0, 50.0, 50.0]

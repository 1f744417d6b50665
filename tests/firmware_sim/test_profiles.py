"""Timing profiles: seeded reproducibility, chunking invariance, statistics match the spec."""

from __future__ import annotations

import numpy as np
import pytest

from tailguard.errors import ProfileError
from tailguard.firmware_sim.profile_spec import parse_profile
from tailguard.firmware_sim.profiles import (
    MAX_SAMPLE_NS,
    UNCAPPED_TAIL_LIMIT_NS,
    DropSampler,
    EmpiricalProfile,
    FixedProfile,
    GaussianProfile,
    LognormalProfile,
    ParetoProfile,
    Profile,
    SpikeProfile,
    TraceProfile,
    require_bounded_tail,
)

MS = 1_000_000
PERIOD_NS = 8 * MS

SPECS = [
    "nominal",
    "fixed:ms=8",
    "uniform:lo_ms=1,hi_ms=3",
    "uniform:jitter_ms=1",
    "gaussian:std_ms=0.5",
    "lognormal:median_ms=2,sigma=0.8",
    "lognormal:median_ms=2,sigma=0.8,cap_ms=15",
    "pareto:scale_ms=5,alpha=1.5",
    "mix:0.97*nominal+0.03*pareto:scale_ms=5,alpha=1.5",
    "spikes:every=500,len=3,ms=40",
    "spikes:p=0.01,len=3,ms=40",
]


@pytest.mark.parametrize("spec", SPECS)
def test_same_seed_same_stream(spec: str) -> None:
    """Two profiles built with the same seed produce identical streams; another seed differs."""
    a = parse_profile(spec, nominal_ns=PERIOD_NS, seed=7).sample(5000)
    b = parse_profile(spec, nominal_ns=PERIOD_NS, seed=7).sample(5000)
    assert a.dtype == np.int64 and np.array_equal(a, b)
    assert np.all(a >= 0)


@pytest.mark.parametrize("spec", SPECS)
def test_next_ns_and_chunks_match_sample(spec: str) -> None:
    """next_ns() and any chunking of sample(n) yield the same sequence for a seed."""
    whole = parse_profile(spec, nominal_ns=PERIOD_NS, seed=3).sample(1000)
    p = parse_profile(spec, nominal_ns=PERIOD_NS, seed=3)
    mixed = [p.next_ns() for _ in range(10)]
    mixed += list(p.sample(333)) + [p.next_ns() for _ in range(300)] + list(p.sample(357))
    assert np.array_equal(whole, np.asarray(mixed))


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("q", [0.5, 0.95, 0.99])
def test_sample_quantiles_match_analytic(spec: str, q: float) -> None:
    """The empirical quantile of 200k samples lies within sampling error of quantile_ns(q)."""
    p = parse_profile(spec, nominal_ns=PERIOD_NS, seed=11)
    x = p.sample(200_000)
    n = x.size
    # Binomial bounds on the rank of the analytic quantile (about 5 sigma).
    half = 5.0 * np.sqrt(n * q * (1 - q)) + 2
    lo_rank, hi_rank = max(int(n * q - half), 0), min(int(n * q + half), n - 1)
    xs = np.sort(x)
    assert xs[lo_rank] <= p.quantile_ns(q) <= xs[hi_rank]


@pytest.mark.parametrize("spec", SPECS)
def test_p_violate_matches_frequency(spec: str) -> None:
    """p_violate(cap) equals the observed fraction of samples above cap within 5 sigma."""
    p = parse_profile(spec, nominal_ns=PERIOD_NS, seed=5)
    cap = 10 * MS
    freq = float((p.sample(200_000) > cap).mean())
    pv = p.p_violate(cap)
    assert abs(freq - pv) <= 5 * np.sqrt(max(pv * (1 - pv), 1e-6) / 200_000) + 1e-4


def test_delay_steps_and_stats() -> None:
    """d_q = ceil(quantile / period): fixed 8 ms at an 8 ms period is one step, 8.001 ms two."""
    assert parse_profile("fixed:ms=8").stats(PERIOD_NS).d_p99 == 1
    assert parse_profile("fixed:us=8001").stats(PERIOD_NS).d_p50 == 2
    assert parse_profile("nominal").stats(PERIOD_NS).d_p99 == 0
    s = parse_profile("lognormal:median_ms=2,sigma=0.8,cap_ms=15").stats(PERIOD_NS, cap_ns=15 * MS)
    assert s.p50_ns == 2 * MS and s.p_violate == 0.0 and s.d_p50 == 1


def test_cap_clips_samples() -> None:
    """No sample of a capped profile exceeds the cap, and the cap has positive mass."""
    p = parse_profile("pareto:scale_ms=5,alpha=1.0,cap_ms=15", seed=1)
    x = p.sample(50_000)
    assert x.max() == 15 * MS and p.cdf(15 * MS) == 1.0


def test_periodic_spikes_pattern() -> None:
    """Periodic spikes hit exactly ticks phase..phase+len-1 of every period, across chunks."""
    p = SpikeProfile(base_ns=0, spike_ns=40 * MS, length=3, every=10, phase=2)
    x = np.concatenate([p.sample(7), p.sample(23)])
    assert list(np.flatnonzero(x)) == [2, 3, 4, 12, 13, 14, 22, 23, 24]


def test_random_spike_bursts_last_len_ticks() -> None:
    """Random spikes come in runs whose lengths are multiples-or-merges of len (>= len)."""
    x = parse_profile("spikes:p=0.01,len=4,ms=40", seed=2).sample(100_000) > 0
    edges = np.diff(np.concatenate(([0], x.astype(int), [0])))
    runs = np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)
    assert runs.size > 100 and runs.min() >= 4


def test_trace_replays_in_order_and_wraps() -> None:
    """A trace profile replays values in order from its offset and wraps around."""
    p = TraceProfile(np.array([1, 2, 3]), offset=1)
    assert list(p.sample(5)) == [2, 3, 1, 2, 3]
    p.reseed(0)
    assert p.next_ns() == 2


def test_drop_sampler_rate_and_bursts() -> None:
    """Drops occur at the stationary rate in bursts of burst_len; prob 0 never drops."""
    d = DropSampler(0.01, burst_len=2)
    d.reseed(4)
    x = d.sample(200_000)
    assert abs(x.mean() - d.drop_fraction) < 0.003
    assert not any(DropSampler(0.0).next_drop() for _ in range(100))
    d.reseed(4)
    assert np.array_equal(x[:500], np.array([d.next_drop() for _ in range(500)]))


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        (lambda: DropSampler(1.5), "drop probability"),
        (lambda: DropSampler(0.1, 0), "burst length"),
        (lambda: TraceProfile(np.array([], np.int64)), "at least one"),
        (lambda: parse_profile("fixed:ms=1").sample(-1), "sample count"),
        (lambda: parse_profile("fixed:ms=1").quantile_ns(0.0), "quantile"),
        (lambda: parse_profile("fixed:ms=1").stats(0), "period"),
        (lambda: ParetoProfile(5 * MS, 1.5, cap_ns=2**63), "cap must be a duration"),
        (lambda: FixedProfile(2**62), "fixed value must be a duration"),
        (lambda: FixedProfile(-1), "fixed value must be a duration"),
        (lambda: parse_profile("fixed:ms=1").set_cap(-5), "cap must be a duration"),
        (lambda: TraceProfile(np.array([1, 2**62])), r"trace values must lie in \[0, 4611"),
        (lambda: LognormalProfile(MS, float("inf")), "finite sigma"),
        (lambda: ParetoProfile(MS, float("nan")), "finite alpha"),
        (lambda: SpikeProfile(0, MS, length=10**10, prob=0.1), "'len' must be at most"),
        (
            lambda: EmpiricalProfile(np.array([1, 2]), np.array([1.0, np.inf])),
            "finite, non-negative counts",
        ),
        (lambda: require_bounded_tail(ParetoProfile(5 * MS, 0.001)), "heavy tail without a cap"),
    ],
)
def test_bad_arguments_raise_profile_error(call, fragment: str) -> None:
    """Out-of-range constructor or query arguments raise ProfileError naming the problem."""
    with pytest.raises(ProfileError, match=fragment):
        call()


@pytest.mark.parametrize(
    "profile",
    [
        ParetoProfile(5 * MS, 0.001),
        LognormalProfile(2 * MS, 1000.0),
        GaussianProfile(MAX_SAMPLE_NS, MAX_SAMPLE_NS),
    ],
    ids=["pareto alpha=0.001", "lognormal sigma=1000", "gaussian at the top"],
)
def test_samples_beyond_int64_clamp_instead_of_wrapping(profile: Profile) -> None:
    """Built directly (no parser, no tail rule), a tail beyond int64 clamps to MAX_SAMPLE_NS."""
    x = profile.sample(5000)
    assert x.dtype == np.int64 and x.min() >= 0 and x.max() == MAX_SAMPLE_NS
    assert 0 <= profile.next_ns() <= MAX_SAMPLE_NS


def test_tail_rule_is_one_hour_at_p9999_and_a_cap_lifts_it() -> None:
    """An uncapped tail passes while p99.99 <= 1 h; beyond, only a cap makes it acceptable."""
    # pareto: p99.99 = scale * 1e4 ** (1 / alpha); alpha = 1 puts 5 ms at 50 s.
    require_bounded_tail(ParetoProfile(5 * MS, 1.0))
    assert ParetoProfile(5 * MS, 1.0).quantile_ns(0.9999) <= UNCAPPED_TAIL_LIMIT_NS
    with pytest.raises(ProfileError, match=r"99\.99th percentile is"):
        require_bounded_tail(ParetoProfile(5 * MS, 0.5))  # p99.99 = 500 000 s
    require_bounded_tail(ParetoProfile(5 * MS, 0.5, cap_ns=100 * MS))
    assert (
        parse_profile(
            '{"kind": "mix", "cap_ms": 9, "components": [{"weight": 1, '
            '"profile": "pareto:scale_ms=5,alpha=0.01"}]}'
        )
        .sample(99)
        .max()
        <= 9 * MS
    )


def test_empirical_counts_near_float_max_keep_their_proportions() -> None:
    """Counts whose sum overflows float64 are scaled, not turned into NaN or one bucket."""
    p = EmpiricalProfile(np.array([1000, 2000, 3000]), np.array([1e308, 1e308, 0.0]))
    assert p.cdf(1000) == pytest.approx(0.5) and p.cdf(2000) == 1.0
    assert set(np.unique(p.sample(2000)).tolist()) == {1000, 2000}


def test_replay_refuses_the_uncapped_tail_and_runs_the_capped_one() -> None:
    """The spec that once drove the replay clock backwards is refused before the loop starts;
    with a cap the same tail replays, every latency in [scale, cap]."""
    pytest.importorskip("mujoco")
    from tailguard.firmware_sim.controllers import CallableController
    from tailguard.firmware_sim.replay import TimingSpec, build_loop, make_task

    task = make_task("Hopper-v5")
    zero = CallableController(lambda obs: np.zeros(3))
    with pytest.raises(ProfileError, match="heavy tail without a cap"):
        build_loop(task, zero, TimingSpec(latency="pareto:scale_ms=5,alpha=0.001"))
    loop = build_loop(task, zero, TimingSpec(latency="pareto:scale_ms=5,alpha=0.001,cap_ms=50"))
    result = loop.run_episode(0)
    assert result.length > 0 and result.sim_time_ns > 0
    assert 5 * MS <= result.latency_ns["p50"] <= result.latency_ns["max"] <= 50 * MS

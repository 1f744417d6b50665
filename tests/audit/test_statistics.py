"""The audit's statistics against scipy and hand-computed cases."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import stats

from tailguard.audit.ratings import RATING_THRESHOLDS, Rating, rating_for, required_threshold
from tailguard.audit.statistics import (
    BootstrapSettings,
    _ratio_stat,
    clopper_pearson,
    episodes_to_settle,
    holm,
    iqm,
    paired_difference,
    paired_ratio,
    probability_of_improvement,
    rate_conditions,
)
from tailguard.errors import ConfigError


def _samples(n: int = 20, seed: int = 1, factor: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    nom = rng.normal(1000, 100, n)
    return nom, nom * factor + rng.normal(0, 80, n)


def _scipy_bound(nom, per, seed, stream, level, alternative="greater"):
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, stream])))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = stats.bootstrap(
            (nom, per),
            _ratio_stat,
            paired=True,
            vectorized=True,
            n_resamples=9999,
            confidence_level=0.9,
            rng=rng,
        )
        again = stats.bootstrap(
            (nom, per),
            _ratio_stat,
            paired=True,
            vectorized=True,
            n_resamples=0,
            bootstrap_result=first,
            confidence_level=level,
            alternative=alternative,
        )
    return first, again


@pytest.mark.parametrize("alpha", [0.05, 0.01, 0.0125, 0.005])
def test_bca_bounds_equal_scipy_paired_bootstrap(alpha: float) -> None:
    """The one-sided BCa bound at any level equals scipy.stats.bootstrap(paired=True) on the
    same resamples (same seed), to float rounding."""
    nom, per = _samples()
    r = paired_ratio(nom, per, BootstrapSettings(seed=3), stream=7)
    first, lower = _scipy_bound(nom, per, 3, 7, 1 - alpha, "greater")
    _, upper = _scipy_bound(nom, per, 3, 7, 1 - alpha, "less")
    assert r.method == "BCa"
    assert r.lower_bound(alpha) == pytest.approx(lower.confidence_interval.low, abs=1e-12)
    assert r.upper_bound(alpha) == pytest.approx(upper.confidence_interval.high, abs=1e-12)
    assert (r.low, r.high) == pytest.approx(tuple(first.confidence_interval), abs=1e-12)


def test_ratio_is_ratio_of_means_and_seeded() -> None:
    """The estimate is mean(perturbed)/mean(nominal); the same seed gives the same interval,
    another stream another one."""
    nom, per = _samples()
    a = paired_ratio(nom, per, BootstrapSettings(seed=5), stream=1)
    b = paired_ratio(nom, per, BootstrapSettings(seed=5), stream=1)
    c = paired_ratio(nom, per, BootstrapSettings(seed=5), stream=2)
    assert a.ratio == pytest.approx(per.mean() / nom.mean())
    assert (a.low, a.high) == (b.low, b.high)
    assert (a.low, a.high) != (c.low, c.high)


def test_p_value_inverts_the_lower_bound() -> None:
    """The p-value of "ratio < t" is the alpha at which the lower bound reaches t."""
    nom, per = _samples()
    r = paired_ratio(nom, per, BootstrapSettings(seed=0))
    for t in (0.86, 0.88, 0.9):
        p = r.p_value(t)
        assert 0.0 < p < 1.0
        assert r.lower_bound(p) == pytest.approx(t, abs=1e-9)
    assert r.p_value(0.0) == 0.0
    assert r.p_value(10.0) == 1.0


def test_pairing_narrows_the_interval_of_correlated_episodes() -> None:
    """With initial-state luck shared by both sides, the paired interval is narrower than an
    unpaired bootstrap of the same data (what the peer tool does)."""
    rng = np.random.default_rng(0)
    nom = rng.normal(1000, 200, 20)  # initial-state luck: large, shared by both sides
    per = 0.95 * nom + rng.normal(0, 20, 20)
    r = paired_ratio(nom, per, BootstrapSettings(seed=0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        unpaired = stats.bootstrap(
            (nom, per),
            _ratio_stat,
            paired=False,
            vectorized=True,
            n_resamples=9999,
            confidence_level=0.9,
            rng=rng,
        )
    width_unpaired = unpaired.confidence_interval.high - unpaired.confidence_interval.low
    assert r.high - r.low < 0.6 * width_unpaired


def test_degenerate_bca_falls_back_to_percentile_and_says_so() -> None:
    """Identical paired returns: BCa is undefined, the percentile interval is used (it is the
    point) and the method names the fallback."""
    x = np.full(10, 200.0)
    r = paired_ratio(x, x, BootstrapSettings())
    assert r.method.startswith("percentile (BCa degenerate")
    assert (r.ratio, r.low, r.high) == (1.0, 1.0, 1.0)


def test_undefined_ratio_when_nominal_mean_is_not_positive() -> None:
    """A nominal mean <= 0 makes the ratio meaningless: undefined, rated INCONCLUSIVE."""
    r = paired_ratio([-5.0, -6.0, -7.0], [-5.0, -9.0, -7.0], BootstrapSettings())
    assert not r.defined and "return offset" in r.method
    (g,) = rate_conditions([r], 0.8, 0.05)
    assert g.rating is Rating.INCONCLUSIVE and not g.tolerated
    shifted = paired_ratio(
        [-5.0, -6.0, -7.0], [-5.0, -9.0, -7.0], BootstrapSettings(return_offset=-20.0)
    )
    assert shifted.defined and shifted.ratio == pytest.approx((15 + 11 + 13) / (15 + 14 + 13))


def test_paired_samples_must_match() -> None:
    """Unequal lengths or fewer than two episodes are refused with ConfigError."""
    with pytest.raises(ConfigError, match="same episodes"):
        paired_ratio([1.0, 2.0], [1.0, 2.0, 3.0], BootstrapSettings())
    with pytest.raises(ConfigError, match="at least 2"):
        paired_ratio([1.0], [1.0], BootstrapSettings())


def test_holm_hand_computed() -> None:
    """Holm on p = (0.01, 0.04, 0.03, 0.005), alpha 0.05: sorted levels 0.0125, 0.0167,
    0.025, 0.05; 0.005 and 0.01 are rejected, 0.03 > 0.025 stops the procedure."""
    rejected, level = holm([0.01, 0.04, 0.03, 0.005], 0.05)
    assert rejected == [True, False, False, True]
    assert level == pytest.approx([0.05 / 3, 0.05, 0.05 / 2, 0.05 / 4])


def test_clopper_pearson_hand_computed_and_scipy() -> None:
    """k=0: upper = 1 - (alpha/2)^(1/n); k=n: lower = (alpha/2)^(1/n); others equal scipy's
    exact binomial interval."""
    assert clopper_pearson(0, 20) == pytest.approx((0.0, 1 - 0.025 ** (1 / 20)))
    assert clopper_pearson(20, 20) == pytest.approx((0.025 ** (1 / 20), 1.0))
    ci = stats.binomtest(7, 20).proportion_ci(confidence_level=0.95, method="exact")
    assert clopper_pearson(7, 20) == pytest.approx((ci.low, ci.high))


def test_iqm_and_probability_of_improvement_hand_computed() -> None:
    """IQM of 1..8 is mean(3..6) = 4.5; P(perturbed >= nominal) counts ties one half."""
    assert iqm(np.arange(1, 9)) == pytest.approx(4.5)
    # pairs (x, y): x in {1, 3}, y in {1, 2}: 1v1 tie .5, 1v2 0, 3v1 1, 3v2 1 -> 2.5 / 4
    assert probability_of_improvement([1.0, 2.0], [1.0, 3.0]) == pytest.approx(0.625)


def test_ratings_use_the_lower_bound_and_one_table() -> None:
    """PASS/MILD/DEGRADED/FAIL come from the one threshold table, judged on the bound."""
    assert [RATING_THRESHOLDS[r] for r in (Rating.PASS, Rating.MILD, Rating.DEGRADED)] == [
        0.95,
        0.80,
        0.50,
    ]
    assert rating_for(0.95) is Rating.PASS
    assert rating_for(0.9499) is Rating.MILD
    assert rating_for(0.80) is Rating.MILD
    assert rating_for(0.5) is Rating.DEGRADED
    assert rating_for(0.49) is Rating.FAIL
    assert required_threshold("mild") == 0.80
    with pytest.raises(ConfigError, match="valid choices"):
        required_threshold("GREAT")


def test_rate_conditions_inconclusive_faults_and_clear_cases() -> None:
    """A clearly good condition is tolerated, a clearly bad one is rated by its bound, one
    whose interval straddles the threshold is INCONCLUSIVE with an episode estimate, and a
    faulted one is FAIL whatever its returns."""
    s = BootstrapSettings(seed=0)
    nom, _ = _samples(seed=2)
    rng = np.random.default_rng(9)
    good = paired_ratio(nom, nom * 0.99 + rng.normal(0, 5, nom.size), s, 1)
    bad = paired_ratio(nom, nom * 0.3 + rng.normal(0, 5, nom.size), s, 2)
    mid = paired_ratio(nom, nom * 0.8 + rng.normal(0, 150, nom.size), s, 3)
    g, b, m, f = rate_conditions([good, bad, mid, good], 0.8, 0.05, faults=[0, 0, 0, 3])
    assert g.tolerated and g.rating in (Rating.PASS, Rating.MILD)
    assert not b.tolerated and b.rating is Rating.FAIL and b.upper_bound < 0.8
    assert m.rating is Rating.INCONCLUSIVE and m.lower_bound < 0.8 <= m.upper_bound
    assert m.episodes_to_settle is not None and m.episodes_to_settle > nom.size
    assert f.rating is Rating.FAIL and "fault" in f.reason
    # Holm: each bound is taken at a level no larger than alpha.
    assert all(x.holm_level <= 0.05 for x in (g, b, m, f))


def test_episodes_to_settle_scales_with_the_squared_half_width() -> None:
    """Half-width h and gap g: about n (h/g)^2 episodes; None when the estimate sits on it."""
    assert episodes_to_settle(20, 0.875, 0.75, 0.75 + 0.0625) == 80  # h = 0.125, g = 0.0625
    assert episodes_to_settle(20, 0.80, 0.70, 0.80) is None


def test_paired_difference_against_scipy() -> None:
    """mean(a - b) with scipy's one-sample BCa on the differences, and exact when every
    difference is equal."""
    a, b = _samples()
    s = BootstrapSettings(seed=4)
    d = paired_difference(a, b, s, stream=2)
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([4, 2])))
    ref = stats.bootstrap((a - b,), np.mean, n_resamples=9999, confidence_level=0.9, rng=rng)
    assert d.estimate == pytest.approx(float(np.mean(a - b)))
    assert (d.low, d.high) == pytest.approx(tuple(ref.confidence_interval))
    same = paired_difference([1.0, 2.0, 3.0], [0.0, 1.0, 2.0], s)
    assert (same.estimate, same.low, same.high) == (1.0, 1.0, 1.0)


def test_iqm_and_clopper_pearson_equal_scipy_on_random_data() -> None:
    """The scipy-free IQM and Clopper-Pearson equal scipy.stats.trim_mean(x, 0.25) and the
    beta quantiles for many sizes."""
    rng = np.random.default_rng(0)
    for n in (4, 5, 7, 20, 33):
        x = rng.normal(0, 1, n)
        assert iqm(x) == pytest.approx(stats.trim_mean(x, 0.25))
        k = int(rng.integers(1, n))
        lo, hi = clopper_pearson(k, n)
        assert lo == pytest.approx(stats.beta.ppf(0.025, k, n - k + 1))
        assert hi == pytest.approx(stats.beta.ppf(0.975, k + 1, n - k))

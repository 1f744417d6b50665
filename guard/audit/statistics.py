"""Paired statistics of the audit: return ratios with bootstrap intervals, fall rates,
robust companions, ratings on the lower bound, and Holm's multiplicity correction.

Everything here works on per-episode returns of PAIRED episodes: episode ``i`` of a
condition and episode ``i`` of nominal share the reset seed and every random stream, so the
bootstrap resamples episode indices jointly (``scipy.stats.bootstrap(paired=True)``).

- Return ratio: ``mean(perturbed - offset) / mean(nominal - offset)`` (``offset`` is 0
  unless the env's returns are not positive, e.g. Pendulum-v1; it is recorded).
- Interval: BCa (scipy's default), ``n_resamples`` resamples from a seeded generator, the
  same resamples ``scipy.stats.bootstrap(paired=True)`` draws. When
  BCa is degenerate (every resample gives the same ratio, e.g. identical episodes, or the
  acceleration is undefined) the percentile interval of the same resamples is used and the
  result says so (``method``).
- Decision: one-sided. A condition is *tolerated* when the lower confidence bound meets the
  required rating's threshold. With ``m`` conditions, Holm's step-down procedure controls
  the family-wise error of "tolerated" claims at ``alpha``: the p-value of each claim is
  inverted from the same BCa interval, and each condition's reported lower bound is taken at
  its Holm-adjusted level.
- Fall rate: exact Clopper-Pearson interval.
- Companions: IQM (25 % trimmed mean) ratio and the probability of improvement
  P(perturbed >= nominal) = Mann-Whitney U / (n m) (ties count one half).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tailguard.audit.ratings import Rating, rating_for
from tailguard.audit.special import betaincinv, ndtr, ndtri
from tailguard.errors import ConfigError

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_RESAMPLES",
    "BootstrapSettings",
    "ConditionRating",
    "DifferenceResult",
    "RatioResult",
    "clopper_pearson",
    "episodes_to_settle",
    "holm",
    "iqm",
    "paired_difference",
    "paired_ratio",
    "probability_of_improvement",
    "rate_conditions",
]

DEFAULT_RESAMPLES = 9999
DEFAULT_ALPHA = 0.05


@dataclass(frozen=True)
class BootstrapSettings:
    """How the intervals are computed (recorded in every output).

    Attributes:
        n_resamples: bootstrap resamples.
        alpha: family-wise error rate of the one-sided "tolerated" claims (Holm).
        method: ``"BCa"`` (default) or ``"percentile"``.
        seed: seed of the resampling generator (each condition derives its own stream).
        return_offset: subtracted from every return before the ratio.
    """

    n_resamples: int = DEFAULT_RESAMPLES
    alpha: float = DEFAULT_ALPHA
    method: str = "BCa"
    seed: int = 0
    return_offset: float = 0.0

    def __post_init__(self) -> None:
        if self.n_resamples < 100:
            raise ConfigError(f"n_resamples must be >= 100, got {self.n_resamples}")
        if not 0.0 < self.alpha < 0.5:
            raise ConfigError(f"alpha must be in (0, 0.5), got {self.alpha}")
        if self.method not in ("BCa", "percentile"):
            raise ConfigError(f"unknown method {self.method!r}; valid choices are BCa, percentile")

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "n_resamples": self.n_resamples,
            "alpha": self.alpha,
            "method": self.method,
            "seed": self.seed,
            "return_offset": self.return_offset,
            "paired": True,
            "implementation": "scipy.stats.bootstrap(paired=True)",
            "multiplicity": "Holm step-down over the conditions' one-sided claims",
        }


@dataclass(frozen=True)
class RatioResult:
    """The paired return ratio of one condition against nominal.

    Attributes:
        ratio: point estimate, mean(perturbed) / mean(nominal) (after the offset).
        low, high: two-sided interval at ``1 - 2 * alpha`` (so ``low`` is the one-sided
            lower bound at ``1 - alpha``), unadjusted.
        method: ``"BCa"`` or ``"percentile (BCa degenerate: ...)"``.
        z0, acceleration: BCa bias correction and acceleration (0 for percentile).
        distribution: the sorted bootstrap ratios (not serialized).
        n: number of paired episodes.
        defined: False when the nominal mean is not positive (the ratio is meaningless).
    """

    ratio: float
    low: float
    high: float
    method: str
    z0: float
    acceleration: float
    distribution: np.ndarray
    n: int
    defined: bool = True

    def lower_bound(self, alpha: float) -> float:
        """One-sided lower confidence bound at level ``1 - alpha``."""
        if not self.defined:
            return float("nan")
        return float(np.quantile(self.distribution, self._bca_level(alpha)))

    def upper_bound(self, alpha: float) -> float:
        """One-sided upper confidence bound at level ``1 - alpha``."""
        if not self.defined:
            return float("nan")
        return float(np.quantile(self.distribution, self._bca_level(1.0 - alpha)))

    def _bca_level(self, alpha: float) -> float:
        z0, a = self.z0, self.acceleration
        num = z0 + float(ndtri(alpha))
        return float(ndtr(z0 + num / (1.0 - a * num)))

    def p_value(self, threshold: float) -> float:
        """One-sided p-value of H0 "ratio < threshold": the smallest ``alpha`` at which
        the lower bound reaches ``threshold`` (inverted from the same interval)."""
        if not self.defined:
            return 1.0
        s = self.distribution
        b = s.size
        if threshold <= s[0]:
            return 0.0
        if threshold >= s[-1]:
            return 1.0
        k = int(np.searchsorted(s, threshold, side="right")) - 1
        span = s[k + 1] - s[k]
        frac = 0.0 if span <= 0 else (threshold - s[k]) / span
        q = (k + frac) / (b - 1)  # inverse of np.quantile's linear rule
        y = float(ndtri(q)) - self.z0
        denom = 1.0 + self.acceleration * y
        if denom <= 0:
            return 1.0 if y > 0 else 0.0
        u = y / denom
        return float(min(max(ndtr(u - self.z0), 0.0), 1.0))


def preload_difference() -> None:
    """Import what :func:`paired_difference` needs (``scipy.stats``, ~1 s) now."""
    from scipy import stats  # noqa: F401


def _paired_resamples(
    nom: np.ndarray, per: np.ndarray, n_resamples: int, rng: np.random.Generator
) -> np.ndarray:
    """The bootstrap distribution of the ratio, resampling episode indices jointly.

    Exactly what ``scipy.stats.bootstrap((nom, per), ..., paired=True)`` draws from the same
    generator (one batch of ``rng.integers(0, n, (n_resamples, n))`` index rows; checked in
    the tests), without importing ``scipy.stats`` (seconds on a loaded machine).
    """
    i = rng.integers(0, nom.size, (n_resamples, nom.size), dtype=np.int64)
    return _ratio_stat(nom[i], per[i])


def _ratio_stat(nominal: np.ndarray, perturbed: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(perturbed, axis=axis) / np.mean(nominal, axis=axis)


def paired_ratio(
    nominal: Sequence[float] | np.ndarray,
    perturbed: Sequence[float] | np.ndarray,
    settings: BootstrapSettings,
    stream: int = 0,
) -> RatioResult:
    """The paired bootstrap of mean(perturbed) / mean(nominal).

    Args:
        nominal, perturbed: per-episode returns, paired by index, shape (n,).
        settings: resamples, alpha, method, seed, return offset.
        stream: index of this comparison; the resampling generator is seeded with
            ``SeedSequence([settings.seed, stream])`` so results do not depend on order.

    Raises:
        ConfigError: the two samples differ in length or have fewer than 2 episodes.
    """
    nom = np.asarray(nominal, np.float64) - settings.return_offset
    per = np.asarray(perturbed, np.float64) - settings.return_offset
    if nom.shape != per.shape or nom.ndim != 1:
        raise ConfigError(
            f"paired samples need the same episodes: {nom.shape} nominal vs {per.shape}"
        )
    n = int(nom.size)
    if n < 2:
        raise ConfigError(f"a bootstrap needs at least 2 paired episodes, got {n}")
    if not float(nom.mean()) > 0:
        empty = np.zeros(1)
        return RatioResult(
            float("nan"),
            float("nan"),
            float("nan"),
            "undefined (nominal mean return <= 0: set a return offset)",
            0.0,
            0.0,
            empty,
            n,
            defined=False,
        )
    ratio = float(_ratio_stat(nom, per))
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([settings.seed, stream])))
    dist = np.sort(_paired_resamples(nom, per, settings.n_resamples, rng))
    method, z0, acc = settings.method, 0.0, 0.0
    if settings.method == "BCa":
        z0, acc, why = _bca_parameters(nom, per, ratio, dist)
        if why:
            method, z0, acc = f"percentile (BCa degenerate: {why})", 0.0, 0.0
    result = RatioResult(ratio, 0.0, 0.0, method, z0, acc, dist, n)
    low = result.lower_bound(settings.alpha)
    high = result.upper_bound(settings.alpha)
    return RatioResult(ratio, low, high, method, z0, acc, dist, n)


def _bca_parameters(
    nom: np.ndarray, per: np.ndarray, ratio: float, dist: np.ndarray
) -> tuple[float, float, str]:
    """(z0, acceleration, reason-if-degenerate), computed as scipy's BCa does."""
    b = dist.size
    frac = (np.count_nonzero(dist < ratio) + np.count_nonzero(dist <= ratio)) / (2 * b)
    z0 = ndtri(frac)
    if not math.isfinite(z0):
        return 0.0, 0.0, "the estimate lies outside every resample"
    if dist[0] == dist[-1]:
        return 0.0, 0.0, "every resample gives the same ratio"
    n = nom.size
    # Leave-one-pair-out ratios of means: (sum - x_i) / (sum - y_i).
    jack = (per.sum() - per) / (nom.sum() - nom)
    u = (n - 1) * (jack.mean() - jack)
    den = float(np.sum(u**2) / n**2) ** 1.5
    if not den > 0:
        return 0.0, 0.0, "the jackknife is constant (acceleration undefined)"
    acc = float(np.sum(u**3) / n**3) / 6.0 / den
    return z0, acc, ""


def holm(p_values: Sequence[float], alpha: float) -> tuple[list[bool], list[float]]:
    """Holm's step-down procedure.

    Args:
        p_values: one p-value per hypothesis.
        alpha: family-wise error rate.

    Returns:
        (rejected, level): whether each hypothesis is rejected, and the per-hypothesis
        level ``alpha / (m - rank)`` Holm compares it with (rank 0 = smallest p-value).
    """
    m = len(p_values)
    order = sorted(range(m), key=lambda i: (p_values[i], i))
    rejected = [False] * m
    level = [alpha] * m
    still = True
    for rank, i in enumerate(order):
        level[i] = alpha / (m - rank)
        if still and p_values[i] <= level[i]:
            rejected[i] = True
        else:
            still = False
    return rejected, level


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact two-sided Clopper-Pearson interval of a binomial proportion ``k / n``: the
    beta quantiles ``B(a/2; k, n-k+1)`` and ``B(1-a/2; k+1, n-k)`` (:func:`betaincinv`)."""
    if n <= 0 or not 0 <= k <= n:
        raise ConfigError(f"need 0 <= k <= n and n > 0, got k={k}, n={n}")
    a = 1.0 - confidence
    low = 0.0 if k == 0 else float(betaincinv(k, n - k + 1, a / 2))
    high = 1.0 if k == n else float(betaincinv(k + 1, n - k, 1 - a / 2))
    return low, high


def iqm(values: Sequence[float] | np.ndarray) -> float:
    """Interquartile mean: the mean of the middle 50 % (``int(n / 4)`` values trimmed from
    each end, as ``scipy.stats.trim_mean(x, 0.25)``)."""
    x = np.sort(np.asarray(values, np.float64).reshape(-1))
    cut = int(0.25 * x.size)
    return float(x[cut : x.size - cut].mean())


def probability_of_improvement(
    nominal: Sequence[float] | np.ndarray, perturbed: Sequence[float] | np.ndarray
) -> float:
    """P(perturbed >= nominal) over all episode pairs: U / (n m), ties count one half."""
    x = np.asarray(perturbed, np.float64)[:, None]
    y = np.asarray(nominal, np.float64)[None, :]
    return float(np.mean((x > y) + 0.5 * (x == y)))


def episodes_to_settle(n: int, ratio: float, low: float, threshold: float) -> int | None:
    """Rough episode count that would put the lower bound clear of ``threshold``.

    The interval's half-width shrinks like 1/sqrt(n); it must shrink to the distance between
    the point estimate and the threshold. None when the point estimate sits on it.
    """
    gap = abs(ratio - threshold)
    half = ratio - low
    if not (gap > 0 and math.isfinite(half)) or half <= 0:
        return None
    return max(n + 1, math.ceil(n * (half / gap) ** 2))


@dataclass(frozen=True)
class ConditionRating:
    """A condition's verdict.

    Attributes:
        rating: PASS / MILD / DEGRADED / FAIL, or INCONCLUSIVE.
        rating_by_lower_bound: the ladder rating of ``lower_bound`` (even when inconclusive).
        lower_bound, upper_bound: one-sided bounds at the Holm-adjusted level.
        holm_level: the alpha Holm used for this condition.
        p_value: one-sided p-value of "ratio < required threshold".
        tolerated: the lower bound meets the required threshold (Holm rejected H0).
        episodes_to_settle: when inconclusive, a rough episode count that would settle it.
        reason: why (faults, undefined ratio), or "".
    """

    rating: Rating
    rating_by_lower_bound: Rating
    lower_bound: float
    upper_bound: float
    holm_level: float
    p_value: float
    tolerated: bool
    episodes_to_settle: int | None
    reason: str = ""


def rate_conditions(
    ratios: Sequence[RatioResult],
    required: float,
    alpha: float,
    faults: Sequence[int] | None = None,
) -> list[ConditionRating]:
    """Ratings of several conditions, with Holm over their "tolerated" claims.

    Args:
        ratios: one paired ratio per condition (nominal itself excluded).
        required: the ratio threshold of the required rating.
        alpha: family-wise error rate.
        faults: policy faults per condition (a faulted condition is FAIL).
    """
    faults = list(faults) if faults is not None else [0] * len(ratios)
    p = [r.p_value(required) for r in ratios]
    rejected, level = holm(p, alpha)
    out = []
    for r, pv, rej, lev, nf in zip(ratios, p, rejected, level, faults, strict=True):
        if not r.defined:
            out.append(
                ConditionRating(
                    Rating.INCONCLUSIVE,
                    Rating.INCONCLUSIVE,
                    float("nan"),
                    float("nan"),
                    lev,
                    1.0,
                    False,
                    None,
                    r.method,
                )
            )
            continue
        low, high = r.lower_bound(lev), r.upper_bound(lev)
        ladder = rating_for(low)
        reason = ""
        if nf:
            rating, tolerated, settle = Rating.FAIL, False, None
            reason = f"{nf} policy fault(s) (exception or non-finite action)"
        elif rej and low >= required:
            rating, tolerated, settle = ladder, True, None
        elif high < required:
            rating, tolerated, settle = ladder, False, None
        else:
            rating, tolerated = Rating.INCONCLUSIVE, False
            settle = episodes_to_settle(r.n, r.ratio, low, required)
            reason = "the interval straddles the required threshold"
        out.append(ConditionRating(rating, ladder, low, high, lev, pv, tolerated, settle, reason))
    return out


@dataclass(frozen=True)
class DifferenceResult:
    """Paired mean difference ``mean(a - b)`` with a two-sided ``1 - 2 alpha`` interval."""

    estimate: float
    low: float
    high: float
    method: str
    n: int

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "estimate": self.estimate,
            "ci_low": self.low,
            "ci_high": self.high,
            "method": self.method,
            "n": self.n,
        }


def paired_difference(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    settings: BootstrapSettings,
    stream: int = 0,
) -> DifferenceResult:
    """Paired bootstrap interval of mean(a - b) (BCa; percentile when BCa is degenerate)."""
    from scipy import stats

    x = np.asarray(a, np.float64)
    y = np.asarray(b, np.float64)
    if x.shape != y.shape or x.ndim != 1 or x.size < 2:
        raise ConfigError(f"paired samples need >= 2 equal-length episodes: {x.shape}, {y.shape}")
    diff = x - y
    est = float(diff.mean())
    if np.all(diff == diff[0]):
        return DifferenceResult(est, est, est, "exact (every paired difference is equal)", x.size)
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([settings.seed, stream])))
    level = 1.0 - 2.0 * settings.alpha
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.bootstrap(
            (diff,),
            np.mean,
            n_resamples=settings.n_resamples,
            confidence_level=level,
            method="BCa",
            rng=rng,
        )
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    method = "BCa"
    if not (math.isfinite(low) and math.isfinite(high)):
        dist = np.asarray(res.bootstrap_distribution)
        low, high = (float(v) for v in np.quantile(dist, [settings.alpha, 1 - settings.alpha]))
        method = "percentile (BCa degenerate)"
    return DifferenceResult(est, low, high, method, int(x.size))

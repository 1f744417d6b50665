"""Per-condition aggregation of paired episodes: returns, falls, timing and smoothness.

Every percentile here is tailguard's one definition (``tailguard.stats.percentile``), over
the pooled per-tick samples of all episodes of the condition.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tailguard.audit.conditions import Condition
from tailguard.audit.statistics import (
    ConditionRating,
    RatioResult,
    clopper_pearson,
    iqm,
    probability_of_improvement,
)
from tailguard.audit.units import EpisodeOutcome
from tailguard.stats.percentile import percentiles

__all__ = ["ConditionResult", "timing_summary"]

_PS = (50.0, 95.0, 99.0)


def _pct(samples: np.ndarray) -> dict[str, int]:
    got = percentiles(samples, _PS)
    out = {f"p{int(p)}_ns": int(got[p]) for p in _PS}
    out["max_ns"] = int(samples.max()) if samples.size else 0
    return out


def timing_summary(episodes: list[EpisodeOutcome], period_ns: int, d_cap: int) -> dict[str, Any]:
    """Pooled latency / dt / obs-age percentiles, delay in steps d, p_violate, overruns."""
    lat = np.concatenate([e.latency_ns for e in episodes]) if episodes else np.zeros(0, np.int64)
    dt = np.concatenate([e.dt_ns for e in episodes]) if episodes else np.zeros(0, np.int64)
    age = np.concatenate([e.obs_age_ns for e in episodes]) if episodes else np.zeros(0, np.int64)
    d = -(-lat // period_ns)
    dp = percentiles(d, _PS)
    return {
        "ticks": int(lat.size),
        "latency": _pct(lat),
        "dt": _pct(dt),
        "obs_age": _pct(age),
        "delay_steps": {f"d_p{int(p)}": int(dp[p]) for p in _PS},
        "d_cap": d_cap,
        "p_violate": float(np.mean(d > d_cap)) if d.size else 0.0,
        "max_overrun_streak": max((e.max_overrun_streak for e in episodes), default=0),
    }


@dataclass
class ConditionResult:
    """One condition's paired episodes and statistics.

    Attributes:
        condition: the condition.
        episodes: per-episode outcomes, in episode order.
        timing: :func:`timing_summary` of the episodes.
        ratio: paired return ratio against nominal (None for nominal).
        rating: the verdict (None for nominal).
        iqm_ratio: IQM(perturbed) / IQM(nominal), or None.
        p_improvement: P(perturbed >= nominal), or None.
    """

    condition: Condition
    episodes: list[EpisodeOutcome]
    timing: dict[str, Any]
    ratio: RatioResult | None = None
    rating: ConditionRating | None = None
    iqm_ratio: float | None = None
    p_improvement: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def returns(self) -> np.ndarray:
        """Per-episode returns, float64 (n,)."""
        return np.asarray([e.ret for e in self.episodes], np.float64)

    @property
    def falls(self) -> int:
        """Episodes that ended by the env's termination rule."""
        return sum(e.fell for e in self.episodes)

    @property
    def faults(self) -> int:
        """Policy faults over all episodes."""
        return sum(e.faults for e in self.episodes)

    def companions(self, nominal: np.ndarray, offset: float) -> None:
        """Fill the IQM ratio and the probability of improvement against ``nominal``."""
        base = iqm(nominal - offset)
        self.iqm_ratio = float(iqm(self.returns - offset) / base) if base > 0 else None
        self.p_improvement = probability_of_improvement(nominal, self.returns)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (every per-episode return and length; no raw tick samples)."""
        n = len(self.episodes)
        lo, hi = clopper_pearson(self.falls, n) if n else (0.0, 1.0)
        out: dict[str, Any] = {
            "condition": self.condition.to_dict(),
            "episodes": n,
            "returns": [e.ret for e in self.episodes],
            "lengths": [e.length for e in self.episodes],
            "fell": [e.fell for e in self.episodes],
            "faults": self.faults,
            "return_mean": float(self.returns.mean()) if n else None,
            "fall_rate": self.falls / n if n else None,
            "fall_rate_ci95": [lo, hi],
            "timing": self.timing,
            "smoothness": {
                "max_norm_daction": [e.max_norm_daction for e in self.episodes],
                "max_norm_d2action": [e.max_norm_d2action for e in self.episodes],
            },
        }
        if self.ratio is not None:
            r = self.ratio
            out["ratio"] = {
                "estimate": _num(r.ratio),
                "ci_low": _num(r.low),
                "ci_high": _num(r.high),
                "method": r.method,
                "z0": r.z0,
                "acceleration": r.acceleration,
            }
            out["iqm_ratio"] = self.iqm_ratio
            out["p_improvement"] = self.p_improvement
        if self.rating is not None:
            g = self.rating
            out["rating"] = {
                "rating": g.rating.value,
                "rating_by_lower_bound": g.rating_by_lower_bound.value,
                "lower_bound": _num(g.lower_bound),
                "upper_bound": _num(g.upper_bound),
                "holm_alpha": g.holm_level,
                "p_value": g.p_value,
                "tolerated": g.tolerated,
                "episodes_to_settle": g.episodes_to_settle,
                "reason": g.reason,
            }
        if self.extra:
            out.update(self.extra)
        return out


def _num(x: float) -> float | None:
    """NaN is not JSON: None."""
    return None if x != x else float(x)

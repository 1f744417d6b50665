"""The audit's ratings and their thresholds: THE one definition.

A condition's rating is read from the LOWER confidence bound of its return ratio (perturbed
mean return / nominal mean return), never from the point estimate:

    PASS       lower bound >= 0.95
    MILD       lower bound >= 0.80
    DEGRADED   lower bound >= 0.50
    FAIL       below 0.50 (or a policy fault during the condition)

``INCONCLUSIVE`` is not a level of the ladder: it says that the interval straddles the
threshold of the rating the audit requires (``--require``), so more episodes are needed to
decide whether the condition is tolerated.
"""

from __future__ import annotations

from enum import Enum

from tailguard.errors import ConfigError

__all__ = ["RATING_THRESHOLDS", "Rating", "rating_for", "required_threshold"]


class Rating(Enum):
    """A condition's rating (stable upper-case values: they appear in reports and CI)."""

    PASS = "PASS"
    MILD = "MILD"
    DEGRADED = "DEGRADED"
    FAIL = "FAIL"
    INCONCLUSIVE = "INCONCLUSIVE"


#: Lower bound of the return ratio needed for each rating, best first.
RATING_THRESHOLDS: dict[Rating, float] = {
    Rating.PASS: 0.95,
    Rating.MILD: 0.80,
    Rating.DEGRADED: 0.50,
}


def rating_for(lower_bound: float) -> Rating:
    """The ladder rating of a lower confidence bound (PASS, MILD, DEGRADED or FAIL)."""
    for rating, threshold in RATING_THRESHOLDS.items():
        if lower_bound >= threshold:
            return rating
    return Rating.FAIL


def required_threshold(require: str | Rating) -> float:
    """The ratio threshold of a required rating name (``"PASS"`` or ``"MILD"``).

    Raises:
        ConfigError: not one of PASS, MILD, DEGRADED.
    """
    name = require.value if isinstance(require, Rating) else str(require).upper()
    for rating, threshold in RATING_THRESHOLDS.items():
        if rating.value == name:
            return threshold
    raise ConfigError(
        f"unknown required rating {require!r}; valid choices are "
        f"{[r.value for r in RATING_THRESHOLDS]}"
    )

"""THE percentile definition of tailguard: nearest rank, as the guard's histograms use it.

Every p50/p95/p99 that tailguard reports — the guard's window checks, the simulated loop,
the loop benchmark, the demo, ``inspect``, the firmware's stats, the audit — is the value
of rank ``max(1, ceil(p' * n / 100))`` among ``n`` sorted samples, where ``p'`` is ``p``
lowered by one ulp so that binary rounding never pushes a rank up (``99.9`` of 1000
samples is rank 999). For ``p == 0`` it is the minimum. A histogram answers the same rank
with the highest value of the bucket that holds it (see ``LogLinearHistogram``).

This differs from ``np.percentile``'s default (linear interpolation) and from
``method="higher"`` (which gives rank 100 of 100 for p99, where nearest rank gives 99).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from tailguard.errors import ConfigError

__all__ = ["nearest_rank", "percentile", "percentiles"]


def nearest_rank(p: float, n: int) -> int:
    """The 1-based rank of percentile ``p`` among ``n`` samples (1 when ``n`` is 0).

    Raises:
        ConfigError: ``p`` outside [0, 100] or NaN.
    """
    p = float(p)
    if not 0.0 <= p <= 100.0:
        raise ConfigError(f"percentiles must be in [0, 100]; got {p}")
    return max(math.ceil(max(math.nextafter(p, -math.inf), 0.0) * n / 100.0), 1)


def percentiles(
    samples: Sequence[float] | np.ndarray, ps: Iterable[float]
) -> dict[float, float | int]:
    """Nearest-rank percentiles of raw samples, ``{p: value}`` with keys as given.

    Integer samples give ``int`` values. Empty samples give 0 for every ``p``.

    Raises:
        ConfigError: a percentile outside [0, 100] or NaN.
    """
    keys = [float(p) for p in ps]
    arr = np.asarray(samples)
    n = int(arr.size)
    ranks = [nearest_rank(p, n) for p in keys]
    if n == 0:
        return dict.fromkeys(keys, 0)
    ordered = np.sort(arr.reshape(-1))
    as_int = ordered.dtype.kind in "iub"
    out: dict[float, float | int] = {}
    for p, rank in zip(keys, ranks, strict=True):
        value = ordered[0] if p == 0.0 else ordered[rank - 1]
        out[p] = int(value) if as_int else float(value)
    return out


def percentile(samples: Sequence[float] | np.ndarray, p: float) -> float | int:
    """One nearest-rank percentile of raw samples (see :func:`percentiles`)."""
    return percentiles(samples, (p,))[float(p)]

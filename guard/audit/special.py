"""The three special functions the audit's intervals need, on Python floats.

``scipy.special`` would give them too, but importing it costs ~0.5 s of CPU (its array-API
layer pulls in ``numpy.f2py``): a sixth of a whole same-size audit on this 2-core machine.
The statistics need scalars only:

- :func:`ndtr` / :func:`ndtri`: the standard normal CDF (``erfc``, accurate in both
  tails) and quantile (the standard library's :class:`statistics.NormalDist`, Wichura's
  AS241 algorithm, double precision) for BCa;
- :func:`betainc` / :func:`betaincinv`: the regularized incomplete beta function and its
  inverse in ``x`` (Clopper-Pearson bounds), from the continued fraction of ``I_x(a, b)``
  (DLMF 8.17.22) evaluated with Lentz's method, inverted by bisection to the last bit.

The tests check every value against scipy's.
"""

from __future__ import annotations

import math
from statistics import NormalDist

__all__ = ["betainc", "betaincinv", "ndtr", "ndtri"]

_NORMAL = NormalDist()
_SQRT2 = math.sqrt(2.0)
_TINY = 1e-300
_EPS = 1e-16
_MAX_TERMS = 100_000


def ndtr(x: float) -> float:
    """P(Z <= x) for a standard normal Z (0 at -inf, 1 at +inf, NaN for NaN)."""
    return 0.5 * math.erfc(-x / _SQRT2)


def ndtri(p: float) -> float:
    """The standard normal quantile: -inf at 0, +inf at 1, NaN outside [0, 1] or for NaN."""
    if not 0.0 <= p <= 1.0:  # also NaN
        return math.nan
    if p == 0.0:
        return -math.inf
    if p == 1.0:
        return math.inf
    return _NORMAL.inv_cdf(p)


def _continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of ``I_x(a, b)``'s series, converging fast for
    ``x < (a + 1) / (a + b + 2)`` (terms d_{2m+1}, d_{2m} of DLMF 8.17.22)."""
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, _MAX_TERMS):
        for num in (
            m * (b - m) * x / ((a + 2 * m - 1.0) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1.0)),
        ):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + num / c
            c = c if abs(c) > _TINY else _TINY
            h *= d * c
        if abs(d * c - 1.0) < _EPS:
            return h
    raise ArithmeticError(f"incomplete beta: no convergence for a={a}, b={b}, x={x}")


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function ``I_x(a, b)`` for ``a, b > 0``, ``x`` in
    [0, 1]."""
    if not (a > 0.0 and b > 0.0 and 0.0 <= x <= 1.0):
        raise ValueError(f"betainc needs a, b > 0 and 0 <= x <= 1, got {a}, {b}, {x}")
    if x == 0.0 or x == 1.0:
        return x
    log_front = (
        a * math.log(x) + b * math.log1p(-x) + math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    )
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _continued_fraction(b, a, 1.0 - x) / b


def betaincinv(a: float, b: float, p: float) -> float:
    """The ``x`` in [0, 1] with ``I_x(a, b) = p`` (``I`` rises with ``x``): bisection until
    the bracket is two adjacent floats."""
    if not (a > 0.0 and b > 0.0 and 0.0 <= p <= 1.0):
        raise ValueError(f"betaincinv needs a, b > 0 and 0 <= p <= 1, got {a}, {b}, {p}")
    if p == 0.0 or p == 1.0:
        return p
    lo, hi = 0.0, 1.0
    for _ in range(2000):  # ~1075 halvings reach the smallest subnormal; never more
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if betainc(a, b, mid) < p:
            lo = mid
        else:
            hi = mid
    return hi

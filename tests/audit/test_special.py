"""The audit's scipy-free special functions equal scipy's."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import special

from tailguard.audit.special import betainc, betaincinv, ndtr, ndtri
from tailguard.audit.statistics import clopper_pearson


@settings(max_examples=300, deadline=None)
@given(st.floats(-37.0, 38.0))
def test_ndtr_equals_scipy(x: float) -> None:
    assert ndtr(x) == pytest.approx(float(special.ndtr(x)), rel=1e-12, abs=1e-300)


@settings(max_examples=300, deadline=None)
@given(st.floats(1e-300, 1.0, exclude_max=True))
def test_ndtri_equals_scipy(p: float) -> None:
    assert ndtri(p) == pytest.approx(float(special.ndtri(p)), rel=1e-12, abs=1e-12)


def test_normal_edges() -> None:
    assert (ndtri(0.0), ndtri(1.0)) == (-math.inf, math.inf)
    assert math.isnan(ndtri(1.5)) and math.isnan(ndtri(math.nan)) and math.isnan(ndtr(math.nan))
    assert (ndtr(-math.inf), ndtr(math.inf)) == (0.0, 1.0)


@settings(max_examples=300, deadline=None)
@given(
    st.floats(0.05, 5000.0),
    st.floats(0.05, 5000.0),
    st.floats(0.0, 1.0),
)
def test_betainc_equals_scipy(a: float, b: float, x: float) -> None:
    assert betainc(a, b, x) == pytest.approx(float(special.betainc(a, b, x)), rel=1e-10, abs=1e-14)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 3000), st.integers(1, 3000), st.floats(1e-6, 1.0 - 1e-6))
def test_betaincinv_equals_scipy(a: int, b: int, p: float) -> None:
    assert betaincinv(a, b, p) == pytest.approx(
        float(special.betaincinv(a, b, p)), rel=1e-10, abs=1e-14
    )


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 200_000), st.data())
def test_clopper_pearson_equals_scipy_at_any_size(n: int, data: st.DataObject) -> None:
    """Episode counts and tick counts alike (chunk metrics count ticks)."""
    k = data.draw(st.integers(0, n))
    low, high = clopper_pearson(k, n)
    want_low = 0.0 if k == 0 else float(special.betaincinv(k, n - k + 1, 0.025))
    want_high = 1.0 if k == n else float(special.betaincinv(k + 1, n - k, 0.975))
    assert low == pytest.approx(want_low, rel=1e-9, abs=1e-15)
    assert high == pytest.approx(want_high, rel=1e-9, abs=1e-15)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        betainc(0.0, 1.0, 0.5)
    with pytest.raises(ValueError):
        betaincinv(1.0, 1.0, 1.5)

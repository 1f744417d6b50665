"""The reports' SVG plots: exact ECDF steps, well-formed documents, data placed on the axes."""

from __future__ import annotations

import re
from xml.etree import ElementTree

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tailguard.audit.svg_plot import Axes, ecdf_points, figure, img

SVG = "{http://www.w3.org/2000/svg}"


def test_ecdf_points_are_exact_steps_of_the_ecdf() -> None:
    """Every returned point is (x_(i), (i+1)/n) of the sorted finite sample; the first and
    last steps are always kept; non-finite values are dropped."""
    values = [3.0, 1.0, float("nan"), 2.0, 2.0, float("inf")]
    x, f = ecdf_points(values)
    assert x.tolist() == [1.0, 2.0, 2.0, 3.0]
    assert f.tolist() == [0.25, 0.5, 0.75, 1.0]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=3000), st.integers(2, 50))
def test_ecdf_points_subsample_without_changing_the_ecdf(values: list[float], cap: int) -> None:
    x, f = ecdf_points(values, max_points=cap)
    s = np.sort(np.asarray(values))
    assert x.size <= max(cap, 1) and x[0] == s[0] and x[-1] == s[-1] and f[-1] == 1.0
    # each point lies on the exact ECDF: F(x) at the step's own rank
    ranks = np.round(f * s.size).astype(int) - 1
    assert np.array_equal(s[ranks], x)


def _parse(svg: str) -> ElementTree.Element:
    root = ElementTree.fromstring(svg)
    assert root.tag == SVG + "svg"
    return root


def test_bars_whiskers_and_reference_lines_land_where_the_values_are() -> None:
    """A bar of value 1 on an axis from 0 to 2 spans half the plot; its whisker and a
    reference line at 1.5 sit at three quarters; labels are escaped."""
    ax = Axes(categories=["a<b", "c"], xlim=(0.0, 2.0))
    ax.hbar([1.0, 2.0], colors=["#111", "#222"], lo=[0.5, 1.5], hi=[1.5, 2.0])
    ax.vline(1.5, label="threshold")
    root = _parse(figure([ax], panel_width=600))
    frame = next(r for r in root.iter(SVG + "rect") if r.get("stroke") == "#999")
    x0, w = float(frame.get("x")), float(frame.get("width"))
    bars = [r for r in root.iter(SVG + "rect") if r.get("fill") in ("#111", "#222")]
    assert [round(float(b.get("width")) / w, 3) for b in bars] == [0.5, 1.0]
    lines = [ln for ln in root.iter(SVG + "line") if ln.get("stroke") == "#777"]
    assert any(abs(float(ln.get("x1")) - (x0 + 0.75 * w)) < 0.2 for ln in lines)
    texts = [t.text for t in root.iter(SVG + "text")]
    assert "a<b" in texts and "threshold" in texts


def test_symlog_axis_ticks_and_figure_grid() -> None:
    """A symmetric-log x axis ticks 0 and the decades from its linear threshold; a grid of
    panels is one document whose size is the panels'."""
    a = Axes(symlog_x=0.01, xlim=(0.0, 20.0), ylim=(0.0, 1.0))
    a.line(*ecdf_points(np.geomspace(0.001, 20, 200)), step=True, label="latency")
    b = Axes(title="second")
    b.points([1, 2], [3, 4], marker="x")
    svg = figure([a, b], cols=2, panel_width=400, panel_height=250, title="grid")
    root = _parse(svg)
    assert root.get("width") == "800" and root.get("height") == "274"
    ticks = {t.text for t in root.iter(SVG + "text")}
    assert {"0", "0.01", "0.1", "1", "10"} <= ticks
    assert re.match(r'<img alt="plot" src="data:image/svg\+xml;base64,[A-Za-z0-9+/=]+">$', img(svg))

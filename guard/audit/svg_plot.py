"""Small, dependency-free plots as SVG for the HTML reports (numpy only).

The reports need five kinds of figure: horizontal bars with intervals, step lines (ECDFs,
CDFs, state timelines), markers, reference lines and a legend. Drawing them directly as SVG
takes milliseconds, where importing and running matplotlib took ~2.5 s of a 5 s audit; the
pictures are vector (sharp at any zoom) and embed as ``data:image/svg+xml`` images.

    ax = Axes(title="returns", xlabel="return", ylim=(0.0, 1.0))
    ax.line(*ecdf_points(values), step=True, label="nominal")
    html = img(figure([ax]))
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["PALETTE", "Axes", "ecdf_points", "figure", "img"]

PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
_FONT = 11.0
_CHAR = 0.6 * _FONT  # average glyph width of a sans-serif font, px


def ecdf_points(values: Any, max_points: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """The ECDF of ``values`` as step points (x sorted, F = rank / n), at most ``max_points``
    of its exact steps (always the first and the last), finite values only."""
    x = np.sort(np.asarray(values, np.float64).ravel())
    x = x[np.isfinite(x)]
    n = x.size
    if n == 0:
        return x, x
    idx = np.unique(np.round(np.linspace(0, n - 1, min(n, max_points))).astype(np.int64))
    return x[idx], (idx + 1) / n


def _nice_step(span: float, target: int = 5) -> float:
    raw = span / max(target, 1)
    mag = 10.0 ** math.floor(math.log10(raw))
    for m in (1.0, 2.0, 2.5, 5.0, 10.0):
        if raw <= m * mag:
            return m * mag
    return 10.0 * mag


def _fmt(v: float) -> str:
    return f"{round(v, 9):g}"


@dataclass
class _Scale:
    lo: float
    hi: float
    p0: float  # pixel of lo
    p1: float  # pixel of hi
    symlog: float | None = None  # linthresh, or None for linear

    def _t(self, v: float) -> float:
        if self.symlog is None:
            return v
        return math.copysign(math.log10(1.0 + abs(v) / self.symlog), v)

    def __call__(self, v: float) -> float:
        a, b = self._t(self.lo), self._t(self.hi)
        return self.p0 + (self._t(v) - a) / ((b - a) or 1.0) * (self.p1 - self.p0)

    def ticks(self) -> list[float]:
        if self.symlog is None:
            step = _nice_step(self.hi - self.lo)
            first = math.ceil(self.lo / step - 1e-9)
            return [k * step for k in range(first, math.floor(self.hi / step + 1e-9) + 1)]
        out = [0.0] if self.lo <= 0.0 <= self.hi else []
        k = math.floor(math.log10(self.symlog))
        while 10.0**k <= self.hi:
            if 10.0**k >= self.lo:
                out.append(10.0**k)
            k += 1
        return out


@dataclass
class Axes:
    """One panel. Numeric y by default; ``categories`` makes y categorical (top to bottom)."""

    title: str = ""
    xlabel: str = ""
    ylabel: str = ""
    categories: Sequence[str] | None = None
    xlim: tuple[float | None, float | None] = (None, None)
    ylim: tuple[float | None, float | None] = (None, None)
    symlog_x: float | None = None  # linear threshold of a symmetric-log x axis
    yticks: Sequence[tuple[float, str]] | None = None
    _ops: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    _legend: list[tuple[str, str, str | None, str]] = field(default_factory=list)
    _cycle: int = 0

    def _color(self, color: str | None) -> str:
        if color is not None:
            return color
        self._cycle += 1
        return PALETTE[(self._cycle - 1) % len(PALETTE)]

    def _label(self, label: str | None, color: str, dash: str | None, kind: str) -> None:
        if label:
            self._legend.append((label, color, dash, kind))

    def line(
        self,
        x: Any,
        y: Any,
        *,
        color: str | None = None,
        width: float = 1.3,
        dash: str | None = None,
        label: str | None = None,
        step: bool = False,
    ) -> None:
        """A polyline; ``step`` draws a post-step (each y held until the next x)."""
        x = np.asarray(x, np.float64).ravel()
        y = np.asarray(y, np.float64).ravel()
        ok = np.isfinite(x) & np.isfinite(y)
        x, y = x[ok], y[ok]
        if step and x.size > 1:
            x = np.repeat(x, 2)[1:]
            y = np.repeat(y, 2)[:-1]
        c = self._color(color)
        self._ops.append(("line", {"x": x, "y": y, "color": c, "width": width, "dash": dash}))
        self._label(label, c, dash, "line")

    def hbar(
        self,
        values: Sequence[float],
        *,
        colors: Sequence[str] | str | None = None,
        lo: Sequence[float] | None = None,
        hi: Sequence[float] | None = None,
        offset: float = 0.0,
        thickness: float = 0.7,
        label: str | None = None,
    ) -> None:
        """One bar per category from 0 to its value, with an optional [lo, hi] whisker."""
        c = self._color(colors if isinstance(colors, str) else None)
        cols = [c] * len(values) if colors is None or isinstance(colors, str) else list(colors)
        self._ops.append(
            (
                "hbar",
                {
                    "v": [float(v) for v in values],
                    "lo": None if lo is None else [float(v) for v in lo],
                    "hi": None if hi is None else [float(v) for v in hi],
                    "colors": cols,
                    "offset": offset,
                    "thickness": thickness,
                },
            )
        )
        self._label(label, cols[0] if cols else c, None, "bar")

    def vline(
        self,
        x: float,
        *,
        color: str = "#777",
        dash: str | None = "4,3",
        width: float = 0.9,
        label: str | None = None,
        text: str | None = None,
    ) -> None:
        """A vertical reference line, with a legend entry or a short text at its top."""
        self._ops.append(
            ("vline", {"x": float(x), "color": color, "dash": dash, "width": width, "text": text})
        )
        self._label(label, color, dash, "line")

    def points(
        self,
        x: Any,
        y: Any,
        *,
        color: str | None = None,
        marker: str = "o",
        size: float = 5.0,
        label: str | None = None,
    ) -> None:
        """Markers: ``o`` (filled circle) or ``x``."""
        c = self._color(color)
        self._ops.append(
            (
                "points",
                {
                    "x": np.asarray(x, np.float64).ravel(),
                    "y": np.asarray(y, np.float64).ravel(),
                    "color": c,
                    "marker": marker,
                    "size": size,
                },
            )
        )
        self._label(label, c, None, "marker")

    # -- layout and drawing ------------------------------------------------------------
    def _limits(self) -> tuple[float, float, float, float]:
        xs: list[float] = []
        ys: list[float] = []
        for kind, op in self._ops:
            if kind in ("line", "points"):
                xs += op["x"].tolist()
                ys += op["y"].tolist()
            elif kind == "hbar":
                xs += [0.0, *op["v"], *(op["lo"] or []), *(op["hi"] or [])]
            elif kind == "vline":
                xs.append(op["x"])
        xs = [v for v in xs if math.isfinite(v)] or [0.0, 1.0]
        ys = [v for v in ys if math.isfinite(v)] or [0.0, 1.0]
        x0, x1 = min(xs), max(xs)
        y0, y1 = min(ys), max(ys)
        pad = 0.04 * ((x1 - x0) or 1.0)
        x0, x1 = (x0 - pad if x0 < 0 or self.symlog_x is None else x0), x1 + pad
        if self.categories is None:
            pad = 0.05 * ((y1 - y0) or 1.0)
            y0, y1 = y0 - pad, y1 + pad
        x0 = self.xlim[0] if self.xlim[0] is not None else x0
        x1 = self.xlim[1] if self.xlim[1] is not None else x1
        y0 = self.ylim[0] if self.ylim[0] is not None else y0
        y1 = self.ylim[1] if self.ylim[1] is not None else y1
        return x0, (x1 if x1 > x0 else x0 + 1.0), y0, (y1 if y1 > y0 else y0 + 1.0)

    def _legend_rows(self, width: float) -> list[list[tuple[str, str, str | None, str]]]:
        rows: list[list[tuple[str, str, str | None, str]]] = [[]]
        used = 0.0
        for entry in self._legend:
            w = 30 + _CHAR * len(entry[0])
            if rows[-1] and used + w > width:
                rows.append([])
                used = 0.0
            rows[-1].append(entry)
            used += w
        return [r for r in rows if r]

    def left_margin(self) -> float:
        """Room for the y tick labels (and the y label)."""
        if self.categories is not None:
            longest = max((len(c) for c in self.categories), default=4)
        elif self.yticks is not None:
            longest = max((len(t) for _, t in self.yticks), default=4)
        else:
            longest = 6
        return 14 + _CHAR * min(longest, 48) + (16 if self.ylabel else 0)

    def render(self, x: float, y: float, w: float, h: float, clip: str = "p0") -> str:
        """The panel's SVG elements in the box (x, y, w, h); ``clip`` is a unique id within
        the document."""
        ml = self.left_margin()
        mr, mt = 14.0, 22.0 if self.title else 10.0
        rows = self._legend_rows(w - ml - mr)
        mb = 36.0 + (16 if self.xlabel else 0) + 16.0 * len(rows)
        px0, px1, py0, py1 = x + ml, x + w - mr, y + mt, y + h - mb
        x0, x1, y0, y1 = self._limits()
        sx = _Scale(x0, x1, px0, px1, self.symlog_x)
        if self.categories is not None:
            n = max(len(self.categories), 1)
            band = (py1 - py0) / n

            def cy(i: float) -> float:
                return py0 + (i + 0.5) * band
        else:
            sy = _Scale(y0, y1, py1, py0)
            band = 0.0

            def cy(i: float) -> float:
                return sy(i)

        out = [
            f'<rect x="{px0:.1f}" y="{py0:.1f}" width="{px1 - px0:.1f}" '
            f'height="{py1 - py0:.1f}" fill="#fff" stroke="#999"/>'
        ]
        for v in sx.ticks():
            p = sx(v)
            out.append(
                f'<line x1="{p:.1f}" y1="{py0:.1f}" x2="{p:.1f}" y2="{py1:.1f}" stroke="#eee"/>'
                f'<text x="{p:.1f}" y="{py1 + 13:.1f}" text-anchor="middle">{_fmt(v)}</text>'
            )
        if self.categories is not None:
            for i, name in enumerate(self.categories):
                out.append(
                    f'<text x="{px0 - 5:.1f}" y="{cy(i) + 4:.1f}" text-anchor="end">'
                    f"{html.escape(name[:48])}</text>"
                )
        else:
            ticks = self.yticks or [(v, _fmt(v)) for v in sy.ticks()]
            for v, text in ticks:
                p = sy(v)
                out.append(
                    f'<line x1="{px0:.1f}" y1="{p:.1f}" x2="{px1:.1f}" y2="{p:.1f}" '
                    f'stroke="#eee"/><text x="{px0 - 5:.1f}" y="{p + 4:.1f}" '
                    f'text-anchor="end">{html.escape(text)}</text>'
                )
        out.append(
            f'<clipPath id="{clip}"><rect x="{px0:.1f}" y="{py0:.1f}" '
            f'width="{px1 - px0:.1f}" height="{py1 - py0:.1f}"/></clipPath>'
            f'<g clip-path="url(#{clip})">'
        )
        for kind, op in self._ops:
            out.append(self._draw(kind, op, sx, cy, band, py0, py1))
        out.append("</g>")
        if self.title:
            out.append(
                f'<text x="{(px0 + px1) / 2:.1f}" y="{y + 15:.1f}" text-anchor="middle" '
                f'font-weight="bold">{html.escape(self.title)}</text>'
            )
        if self.xlabel:
            out.append(
                f'<text x="{(px0 + px1) / 2:.1f}" y="{py1 + 29:.1f}" text-anchor="middle">'
                f"{html.escape(self.xlabel)}</text>"
            )
        if self.ylabel:
            yc = (py0 + py1) / 2
            out.append(
                f'<text x="{x + 12:.1f}" y="{yc:.1f}" text-anchor="middle" '
                f'transform="rotate(-90 {x + 12:.1f} {yc:.1f})">{html.escape(self.ylabel)}</text>'
            )
        ly = py1 + 36 + (16 if self.xlabel else 0)
        for r, row in enumerate(rows):
            lx = px0
            for label, color, dash, kind in row:
                yy = ly + 16 * r + 4
                if kind == "line":
                    d = f' stroke-dasharray="{dash}"' if dash else ""
                    out.append(
                        f'<line x1="{lx:.1f}" y1="{yy:.1f}" x2="{lx + 22:.1f}" y2="{yy:.1f}" '
                        f'stroke="{color}" stroke-width="2"{d}/>'
                    )
                else:
                    out.append(
                        f'<rect x="{lx + 6:.1f}" y="{yy - 5:.1f}" width="10" height="10" '
                        f'fill="{color}"/>'
                    )
                out.append(f'<text x="{lx + 26:.1f}" y="{yy + 4:.1f}">{html.escape(label)}</text>')
                lx += 30 + _CHAR * len(label)
        return "".join(out)

    @staticmethod
    def _draw(
        kind: str, op: dict[str, Any], sx: _Scale, cy: Any, band: float, py0: float, py1: float
    ) -> str:
        if kind == "line":
            if op["x"].size == 0:
                return ""
            pts = " ".join(
                f"{sx(a):.1f},{cy(b):.1f}" for a, b in zip(op["x"], op["y"], strict=True)
            )
            d = f' stroke-dasharray="{op["dash"]}"' if op["dash"] else ""
            return (
                f'<polyline points="{pts}" fill="none" stroke="{op["color"]}" '
                f'stroke-width="{op["width"]}"{d}/>'
            )
        if kind == "vline":
            p = sx(op["x"])
            d = f' stroke-dasharray="{op["dash"]}"' if op["dash"] else ""
            text = (
                f'<text x="{p:.1f}" y="{py0 + 11:.1f}" text-anchor="middle" font-size="9">'
                f"{html.escape(op['text'])}</text>"
                if op["text"]
                else ""
            )
            return (
                f'<line x1="{p:.1f}" y1="{py0:.1f}" x2="{p:.1f}" y2="{py1:.1f}" '
                f'stroke="{op["color"]}" stroke-width="{op["width"]}"{d}/>{text}'
            )
        if kind == "points":
            s = op["size"]
            out = []
            for a, b in zip(op["x"], op["y"], strict=True):
                if not (math.isfinite(a) and math.isfinite(b)):
                    continue
                u, v = sx(a), cy(b)
                if op["marker"] == "x":
                    out.append(
                        f'<path d="M{u - s:.1f},{v - s:.1f}L{u + s:.1f},{v + s:.1f}'
                        f'M{u - s:.1f},{v + s:.1f}L{u + s:.1f},{v - s:.1f}" '
                        f'stroke="{op["color"]}" stroke-width="2"/>'
                    )
                else:
                    out.append(f'<circle cx="{u:.1f}" cy="{v:.1f}" r="{s}" fill="{op["color"]}"/>')
            return "".join(out)
        # hbar
        out = []
        t = op["thickness"] * band
        zero = sx(0.0)
        for i, v in enumerate(op["v"]):
            if not math.isfinite(v):
                continue
            c = cy(i + op["offset"])
            a, b = sorted((zero, sx(v)))
            out.append(
                f'<rect x="{a:.1f}" y="{c - t / 2:.1f}" width="{b - a:.1f}" height="{t:.1f}" '
                f'fill="{op["colors"][i]}" fill-opacity="0.85"/>'
            )
            if op["lo"] is not None and op["hi"] is not None:
                lo, hi = op["lo"][i], op["hi"][i]
                if math.isfinite(lo) and math.isfinite(hi):
                    u0, u1, q = sx(lo), sx(hi), t / 4
                    out.append(
                        f'<path d="M{u0:.1f},{c:.1f}H{u1:.1f}M{u0:.1f},{c - q:.1f}V{c + q:.1f}'
                        f'M{u1:.1f},{c - q:.1f}V{c + q:.1f}" stroke="#000" stroke-width="1.2" '
                        'fill="none"/>'
                    )
        return "".join(out)


def figure(
    panels: Sequence[Axes],
    *,
    cols: int = 1,
    panel_width: float = 900.0,
    panel_height: float | None = None,
    title: str = "",
) -> str:
    """A grid of panels as one SVG document. Without ``panel_height``, a categorical panel
    gets 22 px per category; others 260 px."""
    cols = max(1, min(cols, len(panels) or 1))
    rows = -(-len(panels) // cols) if panels else 0

    def height(ax: Axes) -> float:
        if panel_height is not None:
            return panel_height
        legend = 16.0 * len(ax._legend_rows(panel_width - ax.left_margin() - 14))
        if ax.categories is not None:
            return max(150.0, 22.0 * len(ax.categories) + 80.0 + legend)
        return 260.0 + legend

    top = 24.0 if title else 0.0
    row_h = [
        max((height(a) for a in panels[r * cols : (r + 1) * cols]), default=0.0)
        for r in range(rows)
    ]
    width = cols * panel_width
    total = top + sum(row_h)
    body = []
    if title:
        body.append(
            f'<text x="{width / 2:.1f}" y="16" text-anchor="middle" font-weight="bold" '
            f'font-size="13">{html.escape(title)}</text>'
        )
    yy = top
    for r in range(rows):
        for c, ax in enumerate(panels[r * cols : (r + 1) * cols]):
            body.append(ax.render(c * panel_width, yy, panel_width, row_h[r], f"p{r}_{c}"))
        yy += row_h[r]
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{total:.0f}" '
        f'viewBox="0 0 {width:.0f} {total:.0f}" font-family="sans-serif" '
        f'font-size="{_FONT:g}" fill="#222">{"".join(body)}</svg>'
    )


def img(svg: str) -> str:
    """``svg`` as a self-contained ``<img>`` (a data URI: no file, no network)."""
    data = base64.b64encode(svg.encode("utf-8")).decode("ascii")
    return f'<img alt="plot" src="data:image/svg+xml;base64,{data}">'

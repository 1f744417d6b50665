"""The self-contained HTML reports (no network: every plot is an embedded SVG image).

Audit: ratio-with-interval bars with the rating thresholds, per-condition return ECDFs,
latency CDFs against the envelope's thresholds, the derivation, provenance.
Certify: the checks, guarded vs unguarded returns, the guard state timeline of the worst
out-of-envelope episode, provenance.
"""

from __future__ import annotations

import html
import json
from typing import Any

import numpy as np

from tailguard.audit.ratings import RATING_THRESHOLDS, required_threshold
from tailguard.audit.svg_plot import PALETTE, Axes, ecdf_points, figure, img

__all__ = ["audit_html", "certify_html"]

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px}
th{background:#eee}.PASS,.pass{color:#080}.MILD{color:#570}.DEGRADED,.warn{color:#a60}
.FAIL,.fail{color:#b00}.INCONCLUSIVE{color:#66a}img{max-width:100%}
pre{background:#f6f6f6;padding:8px;overflow:auto;font-size:12px}
"""


_RATING_COLORS = {
    "PASS": "#2a2",
    "MILD": "#9b2",
    "DEGRADED": "#e90",
    "FAIL": "#d22",
    "INCONCLUSIVE": "#88c",
}


def _ratio_plot(summary: dict[str, Any], require: str) -> str:
    conds = [c for c in summary["conditions"] if c.get("ratio")]
    if not conds:
        return "<p>(no perturbed conditions)</p>"
    est = [c["ratio"]["estimate"] or 0.0 for c in conds]
    lo = [
        c["rating"]["lower_bound"] if c["rating"]["lower_bound"] is not None else e
        for c, e in zip(conds, est, strict=True)
    ]
    hi = [
        c["rating"]["upper_bound"] if c["rating"]["upper_bound"] is not None else e
        for c, e in zip(conds, est, strict=True)
    ]
    ax = Axes(
        categories=[c["condition"]["name"] for c in conds],
        xlabel="return ratio (perturbed / nominal), Holm-adjusted one-sided bounds",
    )
    ax.hbar(est, colors=[_RATING_COLORS[c["rating"]["rating"]] for c in conds], lo=lo, hi=hi)
    for rating, thr in RATING_THRESHOLDS.items():
        ax.vline(thr, text=rating.value)
    ax.vline(required_threshold(require), color="#000", dash=None, width=1.4, label="required")
    return img(figure([ax], panel_width=1000))


def _ecdf_plots(summary: dict[str, Any]) -> str:
    nominal = summary["conditions"][0]["returns"]
    groups: dict[str, list[dict[str, Any]]] = {}
    for c in summary["conditions"][1:]:
        groups.setdefault(c["condition"]["dimension"], []).append(c)
    if not groups:
        return ""
    panels = []
    for dim, conds in groups.items():
        ax = Axes(title=dim, xlabel="episode return", ylim=(0.0, 1.0))
        ax.line(*ecdf_points(nominal), step=True, color="#000", label="nominal")
        for c in conds:
            label = c["condition"]["name"].split("/")[-1]
            ax.line(*ecdf_points(c["returns"]), step=True, label=label)
        panels.append(ax)
    return img(
        figure(panels, cols=3, panel_width=360, title="episode return ECDFs (paired episodes)")
    )


def _latency_cdf(result: Any, summary: dict[str, Any]) -> str:
    env = summary.get("envelope") or {}
    ax = Axes(xlabel="latency, ms (symmetric log scale)", ylabel="CDF", symlog_x=0.01)
    ax.ylim = (0.0, 1.0)
    ax.xlim = (0.0, None)
    drawn = 0
    for r in result.conditions:
        if r.condition.latency.strip() == "nominal":
            continue
        s = np.concatenate([e.latency_ns for e in r.episodes]) / 1e6
        ax.line(*ecdf_points(s), step=True, label=r.condition.name)
        drawn += 1
    if not drawn:
        return "<p>(no latency conditions)</p>"
    lat = env.get("latency") or {}
    styles = (("p50_ns", "1,3"), ("p95_ns", "6,2,1,2"), ("p99_ns", "5,3"), ("max_ns", None))
    for key, dash in styles:
        if lat.get(key):
            ax.vline(lat[key] / 1e6, color="#000", dash=dash, label=f"envelope {key}")
    return img(figure([ax], panel_width=1000))


def _frontier_plot(summary: dict[str, Any]) -> str:
    front = (summary.get("derivation") or {}).get("frontier")
    if not front:
        return ""
    ax = Axes(
        title="jitter margin: o tolerated, x not",
        xlabel="constant latency L, fraction of P",
        ylabel="extra jitter J, fraction of P",
    )
    for row in front["rows"]:
        for cell in row["cells"]:
            ax.points(
                [row["L"]],
                [cell["J"]],
                color=_RATING_COLORS.get(cell["rating"], "#999"),
                marker="o" if cell["tolerated"] else "x",
            )
    xs = [r["L"] for r in front["rows"] if r["max_J"] is not None]
    ys = [r["max_J"] for r in front["rows"] if r["max_J"] is not None]
    if xs:
        ax.line(xs, ys, step=True, color="#000", label="tolerated frontier")
    return "<h2>Latency x jitter frontier</h2>" + img(figure([ax], panel_width=600))


def _table(rows: list[list[str]], header: list[str]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _page(title: str, parts: list[str]) -> str:
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>"
        + html.escape(title)
        + f"</title><style>{_CSS}</style></head><body>"
        + "".join(parts)
        + "</body></html>\n"
    )


def audit_html(result: Any, summary: dict[str, Any]) -> str:
    """The audit report."""
    rows = []
    for c in summary["conditions"]:
        g = c.get("rating")
        r = c.get("ratio")
        rating = "nominal" if g is None else g["rating"]
        rows.append(
            [
                html.escape(c["condition"]["name"]),
                html.escape(c["condition"]["label"]),
                f"{c['return_mean']:.1f}",
                "—"
                if r is None
                else f"{r['estimate']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
                if r["estimate"] is not None
                else "undefined",
                f"<span class='{rating}'>{rating}</span>",
                f"{sum(c['fell'])}/{c['episodes']}",
                str(c["timing"]["delay_steps"]["d_p99"]),
                f"{c['timing']['p_violate']:.3f}",
            ]
        )
    task = summary["task"]
    prov = {
        k: summary[k]
        for k in (
            "tool_version",
            "policy",
            "seed",
            "episodes",
            "require",
            "bootstrap",
            "pairing",
            "rating_thresholds",
        )
    }
    verdict = summary["verdict"]
    parts = [
        f"<h1>tailguard audit — <span class='{verdict}'>{verdict}</span></h1>",
        f"<p>{html.escape(task['env'])}, period {task['period_ns'] / 1e6:g} ms, timing "
        f"resolution <b>{html.escape(task['resolution'])}</b>: "
        f"{html.escape(task['resolution_note'])}.</p>",
        "<h2>Return ratio per condition</h2>",
        _ratio_plot(summary, summary["require"]),
        _table(
            rows,
            [
                "condition",
                "what",
                "mean return",
                "ratio [interval]",
                "rating",
                "falls",
                "d p99",
                "p_violate",
            ],
        ),
        "<h2>Return distributions</h2>",
        _ecdf_plots(summary),
        "<h2>Latency against the envelope</h2>",
        _latency_cdf(result, summary),
        _frontier_plot(summary),
        "<h2>Derivation</h2><pre>"
        + html.escape(json.dumps(summary["derivation"], indent=1))
        + "</pre>",
        "<h2>Provenance</h2><pre>" + html.escape(json.dumps(prov, indent=1)) + "</pre>",
    ]
    return _page("tailguard audit", parts)


_STATE_Y = {"nominal": 0, "hold": 1, "fallback": 2, "latched": 3}


def _timeline(worst: dict[str, Any] | None, period_ns: int) -> str:
    if not worst or not worst.get("states"):
        return "<p>(no out-of-envelope episode was run)</p>"
    states = worst["states"]
    t = np.arange(len(states)) * period_ns / 1e9
    top = Axes(
        title=f"guard state, worst episode: {worst['condition']} #{worst['episode']} "
        f"({worst['interventions']} interventions)",
        yticks=[(float(v), k) for k, v in _STATE_Y.items()],
        ylim=(-0.3, 3.3),
    )
    top.line(t, [_STATE_Y.get(s, 4) for s in states], step=True, color=PALETTE[0])
    lat = np.asarray(worst.get("latency_ns", []), np.float64)[: len(states)] / 1e6
    bottom = Axes(xlabel="time, s (nominal ticks)", ylabel="latency, ms")
    bottom.line(t[: lat.size], lat, color=PALETTE[0], width=0.8)
    return img(figure([top, bottom], panel_width=1000, panel_height=190))


def _certify_returns(result: Any) -> str:
    names = [u.condition.name for u in result.unguarded]
    ax = Axes(categories=names, xlabel="mean return")
    ax.hbar([float(u.returns.mean()) for u in result.unguarded], colors=PALETTE[0],
            offset=-0.2, thickness=0.4, label="unguarded")  # fmt: skip
    ax.hbar([float(g.returns.mean()) for g in result.guarded], colors=PALETTE[1],
            offset=0.2, thickness=0.4, label="guarded")  # fmt: skip
    return img(figure([ax], panel_width=1000))


def certify_html(result: Any, summary: dict[str, Any]) -> str:
    """The certification report."""
    rows = [
        [
            html.escape(c["name"]),
            f"<span class='{c['status']}'>{c['status']}</span>",
            html.escape(c["condition"]),
            html.escape(c["message"]),
        ]
        for c in summary["checks"]
    ]
    prov = {
        k: summary[k]
        for k in ("tool_version", "policy", "envelope", "seed", "episodes", "require", "bootstrap")
    }
    v = summary["verdict"]
    parts = [
        f"<h1>tailguard certify — <span class='{v}'>{v.upper()}</span> (exit "
        f"{summary['exit_code']})</h1>",
        f"<p>{html.escape(summary['task']['env'])}, timing resolution "
        f"<b>{html.escape(summary['task']['resolution'])}</b>.</p>",
        "<h2>Checks</h2>",
        _table(rows, ["check", "status", "condition", "result"]),
        "<h2>Guarded vs unguarded</h2>",
        _certify_returns(result),
        "<h2>Worst out-of-envelope episode</h2>",
        _timeline(result.worst, summary["task"]["period_ns"]),
        "<h2>Provenance</h2><pre>" + html.escape(json.dumps(prov, indent=1)) + "</pre>",
    ]
    return _page("tailguard certify", parts)

"""The self-contained HTML reports (no network: every plot is an embedded PNG).

Audit: ratio-with-interval bars with the rating thresholds, per-condition return ECDFs,
latency CDFs against the envelope's thresholds, the derivation, provenance.
Certify: the checks, guarded vs unguarded returns, the guard state timeline of the worst
out-of-envelope episode, provenance.
"""

from __future__ import annotations

import base64
import html
import io
import json
from typing import Any

import numpy as np

from tailguard.audit.ratings import RATING_THRESHOLDS, required_threshold

__all__ = ["audit_html", "certify_html"]

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px}
th{background:#eee}.PASS,.pass{color:#080}.MILD{color:#570}.DEGRADED,.warn{color:#a60}
.FAIL,.fail{color:#b00}.INCONCLUSIVE{color:#66a}img{max-width:100%}
pre{background:#f6f6f6;padding:8px;overflow:auto;font-size:12px}
"""


def preload() -> None:
    """Import the plotting library now (e.g. while worker processes run the episodes)."""
    _plt()


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    _plt().close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="plot" src="data:image/png;base64,{data}">'


def _ratio_plot(summary: dict[str, Any], require: str) -> str:
    plt = _plt()
    conds = [c for c in summary["conditions"] if c.get("ratio")]
    if not conds:
        return "<p>(no perturbed conditions)</p>"
    fig, ax = plt.subplots(figsize=(10, max(3.0, 0.28 * len(conds) + 1)))
    y = np.arange(len(conds))
    est = [c["ratio"]["estimate"] or 0.0 for c in conds]
    lo = [
        c["rating"]["lower_bound"] if c["rating"]["lower_bound"] is not None else e
        for c, e in zip(conds, est, strict=True)
    ]
    hi = [
        c["rating"]["upper_bound"] if c["rating"]["upper_bound"] is not None else e
        for c, e in zip(conds, est, strict=True)
    ]
    colors = {
        "PASS": "#2a2",
        "MILD": "#9b2",
        "DEGRADED": "#e90",
        "FAIL": "#d22",
        "INCONCLUSIVE": "#88c",
    }
    ax.barh(y, est, color=[colors[c["rating"]["rating"]] for c in conds], alpha=0.8)
    ax.errorbar(
        est, y, xerr=[np.subtract(est, lo), np.subtract(hi, est)], fmt="none", ecolor="k", capsize=2
    )
    for rating, thr in RATING_THRESHOLDS.items():
        ax.axvline(thr, ls="--", lw=0.8, color="gray")
        ax.text(thr, len(conds) - 0.4, rating.value, fontsize=7, ha="center")
    ax.axvline(required_threshold(require), color="k", lw=1.2)
    ax.set_yticks(y, [c["condition"]["name"] for c in conds], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("return ratio (perturbed / nominal), Holm-adjusted one-sided bounds")
    return _png(fig)


def _ecdf_plots(summary: dict[str, Any]) -> str:
    plt = _plt()
    nominal = summary["conditions"][0]["returns"]
    groups: dict[str, list[dict[str, Any]]] = {}
    for c in summary["conditions"][1:]:
        groups.setdefault(c["condition"]["dimension"], []).append(c)
    if not groups:
        return ""
    cols = 3
    rows = -(-len(groups) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(11, 2.8 * rows), squeeze=False)
    for ax, (dim, conds) in zip(axes.flat, groups.items(), strict=False):
        for vals, label, style in [(nominal, "nominal", "k-")] + [
            (c["returns"], c["condition"]["name"].split("/")[-1], "-") for c in conds
        ]:
            x = np.sort(vals)
            ax.step(x, np.arange(1, x.size + 1) / x.size, style, where="post", label=label, lw=1)
        ax.set_title(dim, fontsize=9)
        ax.legend(fontsize=6)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(groups) :]:
        ax.axis("off")
    fig.suptitle("episode return ECDFs (paired episodes)", fontsize=10)
    return _png(fig)


def _latency_cdf(result: Any, summary: dict[str, Any]) -> str:
    plt = _plt()
    env = summary.get("envelope") or {}
    fig, ax = plt.subplots(figsize=(10, 3.5))
    drawn = 0
    for r in result.conditions:
        if r.condition.latency.strip() == "nominal":
            continue
        s = np.concatenate([e.latency_ns for e in r.episodes]) / 1e6
        x = np.sort(s)
        ax.step(x, np.arange(1, x.size + 1) / x.size, where="post", lw=1, label=r.condition.name)
        drawn += 1
    lat = env.get("latency") or {}
    for key, style in (("p50_ns", ":"), ("p95_ns", "-."), ("p99_ns", "--"), ("max_ns", "-")):
        if lat.get(key):
            ax.axvline(lat[key] / 1e6, color="k", ls=style, lw=0.9, label=f"envelope {key}")
    if not drawn:
        _plt().close(fig)
        return "<p>(no latency conditions)</p>"
    ax.set_xscale("symlog", linthresh=0.01)
    ax.set_xlim(left=0.0)
    ax.set_xlabel("latency, ms")
    ax.set_ylabel("CDF")
    ax.legend(fontsize=6, ncol=3)
    return _png(fig)


def _frontier_plot(summary: dict[str, Any]) -> str:
    front = (summary.get("derivation") or {}).get("frontier")
    if not front:
        return ""
    plt = _plt()
    colors = {
        "PASS": "#2a2",
        "MILD": "#9b2",
        "DEGRADED": "#e90",
        "FAIL": "#d22",
        "INCONCLUSIVE": "#88c",
    }
    fig, ax = plt.subplots(figsize=(6, 4))
    for row in front["rows"]:
        for cell in row["cells"]:
            ax.scatter(
                row["L"],
                cell["J"],
                s=120,
                color=colors.get(cell["rating"], "#999"),
                marker="o" if cell["tolerated"] else "x",
            )
    xs = [r["L"] for r in front["rows"] if r["max_J"] is not None]
    ys = [r["max_J"] for r in front["rows"] if r["max_J"] is not None]
    if xs:
        ax.step(xs, ys, where="mid", color="k", lw=1.2, label="tolerated frontier")
        ax.legend(fontsize=7)
    ax.set_xlabel("constant latency L, fraction of P")
    ax.set_ylabel("extra jitter J, fraction of P")
    ax.set_title("jitter margin: o tolerated, x not", fontsize=9)
    return "<h2>Latency x jitter frontier</h2>" + _png(fig)


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
    plt = _plt()
    states = worst["states"]
    t = np.arange(len(states)) * period_ns / 1e9
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 3.8), sharex=True)
    ax1.step(t, [_STATE_Y.get(s, 4) for s in states], where="post", lw=1)
    ax1.set_yticks(list(_STATE_Y.values()), list(_STATE_Y))
    ax1.set_title(
        f"guard state, worst episode: {worst['condition']} #{worst['episode']} "
        f"({worst['interventions']} interventions)",
        fontsize=9,
    )
    lat = np.asarray(worst.get("latency_ns", []), np.float64)[: len(states)] / 1e6
    ax2.plot(t[: lat.size], lat, lw=0.8)
    ax2.set_ylabel("latency, ms")
    ax2.set_xlabel("time, s (nominal ticks)")
    return _png(fig)


def _certify_returns(result: Any) -> str:
    plt = _plt()
    names = [u.condition.name for u in result.unguarded]
    ung = [float(u.returns.mean()) for u in result.unguarded]
    gua = [float(g.returns.mean()) for g in result.guarded]
    fig, ax = plt.subplots(figsize=(10, max(3.0, 0.3 * len(names) + 1)))
    y = np.arange(len(names))
    ax.barh(y - 0.2, ung, 0.4, label="unguarded")
    ax.barh(y + 0.2, gua, 0.4, label="guarded")
    ax.set_yticks(y, names, fontsize=7)
    ax.invert_yaxis()
    ax.legend(fontsize=7)
    ax.set_xlabel("mean return")
    return _png(fig)


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

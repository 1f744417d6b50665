"""Writing the audit's and certification's files: summary.json (+ its schema), summary.md,
envelope.json and report.html.

``summary.json`` is written with a fixed key order and float repr, so the same inputs and
seed give the same bytes (only the ``run`` block holds wall-clock facts).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tailguard.errors import ConfigError

__all__ = ["audit_markdown", "certify_markdown", "dump_json", "write_audit", "write_certify"]


def dump_json(doc: Any) -> str:
    """The canonical text of a summary document (NaN refused: it is not JSON)."""
    return json.dumps(doc, indent=2, allow_nan=False) + "\n"


def _out_dir(out: str | Path) -> Path:
    path = Path(out)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the output folder: {exc.strerror or exc}", path) from None
    return path


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write: {exc.strerror or exc}", path) from None


def _schema_file(out: Path) -> Path:
    from tailguard.audit.schema import SUMMARY_SCHEMA

    path = out / "summary.schema.json"
    _write(path, json.dumps(SUMMARY_SCHEMA, indent=2) + "\n")
    return path


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _ms(ns: int) -> str:
    return f"{ns / 1e6:.3g}"


def audit_markdown(summary: dict[str, Any]) -> str:
    """summary.md of an audit (for a PR comment)."""
    task = summary["task"]
    lines = [
        f"## tailguard audit: {summary['verdict']}",
        "",
        f"Policy `{summary['policy'].get('path')}` "
        f"(sha256 `{summary['policy']['onnx_sha256'][:12]}`) on `{task['env']}`, period "
        f"{_ms(task['period_ns'])} ms, {summary['episodes']} paired "
        f"episodes per condition, seed {summary['seed']}, required rating "
        f"**{summary['require']}**.",
        f"Timing resolution: {task['resolution']} ({task['resolution_note']}).",
        "",
        "| condition | mean return | ratio [interval] | lower bound (Holm) | rating | falls "
        "[95 % CP] | d p99 | p_violate | max‖Δa‖ |",
        "|---|---:|---|---:|---|---|---:|---:|---:|",
    ]
    for c in summary["conditions"]:
        name = c["condition"]["name"]
        r = c.get("ratio")
        g = c.get("rating")
        ratio = (
            "—"
            if r is None
            else (f"{_fmt(r['estimate'])} [{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]")
        )
        lb = "—" if g is None else _fmt(g["lower_bound"])
        rating = "nominal" if g is None else g["rating"]
        if g is not None and g["rating"] == "INCONCLUSIVE" and g.get("episodes_to_settle"):
            rating += f" (~{g['episodes_to_settle']} episodes)"
        n = c["episodes"]
        falls = sum(c["fell"])
        lo, hi = c["fall_rate_ci95"]
        t = c["timing"]
        dmax = max(c["smoothness"]["max_norm_daction"], default=0.0)
        lines.append(
            f"| `{name}` | {_fmt(c['return_mean'], 1)} | {ratio} | {lb} | {rating} | "
            f"{falls}/{n} [{lo:.2f}, {hi:.2f}] | {t['delay_steps']['d_p99']} | "
            f"{t['p_violate']:.3f} | {dmax:.3f} |"
        )
    b = summary["bootstrap"]
    lines += [
        "",
        f"Ratio = mean(perturbed) / mean(nominal) over paired episodes; {b['method']} paired "
        f"bootstrap, {b['n_resamples']} resamples, seed {b['seed']}; ratings by the one-sided "
        f"lower bound at the Holm-adjusted level (family-wise alpha {b['alpha']}); thresholds "
        + ", ".join(f"{k} >= {v}" for k, v in summary["rating_thresholds"].items())
        + ".",
    ]
    env = summary.get("envelope")
    if env:
        lines += ["", "### Derived envelope", ""]
        for key in ("latency", "dt"):
            th = env[key]
            if th.get("p50_ns") is not None:
                lines.append(
                    f"- {key}: p50 {_ms(th['p50_ns'])} ms, p95 {_ms(th['p95_ns'])} ms, p99 "
                    f"{_ms(th['p99_ns'])} ms, max {_ms(th['max_ns'])} ms"
                )
            else:
                lines.append(f"- {key}: not checked")
        age = env.get("obs_age_max_ns")
        lines.append(f"- observation age max: {'not checked' if age is None else _ms(age) + ' ms'}")
        lines.append(f"- max consecutive overruns: {env.get('max_consecutive_overruns')}")
        for dim, info in summary["derivation"].get("dimensions", {}).items():
            lines.append(f"- `{dim}` tolerated up to: `{info['tolerated_level']}`")
        for note in summary["derivation"].get("notes", []):
            lines.append(f"- note: {note}")
    return "\n".join(lines) + "\n"


def certify_markdown(summary: dict[str, Any]) -> str:
    """summary.md of a certification."""
    lines = [
        f"## tailguard certify: {summary['verdict'].upper()} (exit {summary['exit_code']})",
        "",
        f"Policy `{summary['policy'].get('path')}` against envelope "
        f"`{summary['envelope']['path']}` on `{summary['task']['env']}` "
        f"({summary['task']['resolution']} timing), {summary['episodes']} paired episodes per "
        f"profile, seed {summary['seed']}.",
        "",
        "| check | status | condition | result |",
        "|---|---|---|---|",
    ]
    for c in summary["checks"]:
        lines.append(
            f"| {c['name']} | **{c['status']}** | `{c['condition'] or '-'}` | {c['message']} |"
        )
    bad = [c for c in summary["checks"] if c["status"] != "pass"]
    if bad:
        lines += [
            "",
            "Checks not passed: "
            + "; ".join(f"{c['name']} [{c['condition'] or 'global'}]: {c['message']}" for c in bad),
        ]
    return "\n".join(lines) + "\n"


def write_audit(result: Any, out: str | Path, *, html: bool = True) -> dict[str, Path]:
    """Write summary.json, summary.schema.json, summary.md, envelope.json, report.html."""
    from tailguard.envelope.model import save_envelope

    folder = _out_dir(out)
    summary = result.summary()
    files = {"summary": folder / "summary.json", "markdown": folder / "summary.md"}
    _write(files["summary"], dump_json(summary))
    files["schema"] = _schema_file(folder)
    _write(files["markdown"], audit_markdown(summary))
    if result.envelope is not None:
        files["envelope"] = folder / "envelope.json"
        save_envelope(result.envelope, files["envelope"])
    if html:
        from tailguard.audit.report import audit_html

        files["report"] = folder / "report.html"
        _write(files["report"], audit_html(result, summary))
    return files


def write_certify(result: Any, out: str | Path, *, html: bool = True) -> dict[str, Path]:
    """Write summary.json, summary.schema.json, summary.md and report.html of a certify."""
    folder = _out_dir(out)
    summary = result.summary()
    files = {"summary": folder / "summary.json", "markdown": folder / "summary.md"}
    _write(files["summary"], dump_json(summary))
    files["schema"] = _schema_file(folder)
    _write(files["markdown"], certify_markdown(summary))
    if html:
        from tailguard.audit.report import certify_html

        files["report"] = folder / "report.html"
        _write(files["report"], certify_html(result, summary))
    return files

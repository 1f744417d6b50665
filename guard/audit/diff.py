"""``report diff``: compare two audit summaries (before / after a change).

For every condition present in both: the change of the return ratio. When both audits used
the same seed, episodes and env (so episode ``i`` is the same initial state and timing
streams in both), the change is PAIRED: episode indices are resampled jointly across the
four return vectors (before nominal, before perturbed, after nominal, after perturbed).
Otherwise each audit is resampled on its own (unpaired) and the result carries a warning.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from tailguard.errors import ConfigError

__all__ = ["diff_markdown", "diff_summaries", "load_summary"]

_MAX_SUMMARY_BYTES = 256 << 20


def load_summary(path: str | Path) -> dict[str, Any]:
    """Read an audit summary.json (bounded in size, checked against the shipped schema).

    Raises:
        ConfigError: unreadable, too large, not JSON, or not an audit summary.
    """
    p = Path(path)
    try:
        if p.stat().st_size > _MAX_SUMMARY_BYTES:
            raise ConfigError(f"larger than {_MAX_SUMMARY_BYTES} bytes; refused", p)
        doc = json.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read the summary: {exc.strerror or exc}", p) from None
    except (ValueError, RecursionError) as exc:
        raise ConfigError(f"not a JSON summary: {exc}", p) from None
    problems = validate_summary(doc)
    if problems:
        raise ConfigError("not a tailguard audit summary: " + "; ".join(problems[:5]), p)
    if doc.get("kind") != "audit":
        raise ConfigError(f"expected an audit summary, found kind {doc.get('kind')!r}", p)
    return doc


def validate_summary(doc: Any) -> list[str]:
    """Problems of a summary against the shipped JSON Schema (jsonschema when installed,
    else the required top-level keys only)."""
    from tailguard.audit.schema import SUMMARY_SCHEMA

    try:
        import jsonschema
    except ImportError:
        if not isinstance(doc, dict):
            return ["the document is not an object"]
        return [f"missing key '{k}'" for k in SUMMARY_SCHEMA["required"] if k not in doc]
    validator = jsonschema.Draft202012Validator(SUMMARY_SCHEMA)
    return [
        f"{'/'.join(str(x) for x in e.absolute_path) or '<root>'}: {e.message}"
        for e in validator.iter_errors(doc)
    ]


def _paired(before: dict[str, Any], after: dict[str, Any]) -> tuple[bool, str]:
    same = (
        before["seed"] == after["seed"]
        and before["episodes"] == after["episodes"]
        and before["task"]["env"] == after["task"]["env"]
    )
    if same:
        return True, ""
    return False, (
        "the two audits used different seeds, episode counts or envs: episodes are NOT "
        "paired, the intervals are unpaired (wider) and initial-state luck differs between them"
    )


def _ratio(nom: np.ndarray, per: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(per, axis=axis) / np.mean(nom, axis=axis)


def diff_summaries(
    before: dict[str, Any], after: dict[str, Any], *, n_resamples: int = 9999, seed: int = 0
) -> dict[str, Any]:
    """The comparison document (see the module docstring)."""
    from scipy import stats

    paired, warning = _paired(before, after)
    offset_b = float(before["bootstrap"].get("return_offset", 0.0))
    offset_a = float(after["bootstrap"].get("return_offset", 0.0))
    nb = np.asarray(before["conditions"][0]["returns"]) - offset_b
    na = np.asarray(after["conditions"][0]["returns"]) - offset_a
    by_name_b = {c["condition"]["name"]: c for c in before["conditions"][1:]}
    rows: list[dict[str, Any]] = []
    alpha = float(before["bootstrap"].get("alpha", 0.05))
    for c in after["conditions"][1:]:
        name = c["condition"]["name"]
        if name not in by_name_b:
            continue
        pb = np.asarray(by_name_b[name]["returns"]) - offset_b
        pa = np.asarray(c["returns"]) - offset_a
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, len(rows)])))
        est = float(_ratio(na, pa) - _ratio(nb, pb))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if paired:
                res = stats.bootstrap(
                    (nb, pb, na, pa),
                    lambda a, b, c_, d, axis=-1: _ratio(c_, d, axis) - _ratio(a, b, axis),
                    paired=True,
                    vectorized=True,
                    n_resamples=n_resamples,
                    confidence_level=1 - 2 * alpha,
                    rng=rng,
                )
            else:
                res = stats.bootstrap(
                    (nb, pb, na, pa),
                    lambda a, b, c_, d, axis=-1: _ratio(c_, d, axis) - _ratio(a, b, axis),
                    paired=False,
                    vectorized=True,
                    n_resamples=n_resamples,
                    confidence_level=1 - 2 * alpha,
                    rng=rng,
                    method="percentile",
                )
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
        method = "BCa" if paired else "percentile (unpaired)"
        if not (np.isfinite(low) and np.isfinite(high)):
            low = high = est
            method = "degenerate (every resample equal)"
        rb = by_name_b[name].get("rating", {}).get("rating")
        ra = c.get("rating", {}).get("rating")
        rows.append(
            {
                "condition": name,
                "ratio_before": by_name_b[name].get("ratio", {}).get("estimate"),
                "ratio_after": c.get("ratio", {}).get("estimate"),
                "delta": est,
                "ci_low": low,
                "ci_high": high,
                "method": method,
                "rating_before": rb,
                "rating_after": ra,
                "significant": bool(low > 0 or high < 0),
            }
        )
    only_before = sorted(set(by_name_b) - {c["condition"]["name"] for c in after["conditions"]})
    only_after = sorted({c["condition"]["name"] for c in after["conditions"][1:]} - set(by_name_b))
    return {
        "schema": "tailguard.audit.diff/1",
        "paired": paired,
        "warning": warning,
        "before": {
            "policy": before["policy"].get("onnx_sha256"),
            "seed": before["seed"],
            "episodes": before["episodes"],
            "verdict": before["verdict"],
        },
        "after": {
            "policy": after["policy"].get("onnx_sha256"),
            "seed": after["seed"],
            "episodes": after["episodes"],
            "verdict": after["verdict"],
        },
        "interval": f"{1 - 2 * alpha:.0%} two-sided, {n_resamples} resamples, seed {seed}",
        "conditions": rows,
        "only_before": only_before,
        "only_after": only_after,
    }


def diff_markdown(doc: dict[str, Any]) -> str:
    """diff.md for a PR comment."""
    lines = [
        "## tailguard report diff",
        "",
        f"before: verdict {doc['before']['verdict']}, policy "
        f"`{(doc['before']['policy'] or '')[:12]}`; after: verdict "
        f"{doc['after']['verdict']}, policy "
        f"`{(doc['after']['policy'] or '')[:12]}`. Episodes "
        + ("PAIRED (same seeds)." if doc["paired"] else "UNPAIRED."),
    ]
    if doc["warning"]:
        lines += ["", f"**Warning:** {doc['warning']}"]
    lines += [
        "",
        f"Change of the return ratio (after - before), {doc['interval']}:",
        "",
        "| condition | ratio before | ratio after | change [interval] | rating before -> after |",
        "|---|---:|---:|---|---|",
    ]

    def f(x: Any) -> str:
        return "n/a" if x is None else f"{x:.3f}"

    for r in doc["conditions"]:
        mark = " *" if r["significant"] else ""
        lines.append(
            f"| `{r['condition']}` | {f(r['ratio_before'])} | {f(r['ratio_after'])} | "
            f"{r['delta']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]{mark} | "
            f"{r['rating_before']} -> {r['rating_after']} |"
        )
    lines += ["", "`*`: the interval excludes 0."]
    if doc["only_before"] or doc["only_after"]:
        lines.append(f"Only before: {doc['only_before']}; only after: {doc['only_after']}.")
    return "\n".join(lines) + "\n"

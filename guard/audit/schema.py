"""The JSON Schema of ``summary.json`` (audit and certify), shipped with the package.

``tailguard audit`` / ``certify`` write it next to the summary as ``summary.schema.json``;
tests validate every summary they produce against it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SUMMARY_SCHEMA"]

_NUM = {"type": "number"}
_NUM_OR_NULL = {"type": ["number", "null"]}
_INT = {"type": "integer"}
_PCT = {
    "type": "object",
    "required": ["p50_ns", "p95_ns", "p99_ns", "max_ns"],
    "properties": {k: _INT for k in ("p50_ns", "p95_ns", "p99_ns", "max_ns")},
}
_CONDITION = {
    "type": "object",
    "required": [
        "name",
        "dimension",
        "level",
        "severity",
        "latency",
        "dt",
        "obs_delay",
        "drop_prob",
        "drop_burst",
    ],
    "properties": {
        "name": {"type": "string"},
        "dimension": {"type": "string"},
        "level": _INT,
        "severity": _NUM,
        "latency": {"type": "string"},
        "dt": {"type": "string"},
        "obs_delay": {"type": "string"},
        "drop_prob": _NUM,
        "drop_burst": _INT,
        "miss_pattern": {"type": ["array", "null"], "items": _INT},
        "label": {"type": "string"},
    },
}
_RESULT = {
    "type": "object",
    "required": [
        "condition",
        "episodes",
        "returns",
        "lengths",
        "fell",
        "faults",
        "timing",
        "fall_rate_ci95",
        "smoothness",
    ],
    "properties": {
        "condition": _CONDITION,
        "episodes": _INT,
        "returns": {"type": "array", "items": _NUM},
        "lengths": {"type": "array", "items": _INT},
        "fell": {"type": "array", "items": {"type": "boolean"}},
        "faults": _INT,
        "return_mean": _NUM_OR_NULL,
        "fall_rate": _NUM_OR_NULL,
        "fall_rate_ci95": {"type": "array", "items": _NUM, "minItems": 2, "maxItems": 2},
        "timing": {
            "type": "object",
            "required": ["ticks", "latency", "dt", "obs_age", "delay_steps", "p_violate"],
            "properties": {
                "ticks": _INT,
                "latency": _PCT,
                "dt": _PCT,
                "obs_age": _PCT,
                "delay_steps": {
                    "type": "object",
                    "required": ["d_p50", "d_p95", "d_p99"],
                    "properties": {k: _INT for k in ("d_p50", "d_p95", "d_p99")},
                },
                "d_cap": _INT,
                "p_violate": _NUM,
                "max_overrun_streak": _INT,
            },
        },
        "smoothness": {
            "type": "object",
            "required": ["max_norm_daction", "max_norm_d2action"],
            "properties": {
                "max_norm_daction": {"type": "array", "items": _NUM},
                "max_norm_d2action": {"type": "array", "items": _NUM},
            },
        },
        "ratio": {
            "type": "object",
            "required": ["estimate", "ci_low", "ci_high", "method"],
            "properties": {
                "estimate": _NUM_OR_NULL,
                "ci_low": _NUM_OR_NULL,
                "ci_high": _NUM_OR_NULL,
                "method": {"type": "string"},
            },
        },
        "rating": {
            "type": "object",
            "required": ["rating", "lower_bound", "upper_bound", "holm_alpha", "tolerated"],
            "properties": {
                "rating": {"enum": ["PASS", "MILD", "DEGRADED", "FAIL", "INCONCLUSIVE"]},
                "rating_by_lower_bound": {
                    "enum": ["PASS", "MILD", "DEGRADED", "FAIL", "INCONCLUSIVE"]
                },
                "lower_bound": _NUM_OR_NULL,
                "upper_bound": _NUM_OR_NULL,
                "holm_alpha": _NUM,
                "p_value": _NUM,
                "tolerated": {"type": "boolean"},
                "episodes_to_settle": {"type": ["integer", "null"]},
                "reason": {"type": "string"},
            },
        },
    },
}
_COMMON_REQUIRED = [
    "schema",
    "kind",
    "tool_version",
    "task",
    "policy",
    "seed",
    "episodes",
    "require",
    "bootstrap",
    "verdict",
    "conditions",
    "run",
]

SUMMARY_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "tailguard.audit.summary/1",
    "title": "tailguard audit / certify summary",
    "description": "Every per-episode return and length per condition, so that anyone can "
    "recompute the statistics. Everything except 'run' is identical for the same inputs "
    "and seed.",
    "type": "object",
    "required": _COMMON_REQUIRED,
    "properties": {
        "schema": {"const": "tailguard.audit.summary/1"},
        "kind": {"enum": ["audit", "certify"]},
        "tool_version": {"type": "string"},
        "task": {
            "type": "object",
            "required": ["env", "period_ns", "substep_ns", "resolution", "resolution_note"],
            "properties": {
                "env": {"type": "string"},
                "period_ns": _INT,
                "substep_ns": _INT,
                "resolution": {"enum": ["substep", "whole-step"]},
                "resolution_note": {"type": "string"},
            },
        },
        "policy": {"type": "object", "required": ["format", "onnx_sha256"]},
        "seed": _INT,
        "episodes": _INT,
        "require": {"enum": ["PASS", "MILD"]},
        "bootstrap": {
            "type": "object",
            "required": ["n_resamples", "alpha", "method", "seed", "paired", "multiplicity"],
        },
        "verdict": {"type": "string"},
        "run": {"type": "object"},
    },
    "allOf": [
        {
            "if": {"properties": {"kind": {"const": "audit"}}},
            "then": {
                "required": ["rating_thresholds", "derivation", "envelope"],
                "properties": {"conditions": {"type": "array", "minItems": 1, "items": _RESULT}},
            },
        },
        {
            "if": {"properties": {"kind": {"const": "certify"}}},
            "then": {
                "required": ["checks", "exit_code", "envelope"],
                "properties": {
                    "exit_code": {"enum": [0, 1, 2]},
                    "checks": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["name", "status", "condition", "message"],
                            "properties": {"status": {"enum": ["pass", "warn", "fail"]}},
                        },
                    },
                    "conditions": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["condition", "placement", "unguarded", "guarded"],
                            "properties": {"unguarded": _RESULT, "guarded": _RESULT},
                        },
                    },
                },
            },
        },
    ],
}

"""The offline timing audit: sweeps of paired episodes, paired statistics, envelope derivation,
certification and reports.

    from tailguard.audit import run_audit, certify
    result = run_audit("policy.onnx", "Hopper-v5", episodes=20, workers=2)
    result.envelope                  # the derived, audited Envelope
    cert = certify("policy.onnx", "audit/envelope.json", "Hopper-v5")
    cert.exit_code                   # 0 pass, 1 warn, 2 fail
    run_audit(..., executor="ray", address="auto")   # the units on a Ray cluster
    run_sweep("manifest.toml", "results/", executor="ray")  # many checkpoints, one tree

Importing this package is light: numpy only; scipy, matplotlib, MuJoCo and gymnasium are
imported when an audit runs.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "AuditResult",
    "CertifyResult",
    "Check",
    "Condition",
    "HardenResult",
    "Rating",
    "RayExecutor",
    "certify",
    "harden",
    "run_audit",
    "run_sweep",
    "write_audit",
    "write_certify",
]

_LAZY = {
    "AuditResult": "tailguard.audit.audit",
    "run_audit": "tailguard.audit.audit",
    "CertifyResult": "tailguard.audit.certification",
    "Check": "tailguard.audit.certification",
    "certify": "tailguard.audit.certification",
    "Condition": "tailguard.audit.conditions",
    "HardenResult": "tailguard.audit.harden",
    "harden": "tailguard.audit.harden",
    "Rating": "tailguard.audit.ratings",
    "RayExecutor": "tailguard.audit.ray_executor",
    "run_sweep": "tailguard.audit.campaign",
    "write_audit": "tailguard.audit.outputs",
    "write_certify": "tailguard.audit.outputs",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tailguard.audit' has no attribute '{name}'")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(__all__)

"""Bridges from the training world to tailguard: checkpoints and models → self-contained ONNX.

Importing ``adapters`` is cheap and never imports torch; each name below is loaded on first
use from its module (torch is needed by the export functions, the ``export`` extra).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "ExportResult",
    "GymnasiumVecEnv",
    "ParityReport",
    "RecurrentSpec",
    "RslRlActor",
    "RslRlActorSpec",
    "build_actor_module",
    "check_parity",
    "export_module",
    "export_rsl_rl",
    "export_sb3",
    "load_rsl_rl_checkpoint",
    "parse_rsl_rl_checkpoint",
]

_LOCATIONS = {
    "ExportResult": "adapters.export",
    "ParityReport": "adapters.export",
    "RecurrentSpec": "adapters.export",
    "check_parity": "adapters.export",
    "export_module": "adapters.export",
    "GymnasiumVecEnv": "adapters.rsl_rl_vecenv",
    "RslRlActor": "adapters.rsl_rl_checkpoint",
    "RslRlActorSpec": "adapters.rsl_rl_checkpoint",
    "build_actor_module": "adapters.rsl_rl_checkpoint",
    "load_rsl_rl_checkpoint": "adapters.rsl_rl_checkpoint",
    "parse_rsl_rl_checkpoint": "adapters.rsl_rl_checkpoint",
    "export_rsl_rl": "adapters.rsl_rl_export",
    "export_sb3": "adapters.sb3",
}


def __getattr__(name: str) -> Any:
    module = _LOCATIONS.get(name)
    if module is None:
        raise AttributeError(f"module 'adapters' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)

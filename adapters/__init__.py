"""Bridges from the training world to tailguard: checkpoints and models → self-contained ONNX.

Importing ``adapters`` is cheap and never imports torch; each name below is loaded on first
use from its module (torch is needed by the export functions, the ``export`` extra).
"""

from __future__ import annotations

if __name__ != "tailguard.adapters":  # e.g. `import adapters` from the repository root
    raise ImportError(
        f"the folder 'adapters/' is the package 'tailguard.adapters'; import tailguard.adapters "
        f"(found it imported as {__name__!r}; install with pip install -e .)"
    )

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
    "ExportResult": "tailguard.adapters.export",
    "ParityReport": "tailguard.adapters.export",
    "RecurrentSpec": "tailguard.adapters.export",
    "check_parity": "tailguard.adapters.export",
    "export_module": "tailguard.adapters.export",
    "GymnasiumVecEnv": "tailguard.adapters.rsl_rl_vecenv",
    "RslRlActor": "tailguard.adapters.rsl_rl_checkpoint",
    "RslRlActorSpec": "tailguard.adapters.rsl_rl_checkpoint",
    "build_actor_module": "tailguard.adapters.rsl_rl_checkpoint",
    "load_rsl_rl_checkpoint": "tailguard.adapters.rsl_rl_checkpoint",
    "parse_rsl_rl_checkpoint": "tailguard.adapters.rsl_rl_checkpoint",
    "export_rsl_rl": "tailguard.adapters.rsl_rl_export",
    "export_sb3": "tailguard.adapters.sb3",
}


def __getattr__(name: str) -> Any:
    module = _LOCATIONS.get(name)
    if module is None:
        raise AttributeError(f"module 'tailguard.adapters' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)

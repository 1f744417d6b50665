"""Simulated robot side: timing profiles, simulated-time control loop, replay, wrappers.

Profiles and the clock need only numpy; the loop, tasks and replay need the ``sim`` extra
(mujoco, gymnasium) and are imported lazily on first attribute access.
"""

from __future__ import annotations

if __name__ != "tailguard.firmware_sim":  # e.g. `import firmware_sim` from the repository root
    raise ImportError(
        "the folder 'firmware_sim/' is the package 'tailguard.firmware_sim'; import "
        f"tailguard.firmware_sim (found it imported as {__name__!r}; install with pip install -e .)"
    )

import importlib
from typing import Any

from tailguard.firmware_sim.clock import SimClock
from tailguard.firmware_sim.profile_spec import parse_profile
from tailguard.firmware_sim.profiles import (
    DropSampler,
    EmpiricalProfile,
    FixedProfile,
    GaussianProfile,
    LognormalProfile,
    MixtureProfile,
    ParetoProfile,
    Profile,
    ProfileStats,
    SpikeProfile,
    TraceProfile,
    UniformProfile,
)

__all__ = [
    "CallableController",
    "Controller",
    "DropSampler",
    "EmpiricalProfile",
    "EpisodeResult",
    "FixedProfile",
    "GaussianProfile",
    "LinearController",
    "LognormalProfile",
    "MixtureProfile",
    "MujocoTask",
    "OnnxController",
    "ParetoProfile",
    "Profile",
    "ProfileStats",
    "SimClock",
    "SimLoop",
    "SimulatedInference",
    "SpikeProfile",
    "TimingSpec",
    "TraceProfile",
    "UniformProfile",
    "parse_profile",
]

_LAZY = {
    "CallableController": "tailguard.firmware_sim.controllers",
    "Controller": "tailguard.firmware_sim.controllers",
    "LinearController": "tailguard.firmware_sim.controllers",
    "OnnxController": "tailguard.firmware_sim.controllers",
    "SimulatedInference": "tailguard.firmware_sim.controllers",
    "EpisodeResult": "tailguard.firmware_sim.loop",
    "SimLoop": "tailguard.firmware_sim.loop",
    "MujocoTask": "tailguard.firmware_sim.tasks",
    "TimingSpec": "tailguard.firmware_sim.replay",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tailguard.firmware_sim' has no attribute '{name}'")
    return getattr(importlib.import_module(module), name)

"""Simulated robot side: timing profiles, simulated-time control loop, replay, wrappers.

Profiles and the clock need only numpy; the loop, tasks and replay need the ``sim`` extra
(mujoco, gymnasium) and are imported lazily on first attribute access.
"""

from __future__ import annotations

import importlib
from typing import Any

from firmware_sim.clock import SimClock
from firmware_sim.profile_spec import parse_profile
from firmware_sim.profiles import (
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
    "CallableController": "firmware_sim.controllers",
    "Controller": "firmware_sim.controllers",
    "LinearController": "firmware_sim.controllers",
    "OnnxController": "firmware_sim.controllers",
    "SimulatedInference": "firmware_sim.controllers",
    "EpisodeResult": "firmware_sim.loop",
    "SimLoop": "firmware_sim.loop",
    "MujocoTask": "firmware_sim.tasks",
    "TimingSpec": "firmware_sim.replay",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'firmware_sim' has no attribute '{name}'")
    return getattr(importlib.import_module(module), name)

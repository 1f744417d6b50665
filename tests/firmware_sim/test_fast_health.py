"""The task's Hopper health rule equals gymnasium's ``is_healthy`` on any state."""

from __future__ import annotations

import gymnasium as gym
from hypothesis import given, settings
from hypothesis import strategies as st

from tailguard.firmware_sim.tasks import MujocoTask

_ENV = gym.make("Hopper-v5")
_TASK = MujocoTask(_ENV)
_U = _ENV.unwrapped
# values around every bound of the rule (z 0.7, angle 0.2, state 100), and non-finite ones
_EDGES = [0.0, 0.7, 0.69999, 0.70001, 0.2, -0.2, 0.19999, 100.0, -100.0, 99.999, 1e9]
_VALUE = st.one_of(
    st.floats(-200, 200),
    st.sampled_from(_EDGES + [-e for e in _EDGES] + [float("nan"), float("inf"), -float("inf")]),
)


def test_the_fast_rule_is_in_use() -> None:
    assert _TASK._healthy() is bool(_U.is_healthy)
    assert _TASK._healthy.__name__ == "healthy"  # not the env-property fallback


@settings(max_examples=400, deadline=None)
@given(
    st.lists(_VALUE, min_size=_U.model.nq, max_size=_U.model.nq),
    st.lists(_VALUE, min_size=_U.model.nv, max_size=_U.model.nv),
)
def test_fast_health_equals_gymnasium(qpos: list[float], qvel: list[float]) -> None:
    _U.data.qpos[:] = qpos
    _U.data.qvel[:] = qvel
    assert _TASK._healthy() == bool(_U.is_healthy)

"""Plants with a known delay tolerance, and tiny ONNX policies for them (imported by tests
as ``audit_plants``; ``py:audit_plants:integrator`` is a task factory for the audit).

The integrator: x' = u on a grid of 8 substeps per 20 ms period, observation x, policy
u = -k x with k h = 1.5. A constant latency L (command released L after the tick start)
gives x_{k+1} = x_k - k L x_{k-1} - k (h - L) x_k, whose characteristic polynomial
z^2 - (1 - k (h - L)) z + k L is stable (Jury) iff k L < 1, i.e. L < h / 1.5 = 0.667 h.
The episode ends when |x| > 1 (a fall); reward 1 per period alive, 200 periods.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

PERIOD_NS = 20_000_000
SUBSTEPS = 8
GAIN_KH = 1.5  # k * h of the main policy: stable for L < h / 1.5
ROBUST_KH = 0.5  # the fallback's k * h: stable for L < 2 h
HORIZON = 200


class IntegratorTask:
    """x' = u, stepped substep by substep (the ``Task`` protocol of the simulator)."""

    resolution = "substep"

    def __init__(self) -> None:
        self.period_ns = PERIOD_NS
        self.substep_ns = PERIOD_NS // SUBSTEPS
        self.max_episode_steps = HORIZON
        self.nu = 1
        self.obs_size = 1
        self.action_dtype = np.float32
        self.action_low = np.array([-1000.0])
        self.action_high = np.array([1000.0])
        self.x = 0.0

    def reset(self, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        self.x = float(rng.uniform(0.3, 0.4) * rng.choice([-1.0, 1.0]))
        return self.observe()

    def run(
        self, ctrl: np.ndarray, n_substeps: int, after_substep: Callable[[int], None] | None = None
    ) -> float:
        h = self.substep_ns / 1e9
        reward = 0.0
        for i in range(n_substeps):
            if abs(self.x) <= 1.0:
                reward += 1.0 / SUBSTEPS
            self.x += h * float(ctrl[0])
            if after_substep is not None:
                after_substep(i)
        return reward

    def observe(self) -> np.ndarray:
        return np.array([self.x])

    def terminated(self) -> bool:
        return abs(self.x) > 1.0


def integrator() -> IntegratorTask:
    """Task factory: ``--env py:audit_plants:integrator``."""
    return IntegratorTask()


def write_gain_onnx(path: Path, gain: float, obs_size: int = 1, action_size: int = 1) -> Path:
    """actions = obs @ W with W = -gain (a linear controller), as an ONNX file."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.full((obs_size, action_size), -gain, np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["obs", "W"], ["actions"])],
        "gain",
        [helper.make_tensor_value_info("obs", TensorProto.FLOAT, [1, obs_size])],
        [helper.make_tensor_value_info("actions", TensorProto.FLOAT, [1, action_size])],
        [numpy_helper.from_array(w, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def main_gain() -> float:
    """k of the main policy, 1/s."""
    return GAIN_KH / (PERIOD_NS / 1e9)


def robust_gain() -> float:
    """k of the fallback policy, 1/s."""
    return ROBUST_KH / (PERIOD_NS / 1e9)


def write_nan_onnx(path: Path) -> Path:
    """actions = sqrt(obs): NaN whenever x < 0 (a policy that faults during the audit)."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Sqrt", ["obs"], ["actions"])],
        "nan",
        [helper.make_tensor_value_info("obs", TensorProto.FLOAT, [1, 1])],
        [helper.make_tensor_value_info("actions", TensorProto.FLOAT, [1, 1])],
        [],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path

"""Tiny deterministic policies (numpy and ONNX) built at test time, for firmware_sim tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tailguard.firmware_sim.controllers import LinearController


def linear_weights(obs_dim: int, act_dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A fixed random linear policy (float32)."""
    rng = np.random.default_rng(seed)
    w = rng.normal(0.0, 0.3, (act_dim, obs_dim)).astype(np.float32)
    b = rng.normal(0.0, 0.1, act_dim).astype(np.float32)
    return w, b


def linear_controller(obs_dim: int, act_dim: int, seed: int = 0) -> LinearController:
    """tanh(W obs + b) with fixed random weights."""
    return LinearController(*linear_weights(obs_dim, act_dim, seed))


def write_linear_onnx(path: Path, obs_dim: int, act_dim: int, seed: int = 0) -> Path:
    """Write tanh(obs @ W.T + b) as an ONNX model with input 'obs' and output 'actions'."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w, b = linear_weights(obs_dim, act_dim, seed)
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["obs", "W", "b"], ["pre"], transB=1),
            helper.make_node("Tanh", ["pre"], ["actions"]),
        ],
        "linear_policy",
        [helper.make_tensor_value_info("obs", TensorProto.FLOAT, [1, obs_dim])],
        [helper.make_tensor_value_info("actions", TensorProto.FLOAT, [1, act_dim])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path

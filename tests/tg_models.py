"""Tiny ONNX models built with the onnx package (independent of tailguard.runtime.onnx_build), and a
simulated clock. Imported by tests as `tg_models` (a unique name: several test folders have
their own conftest.py)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


class FakeClock:
    """A settable integer-ns clock; tests advance it instead of sleeping."""

    def __init__(self, start_ns: int = 1_000_000_000) -> None:
        self.now_ns = start_ns

    def __call__(self) -> int:
        return self.now_ns

    def advance(self, ns: int) -> None:
        self.now_ns += int(ns)


def _save(model: onnx.ModelProto, path: Path, **kwargs: object) -> Path:
    model.ir_version = 8  # onnxruntime 1.31 reads IR <= 13; onnx 1.23 writes 14 by default
    onnx.save(model, str(path), **kwargs)
    return path


def _model(nodes, inputs, outputs, inits, opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "test", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _vi(name: str, shape: list, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def build_mlp(path: Path, sizes=(17, 64, 64, 6), seed: int = 0, act: str = "Elu") -> Path:
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "obs"
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        w = (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32)
        inits += [
            numpy_helper.from_array(w, f"W{i}"),
            numpy_helper.from_array(np.zeros(b, np.float32), f"B{i}"),
        ]
        last = i == len(sizes) - 2
        y = "actions" if last else f"z{i}"
        nodes.append(helper.make_node("Gemm", [x, f"W{i}", f"B{i}"], [y]))
        if not last:
            nodes.append(helper.make_node(act, [y], [f"h{i}"]))
            x = f"h{i}"
    m = _model(
        nodes, [_vi("obs", ["batch", sizes[0]])], [_vi("actions", ["batch", sizes[-1]])], inits
    )
    return _save(m, path)


def build_sqrt(path: Path, obs_size: int = 4, action_size: int = 2) -> Path:
    """actions = sqrt(obs[:, :A]): NaN for negative inputs, large for large ones."""
    sel = np.zeros((obs_size, action_size), np.float32)
    sel[np.arange(action_size), np.arange(action_size)] = 1.0
    nodes = [
        helper.make_node("MatMul", ["obs", "S"], ["z"]),
        helper.make_node("Sqrt", ["z"], ["actions"]),
    ]
    m = _model(
        nodes,
        [_vi("obs", [1, obs_size])],
        [_vi("actions", [1, action_size])],
        [numpy_helper.from_array(sel, "S")],
    )
    return _save(m, path)


def build_recurrent(
    path: Path, kind: str = "GRU", obs_size=5, hidden=8, action_size=3, seed=0
) -> Path:
    """RSL-RL naming: obs, h_in[, c_in] -> actions, h_out[, c_out] (one layer)."""
    rng = np.random.default_rng(seed)
    gates = 3 if kind == "GRU" else 4
    w = (rng.standard_normal((1, gates * hidden, obs_size)) * 0.3).astype(np.float32)
    r = (rng.standard_normal((1, gates * hidden, hidden)) * 0.3).astype(np.float32)
    b = (rng.standard_normal((1, 2 * gates * hidden)) * 0.1).astype(np.float32)
    head = (rng.standard_normal((hidden, action_size)) * 0.5).astype(np.float32)
    inits = [
        numpy_helper.from_array(w, "W"),
        numpy_helper.from_array(r, "R"),
        numpy_helper.from_array(b, "B"),
        numpy_helper.from_array(head, "HEAD"),
        numpy_helper.from_array(np.array([0], np.int64), "ax0"),
    ]
    rnn_in = ["x", "W", "R", "B", "", "h_in"] + (["c_in"] if kind == "LSTM" else [])
    rnn_out = ["y", "h_out"] + (["c_out"] if kind == "LSTM" else [])
    nodes = [
        helper.make_node("Unsqueeze", ["obs", "ax0"], ["x"]),
        helper.make_node(kind, rnn_in, rnn_out, hidden_size=hidden),
        helper.make_node("Squeeze", ["h_out", "ax0"], ["hs"]),
        helper.make_node("MatMul", ["hs", "HEAD"], ["actions"]),
    ]
    ins = [_vi("obs", ["batch", obs_size]), _vi("h_in", [1, "batch", hidden])]
    outs = [_vi("actions", ["batch", action_size]), _vi("h_out", [1, "batch", hidden])]
    if kind == "LSTM":
        ins.append(_vi("c_in", [1, "batch", hidden]))
        outs.append(_vi("c_out", [1, "batch", hidden]))
    return _save(_model(nodes, ins, outs, inits), path)


def build_external(path: Path) -> Path:
    m = onnx.load(str(build_mlp(path.with_name("inline_src.onnx"))))
    return _save(
        m,
        path,
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=path.name + ".data",
        size_threshold=0,
    )


def build_custom(path: Path, inputs, outputs, nodes, inits=()) -> Path:
    return _save(_model(nodes, inputs, outputs, list(inits)), path)

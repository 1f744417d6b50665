"""Chunk policies: ONNX [batch, H, A] outputs, H and s from the shape, metadata or the caller,
and a clear ConfigError when they disagree (real onnxruntime, tiny models built here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tailguard.errors import ConfigError, PolicyLoadError
from tailguard.runtime.chunk_policy import (
    CHUNK_HORIZON_KEY,
    EXECUTE_HORIZON_KEY,
    CallableChunkPolicy,
    OnnxChunkPolicy,
    resolve_horizons,
)

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def build_chunk_model(
    path: Path,
    obs_size: int = 5,
    horizon: int = 8,
    action_size: int = 3,
    *,
    declared_horizon: int | str | None = "same",
    metadata: dict[str, str] | None = None,
    seed: int = 0,
) -> Path:
    """obs [batch, O] -> Gemm -> Reshape -> actions [batch, H, A] (declared H: the real one,
    a symbolic name, or another number)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((obs_size, horizon * action_size)).astype(np.float32)
    b = rng.standard_normal(horizon * action_size).astype(np.float32)
    shape = np.array([-1, horizon, action_size], dtype=np.int64)
    nodes = [
        helper.make_node("Gemm", ["obs", "W", "B"], ["flat"]),
        helper.make_node("Reshape", ["flat", "shape"], ["actions"]),
    ]
    h_dim = horizon if declared_horizon == "same" else declared_horizon
    graph = helper.make_graph(
        nodes,
        "chunk",
        [helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["batch", obs_size])],
        [
            helper.make_tensor_value_info(
                "actions", TensorProto.FLOAT, ["batch", h_dim, action_size]
            )
        ],
        [
            numpy_helper.from_array(w, "W"),
            numpy_helper.from_array(b, "B"),
            numpy_helper.from_array(shape, "shape"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if metadata:
        helper.set_model_props(model, metadata)
    onnx.save(model, str(path))
    return path


def test_loads_h_from_shape_and_s_from_metadata(tmp_path: Path) -> None:
    path = build_chunk_model(tmp_path / "c.onnx", metadata={EXECUTE_HORIZON_KEY: "5"})
    p = OnnxChunkPolicy(path)
    assert (p.obs_size, p.action_size, p.horizon, p.execute_horizon) == (5, 3, 8, 5)
    obs = np.arange(5, dtype=np.float32)
    chunk = p(obs)
    assert chunk.shape == (8, 3)
    import onnxruntime as ort

    ref = ort.InferenceSession(str(path)).run(None, {"obs": obs.reshape(1, -1)})[0][0]
    np.testing.assert_array_equal(chunk, ref)
    p.obs[:] = obs
    p.infer(1)
    np.testing.assert_array_equal(p.chunks[1], ref)


def test_symbolic_h_axis_and_unknown_h(tmp_path: Path) -> None:
    # the file declares a symbolic H; onnxruntime's shape inference (or the probe) finds 8
    meta = {CHUNK_HORIZON_KEY: "8", EXECUTE_HORIZON_KEY: "4"}
    path = build_chunk_model(tmp_path / "c.onnx", declared_horizon="H", metadata=meta)
    p = OnnxChunkPolicy(path)
    assert (p.horizon, p.execute_horizon) == (8, 4)
    lie = {CHUNK_HORIZON_KEY: "6", EXECUTE_HORIZON_KEY: "4"}
    bad = build_chunk_model(tmp_path / "lie.onnx", declared_horizon="H", metadata=lie)
    with pytest.raises(ConfigError, match=r"H disagrees|expected \[1, H, A\] = \[1, 6, 3\]"):
        OnnxChunkPolicy(bad)
    with pytest.raises(ConfigError, match="chunk length H is not known"):
        resolve_horizons(None, {EXECUTE_HORIZON_KEY: "4"}, None, None)
    assert resolve_horizons(None, meta, None, None) == (8, 4)


@pytest.mark.parametrize(
    ("meta", "kwargs", "message"),
    [
        ({CHUNK_HORIZON_KEY: "6", EXECUTE_HORIZON_KEY: "4"}, {}, "H disagrees.*H = 8.*H = 6"),
        ({EXECUTE_HORIZON_KEY: "4"}, {"horizon": 10}, "H disagrees"),
        ({EXECUTE_HORIZON_KEY: "4"}, {"execute_horizon": 3}, "s disagrees.*4.*3"),
        ({}, {}, "execute horizon s is not known"),
        ({EXECUTE_HORIZON_KEY: "9"}, {}, r"expected 1 <= s <= H = 8, found s = 9"),
        ({EXECUTE_HORIZON_KEY: "four"}, {}, "expected a decimal integer"),
    ],
)
def test_disagreements_are_config_errors(
    tmp_path: Path, meta: dict[str, str], kwargs: dict[str, int], message: str
) -> None:
    path = build_chunk_model(tmp_path / "c.onnx", metadata=meta)
    with pytest.raises(ConfigError, match=message):
        OnnxChunkPolicy(path, **kwargs)


def test_per_tick_model_and_bad_files_are_refused(tmp_path: Path) -> None:
    from tg_models import build_mlp

    flat = build_mlp(tmp_path / "flat.onnx", sizes=(5, 8, 3))
    with pytest.raises(ConfigError, match=r"expected shape \[batch, H, A\].*OnnxPolicy"):
        OnnxChunkPolicy(flat, horizon=8, execute_horizon=4)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model at all")
    with pytest.raises(PolicyLoadError):
        OnnxChunkPolicy(junk, horizon=8, execute_horizon=4)


def test_resolve_and_callable() -> None:
    assert resolve_horizons(None, {}, 8, 8) == (8, 8)
    with pytest.raises(ConfigError, match="expected 1 to 1024"):
        resolve_horizons(None, {}, 5000, 1)
    p = CallableChunkPolicy(lambda o: np.ones((4, 2)) * o[0], 3, 2, 4, 2)
    np.testing.assert_array_equal(p(np.array([2.0, 0, 0])), np.full((4, 2), 2.0, np.float32))
    bad = CallableChunkPolicy(lambda o: np.ones(3), 3, 2, 4, 2)
    with pytest.raises(ConfigError, match="H x A = 4 x 2"):
        bad(np.zeros(3))

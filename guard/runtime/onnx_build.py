"""Build small ONNX MLP policies without the ``onnx`` package.

Used by the demo, the benchmarks and the tests to make policies on the spot (nothing is
downloaded). Weights are seeded, so the same call always gives the same file.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tailguard.errors import ConfigError
from tailguard.runtime import _onnx_proto as proto

__all__ = ["mlp_bytes", "write_mlp", "linear_bytes"]

_ACTIVATIONS = ("Elu", "Relu", "Tanh")


def mlp_bytes(
    sizes: Sequence[int],
    *,
    activation: str = "Elu",
    seed: int = 0,
    weights: Sequence[tuple[np.ndarray, np.ndarray]] | None = None,
    dynamic_batch: bool = True,
    metadata: dict[str, str] | None = None,
) -> bytes:
    """An MLP ``obs [batch, sizes[0]] -> actions [batch, sizes[-1]]`` as ONNX bytes.

    Args:
        sizes: layer widths, e.g. (17, 64, 64, 6).
        activation: between hidden layers: "Elu" (RSL-RL's default), "Relu" or "Tanh".
        seed: for the random (Glorot-scaled) weights when ``weights`` is None.
        weights: explicit [(W [in, out], b [out]), ...] instead of random ones.
        dynamic_batch: symbolic batch axis (else batch 1).
        metadata: ONNX metadata_props.

    Raises:
        ConfigError: an unknown activation, or fewer than two positive sizes.
    """
    if activation not in _ACTIVATIONS:
        raise ConfigError(
            f"unknown activation '{activation}'; valid choices are {list(_ACTIVATIONS)}"
        )
    if len(sizes) < 2 or any(int(s) <= 0 for s in sizes):
        raise ConfigError(f"sizes must be >= 2 positive widths, got {list(sizes)}")
    rng = np.random.default_rng(seed)
    if weights is None:
        weights = [
            (
                rng.standard_normal((a, b)).astype(np.float32) * np.float32(np.sqrt(2.0 / (a + b))),
                (rng.standard_normal(b) * 0.01).astype(np.float32),
            )
            for a, b in itertools.pairwise(sizes)
        ]
    nodes, inits = [], []
    x = "obs"
    last = len(weights) - 1
    for i, (w, b) in enumerate(weights):
        inits += [proto.tensor(f"W{i}", w), proto.tensor(f"B{i}", b)]
        y = "actions" if i == last else f"z{i}"
        nodes.append(proto.node("Gemm", [x, f"W{i}", f"B{i}"], [y], f"gemm{i}"))
        if i != last:
            nodes.append(proto.node(activation, [y], [f"h{i}"], f"act{i}"))
            x = f"h{i}"
    batch: int | str = "batch" if dynamic_batch else 1
    return proto.model(
        nodes,
        inputs=[proto.value_info("obs", [batch, int(sizes[0])])],
        outputs=[proto.value_info("actions", [batch, int(sizes[-1])])],
        initializers=inits,
        metadata=metadata,
    )


def linear_bytes(gain: np.ndarray, *, bias: np.ndarray | None = None) -> bytes:
    """A linear policy ``actions = obs @ gain + bias`` (e.g. an LQR/PD law) as ONNX bytes."""
    g = np.asarray(gain, dtype=np.float32)
    b = np.zeros(g.shape[1], np.float32) if bias is None else np.asarray(bias, np.float32)
    return mlp_bytes(g.shape, weights=[(g, b)])


def write_mlp(path: str | Path, sizes: Sequence[int], **kwargs: object) -> Path:
    """Write :func:`mlp_bytes` to ``path`` and return it."""
    p = Path(path)
    p.write_bytes(mlp_bytes(sizes, **kwargs))  # type: ignore[arg-type]
    return p

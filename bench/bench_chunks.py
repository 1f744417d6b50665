"""Chunk guard cost per tick, side by side with today's per-tick guard.

Run for real (writes nothing)::

    python -m pytest bench/bench_chunks.py --benchmark-enable -p no:cacheprovider -s

Variants, timed per call in interleaved blocks (``tg_timing.interleaved``):

* ``guard_per_tick`` -- ``Guard.step`` on a (17, 64, 64, 6) MLP: one inference per tick;
* ``chunk_buffered`` -- ``ChunkGuard.step`` executing a buffered action: a chunk so long
  (H = s = 1024) that a request falls on one tick in 1024, so its percentiles are those of
  the buffered path;
* ``chunk_h8_async`` -- ``ChunkGuard.step`` on an ONNX chunk MLP (17, 64, 64, 8 x 6) with
  H = 8, s = 5, simulated asynchronous inference (d = 1): the mix a chunk loop really runs
  (4 buffered ticks, one request tick and one arrival tick in 5).

Results: per-variant p50/p90/p99 (us) and ``buffered_over_per_tick_p50``, the median over
rounds of each round's p50 ratio.
"""

from __future__ import annotations

import itertools
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tg_timing import interleaved, is_smoke, summary_us

from tailguard import Guard, OnnxPolicy
from tailguard.envelope.model import Envelope, PolicyBinding, Thresholds, Timing
from tailguard.runtime import _onnx_proto as proto
from tailguard.runtime.chunk_guard import ChunkGuard, ScheduledChunkRunner
from tailguard.runtime.chunk_policy import (
    CHUNK_HORIZON_KEY,
    EXECUTE_HORIZON_KEY,
    CallableChunkPolicy,
    OnnxChunkPolicy,
)
from tailguard.runtime.onnx_build import write_mlp

ROUNDS = 15


def _envelope(obs_size: int, action_size: int) -> Envelope:
    s = 10**9
    return Envelope(
        policy=PolicyBinding(
            None, obs_size, action_size, (-1e6,) * action_size, (1e6,) * action_size
        ),
        timing=Timing(
            period_ns=s,
            dt=Thresholds(p50_ns=s, p95_ns=s, p99_ns=s, max_ns=10 * s),
            latency=Thresholds(p50_ns=s, p95_ns=s, p99_ns=s, max_ns=s),
        ),
    )


def _int64_tensor(name: str, values: list[int]) -> bytes:
    a = np.asarray(values, dtype="<i8")
    dims = b"".join(proto._int_field(1, int(d)) for d in a.shape)
    return dims + proto._int_field(2, 7) + proto._str(8, name) + proto._field(9, a.tobytes())


def write_chunk_mlp(path: Path, sizes: tuple[int, ...], horizon: int, execute: int) -> Path:
    """An MLP obs [batch, O] -> [batch, H * A] -> Reshape -> actions [batch, H, A]."""
    rng = np.random.default_rng(4)
    nodes, inits, x = [], [], "obs"
    pairs = list(itertools.pairwise(sizes))
    for i, (a, b) in enumerate(pairs):
        w = rng.standard_normal((a, b)).astype(np.float32) * np.float32(np.sqrt(2 / (a + b)))
        inits += [proto.tensor(f"W{i}", w), proto.tensor(f"B{i}", np.zeros(b, np.float32))]
        y = "flat" if i == len(pairs) - 1 else f"z{i}"
        nodes.append(proto.node("Gemm", [x, f"W{i}", f"B{i}"], [y], f"gemm{i}"))
        if i != len(pairs) - 1:
            nodes.append(proto.node("Elu", [y], [f"h{i}"], f"act{i}"))
            x = f"h{i}"
    a_size = sizes[-1] // horizon
    inits.append(_int64_tensor("chunk_shape", [-1, horizon, a_size]))
    nodes.append(proto.node("Reshape", ["flat", "chunk_shape"], ["actions"], "reshape"))
    data = proto.model(
        nodes,
        inputs=[proto.value_info("obs", ["batch", sizes[0]])],
        outputs=[proto.value_info("actions", ["batch", horizon, a_size])],
        initializers=inits,
        metadata={CHUNK_HORIZON_KEY: str(horizon), EXECUTE_HORIZON_KEY: str(execute)},
    )
    path.write_bytes(data)
    return path


@pytest.mark.benchmark(group="chunks")
def bench_chunk_buffered_vs_per_tick(
    benchmark: Any, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    blocks, per_block = (4, 200) if is_smoke(request.config) else (20, 2500)
    rounds = 1 if is_smoke(request.config) else ROUNDS
    obs = np.random.default_rng(0).standard_normal(17).astype(np.float32)
    per_tick = Guard(
        OnnxPolicy(write_mlp(tmp_path / "mlp.onnx", (17, 64, 64, 6), seed=1)), _envelope(17, 6)
    )
    long_chunk = np.zeros((1024, 6), np.float32)
    buffered = ChunkGuard(
        CallableChunkPolicy(lambda o: long_chunk, 17, 6, 1024, 1024),
        _envelope(17, 6),
        mode="sync",
    )
    onnx_chunk = OnnxChunkPolicy(write_chunk_mlp(tmp_path / "chunk.onnx", (17, 64, 64, 48), 8, 5))
    h8 = ChunkGuard(
        onnx_chunk,
        _envelope(17, 6),
        mode="async",
        runner=ScheduledChunkRunner(lambda: 1),
    )
    for g in (per_tick, buffered, h8):
        for _ in range(300):
            g.step(obs)
    variants = {
        "guard_per_tick": lambda: per_tick.step(obs),
        "chunk_buffered": lambda: buffered.step(obs),
        "chunk_h8_async": lambda: h8.step(obs),
    }

    def run() -> dict[str, Any]:
        ratios, last = [], {}
        for _ in range(rounds):
            hists, _gcs = interleaved(variants, blocks, per_block)
            last = {k: summary_us(h) for k, h in hists.items()}
            ratios.append(last["chunk_buffered"]["p50"] / last["guard_per_tick"]["p50"])
        return {"buffered_over_per_tick_p50": statistics.median(ratios), "rounds": rounds, **last}

    info = benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update(info)
    print(info)
    st = h8.stats()
    assert st["violations"]["chunk_exhausted"] == 0 and st["chunks_installed"] > 1
    assert buffered.stats()["interventions"] == 0

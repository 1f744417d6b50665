"""Fixtures for the benchmark suite; the timing helpers live in tg_timing.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from tg_timing import interleaved, is_smoke, summary_us, time_calls  # noqa: F401  (re-exported)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The three benchmark policies, built once (seeded) with tailguard.runtime.onnx_build."""
    from tailguard.runtime.onnx_build import write_mlp

    d = tmp_path_factory.mktemp("bench_models")
    write_mlp(d / "small.onnx", (17, 64, 64, 6), seed=1)
    write_mlp(d / "large.onnx", (48, 512, 256, 128, 12), seed=2)
    write_mlp(d / "wide.onnx", (376, 256, 256, 17), seed=3)
    return d

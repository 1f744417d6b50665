"""Fixtures of the cluster tests: one real local Ray for this package (2 CPUs, no dashboard),
shut down after its last test, and the integrator plant's policies."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
AUDIT_TESTS = HERE.parent / "audit"
# The plants and their task factories: importable here and on every Ray worker.
for _p in (str(AUDIT_TESTS), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)
from audit_plants import main_gain, robust_gain, write_gain_onnx  # noqa: E402
from cluster_plants import PLANT_PATH  # noqa: E402


@pytest.fixture(scope="package")
def ray_local() -> Iterator[Any]:
    """A local Ray for the whole package: ``num_cpus=2``, no dashboard, the plants on the
    workers' path."""
    ray = pytest.importorskip(
        "ray", reason="Ray is not installed: pip install 'tailguard[cluster]'"
    )
    if ray.is_initialized():
        ray.shutdown()
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": PLANT_PATH}},
    )
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="package")
def plant_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """u = -k x with k h = 1.5 (tolerates constant latency below h / 1.5)."""
    return write_gain_onnx(tmp_path_factory.mktemp("pol") / "main.onnx", main_gain())


@pytest.fixture(scope="package")
def plant_fallback(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """u = -k x with k h = 0.5 (tolerates constant latency below 2 h)."""
    return write_gain_onnx(tmp_path_factory.mktemp("pol") / "robust.onnx", robust_gain())

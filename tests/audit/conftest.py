"""Fixtures of the audit tests: the integrator plant's policies."""

from __future__ import annotations

from pathlib import Path

import pytest
from audit_plants import main_gain, robust_gain, write_gain_onnx


@pytest.fixture(scope="session")
def plant_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """u = -k x with k h = 1.5 (tolerates constant latency below h / 1.5)."""
    return write_gain_onnx(tmp_path_factory.mktemp("pol") / "main.onnx", main_gain())


@pytest.fixture(scope="session")
def plant_fallback(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """u = -k x with k h = 0.5 (tolerates constant latency below 2 h)."""
    return write_gain_onnx(tmp_path_factory.mktemp("pol") / "robust.onnx", robust_gain())

"""Fixtures for firmware_sim tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from fsim_helpers import write_linear_onnx


@pytest.fixture
def hopper_onnx(tmp_path: Path) -> Path:
    """A linear ONNX policy for Hopper-v5 (11 -> 3)."""
    return write_linear_onnx(tmp_path / "hopper.onnx", 11, 3)

"""Fixtures shared by all tests (builders live in tg_models.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from tg_models import FakeClock, build_mlp, build_sqrt

# CI runs on a loaded 2-core machine: time is not what these property tests are about.
settings.register_profile(
    "tailguard", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.load_profile("tailguard")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def mlp_path(tmp_path: Path) -> Path:
    return build_mlp(tmp_path / "mlp.onnx")


@pytest.fixture
def sqrt_path(tmp_path: Path) -> Path:
    return build_sqrt(tmp_path / "sqrt.onnx")

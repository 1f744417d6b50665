"""Task factories of the cluster tests (``py:cluster_plants:NAME``), on the audit tests'
integrator plant (``tests/audit/audit_plants.py``)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
from audit_plants import IntegratorTask

#: Where the plants live: on the Ray workers' PYTHONPATH.
PLANT_PATH = os.pathsep.join(
    [str(Path(__file__).resolve().parent.parent / "audit"), str(Path(__file__).resolve().parent)]
)
#: Wall-clock pause per episode of the slow plant, s (long enough to kill a worker mid-unit).
SLOW_RESET_S = 0.15
#: The episode (reset seed) the exploding plant fails on.
EXPLODING_SEED = 3


class _Slow(IntegratorTask):
    def reset(self, seed: int) -> np.ndarray:
        time.sleep(SLOW_RESET_S)
        return super().reset(seed)


class _Exploding(IntegratorTask):
    def reset(self, seed: int) -> np.ndarray:
        if seed == EXPLODING_SEED:
            raise RuntimeError(f"plant exploded at reset seed {seed}")
        return super().reset(seed)


def slow() -> IntegratorTask:
    """The integrator, pausing before each episode (same results, slower)."""
    return _Slow()


def exploding() -> IntegratorTask:
    """The integrator, raising on reset seed ``EXPLODING_SEED`` (a deterministic failure)."""
    return _Exploding()

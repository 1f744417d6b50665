"""Chunk execution metrics: smoothness on hand-computed sequences, p_violate with its exact
interval, the derived tail cap on d and the per-condition summary."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pytest

from tailguard.audit.chunk_metrics import (
    chunk_condition_metrics,
    chunk_limits,
    delay_summary,
    derive_delay_cap,
    smoothness,
)
from tailguard.audit.statistics import BootstrapSettings, clopper_pearson
from tailguard.runtime.state import Response


def test_smoothness_hand_computed() -> None:
    # 1-D: deltas 1, 2, 3 -> 3; second differences 1, 1 -> 1
    assert smoothness([[0.0], [1.0], [3.0], [6.0]]) == (3.0, 1.0)
    # 2-D: deltas (1,0), (0,1), (2,0) -> 2; second differences (-1,1), (2,-1) -> sqrt(5)
    m1, m2 = smoothness(np.array([[0, 0], [1, 0], [1, 1], [3, 1]], float))
    assert m1 == 2.0 and m2 == pytest.approx(math.sqrt(5.0))
    # a chunk-boundary jerk: constant, a jump of (3, 4), constant -> 5 and 5
    assert smoothness([[0, 0], [0, 0], [3, 4], [3, 4]]) == (5.0, 5.0)
    assert smoothness([[1.0, 2.0]]) == (0.0, 0.0)
    assert smoothness([0.0, 2.0]) == (2.0, 0.0)


def test_delay_summary_and_p_violate() -> None:
    delays = [0] * 90 + [1] * 6 + [4] * 4
    out = delay_summary(delays, horizon=8, execute_horizon=5)
    assert (out["d_p50"], out["d_p95"], out["d_p99"], out["d_max"]) == (0, 1, 4, 4)
    assert out["p_violate"] == 0.04 and out["violating_chunks"] == 4
    assert out["p_violate_ci"] == list(clopper_pearson(4, 100))
    capped = delay_summary([min(d, 2) for d in delays], 8, 5)
    assert capped["p_violate"] == 0.0 and capped["d_p99"] == 2


def test_derive_delay_cap() -> None:
    long_tail = [0] * 90 + [1] * 6 + [4] * 4
    cap = derive_delay_cap(long_tail, 8, 5)
    assert cap["d_at_quantile"] == 4 and cap["max_delay_ticks"] == 3
    assert cap["within_limit"] is False and cap["p_violate"] == 0.04
    ok = derive_delay_cap([min(d, 2) for d in long_tail], 8, 5)
    assert ok["max_delay_ticks"] == 2 and ok["within_limit"] is True
    limits = chunk_limits(ok, 8, 5, on_exhausted="latch")
    assert limits.max_delay_ticks == 2 and limits.on_exhausted is Response.LATCH
    assert (limits.horizon, limits.execute_horizon) == (8, 5)


@dataclass
class Ep:
    ret: float
    terminated: bool
    actions: np.ndarray
    delays: list[int] = field(default_factory=list)
    guard: dict = field(default_factory=dict)


def test_condition_metrics() -> None:
    rng = np.random.default_rng(0)
    ref = [Ep(100.0 + i, False, np.zeros((5, 2))) for i in range(10)]
    cond = [
        Ep(
            50.0 + i,
            i < 3,
            np.cumsum(rng.standard_normal((5, 2)), axis=0),
            [0, 4, 1],
            {"violations": {"chunk_exhausted": 1, "action_rate": 0}},
        )
        for i in range(10)
    ]
    m = chunk_condition_metrics(cond, ref, 8, 5, BootstrapSettings(n_resamples=500), stream=1)
    assert m["return_ratio"]["ratio"] == pytest.approx(np.mean([c.ret for c in cond]) / 104.5)
    assert m["return_ratio"]["ci_low"] < m["return_ratio"]["ratio"] < m["return_ratio"]["ci_high"]
    assert m["falls"] == 3 and m["chunks"] == 30 and m["p_violate"] == pytest.approx(1 / 3)
    want = np.mean([smoothness(c.actions)[0] for c in cond])
    assert m["max_delta_a"]["mean"] == pytest.approx(want)
    assert m["max_delta_a"]["ci_low"] <= want <= m["max_delta_a"]["ci_high"]
    assert m["violations"] == {"chunk_exhausted": 10}
    with pytest.raises(Exception, match="paired episodes"):
        chunk_condition_metrics(cond[:3], ref, 8, 5)

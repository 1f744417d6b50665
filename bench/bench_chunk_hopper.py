"""The shipped Hopper chunk policy: sync vs naive async vs guarded async execution under
exp-delta's long tail and its tail-capped variant (simulated time, paired episodes).

Run for real (about a minute on one core; the smoke run uses 3 episodes)::

    python -m pytest bench/bench_chunk_hopper.py --benchmark-enable -p no:cacheprovider -s

Records, per condition, the return ratio against sync under nominal timing with its BCa
interval, falls, d p50/p95/p99, p_violate with its exact interval, and the mean per-episode
max ||Δa|| and max ||Δ²a|| with intervals (``tailguard.audit.chunk_compare``), plus the
derived tail cap on d.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tg_timing import is_smoke

pytest.importorskip("mujoco")
pytest.importorskip("scipy")

POLICIES = Path(__file__).resolve().parents[1] / "guard" / "policies"


@pytest.mark.benchmark(group="chunks")
def bench_chunk_execution_hopper(benchmark: Any, request: pytest.FixtureRequest) -> None:
    from tailguard.audit.chunk_compare import compare_chunk_execution, markdown_table

    smoke = is_smoke(request.config)
    episodes = 3 if smoke else 30

    def run() -> dict[str, Any]:
        return compare_chunk_execution(
            POLICIES / "hopper_chunk.onnx",
            POLICIES / "hopper_nominal.onnx",
            episodes=episodes,
            seed=2000,
            n_resamples=500 if smoke else 9999,
        )

    result = benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    print(markdown_table(result))
    print(result["delay_caps"], result["rate_limit"])
    conditions = result["conditions"]
    assert conditions["nominal/sync"]["return_ratio"]["ratio"] == 1.0
    assert conditions["exp_delta_tail_capped/naive_async"]["p_violate"] == 0.0
    for key, m in conditions.items():
        if key.split("/")[1] == "sync":
            assert m["violations"].get("chunk_exhausted", 0) == 0

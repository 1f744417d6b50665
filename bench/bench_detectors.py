"""What the failure detectors (envelope schema 2) cost a nominal tick.

Run for real (writes nothing; `python bench/run.py -k detectors` collects the summary)::

    python -m pytest bench/bench_detectors.py --benchmark-enable -p no:cacheprovider -s

Variants, timed per call in interleaved blocks on the same model (see bench/conftest.py):

* guard -- Guard.step with the envelope of bench_guard (timing, bounds and rate checks),
  detectors off, as a version-1 envelope has them;
* guard_range -- the same plus an observation range (two ``Sub`` nodes in the check graph
  replace the guard's own observation byte test; still one byte test per tick);
* guard_detectors -- the range plus all three action window rules (saturation, frozen,
  chatter: sampled on the window cadence, 3 of every ``check_every_ticks`` = 10 ticks).

Every tick stays nominal (a slowly moving observation inside the range, nothing
saturates, freezes or chatters); every variant steps on the same observation sequence.
``*_ratio_p50`` is the median over rounds of each round's p50 ratio to ``guard`` over all
ticks; ``*_ratio_mean`` the same for the mean per call, which includes the amortized
sampling ticks. The p50 of all ticks is not the cost of a nominal tick once the rules
sample: with 2 of every 10 ticks on the sampling path instead of 1, the median of all ticks
moves up the plain ticks' distribution even if no plain tick got slower. So each tick is
also classed by its place in the cadence, the same places for every variant:
``*_plain_ratio_p50`` compares only the ticks no variant samples (7 of 10: the plain
nominal tick), ``sampled_us`` gives the p50 of the check and probe ticks.
"""

from __future__ import annotations

import dataclasses
import gc
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bench_guard import _envelope
from tg_timing import interleaved, is_smoke, summary_us

from tailguard import Guard, OnnxPolicy
from tailguard.envelope.schema import (
    ActionRules,
    ChatterRule,
    FrozenRule,
    ObservationRange,
    SaturationRule,
)

ROUNDS = 15
CHECK_EVERY = 10  # bench_guard's envelope: window checks every 10 ticks
# ticks whose place in the cadence (tick % CHECK_EVERY) no variant samples: the check tick
# (0), the chatter probe (9); 1 too, which follows the check (its clock read includes the
# check's bookkeeping in none of the variants, but keep the comparison conservative)
_SAMPLED = {0, 1, CHECK_EVERY - 1}


def _by_phase(
    guards: dict[str, Any], step: dict[str, Any], blocks: int, per_block: int
) -> dict[str, tuple[list[int], list[int]]]:
    """Per variant, (plain tick times, sampled tick times) ns, interleaved in blocks."""
    clock = time.perf_counter_ns
    out: dict[str, tuple[list[int], list[int]]] = {k: ([], []) for k in guards}
    gc.collect()
    gc.freeze()
    try:
        for _ in range(blocks):
            for name, g in guards.items():
                plain, sampled = out[name]
                fn = step[name]
                for _ in range(per_block):
                    t = clock()
                    fn()
                    d = clock() - t
                    (sampled if g._tick % CHECK_EVERY in _SAMPLED else plain).append(d)
    finally:
        gc.unfreeze()
    return out


@pytest.mark.benchmark(group="detectors")
@pytest.mark.parametrize("model", ["small", "large"])
def bench_detectors_overhead(
    benchmark: Any, request: pytest.FixtureRequest, model_dir: Path, model: str
) -> None:
    """Guard.step with the detectors off, with the observation range, with everything."""
    smoke = is_smoke(request.config)
    rounds, blocks, per_block = (2, 2, 100) if smoke else (ROUNDS, 2, 2500)
    path = model_dir / f"{model}.onnx"
    probe = OnnxPolicy(path)
    o, a = probe.obs_size, probe.action_size
    base = _envelope(o, a)
    ranged = dataclasses.replace(base, observations=ObservationRange((-1e3,) * o, (1e3,) * o))
    full = dataclasses.replace(
        ranged,
        action_rules=ActionRules(
            saturation=SaturationRule(fraction=0.5),
            frozen=FrozenRule(ticks=100, obs_delta=0.05),
            chatter=ChatterRule(fraction=0.5, min_delta=0.01),
        ),
    )
    # a slowly moving observation (the policy's actions change as on a real robot)
    rows = (0.1 * np.sin(np.arange(1024)[:, None] / 50.0 + np.arange(o))).astype(np.float32)
    obs = rows[0]
    count = [0]

    def next_obs() -> np.ndarray:
        count[0] = i = (count[0] + 1) & 1023
        return rows[i]

    guards = {
        "guard": Guard(OnnxPolicy(path), base),
        "guard_range": Guard(OnnxPolicy(path), ranged),
        "guard_detectors": Guard(OnnxPolicy(path), full),
    }
    variants = {}
    for name, g in guards.items():
        g.warm_up(obs, freeze_gc=False)
        variants[name] = lambda g=g: g.step(next_obs())
    for _ in range(200):
        for fn in variants.values():
            fn()

    def run() -> dict[str, Any]:
        pooled: dict[str, Any] = {}
        p50: dict[str, list[float]] = {k: [] for k in variants}
        mean: dict[str, list[float]] = {k: [] for k in variants}
        plain: dict[str, list[float]] = {k: [] for k in variants}
        sampled: dict[str, list[float]] = {k: [] for k in variants}
        gcs = 0
        for _ in range(rounds):
            hists, n_gc = interleaved(variants, blocks, per_block)
            gcs += n_gc
            for k, (pl, sa) in _by_phase(guards, variants, blocks, per_block).items():
                plain[k].append(float(np.median(pl)))
                sampled[k].append(float(np.median(sa)))
            for k, h in hists.items():
                p50[k].append(h.value_at_percentile(50))
                mean[k].append(h.mean)
                if k in pooled:
                    pooled[k].merge(h)
                else:
                    pooled[k] = h

        def ratio(table: dict[str, list[float]], name: str) -> float:
            return float(np.median(np.array(table[name]) / np.array(table["guard"])))

        others = ("guard_range", "guard_detectors")
        return {
            "gc_collections": gcs,
            "rounds": rounds,
            **{k: summary_us(h) for k, h in pooled.items()},
            **{f"{k}_ratio_p50": ratio(p50, k) for k in others},
            **{f"{k}_ratio_mean": ratio(mean, k) for k in others},
            **{f"{k}_plain_ratio_p50": ratio(plain, k) for k in others},
            "plain_us": {k: float(np.median(v)) / 1e3 for k, v in plain.items()},
            "sampled_us": {k: float(np.median(v)) / 1e3 for k, v in sampled.items()},
        }

    info = benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update(info)
    if not smoke:
        print(
            f"\n{model}: p50 us "
            + ", ".join(f"{k} {info[k]['p50']:.2f}" for k in variants)
            + f"; median of {rounds} rounds, ratio to guard: range p50 "
            f"{info['guard_range_ratio_p50']:.3f} mean {info['guard_range_ratio_mean']:.3f}, "
            f"detectors p50 {info['guard_detectors_ratio_p50']:.3f} "
            f"mean {info['guard_detectors_ratio_mean']:.3f}; plain ticks only: p50 us "
            + ", ".join(f"{k} {v:.2f}" for k, v in info["plain_us"].items())
            + f", ratio range {info['guard_range_plain_ratio_p50']:.3f} detectors "
            f"{info['guard_detectors_plain_ratio_p50']:.3f}; sampled ticks p50 us "
            + ", ".join(f"{k} {v:.2f}" for k, v in info["sampled_us"].items())
        )
    for g in guards.values():
        assert sum(g.stats()["violations"].values()) == 0

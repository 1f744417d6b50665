"""Synchronous, naive asynchronous and guarded asynchronous execution of a chunk policy,
compared under per-chunk delay profiles in simulated time (paired episodes).

Execution variants (all on the same policy, the same paired episodes and delay streams):

* ``sync``: the loop waits for every chunk (the wait holds the last command);
* ``naive_async``: the previous chunk keeps executing, the new one replaces it when it
  arrives (stale actions skipped); nothing is limited and a run-out chunk holds its last
  action;
* ``guarded_hold``: async under a ``ChunkGuard`` envelope: the per-tick rate limit
  ``max_delta`` (clip, every executed action including across the chunk boundary; the
  largest per-tick step of nominal execution, :func:`nominal_rate_limit`, so that nominal
  timing is never clipped) and ``chunk_exhausted`` -> hold;
* ``guarded_fallback``: the same with ``chunk_exhausted`` -> fallback to a per-tick policy
  (e.g. the policy the chunk policy was distilled from), handed back after one clean tick.

The reference of every return ratio is ``sync`` under nominal timing (d = 0, where all
variants execute the same actions). The metrics are :mod:`tailguard.audit.chunk_metrics`'.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tailguard.audit.chunk_metrics import chunk_condition_metrics, derive_delay_cap
from tailguard.audit.statistics import BootstrapSettings
from tailguard.envelope.chunks import ChunkLimits
from tailguard.envelope.schema import ActionLimits, Envelope, PolicyBinding, Recovery, Timing
from tailguard.runtime.chunk_guard import ChunkGuard, ScheduledChunkRunner
from tailguard.runtime.chunk_policy import OnnxChunkPolicy
from tailguard.runtime.policy import OnnxPolicy
from tailguard.stats.percentile import percentile

__all__ = ["VARIANTS", "compare_chunk_execution", "markdown_table", "nominal_rate_limit"]

VARIANTS = ("sync", "naive_async", "guarded_hold", "guarded_fallback")
_UNLIMITED_HOLDS = 10**9


def _envelope(
    task: Any,
    policy: OnnxChunkPolicy,
    max_delta: Sequence[float] | None,
    on_exhausted: str,
    max_delay_ticks: int | None,
) -> Envelope:
    a = task.nu
    return Envelope(
        policy=PolicyBinding(
            None,
            policy.obs_size,
            a,
            tuple(float(x) for x in task.action_low),
            tuple(float(x) for x in task.action_high),
        ),
        timing=Timing(period_ns=task.period_ns),
        actions=ActionLimits(None if max_delta is None else tuple(max_delta)),
        recovery=Recovery(recovery_ticks=1, dwell_ns=0, max_hold_ticks=_UNLIMITED_HOLDS),
        chunks=ChunkLimits(
            horizon=policy.horizon,
            execute_horizon=policy.execute_horizon,
            max_delay_ticks=max_delay_ticks,
            on_exhausted=on_exhausted,
        ),
    )


def nominal_rate_limit(episodes: Sequence[Any], q: float = 100.0) -> list[float]:
    """Per action element, the ``q``-th percentile of |a_t - a_{t-1}| under nominal timing
    (the rate limit the guard enforces), from episodes' executed actions."""
    steps = np.concatenate(
        [np.abs(np.diff(e.actions, axis=0)) for e in episodes if len(e.actions) > 1]
    )
    return [max(float(percentile(steps[:, j], q)), 1e-3) for j in range(steps.shape[1])]


def compare_chunk_execution(
    policy_path: str | Path,
    fallback_path: str | Path | None,
    *,
    env_id: str = "Hopper-v5",
    profiles: Sequence[str] = ("exp_delta_long_tail", "exp_delta_tail_capped"),
    episodes: int = 30,
    seed: int = 2000,
    n_resamples: int = 9999,
    variants: Sequence[str] = VARIANTS,
    horizon: int | None = None,
    execute_horizon: int | None = None,
) -> dict[str, Any]:
    """Run every variant under nominal timing and each profile; return the metrics.

    ``horizon`` / ``execute_horizon`` are passed to ``OnnxChunkPolicy`` (for a model whose
    metadata does not declare them).

    Returns:
        ``{"conditions": {"PROFILE/VARIANT": metrics}, "rate_limit": [...],
        "delay_caps": {PROFILE: derive_delay_cap(...)}, "settings": {...}}``.
    """
    from tailguard.firmware_sim.chunked import run_chunk_episodes
    from tailguard.firmware_sim.replay import make_task

    task = make_task(env_id)
    policy = OnnxChunkPolicy(policy_path, horizon=horizon, execute_horizon=execute_horizon)
    h, s = policy.horizon, policy.execute_horizon
    fallback = OnnxPolicy(fallback_path) if fallback_path is not None else None
    settings = BootstrapSettings(n_resamples=n_resamples, seed=seed)

    def run(variant: str, latency: str, max_delta: Sequence[float] | None) -> list[Any]:
        mode = "sync" if variant == "sync" else "async"
        guarded = variant.startswith("guarded")
        exhausted = "fallback" if variant == "guarded_fallback" else "hold"
        env = _envelope(task, policy, max_delta if guarded else None, exhausted, None)
        fb: Any = fallback if variant == "guarded_fallback" else "hold"

        def make(clock: Any, delays: Any) -> ChunkGuard:
            runner = ScheduledChunkRunner(delays) if mode == "async" else None
            return ChunkGuard(policy, env, fb, mode=mode, runner=runner, clock=clock)

        return run_chunk_episodes(task, make, latency, episodes, seed)

    t0 = time.perf_counter()
    reference = run("sync", "nominal", None)
    rate = nominal_rate_limit(reference)
    runs: dict[str, list[Any]] = {"nominal/sync": reference}
    for latency in ("nominal", *profiles):
        for variant in variants:
            if variant == "guarded_fallback" and fallback is None:
                continue
            key = f"{latency}/{variant}"
            if key not in runs:
                runs[key] = run(variant, latency, rate)
    conditions = {
        key: chunk_condition_metrics(eps, reference, h, s, settings, stream=i)
        for i, (key, eps) in enumerate(runs.items())
    }
    caps = {
        latency: derive_delay_cap(
            [d for e in runs[f"{latency}/naive_async"] for d in e.delays] or [0], h, s
        )
        for latency in profiles
        if f"{latency}/naive_async" in runs
    }
    return {
        "conditions": conditions,
        "rate_limit": rate,
        "delay_caps": caps,
        "settings": {
            "policy": str(policy_path),
            "policy_sha256": policy.sha256,
            "fallback": None if fallback_path is None else str(fallback_path),
            "env": env_id,
            "horizon": h,
            "execute_horizon": s,
            "episodes": episodes,
            "seed": seed,
            "reset_seeds": [seed, seed + episodes - 1],
            "bootstrap": settings.to_dict(),
            "wall_s": round(time.perf_counter() - t0, 1),
        },
    }


def markdown_table(result: dict[str, Any]) -> str:
    """The comparison as a Markdown table (one row per condition)."""
    head = (
        "| condition | return ratio [95% CI] | falls | d p50/p95/p99 | p_violate [95% CI] "
        "| max ‖Δa‖ [CI] | max ‖Δ²a‖ [CI] | violations |\n|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for key, m in result["conditions"].items():
        r, d1, d2 = m["return_ratio"], m["max_delta_a"], m["max_delta2_a"]
        pv = m["p_violate_ci"]
        viol = ", ".join(f"{k} {v}" for k, v in m["violations"].items()) or "-"
        rows.append(
            f"| {key} | {r['ratio']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}] "
            f"| {m['falls']}/{m['episodes']} | {m['d_p50']}/{m['d_p95']}/{m['d_p99']} "
            f"| {m['p_violate']:.3f} [{pv[0]:.3f}, {pv[1]:.3f}] "
            f"| {d1['mean']:.2f} [{d1['ci_low']:.2f}, {d1['ci_high']:.2f}] "
            f"| {d2['mean']:.2f} [{d2['ci_low']:.2f}, {d2['ci_high']:.2f}] | {viol} |"
        )
    return head + "\n".join(rows) + "\n"

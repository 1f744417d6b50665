"""Per-condition metrics of action-chunk execution, and the tail cap on d they imply.

Vocabulary (``AUDIT.md``): d is a chunk's inference delay in control ticks, H the chunk
length, s the execute horizon. Per condition, from paired episodes (episode ``i`` of every
condition shares reset seed and delay stream):

* **d p50 / p95 / p99** over every chunk requested in the condition's episodes (nearest
  rank, :mod:`tailguard.stats.percentile`, the one definition);
* **p_violate** = P(d > H - s), the fraction of chunks after which the executing chunk runs
  out, with an exact Clopper-Pearson interval (:func:`~tailguard.audit.statistics.clopper_pearson`);
* **smoothness**: per episode max ||a_t - a_{t-1}|| and max ||a_t - 2 a_{t-1} + a_{t-2}||
  (Euclidean norms over the executed actions, a jerk proxy), summarized as the mean over
  episodes with a BCa interval (:func:`~tailguard.audit.statistics.paired_difference`
  against zero, i.e. a one-sample bootstrap of the mean);
* **return ratio** against a reference condition (paired bootstrap,
  :func:`~tailguard.audit.statistics.paired_ratio`), the fall count with its
  Clopper-Pearson interval.

:func:`derive_delay_cap` turns measured delays into the envelope's ``chunks.max_delay_ticks``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from tailguard.audit.statistics import (
    BootstrapSettings,
    clopper_pearson,
    paired_difference,
    paired_ratio,
)
from tailguard.envelope.chunks import ChunkLimits
from tailguard.errors import ConfigError
from tailguard.runtime.state import Response
from tailguard.stats.percentile import percentiles

__all__ = [
    "chunk_condition_metrics",
    "chunk_limits",
    "delay_summary",
    "derive_delay_cap",
    "smoothness",
]


def smoothness(actions: np.ndarray | Sequence[Sequence[float]]) -> tuple[float, float]:
    """``(max ||Δa||, max ||Δ²a||)`` of one episode's executed actions ``[T, A]``.

    ``Δa_t = a_t - a_{t-1}`` and ``Δ²a_t = a_t - 2 a_{t-1} + a_{t-2}``, Euclidean norms; 0.0
    when the episode is too short to have one.
    """
    a = np.asarray(actions, np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise ConfigError(f"actions: expected [T, A], found shape {list(a.shape)}")
    d1 = np.diff(a, axis=0)
    d2 = np.diff(a, n=2, axis=0)
    m1 = float(np.linalg.norm(d1, axis=1).max()) if len(d1) else 0.0
    m2 = float(np.linalg.norm(d2, axis=1).max()) if len(d2) else 0.0
    return m1, m2


def delay_summary(delays: Sequence[int], horizon: int, execute_horizon: int) -> dict[str, Any]:
    """d p50/p95/p99/max and p_violate = P(d > H - s) with its exact 95 % interval."""
    d = np.asarray(list(delays), np.int64)
    limit = horizon - execute_horizon
    n = int(d.size)
    k = int((d > limit).sum())
    q = percentiles(d, (50, 95, 99))
    low, high = clopper_pearson(k, n) if n else (0.0, 1.0)
    return {
        "chunks": n,
        "d_p50": int(q[50.0]),
        "d_p95": int(q[95.0]),
        "d_p99": int(q[99.0]),
        "d_max": int(d.max()) if n else 0,
        "h_minus_s": limit,
        "p_violate": k / n if n else 0.0,
        "p_violate_ci": [low, high],
        "violating_chunks": k,
    }


def _mean_interval(values: Sequence[float], settings: BootstrapSettings, stream: int) -> dict:
    v = np.asarray(values, np.float64)
    if v.size < 2:
        mean = float(v.mean()) if v.size else 0.0
        return {"mean": mean, "ci_low": mean, "ci_high": mean, "method": "n < 2: no interval"}
    r = paired_difference(v, np.zeros_like(v), settings, stream)
    return {"mean": r.estimate, "ci_low": r.low, "ci_high": r.high, "method": r.method}


def chunk_condition_metrics(
    episodes: Sequence[Any],
    reference: Sequence[Any],
    horizon: int,
    execute_horizon: int,
    settings: BootstrapSettings | None = None,
    stream: int = 0,
) -> dict[str, Any]:
    """The metrics of one condition (module docstring) from its episodes.

    Args:
        episodes: objects with ``ret``, ``terminated``, ``actions`` [T, A] and ``delays``
            (e.g. :class:`tailguard.firmware_sim.chunked.ChunkEpisode`), paired by index
            with ``reference``.
        reference: the reference condition's episodes (the return ratio's denominator).
        horizon, execute_horizon: H and s.
        settings: bootstrap settings (default: 9999 resamples, alpha 0.05, seed 0).
        stream: this condition's index (seeds its resampling streams).
    """
    settings = settings or BootstrapSettings()
    if len(episodes) != len(reference) or len(episodes) < 2:
        raise ConfigError(
            f"paired episodes: expected >= 2 and as many as the reference ({len(reference)}), "
            f"found {len(episodes)}"
        )
    rets = [e.ret for e in episodes]
    ratio = paired_ratio([e.ret for e in reference], rets, settings, stream)
    smooth = [smoothness(e.actions) for e in episodes]
    falls = sum(bool(e.terminated) for e in episodes)
    delays = [d for e in episodes for d in e.delays]
    guard_counts: dict[str, int] = {}
    for e in episodes:
        for k, v in (getattr(e, "guard", {}) or {}).get("violations", {}).items():
            guard_counts[k] = guard_counts.get(k, 0) + int(v)
    return {
        "episodes": len(episodes),
        "mean_return": float(np.mean(rets)),
        "return_ratio": {
            "ratio": ratio.ratio,
            "ci_low": ratio.low,
            "ci_high": ratio.high,
            "method": ratio.method,
        },
        "falls": falls,
        "falls_ci": list(clopper_pearson(falls, len(episodes))),
        **delay_summary(delays, horizon, execute_horizon),
        "max_delta_a": _mean_interval([m[0] for m in smooth], settings, 2 * stream + 1),
        "max_delta2_a": _mean_interval([m[1] for m in smooth], settings, 2 * stream + 2),
        "violations": {k: v for k, v in sorted(guard_counts.items()) if v},
        "bootstrap": settings.to_dict(),
    }


def derive_delay_cap(
    delays: Sequence[int], horizon: int, execute_horizon: int, quantile: float = 99.0
) -> dict[str, Any]:
    """The tail cap on d for the envelope (``chunks.max_delay_ticks``) from measured delays.

    The cap is the measured d at ``quantile`` when the chunking tolerates it (d <= H - s:
    the executing chunk lasts until the next one arrives); otherwise the chunking's own
    limit H - s, and ``within_limit`` is False: the measured timing exhausts chunks at rate
    ``p_violate`` and either the delay tail must be cut (to the cap) or s lowered.
    """
    if not delays:
        raise ConfigError("derive_delay_cap: no delays measured (run at least one chunk)")
    d_q = int(percentiles(np.asarray(list(delays), np.int64), (quantile,))[float(quantile)])
    limit = horizon - execute_horizon
    cap = min(d_q, limit)
    arr = np.asarray(list(delays))
    return {
        "max_delay_ticks": cap,
        "quantile": quantile,
        "d_at_quantile": d_q,
        "h_minus_s": limit,
        "within_limit": d_q <= limit,
        "p_violate": float((arr > limit).mean()),
        "fraction_above_cap": float((arr > cap).mean()),
    }


def chunk_limits(
    derived: dict[str, Any],
    horizon: int,
    execute_horizon: int,
    on_exhausted: Response | str = Response.FALLBACK,
    on_late: Response | str = Response.LOG,
) -> ChunkLimits:
    """The envelope's ``chunks`` section from :func:`derive_delay_cap`'s result."""
    return ChunkLimits(
        horizon=horizon,
        execute_horizon=execute_horizon,
        max_delay_ticks=int(derived["max_delay_ticks"]),
        on_exhausted=Response(on_exhausted),
        on_late=Response(on_late),
    )

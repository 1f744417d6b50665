"""Envelope derivation: from the audit's tolerated conditions to the guard's thresholds.

Per dimension, the ladder is walked from its mildest level; the most severe level of the
unbroken run of tolerated levels (lower bound meets the required rating) is the dimension's
tolerated boundary. A harsher level that is tolerated after a milder one was not
(non-monotone) is reported and ignored: the boundary stays at the last level before the
first failure (conservative). The tolerated set is nominal plus, per dimension, the levels up
to its boundary (plus any tolerated custom or measured condition).

Thresholds come from the measured per-tick samples of the tolerated set, with the guard's own
nearest-rank percentile (``tailguard.stats.percentile``):

- latency / dt ``p50_ns``, ``p95_ns``, ``p99_ns``: the largest value of that percentile over
  every full guard window (``window.ticks`` consecutive ticks, every start position) of every
  tolerated episode — what the guard itself would have computed — so a tolerated condition
  does not trip a window check by sampling noise; the pooled percentile when no episode
  fills a window. ``max_ns``: the largest single tick. (A quantity whose dimension was not
  swept is left unchecked and the note says so.)
- ``obs_age_max_ns``: the largest observation age seen in the tolerated set.
- each of these timing values raised by ``SAMPLING_HEADROOM`` (5 %): fresh episodes of the
  audited boundary level exceed the audit's own maxima by a little, often (see the
  constant); the measured values are kept in the derivation record (``measured``).
- ``max_consecutive_overruns``: the longest run of overrun ticks (latency above the period)
  in the tolerated set: that many are allowed, one more trips the guard (at least 1, the
  smallest value an envelope holds, even when no overrun was tolerated).
- ``actions.max_delta``: 1.5 x the largest per-element |a_t - a_{t-1}| in the tolerated set
  (at least the bound range for a policy whose outputs saturate the env's bounds).

The failure detectors (envelope schema 2: ``observations`` and ``action_rules``) come from
the nominal episodes' observations and actions, with their false-alarm rate under nominal
timing and how often each would have fired in every condition (``tailguard.audit.detectors``;
recorded under ``derivation.detectors``).

Responses are the guard's defaults (``action_bounds`` is logged instead of clipped when the
policy's outputs routinely leave the bounds the env clamps to anyway): hold on a single late
tick, fallback on window violations (the fallback controller is ``--fallback``, else
"hold": repeat the last action), latch when the fallback fails. With a fallback *policy*
a deadline miss (deadline mode) is answered with the fallback instead of a hold: a hold
discards the late result while the worker is still busy with it, so the misses of a long
tail become a stale command held for several ticks (worse than no deadline at all, in the
README's measurements), where the fallback acts on the current observation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np

from tailguard.audit.results import ConditionResult
from tailguard.audit.sweep import DIMENSIONS
from tailguard.stats.percentile import nearest_rank, percentiles

__all__ = [
    "ACTION_MARGIN",
    "SAMPLING_HEADROOM",
    "derive_envelope",
    "tolerated_boundaries",
    "window_ticks_for",
]

ACTION_MARGIN = 1.5
#: Timing thresholds sit this fraction above the largest value the tolerated episodes showed.
#: A maximum over the audit's n episodes is exceeded by the maximum over m fresh episodes of
#: the same condition with probability m / (n + m) (exchangeability, any distribution): with
#: the thresholds exactly at the audit's maxima, certify's own run of the audited boundary
#: level would trip the guard one time in three per threshold.
SAMPLING_HEADROOM = 0.05
_KEYS = ("p50_ns", "p95_ns", "p99_ns")
_PS = (50.0, 95.0, 99.0)


def window_ticks_for(period_ns: int) -> int:
    """About one second of ticks, within [50, 500]."""
    return int(min(500, max(50, round(1e9 / period_ns))))


def tolerated_boundaries(results: Sequence[ConditionResult]) -> dict[str, dict[str, Any]]:
    """Per swept dimension: its levels, the tolerated boundary and non-monotone levels."""
    out: dict[str, dict[str, Any]] = {}
    for dim in DIMENSIONS:
        levels = sorted(
            (r for r in results if r.condition.dimension == dim), key=lambda r: r.condition.level
        )
        if not levels:
            continue
        boundary = None
        broken = False
        non_monotone = []
        for r in levels:
            ok = bool(r.rating is not None and r.rating.tolerated)
            if ok and not broken:
                boundary = r.condition.name
            elif ok and broken:
                non_monotone.append(r.condition.name)
            else:
                broken = True
        out[dim] = {
            "envelope": DIMENSIONS[dim].envelope,
            "unit": DIMENSIONS[dim].unit,
            "levels": [
                {
                    "name": r.condition.name,
                    "severity": r.condition.severity,
                    "rating": r.rating.rating.value if r.rating else None,
                    "tolerated": bool(r.rating and r.rating.tolerated),
                }
                for r in levels
            ],
            "tolerated_level": boundary,
            "non_monotone": non_monotone,
        }
    return out


def _tolerated_set(
    results: Sequence[ConditionResult], bounds: dict[str, dict[str, Any]]
) -> list[ConditionResult]:
    keep = []
    for r in results:
        c = r.condition
        if c.is_nominal:
            keep.append(r)
        elif c.dimension in bounds:
            info = bounds[c.dimension]
            upto = [lv["name"] for lv in info["levels"]]
            b = info["tolerated_level"]
            if b is not None and upto.index(c.name) <= upto.index(b):
                keep.append(r)
        elif c.dimension != "frontier" and r.rating is not None and r.rating.tolerated:
            keep.append(r)
    return keep


def frontier(results: Sequence[ConditionResult]) -> dict[str, Any] | None:
    """The tolerated (L, J) frontier: per constant latency L, the largest extra jitter J
    whose condition and every smaller J at that L are tolerated (None: nothing tolerated).
    """
    grid: dict[float, list[tuple[float, bool, str]]] = {}
    for r in results:
        if r.condition.dimension != "frontier":
            continue
        name = r.condition.name.split("/", 1)[1]
        lat_s, jit_s = name[1:].split("_J")
        ok = bool(r.rating is not None and r.rating.tolerated)
        rating = r.rating.rating.value if r.rating is not None else "n/a"
        grid.setdefault(float(lat_s), []).append((float(jit_s), ok, rating))
    if not grid:
        return None
    rows = []
    for lat in sorted(grid):
        best = None
        for jit, ok, _ in sorted(grid[lat]):
            if not ok:
                break
            best = jit
        rows.append(
            {
                "L": lat,
                "max_J": best,
                "cells": [{"J": j, "tolerated": ok, "rating": g} for j, ok, g in sorted(grid[lat])],
            }
        )
    return {"unit": "fraction of the period", "rows": rows}


def _window_max(series: list[np.ndarray], window: int) -> dict[str, int] | None:
    """Largest nearest-rank p50/p95/p99 over every full window; None without one."""
    best = [-1, -1, -1]
    ranks = [nearest_rank(p, window) - 1 for p in _PS]
    for s in series:
        if s.size < window:
            continue
        views = np.lib.stride_tricks.sliding_window_view(s, window)
        part = np.partition(views, ranks, axis=1)
        for i, rk in enumerate(ranks):
            best[i] = max(best[i], int(part[:, rk].max()))
    if best[0] < 0:
        return None
    return dict(zip(_KEYS, best, strict=True))


def _thresholds(series: list[np.ndarray], window: int) -> tuple[dict[str, int], dict[str, Any]]:
    pooled = np.concatenate(series) if series else np.zeros(0, np.int64)
    got = percentiles(pooled, _PS)
    pooled_q = {k: int(got[p]) for k, p in zip(_KEYS, _PS, strict=True)}
    win = _window_max(series, window)
    chosen = dict(win if win is not None else pooled_q)
    chosen["max_ns"] = int(pooled.max()) if pooled.size else 0
    # Positive integers, ordered p50 <= p95 <= p99 <= max (the envelope's rules).
    last = 1
    for k in (*_KEYS, "max_ns"):
        chosen[k] = max(last, int(chosen[k]))
        last = chosen[k]
    measured = dict(chosen)
    for k in (*_KEYS, "max_ns"):
        chosen[k] = _with_headroom(chosen[k])
    basis = "max over full guard windows" if win is not None else "pooled (no full window)"
    return chosen, {
        "pooled": pooled_q,
        "basis": basis,
        "measured": measured,
        "headroom": SAMPLING_HEADROOM,
    }


def _with_headroom(value: int) -> int:
    """``value`` raised by :data:`SAMPLING_HEADROOM` (rounded up, ns)."""
    return math.ceil(value * (1.0 + SAMPLING_HEADROOM))


def derive_envelope(
    results: Sequence[ConditionResult],
    *,
    period_ns: int,
    obs_size: int,
    action_size: int,
    action_low: Sequence[float] | None,
    action_high: Sequence[float] | None,
    provenance: dict[str, Any],
    tool_version: str,
    fallback: str | None = None,
) -> tuple[Any, dict[str, Any]]:
    """The audited envelope and the derivation record.

    Args:
        results: every condition result (nominal first).
        period_ns, obs_size, action_size, action_low, action_high: the task and policy.
        provenance: recorded under ``provenance.results`` (policy hash, env, seeds, ...).
        tool_version: tailguard's version.
        fallback: the guard's fallback: None / ``"hold"`` / ``"zero"``, or a fallback
            policy's file (then ``deadline_miss`` is answered with the fallback).

    Returns:
        (Envelope, derivation dict written to the summary).
    """
    from tailguard.envelope.model import (
        ActionLimits,
        Envelope,
        PolicyBinding,
        Provenance,
        Thresholds,
        Timing,
        Window,
    )

    bounds = tolerated_boundaries(results)
    keep = _tolerated_set(results, bounds)
    swept = {info["envelope"] for info in bounds.values()}
    window = window_ticks_for(period_ns)
    notes: list[str] = []
    record: dict[str, Any] = {
        "dimensions": bounds,
        "frontier": frontier(results),
        "tolerated_conditions": [r.condition.name for r in keep],
        "window_ticks": window,
    }
    for dim, info in bounds.items():
        if info["non_monotone"]:
            notes.append(
                f"{dim}: non-monotone: {info['non_monotone']} tolerated after a milder level was "
                f"not; boundary kept at {info['tolerated_level']} (conservative)"
            )
        if info["tolerated_level"] is None:
            notes.append(f"{dim}: not even the mildest level was tolerated")

    def series(attr: str) -> list[np.ndarray]:
        return [getattr(e, attr) for r in keep for e in r.episodes]

    lat_t: Thresholds = Thresholds()
    dt_t: Thresholds = Thresholds()
    if "latency" in swept or "overruns" in swept:
        lat, info = _thresholds(series("latency_ns"), window)
        lat_t = Thresholds(**lat)
        record["latency"] = {**lat, **info}
    else:
        notes.append("latency not swept: latency checks left disabled")
    if "dt" in swept:
        dt, info = _thresholds(series("dt_ns"), window)
        dt_t = Thresholds(**dt)
        record["dt"] = {**dt, **info}
    else:
        notes.append("dt not swept: period checks left disabled")
    obs_age_max = None
    if "obs_age" in swept:
        ages = series("obs_age_ns")
        seen_age = max(1, max((int(a.max()) for a in ages if a.size), default=0))
        obs_age_max = _with_headroom(seen_age)
        record["obs_age_max_ns"] = obs_age_max
        record["obs_age_measured_ns"] = seen_age
    else:
        notes.append("obs_age not swept: observation-age check left disabled")
    streak = max((e.max_overrun_streak for r in keep for e in r.episodes), default=0)
    overruns = max(1, streak)
    record["max_consecutive_overruns"] = overruns
    oob = sum(e.out_of_bounds_ticks for r in keep for e in r.episodes)
    ticks = sum(e.length for r in keep for e in r.episodes)
    saturating = bool(ticks and oob / ticks > 0.001)
    responses: dict[str, str] = {}
    if fallback is not None:
        record["fallback"] = fallback
    if fallback is not None and fallback not in ("hold", "zero"):
        responses["deadline_miss"] = "fallback"
        notes.append(
            "a fallback policy is given: a deadline miss (deadline mode) is answered with the "
            "fallback's action, not by holding the last one -- holding discards the late "
            "result while the worker stays busy with it, so a tail of misses becomes a "
            "stale command, where the fallback acts on the current observation"
        )
    if saturating:
        responses["action_bounds"] = "log"
        notes.append(
            f"the policy's outputs leave the action bounds on {oob / ticks:.1%} of tolerated "
            "ticks (the env clamps them): action_bounds is logged, not clipped, so clamping "
            "the env does anyway is not counted as an intervention"
        )
    deltas = [e.max_abs_daction for r in keep for e in r.episodes if e.max_abs_daction.size]
    max_delta = None
    if deltas:
        per = np.max(np.stack(deltas), axis=0) * ACTION_MARGIN
        if saturating and action_low is not None and action_high is not None:
            # A saturating policy's raw outputs jump further than the env can follow; a
            # limit below the full bound range would clip moves the env makes anyway.
            span = np.asarray(action_high, np.float64) - np.asarray(action_low, np.float64)
            per = np.where(np.isfinite(span), np.maximum(per, span), per)
        max_delta = [float(max(v, 1e-3)) for v in per]
        record["action_max_delta"] = max_delta
    from tailguard.audit.detectors import derive_detectors

    every = max(1, window // 10)
    detectors, record["detectors"] = derive_detectors(
        results,
        window=window,
        every=every,
        action_low=action_low,
        action_high=action_high,
        in_envelope=keep,
    )
    notes.extend(record["detectors"]["notes"])
    record["notes"] = notes
    finite = (
        action_low is not None
        and action_high is not None
        and bool(np.all(np.isfinite(action_low)))
        and bool(np.all(np.isfinite(action_high)))
    )
    envelope = Envelope(
        policy=PolicyBinding(
            sha256=provenance.get("policy_sha256"),
            obs_size=obs_size,
            action_size=action_size,
            action_low=list(action_low) if finite and action_low is not None else None,
            action_high=list(action_high) if finite and action_high is not None else None,
        ),
        timing=Timing(
            period_ns=period_ns,
            dt=dt_t,
            latency=lat_t,
            obs_age_max_ns=obs_age_max,
            max_consecutive_overruns=overruns,
        ),
        actions=ActionLimits(max_delta=max_delta),
        window=Window(ticks=window, check_every_ticks=every),
        responses=responses,
        provenance=Provenance(
            source="audit",
            audited=True,
            tool_version=tool_version,
            created_utc=datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
            notes="Derived by `tailguard audit` from the tolerated conditions. " + " ".join(notes),
            results={**provenance, "derivation": _jsonable(record)},
        ),
        **_detector_sections(detectors),
    )
    return envelope, record


def _detector_sections(detectors: dict[str, Any] | None) -> dict[str, Any]:
    """The envelope's ``observations`` / ``action_rules`` from derive_detectors' data."""
    from tailguard.envelope.schema import (
        ActionRules,
        ChatterRule,
        FrozenRule,
        ObservationRange,
        SaturationRule,
    )

    if detectors is None:
        return {}
    rules = detectors["action_rules"]
    kinds = {"saturation": SaturationRule, "frozen": FrozenRule, "chatter": ChatterRule}
    return {
        "observations": ObservationRange(**detectors["observations"]),
        "action_rules": ActionRules(**{k: kinds[k](**v) for k, v in rules.items()}),
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value

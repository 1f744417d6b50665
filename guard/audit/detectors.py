"""The failure detectors' thresholds, derived from the audit's episodes, and how often they fire.

From the observations and actions the policy saw and returned in the audit's bare episodes
(``EpisodeOutcome.observations`` / ``actions``):

- ``observations``: per element, the ``OBS_QUANTILE`` and ``1 - OBS_QUANTILE`` quantiles of
  the pooled observations of the envelope's conditions (nominal and every tolerated
  condition: what the policy sees while the guard is meant to stay out of the way; a range
  from nominal episodes alone fired at tolerated latencies, since a late command moves the
  robot through states nominal timing never visits), widened on each side by
  ``OBS_MARGIN`` times their distance (at least ``OBS_MIN_MARGIN`` times the element's
  magnitude, for an element that never moved); the envelope's ``tolerance`` is added by
  the guard. Quantile and margin are recorded in the derivation
  (``provenance.results.derivation.detectors``).
- ``saturation`` / ``chatter``: the largest per-element fraction of a full window's samples
  at a bound / with a sign flip in any nominal episode, plus ``RULE_MARGIN``; left off when
  that reaches ``MAX_FRACTION`` (a policy that saturates or flips nominally; the note says
  so), and saturation also without finite action bounds.
- ``frozen``: ``ticks`` = twice the longest nominal run of unchanged actions while the
  observation moved (at least a window), ``epsilon`` = ``FROZEN_EPSILON`` of the action
  range, ``obs_delta`` = ``FROZEN_OBS_DELTA`` of the median observation range.

Every number is measured by replaying the episodes through the guard's own counters
(``tailguard.runtime.action_rules``) and its float32 range test, sampled as the guard
samples them. The false-alarm rate under nominal timing is measured on nominal episodes
the thresholds were not derived from (derived on the even episodes, counted on the odd
ones) and must stay below ``MAX_FALSE_ALARM`` of the ticks: while it does not, the margins
are doubled (up to ``MAX_WIDENINGS`` times; the record says what was reached).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from tailguard.audit.results import ConditionResult
from tailguard.audit.units import EpisodeOutcome
from tailguard.runtime.action_rules import NO_TICK, ActionWindowRules
from tailguard.runtime.state import Violation

__all__ = [
    "MAX_FALSE_ALARM",
    "OBS_MARGIN",
    "OBS_QUANTILE",
    "derive_detectors",
    "detector_rates",
]

OBS_QUANTILE = 0.999
OBS_MARGIN = 0.1
OBS_MIN_MARGIN = 1e-3
OBS_TOLERANCE = 0.05
RULE_MARGIN = 0.2
MAX_FRACTION = 0.95
SAT_MARGIN = 0.01
CHATTER_MIN_DELTA = 0.01
FROZEN_EPSILON = 1e-4
FROZEN_OBS_DELTA = 0.05
MAX_FALSE_ALARM = 0.001
MAX_WIDENINGS = 4
_RULES = ("obs_range", "action_saturation", "action_frozen", "action_chatter")


def _traced(episodes: Sequence[EpisodeOutcome]) -> list[EpisodeOutcome]:
    return [
        e
        for e in episodes
        if e.observations is not None and e.actions is not None and len(e.actions) > 0
    ]


def _replay(
    e: EpisodeOutcome,
    rules: ActionWindowRules,
    every: int,
    window: int,
) -> tuple[list[tuple[int, frozenset[Violation]]], dict[str, Any]]:
    """Feed one episode to ``rules`` on the guard's sampling ticks (tick 1 = first row).

    Returns:
        ([(check tick, active rules)], {max fractions and frozen run seen}).
    """
    acts, obs = e.actions, e.observations
    assert acts is not None and obs is not None
    n = len(acts)
    next_check = every
    next_probe = rules.next_probe(0, next_check)
    verdicts = []
    sat_max = flip_max = None
    run_max = 0
    for t in range(1, n + 1):
        if t >= next_check:
            active = rules.check(t, acts[t - 1], obs[t - 1], True)
            verdicts.append((t, active))
            next_check = t + every
            next_probe = rules.next_probe(t, next_check)
            if t >= window:  # the guard judges fractions only once a window is full
                sat, flip = rules.window_fractions()
                if sat is not None:
                    sat_max = sat if sat_max is None else max(sat_max, sat)
                if flip is not None:
                    flip_max = flip if flip_max is None else max(flip_max, flip)
            run_max = max(run_max, rules.frozen_run(t))
        if t >= next_probe:
            previous = acts[t - 2] if t >= 2 else None  # a bare run applies its outputs
            next_probe = rules.probe(t, acts[t - 1], True, next_check, previous)
    return verdicts, {"saturation": sat_max, "chatter": flip_max, "frozen_run": run_max}


def _spans(episodes: list[EpisodeOutcome], low: Any, high: Any) -> np.ndarray:
    """Per action element: the bound range, or the nominal p1-p99 spread without bounds."""
    if low is not None and high is not None:
        span = np.asarray(high, np.float64) - np.asarray(low, np.float64)
        if np.all(np.isfinite(span)):
            return span
    acts = np.concatenate([np.asarray(e.actions, np.float64) for e in episodes])
    lo, hi = np.percentile(acts, [1, 99], axis=0)
    return np.maximum(hi - lo, 1e-6)


def _bounds(low: Any, high: Any, size: int) -> tuple[np.ndarray, np.ndarray, bool]:
    if low is None or high is None:
        return np.full(size, -1e30), np.full(size, 1e30), False
    lo, hi = np.asarray(low, np.float64), np.asarray(high, np.float64)
    finite = bool(np.all(np.isfinite(lo)) and np.all(np.isfinite(hi)))
    return lo, hi, finite


def _derive(
    episodes: list[EpisodeOutcome],
    *,
    window: int,
    every: int,
    low: Any,
    high: Any,
    widen: float,
    range_episodes: list[EpisodeOutcome] | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """Thresholds (plain data, the envelope's sections): the action rules from ``episodes``
    (nominal), the observation range from ``range_episodes`` (default the same)."""
    notes: list[str] = []
    pool = range_episodes if range_episodes else episodes
    obs = np.concatenate([np.asarray(e.observations, np.float64) for e in pool])
    q_lo, q_hi = np.quantile(obs, [1.0 - OBS_QUANTILE, OBS_QUANTILE], axis=0)
    margin = np.maximum(
        OBS_MARGIN * widen * (q_hi - q_lo),
        OBS_MIN_MARGIN * widen * np.maximum(1.0, np.abs(q_hi) + np.abs(q_lo)),
    )
    observations = {
        "low": (q_lo - margin).tolist(),
        "high": (q_hi + margin).tolist(),
        "tolerance": OBS_TOLERANCE,
    }
    a_size = np.asarray(episodes[0].actions).shape[1]
    lo, hi, finite = _bounds(low, high, a_size)
    span = _spans(episodes, low, high)
    width = float(np.median(np.asarray(observations["high"]) - np.asarray(observations["low"])))
    min_delta = float(CHATTER_MIN_DELTA * span.min())
    epsilon = float(FROZEN_EPSILON * span.min())
    obs_delta = max(1e-9, FROZEN_OBS_DELTA * width)
    probe = ActionWindowRules(
        saturation=(1.0, SAT_MARGIN) if finite else None,
        frozen=(NO_TICK, epsilon, obs_delta),
        chatter=(1.0, min_delta),
        low=lo,
        high=hi,
        window_ticks=window,
    )
    sat_max = flip_max = None
    run_max = 0
    for e in episodes:
        probe.reset(0)
        _, seen = _replay(e, probe, every, window)
        if seen["saturation"] is not None:
            sat_max = max(sat_max or 0.0, seen["saturation"])
        if seen["chatter"] is not None:
            flip_max = max(flip_max or 0.0, seen["chatter"])
        run_max = max(run_max, seen["frozen_run"])
    rules: dict[str, Any] = {}
    basis: dict[str, Any] = {"nominal_saturation": sat_max, "nominal_chatter": flip_max}
    if not finite:
        notes.append("no finite action bounds: the saturation rule is left off")
    elif sat_max is not None:
        fraction = sat_max + RULE_MARGIN * widen
        if fraction < MAX_FRACTION:
            rules["saturation"] = {"fraction": fraction, "margin": SAT_MARGIN}
        else:
            notes.append(
                f"the policy sits at a bound on up to {sat_max:.0%} of a window's samples "
                "under nominal timing: the saturation rule is left off"
            )
    if flip_max is not None:
        fraction = flip_max + RULE_MARGIN * widen
        if fraction < MAX_FRACTION:
            rules["chatter"] = {"fraction": fraction, "min_delta": min_delta}
        else:
            notes.append(
                f"the policy's action changes flip sign on up to {flip_max:.0%} of a window's "
                "samples under nominal timing: the chatter rule is left off"
            )
    ticks = int(min(1_000_000, max(window, 2 * every, round(2 * widen * run_max))))
    rules["frozen"] = {"ticks": ticks, "epsilon": epsilon, "obs_delta": obs_delta}
    basis["nominal_frozen_run_ticks"] = run_max
    return {"observations": observations, "action_rules": rules, "basis": basis}, notes


def _limits32(observations: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The float32 bounds the guard tests (``ObservationRange.limits``, as the policy
    casts them)."""
    lo = np.asarray(observations["low"], np.float64)
    hi = np.asarray(observations["high"], np.float64)
    t = observations["tolerance"]
    return (lo - t * (hi - lo)).astype(np.float32), (hi + t * (hi - lo)).astype(np.float32)


def detector_rates(
    episodes: Sequence[EpisodeOutcome],
    derived: dict[str, Any],
    *,
    window: int,
    every: int,
    low: Any,
    high: Any,
) -> dict[str, Any] | None:
    """How often each detector fires on ``episodes`` with the ``derived`` thresholds.

    Returns:
        ``{"ticks", "episodes", "<rule>": {"ticks", "rate", "episodes"}, "any": {...}}``
        (a window rule's ticks: the ticks from each check tick on which it was active to
        the next check), or None without traced episodes.
    """
    traced = _traced(episodes)
    if not traced:
        return None
    lo32, hi32 = _limits32(derived["observations"])
    a_size = np.asarray(traced[0].actions).shape[1]
    lo, hi, _ = _bounds(low, high, a_size)
    r = derived["action_rules"]
    sat, fr, ch = r.get("saturation"), r.get("frozen"), r.get("chatter")
    total = 0
    counts = dict.fromkeys((*_RULES, "any"), 0)
    hit_episodes = dict.fromkeys((*_RULES, "any"), 0)
    for e in traced:
        obs32 = np.asarray(e.observations, np.float32)
        n = len(obs32)
        total += n
        flagged = np.zeros(n, bool)
        outside: np.ndarray = np.asarray(((obs32 < lo32) | (obs32 > hi32)).any(axis=1))
        per: dict[str, np.ndarray] = {"obs_range": outside}
        if sat or fr or ch:
            rules = ActionWindowRules(
                saturation=None if sat is None else (sat["fraction"], sat["margin"]),
                frozen=None if fr is None else (fr["ticks"], fr["epsilon"], fr["obs_delta"]),
                chatter=None if ch is None else (ch["fraction"], ch["min_delta"]),
                low=lo,
                high=hi,
                window_ticks=window,
            )
            verdicts, _ = _replay(e, rules, every, window)
            for name, v in (
                ("action_saturation", Violation.ACTION_SATURATION),
                ("action_frozen", Violation.ACTION_FROZEN),
                ("action_chatter", Violation.ACTION_CHATTER),
            ):
                mask = np.zeros(n, bool)
                for t, active in verdicts:
                    if v in active:
                        mask[t - 1 : t - 1 + every] = True
                per[name] = mask
        for name, mask in per.items():
            counts[name] += int(mask.sum())
            hit_episodes[name] += int(mask.any())
            flagged |= mask
        counts["any"] += int(flagged.sum())
        hit_episodes["any"] += int(flagged.any())
    return {
        "ticks": total,
        "episodes": len(traced),
        **{
            name: {
                "ticks": counts[name],
                "rate": counts[name] / total if total else 0.0,
                "episodes": hit_episodes[name],
            }
            for name in counts
        },
    }


def derive_detectors(
    results: Sequence[ConditionResult],
    *,
    window: int,
    every: int,
    action_low: Any,
    action_high: Any,
    in_envelope: Sequence[ConditionResult] = (),
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """The envelope's ``observations`` and ``action_rules`` (plain data) and the record.

    Args:
        results: every condition result; the nominal one's traced episodes give the action
            rules and the false-alarm rate.
        in_envelope: the tolerated conditions (nominal among them): their traced episodes,
            with the nominal ones, give the observation range.
        window, every: the envelope's ``window.ticks`` and ``check_every_ticks``.
        action_low, action_high: the action bounds (or None).

    Returns:
        ``({"observations": ..., "action_rules": ...}, record)``, or ``(None, record)``
        when no nominal episode has traces (the record's note says why).
    """
    nominal = _traced([e for r in results if r.condition.is_nominal for e in r.episodes])
    record: dict[str, Any] = {
        "observation_quantile": OBS_QUANTILE,
        "observation_margin": OBS_MARGIN,
        "observation_tolerance": OBS_TOLERANCE,
        "rule_margin": RULE_MARGIN,
        "false_alarm_limit": MAX_FALSE_ALARM,
        "notes": [],
    }
    if not nominal:
        record["notes"].append("no traced nominal episodes: no observation range, no rules")
        return None, record
    kw = {"window": window, "every": every, "low": action_low, "high": action_high}
    names = {r.condition.name for r in in_envelope if not r.condition.is_nominal}
    tolerated = [_traced(r.episodes) for r in in_envelope if r.condition.name in names]
    record["observation_range_from"] = ["nominal", *sorted(names)]
    train, held = nominal[::2], nominal[1::2]
    # the range's training pool: the even episodes of every in-envelope condition
    train_pool = train + [e for eps in tolerated for e in eps[::2]]
    widen = 1.0
    held_rates = None
    for _ in range(MAX_WIDENINGS + 1):
        if not held:
            break
        trial, _notes = _derive(train, widen=widen, range_episodes=train_pool, **kw)
        held_rates = detector_rates(held, trial, **kw)
        if held_rates is None or held_rates["any"]["rate"] < MAX_FALSE_ALARM:
            break
        widen *= 2.0
    pool = nominal + [e for eps in tolerated for e in eps]
    derived, notes = _derive(nominal, widen=widen, range_episodes=pool, **kw)
    record["notes"] += notes
    record["widening"] = widen
    record["basis"] = derived.pop("basis")
    record["nominal_held_out"] = held_rates
    record["nominal_in_sample"] = detector_rates(nominal, derived, **kw)
    check = held_rates if held_rates is not None else record["nominal_in_sample"]
    rate = check["any"]["rate"] if check is not None else 0.0
    record["nominal_false_alarm_rate"] = rate
    record["false_alarm_ok"] = rate < MAX_FALSE_ALARM
    if not record["false_alarm_ok"]:
        record["notes"].append(
            f"false alarms under nominal timing on {rate:.3%} of held-out ticks even with "
            f"{widen:g}x margins (limit {MAX_FALSE_ALARM:.1%})"
        )
    record["per_condition"] = {
        r.condition.name: detector_rates(r.episodes, derived, **kw)
        for r in results
        if _traced(r.episodes)
    }
    return derived, record

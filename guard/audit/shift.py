"""Certify's distribution-shift check: observations moved beyond the audited range must trip
the guard's ``obs_range`` rule.

The nominal (unguarded) episodes of the certification run record the observations the
policy saw. Each is replayed, open loop, through a real :class:`~tailguard.runtime.guard.Guard`
(the certified policy, the certified envelope, a simulated clock at the control period), once
as recorded and once per shift applied from the episode's middle on:

- ``offset_all``: every element moved up by ``OFFSET`` times its range (``high - low``);
- ``offset_one``: only the element with the widest range moved down by the same;
- ``scaled``: every element's distance from its range's centre multiplied by ``SCALE``, or
  by more where needed for the farthest excursion of the shifted half to land 25 % beyond
  the tolerated range.

The offsets land beyond ``high + tolerance * (high - low)`` (or below the low one) on every
tick by construction: each such episode must see ``obs_range`` from the first shifted tick
on (detection delay 0). A scaled episode leaves the range where its excursions are large
enough, at least once by construction: it must be detected (the delay is reported). An
episode whose observations never leave the range's centre cannot be scaled out of it and
is counted as such. Any miss fails the check. The replay as recorded (other seeds than the
audit's episodes) may fire it on fewer than ``MAX_FALSE_ALARM`` of its ticks, else the
check fails; an episode the policy fails on its own (it falls) is not counted there, since
leaving the audited states before a fall is what the rule is for (its hits are listed).
Open loop: the guard's response does not change the replayed observations, so what is
judged is the detector, not how the robot fares after it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from tailguard.audit.detectors import MAX_FALSE_ALARM

__all__ = ["OFFSET", "SCALE", "distribution_shift"]

OFFSET = 1.5
SCALE = 4.0
_MAX_EPISODES = 5


def _replay(policy: Any, env: Any, obs: np.ndarray) -> list[int]:
    """The ticks (1-based) on which the guard counted ``obs_range``."""
    from tailguard.runtime.guard import Guard

    records: list[Any] = []
    now = [10**9]
    period = env.timing.period_ns

    def clock() -> int:
        return now[0]

    policy.reset_state()
    g = Guard(policy, env, clock=clock, recorder=records, allow_hash_mismatch=True)
    try:
        for row in obs:
            now[0] += period
            g.step(row)
    finally:
        g.close()
    return [r.tick for r in records if r.kind == "violation" and r.fields["kind"] == "obs_range"]


def distribution_shift(
    env: Any, policy_path: str, episodes: Sequence[Any]
) -> tuple[str, str, dict[str, Any]]:
    """(status, detail, numbers) of the distribution-shift check.

    Args:
        env: the certified envelope.
        policy_path: the certified ONNX file.
        episodes: nominal unguarded episodes with recorded ``observations``.
    """
    from tailguard.runtime.policy import OnnxPolicy

    if env.observations is None:
        return "warn", "the envelope has no observation range (schema 1, or not derived)", {}
    traced = [e for e in episodes if getattr(e, "observations", None) is not None]
    traced = [e for e in traced if len(e.observations) >= 4][:_MAX_EPISODES]
    if not traced:
        return "warn", "no recorded nominal observations to shift", {}
    low = np.asarray(env.observations.low, np.float64)
    high = np.asarray(env.observations.high, np.float64)
    width = high - low
    centre = (low + high) / 2
    widest = int(np.argmax(width))

    def offset_all(x: np.ndarray) -> np.ndarray:
        return x + OFFSET * width + 1e-3 * np.maximum(1.0, np.abs(high))

    def offset_one(x: np.ndarray) -> np.ndarray:
        y = x.copy()
        y[:, widest] -= OFFSET * width[widest] + 1e-3 * max(1.0, abs(low[widest]))
        return y

    half = np.maximum(width * (0.5 + env.observations.tolerance), 1e-12)

    def scaled(x: np.ndarray) -> np.ndarray | None:
        reach = float((np.abs(x - centre) / half).max())
        if reach <= 0.0:
            return None  # at the centre throughout: scaling cannot move it
        return centre + max(SCALE, 1.25 / reach) * (x - centre)

    shifts: dict[str, Callable[[np.ndarray], np.ndarray | None]] = {
        "offset_all": offset_all,
        "offset_one": offset_one,
        "scaled": scaled,
    }
    policy = OnnxPolicy(policy_path)
    out: dict[str, Any] = {"episodes": len(traced), "offset": OFFSET, "scale": SCALE}
    false_alarms = ticks = 0
    per: dict[str, dict[str, Any]] = {
        k: {"detected": 0, "delays": [], "not_shiftable": 0} for k in shifts
    }
    for e in traced:
        obs = np.asarray(e.observations, np.float64)
        hits = len(_replay(policy, env, obs.astype(np.float32)))
        if getattr(e, "fell", False):  # failing on its own: leaving the range is expected
            out.setdefault("own_failure_obs_range_ticks", []).append(hits)
        else:
            false_alarms += hits
            ticks += len(obs)
        mid = len(obs) // 2
        for name, shift in shifts.items():
            moved = shift(obs[mid:])
            if moved is None:
                per[name]["not_shiftable"] += 1
                continue
            shifted = obs.copy()
            shifted[mid:] = moved
            fired = [t for t in _replay(policy, env, shifted.astype(np.float32)) if t > mid]
            if fired:
                per[name]["detected"] += 1
                per[name]["delays"].append(fired[0] - (mid + 1))
    out["unshifted_obs_range_ticks"] = false_alarms
    out["unshifted_ticks"] = ticks
    alarm_rate = false_alarms / ticks if ticks else 0.0
    out["shifts"] = per
    n = len(traced)
    missed = [k for k, v in per.items() if v["detected"] < n - v["not_shiftable"]]
    late = [k for k in ("offset_all", "offset_one") if any(d > 0 for d in per[k]["delays"])]
    detail = ", ".join(
        f"{k} detected in {v['detected']}/{n - v['not_shiftable']}" for k, v in per.items()
    )
    if alarm_rate >= MAX_FALSE_ALARM or missed or late:
        why = []
        if alarm_rate >= MAX_FALSE_ALARM:
            why.append(f"obs_range on {alarm_rate:.2%} of the unshifted ticks")
        if missed:
            why.append(f"shifted beyond the range but not detected: {missed}")
        if late:
            why.append(f"an offset not detected at its first tick: {late}")
        return "fail", detail + "; " + "; ".join(why), out
    return "pass", detail + "; each offset at its first shifted tick", out

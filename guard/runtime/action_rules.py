"""The action window rules: saturation, frozen and chattering actions, judged on samples.

The guard's nominal tick does no work for them. They are judged on the window cadence (the
check ticks ``k * check_every_ticks``, where the guard already leaves the plain path to
evaluate its percentile windows); with the chatter rule the two ticks before each check
tick are sampled as well, so that a sample holds three consecutive actions. What each rule
means is stated once, in ``tailguard.runtime.state`` ("Action window rules"); this module
keeps the counters.

A sample is the policy's own output of that tick (``a_t``; also in FALLBACK, where the
policy still runs) and the observation it was computed from. Per sample, and per action
element: "at a bound" (saturation), "the change flipped sign" (chatter); the window keeps
the samples of the last ``window.ticks`` ticks with running sums, so judging is O(A).
The per-element work is plain Python over short lists: for the handful of actions a robot
policy has, a dozen numpy calls on tiny arrays would cost several times more
(``bench/bench_detectors.py`` measures what a sampled tick costs).
"""

from __future__ import annotations

from collections import deque

import numpy as np

from tailguard.runtime.state import Violation

__all__ = ["ActionWindowRules", "NO_TICK"]

#: "No probe due": later than any tick.
NO_TICK = 1 << 62
_NOTHING: frozenset[Violation] = frozenset()


class ActionWindowRules:
    """Counters and verdicts of the envelope's ``action_rules`` for one guard.

    Args:
        saturation: ``(fraction, margin)`` or None.
        frozen: ``(ticks, epsilon, obs_delta)`` or None.
        chatter: ``(fraction, min_delta)`` or None.
        low, high: float [A] action bounds (needed by saturation).
        window_ticks: the window length W (samples of the last W ticks count).
    """

    def __init__(
        self,
        *,
        saturation: tuple[float, float] | None,
        frozen: tuple[int, float, float] | None,
        chatter: tuple[float, float] | None,
        low: np.ndarray,
        high: np.ndarray,
        window_ticks: int,
    ) -> None:
        self._sat = saturation
        self._frozen = frozen
        self._chatter = chatter
        self._w = window_ticks
        lo, hi = np.asarray(low, np.float64), np.asarray(high, np.float64)
        margin = saturation[1] if saturation is not None else 0.0
        # at or below / at or above: at the bound (float64, as the samples are compared)
        self._lo_at: list[float] = (lo + margin * (hi - lo)).tolist()
        self._hi_at: list[float] = (hi - margin * (hi - lo)).tolist()
        self._lo_any, self._hi_any = max(self._lo_at), min(self._hi_at)  # quick rejects
        self._size = lo.size
        self.reset(0)

    @property
    def needs_probes(self) -> bool:
        """True when ticks before the check ticks are sampled too (the chatter rule)."""
        return self._chatter is not None

    def reset(self, tick: int) -> None:
        """Forget every sample: the window is judged again once full after ``tick``."""
        n = self._size
        self._from = tick + 1
        # the actions of the last three sampled ticks, by tick % 3 (chatter)
        self._history: list[tuple[int, list[float] | None]] = [(-9, None)] * 3
        # per sample: (tick, elements at a bound, elements that flipped), index tuples;
        # None: no usable action on that sample
        self._samples: deque[tuple[int, tuple[int, ...] | None, tuple[int, ...] | None]]
        self._samples = deque()
        self._sat_sum, self._flip_sum = [0] * n, [0] * n
        self._sat_n = self._flip_n = 0  # samples that count
        self._sat_hits = self._flip_hits = 0  # sum of the sums (0: nothing to judge)
        self._ref_tick = -1  # frozen: where the run of unchanged actions started
        self._ref_action: list[float] = []
        self._ref_obs: np.ndarray | None = None
        self._obs_moved = False

    # -- sampling ---------------------------------------------------------------------------
    def next_probe(self, tick: int, next_check: int, nominal: bool = True) -> int:
        """The next tick after ``tick`` to sample before the check at ``next_check``.

        ``nominal``: the policy's actions are being applied as they are, so the tick before
        a check can hand in its predecessor's (applied) action too and one probe suffices;
        else both ticks before the check are sampled.
        """
        if self._chatter is not None:
            for t in (next_check - 1,) if nominal else (next_check - 2, next_check - 1):
                if t > tick:
                    return t
        return NO_TICK

    def probe(
        self,
        tick: int,
        action: np.ndarray,
        ok: bool,
        next_check: int,
        previous: np.ndarray | None = None,
    ) -> int:
        """Keep this tick's action (``ok``: the policy produced a usable one) and, when
        given, the previous tick's (``previous``: the policy's own output as applied, or
        None); returns the next probe tick."""
        h = self._history
        before = tick - 1
        if previous is not None and before >= self._from and h[before % 3][0] != before:
            h[before % 3] = (before, previous.tolist())
        h[tick % 3] = (tick, action.tolist() if ok else None)
        return self.next_probe(tick, next_check)

    def check(
        self, tick: int, action: np.ndarray, obs: np.ndarray, ok: bool
    ) -> frozenset[Violation]:
        """Take the check tick's sample and judge: the rules that hold after it."""
        a: list[float] | None = action.tolist() if ok else None
        sat: tuple[int, ...] | None = None
        flip: tuple[int, ...] | None = None
        if a is not None and self._sat is not None:
            sat = ()
            if max(a) >= self._hi_any or min(a) <= self._lo_any:
                lo, hi = self._lo_at, self._hi_at
                sat = tuple(j for j, x in enumerate(a) if x <= lo[j] or x >= hi[j])
        if self._chatter is not None:
            self._history[tick % 3] = (tick, a)
            if a is not None:
                flip = self._flips(tick)
        self._push(tick, sat, flip)
        active: list[Violation] = []
        if self._frozen is not None and self._frozen_now(tick, a, obs):
            active.append(Violation.ACTION_FROZEN)
        if tick - self._from + 1 >= self._w:  # the window is full (as for percentiles)
            rule = self._sat
            if (
                rule is not None
                and self._sat_hits
                and self._over(self._sat_sum, self._sat_n, rule[0])
            ):
                active.append(Violation.ACTION_SATURATION)
            rule = self._chatter
            if (
                rule is not None
                and self._flip_hits
                and self._over(self._flip_sum, self._flip_n, rule[0])
            ):
                active.append(Violation.ACTION_CHATTER)
        return frozenset(active) if active else _NOTHING

    def window_fractions(self) -> tuple[float | None, float | None]:
        """(saturation, chatter): the largest per-element fraction of the window's samples
        at a bound / with a sign flip, after the latest check (None: rule off or no
        sample). The audit derives the rules' thresholds from these."""
        sat = max(self._sat_sum) / self._sat_n if self._sat and self._sat_n else None
        flip = max(self._flip_sum) / self._flip_n if self._chatter and self._flip_n else None
        return sat, flip

    def frozen_run(self, tick: int) -> int:
        """Ticks since the actions last moved more than epsilon, counted only while the
        observation has moved more than obs_delta since then (0 otherwise)."""
        if self._frozen is None or self._ref_tick < 0 or not self._obs_moved:
            return 0
        return tick - self._ref_tick

    # -- the rules --------------------------------------------------------------------------
    @staticmethod
    def _over(counts: list[int], n: int, fraction: float) -> bool:
        return n > 0 and max(counts) > fraction * n

    def _flips(self, tick: int) -> tuple[int, ...] | None:
        """The elements whose ``a_t - a_{t-1}`` flipped sign against ``a_{t-1} - a_{t-2}``
        (both above min_delta); None unless the last three ticks were sampled and usable."""
        h = self._history
        (t0, a0), (t1, a1), (t2, a2) = h[(tick - 2) % 3], h[(tick - 1) % 3], h[tick % 3]
        if a0 is None or a1 is None or a2 is None or (t0, t1, t2) != (tick - 2, tick - 1, tick):
            return None
        m = self._chatter[1] if self._chatter is not None else 0.0
        out = []
        for j, x1 in enumerate(a1):
            d1, d2 = x1 - a0[j], a2[j] - x1
            if (d1 > m and d2 < -m) or (d1 < -m and d2 > m):
                out.append(j)
        return tuple(out)

    def _push(self, tick: int, sat: tuple[int, ...] | None, flip: tuple[int, ...] | None) -> None:
        samples = self._samples
        samples.append((tick, sat, flip))
        if sat is not None:
            self._sat_n += 1
            self._count(self._sat_sum, sat, 1)
            self._sat_hits += len(sat)
        if flip is not None:
            self._flip_n += 1
            self._count(self._flip_sum, flip, 1)
            self._flip_hits += len(flip)
        oldest = tick - self._w
        while samples and samples[0][0] <= oldest:
            _, old_sat, old_flip = samples.popleft()
            if old_sat is not None:
                self._sat_n -= 1
                self._count(self._sat_sum, old_sat, -1)
                self._sat_hits -= len(old_sat)
            if old_flip is not None:
                self._flip_n -= 1
                self._count(self._flip_sum, old_flip, -1)
                self._flip_hits -= len(old_flip)

    @staticmethod
    def _count(sums: list[int], elements: tuple[int, ...], step: int) -> None:
        for j in elements:
            sums[j] += step

    def _frozen_now(self, tick: int, a: list[float] | None, obs: np.ndarray) -> bool:
        assert self._frozen is not None
        ticks, epsilon, obs_delta = self._frozen
        if a is None:  # no usable action: the run restarts
            self._ref_tick = -1
            return False
        ref = self._ref_action
        if self._ref_tick < 0 or any(abs(x - r) > epsilon for x, r in zip(a, ref, strict=True)):
            self._ref_tick, self._ref_action = tick, a
            self._ref_obs = obs.copy()
            self._obs_moved = False
            return False
        if not self._obs_moved and self._ref_obs is not None:
            self._obs_moved = float(np.abs(obs - self._ref_obs).max()) > obs_delta
        return self._obs_moved and tick - self._ref_tick >= ticks

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
"""

from __future__ import annotations

from collections import deque

import numpy as np

from tailguard.runtime.state import Violation

__all__ = ["ActionWindowRules", "NO_TICK"]

#: "No probe due": later than any tick.
NO_TICK = 1 << 62


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
        self._lo_at = lo + margin * (hi - lo)  # at or below: at the lower bound
        self._hi_at = hi - margin * (hi - lo)
        self.reset(0)

    @property
    def needs_probes(self) -> bool:
        """True when ticks before the check ticks are sampled too (the chatter rule)."""
        return self._chatter is not None

    def reset(self, tick: int) -> None:
        """Forget every sample: the window is judged again once full after ``tick``."""
        self._from = tick + 1
        self._history: deque[tuple[int, np.ndarray | None]] = deque(maxlen=3)
        self._samples: deque[tuple[int, np.ndarray | None, np.ndarray | None]] = deque()
        self._sat_sum: np.ndarray | None = None
        self._flip_sum: np.ndarray | None = None
        self._sat_n = self._flip_n = 0
        self._ref: tuple[int, np.ndarray, np.ndarray] | None = None  # frozen run start
        self._obs_moved = False

    # -- sampling ---------------------------------------------------------------------------
    def next_probe(self, tick: int, next_check: int) -> int:
        """The next tick after ``tick`` to sample before the check at ``next_check``."""
        if self._chatter is not None:
            for t in (next_check - 2, next_check - 1):
                if t > tick:
                    return t
        return NO_TICK

    def probe(self, tick: int, action: np.ndarray, ok: bool, next_check: int) -> int:
        """Keep this tick's action (``ok``: the policy produced a usable one); returns the
        next probe tick."""
        self._history.append((tick, action.astype(np.float64) if ok else None))
        return self.next_probe(tick, next_check)

    def check(
        self, tick: int, action: np.ndarray, obs: np.ndarray, ok: bool
    ) -> frozenset[Violation]:
        """Take the check tick's sample and judge: the rules that hold after it."""
        a = action.astype(np.float64) if ok else None
        self._history.append((tick, a))
        sat = flip = None
        if a is not None and self._sat is not None:
            sat = (a <= self._lo_at) | (a >= self._hi_at)
        if a is not None and self._chatter is not None:
            flip = self._flips(tick)
        self._push(tick, sat, flip)
        active: set[Violation] = set()
        if self._frozen is not None and self._frozen_now(tick, a, obs):
            active.add(Violation.ACTION_FROZEN)
        if tick - self._from + 1 >= self._w:  # the window is full (as for percentiles)
            if self._sat is not None and self._over(self._sat_sum, self._sat_n, self._sat[0]):
                active.add(Violation.ACTION_SATURATION)
            chatter = self._chatter
            if chatter is not None and self._over(self._flip_sum, self._flip_n, chatter[0]):
                active.add(Violation.ACTION_CHATTER)
        return frozenset(active)

    # -- the rules --------------------------------------------------------------------------
    def _flips(self, tick: int) -> np.ndarray | None:
        """Per element: did ``a_t - a_{t-1}`` flip sign against ``a_{t-1} - a_{t-2}`` (both
        above min_delta)? None unless the last three ticks were all sampled and usable."""
        h = self._history
        if len(h) < 3 or [t for t, _ in h] != [tick - 2, tick - 1, tick]:
            return None
        a0, a1, a2 = (x for _, x in h)
        if a0 is None or a1 is None or a2 is None:
            return None
        d1, d2 = a1 - a0, a2 - a1
        m = self._chatter[1] if self._chatter is not None else 0.0
        flipped: np.ndarray = (d1 * d2 < 0) & (np.abs(d1) > m) & (np.abs(d2) > m)
        return flipped

    def _push(self, tick: int, sat: np.ndarray | None, flip: np.ndarray | None) -> None:
        self._samples.append((tick, sat, flip))
        if sat is not None:
            self._sat_sum = sat.astype(np.int64) + (0 if self._sat_sum is None else self._sat_sum)
            self._sat_n += 1
        if flip is not None:
            self._flip_sum = flip.astype(np.int64) + (
                0 if self._flip_sum is None else self._flip_sum
            )
            self._flip_n += 1
        oldest = tick - self._w
        while self._samples and self._samples[0][0] <= oldest:
            _, old_sat, old_flip = self._samples.popleft()
            if old_sat is not None and self._sat_sum is not None:
                self._sat_sum = self._sat_sum - old_sat
                self._sat_n -= 1
            if old_flip is not None and self._flip_sum is not None:
                self._flip_sum = self._flip_sum - old_flip
                self._flip_n -= 1

    @staticmethod
    def _over(counts: np.ndarray | None, n: int, fraction: float) -> bool:
        return counts is not None and n > 0 and bool(counts.max() > fraction * n)

    def _frozen_now(self, tick: int, a: np.ndarray | None, obs: np.ndarray) -> bool:
        assert self._frozen is not None
        ticks, epsilon, obs_delta = self._frozen
        if a is None:  # no usable action: the run restarts
            self._ref = None
            return False
        o = obs.astype(np.float64)
        ref = self._ref
        if ref is None or np.abs(a - ref[1]).max() > epsilon:
            self._ref = (tick, a, o)
            self._obs_moved = False
            return False
        if not self._obs_moved and np.abs(o - ref[2]).max() > obs_delta:
            self._obs_moved = True
        return self._obs_moved and tick - ref[0] >= ticks

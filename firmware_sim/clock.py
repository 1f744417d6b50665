"""A simulated monotonic clock, injectable wherever tailguard takes a clock.

``SimClock()`` returns the simulated time in integer ns, like ``time.monotonic_ns``; the
simulation moves it with ``advance`` and ``set``. It never goes backwards: an attempt raises
``ConfigError`` (a ``ValueError``; a bug in the simulation, not bad user data), so a guard
running on it sees exactly the monotonic clock it would see on a robot.
"""

from __future__ import annotations

from tailguard.errors import ConfigError

__all__ = ["SimClock"]


class SimClock:
    """Simulated time, integer nanoseconds.

    Args:
        start_ns: initial time, ns, >= 0.
    """

    __slots__ = ("_now_ns",)

    def __init__(self, start_ns: int = 0) -> None:
        if start_ns < 0:
            raise ConfigError(f"clock start must be >= 0 ns, got {start_ns}")
        self._now_ns = int(start_ns)

    def __call__(self) -> int:
        """Current simulated time, ns."""
        return self._now_ns

    @property
    def now_ns(self) -> int:
        """Current simulated time, ns."""
        return self._now_ns

    def advance(self, delta_ns: int) -> int:
        """Move forward by ``delta_ns`` (>= 0) and return the new time, ns."""
        if delta_ns < 0:
            raise ConfigError(f"SimClock cannot go backwards: advance({delta_ns})")
        self._now_ns += int(delta_ns)
        return self._now_ns

    def set(self, t_ns: int) -> int:
        """Move to ``t_ns`` (>= the current time) and return it, ns."""
        if t_ns < self._now_ns:
            raise ConfigError(f"SimClock cannot go backwards: set({t_ns}) at {self._now_ns} ns")
        self._now_ns = int(t_ns)
        return self._now_ns

    def __repr__(self) -> str:
        return f"SimClock(now_ns={self._now_ns})"

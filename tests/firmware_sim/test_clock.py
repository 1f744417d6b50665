"""SimClock: a monotonic simulated clock in integer ns."""

from __future__ import annotations

import pytest

from tailguard.errors import ConfigError
from tailguard.firmware_sim.clock import SimClock


def test_clock_advances_and_sets() -> None:
    """advance and set move the time forward; calling the clock returns it as int ns."""
    c = SimClock(5)
    assert c() == 5
    assert c.advance(10) == 15 and c() == 15
    assert c.set(15) == 15 and c.set(100) == 100 and c.now_ns == 100


@pytest.mark.parametrize(
    "move", [lambda c: c.advance(-1), lambda c: c.set(99), lambda c: SimClock(-1)]
)
def test_clock_never_goes_backwards(move) -> None:
    """Any attempt to move the clock backwards (or start below 0) raises ConfigError (a
    ValueError)."""
    c = SimClock(100)
    with pytest.raises(ConfigError, match=r"backwards|>= 0"):
        move(c)
    assert c() == 100

"""The telemetry ring (hot path -> publisher thread) and cross-thread guard commands."""

from __future__ import annotations

import numpy as np
from test_core import PERIOD, make_env, run
from tg_models import FakeClock

from tailguard import CallablePolicy, Guard, GuardState, Violation
from tailguard.runtime.tick_ring import STATE_CODES, VIOLATION_BITS, TelemetryRing, decode_flags


class FakePublisher:
    """Stands in for tailguard.sinks.telemetry.TelemetryPublisher: reads the guard's ring, keeps
    events."""

    def __init__(self) -> None:
        self.ring: TelemetryRing | None = None
        self.events: list[tuple] = []
        self.closed = False

    def attach(self, guard: Guard) -> None:
        self.ring = guard.tick_ring

    def append(self, record: tuple) -> None:
        self.events.append(record)

    def close(self) -> None:
        self.closed = True


def test_ring_reads_every_tick_once_in_order() -> None:
    """Ticks written are read back exactly once, in order, with their values and flags."""
    ring = TelemetryRing(256)
    for t in range(1, 41):
        ring.write(t, t * 10, t * 100, t % 3)
    batch = ring.read()
    assert batch is not None and batch.first_tick == 1 and batch.lost == 0
    assert batch.dt_ns.tolist() == [t * 10 for t in range(1, 41)]
    assert batch.flags.tolist() == [t % 3 for t in range(1, 41)]
    assert ring.read() is None
    for t in range(41, 281):  # wraps around the 256 slots
        ring.write(t, t, t, 0)
    batch = ring.read()
    assert batch.first_tick == 41 and batch.latency_ns.tolist() == list(range(41, 281))
    assert not batch.flags.any()


def test_ring_overflow_is_counted_not_blocking() -> None:
    """A reader more than `capacity` ticks behind loses the oldest ticks and counts them."""
    ring = TelemetryRing(256)
    for t in range(1, 601):
        ring.write(t, t, t, 0)
    batch = ring.read()
    assert batch.lost == 600 - 256 and ring.overflowed == 344
    assert batch.first_tick == 345 and batch.dt_ns.tolist() == list(range(345, 601))


def test_guard_writes_ticks_and_violation_flags() -> None:
    """Nominal ticks have flags 0; a violating tick carries its state and violation bits."""
    clock = FakeClock()
    pub = FakePublisher()
    g = Guard(CallablePolicy(lambda o: [0.1, 0.1], 4, 2), make_env(), clock=clock, telemetry=pub)
    run(g, clock, 5)
    g.step(np.full(4, np.nan))
    clock.advance(PERIOD)
    g.step(np.zeros(4))  # tick 6 is published once tick 7 starts
    assert pub.ring is g.tick_ring
    batch = pub.ring.read()
    assert batch.first_tick == 1 and len(batch.flags) == 6
    assert batch.flags[1:5].tolist() == [0, 0, 0, 0]
    assert batch.dt_ns[0] < 0  # the first tick has no period
    state, viols = decode_flags(int(batch.flags[5]))
    assert state is GuardState.HOLD and viols == [Violation.OBS_NONFINITE]
    assert (
        int(batch.flags[5])
        == STATE_CODES[GuardState.HOLD] | VIOLATION_BITS[Violation.OBS_NONFINITE]
    )
    assert batch.dt_ns[2] == PERIOD
    assert [e[0] for e in pub.events] == ["violation", "state", "state"]
    g.close()
    assert pub.closed


def test_request_trip_and_reset_from_another_thread() -> None:
    """request_trip latches at the next tick; request_reset brings it back to NOMINAL."""
    import threading

    clock = FakeClock()
    g = Guard(CallablePolicy(lambda o: [0.2, 0.2], 4, 2), make_env(), clock=clock)
    run(g, clock, 3)
    t = threading.Thread(target=g.request_trip, args=("operator",))
    t.start()
    t.join()
    run(g, clock, 2)
    assert g.state is GuardState.LATCHED
    g.request_reset("operator")
    out = run(g, clock, 2)
    assert g.state is GuardState.NOMINAL and np.allclose(out[-1], [0.2, 0.2])
    assert g.stats()["violations"]["dt_max"] == 0  # the reset tick's dt is a real period


def test_commands_within_one_tick_apply_in_order() -> None:
    """A trip then a reset requested within one tick both happen, in order (none is lost)."""
    clock = FakeClock()
    pub = FakePublisher()
    g = Guard(CallablePolicy(lambda o: [0.2, 0.2], 4, 2), make_env(), clock=clock, telemetry=pub)
    run(g, clock, 3)
    g.request_trip("operator")
    g.request_reset("operator")
    run(g, clock, 1)
    assert g.state is GuardState.NOMINAL
    states = [e[3]["to"] for e in pub.events if e[0] == "state"]
    assert states == ["latched", "nominal"]
    notes = [e[3]["command"] for e in pub.events if e[0] == "note"]
    assert notes == ["trip", "reset"]


def test_request_event_is_emitted_by_the_loop_thread_and_overflow_is_counted() -> None:
    """Events posted from another thread reach the sinks at the next tick, from the thread
    that runs step(); more than the queue holds drops the oldest and counts each drop."""
    import threading

    clock = FakeClock()
    seen: list[tuple[str, int]] = []

    class ThreadNoting(FakePublisher):
        def append(self, record: tuple) -> None:
            seen.append((threading.current_thread().name, record[1]))
            super().append(record)

    pub = ThreadNoting()
    g = Guard(CallablePolicy(lambda o: [0.2, 0.2], 4, 2), make_env(), clock=clock, telemetry=pub)
    run(g, clock, 3)
    poster = threading.Thread(
        target=lambda: [g.request_event(("fault", i, 0, {"i": i})) for i in range(300)],
        name="poster",
    )
    poster.start()
    poster.join()
    assert seen == []  # nothing is emitted by the posting thread
    run(g, clock, 1)
    faults = [e[3]["i"] for e in pub.events if e[0] == "fault"]
    assert faults == list(range(300 - 256, 300))  # the newest 256, in order
    assert {name for name, _ in seen} == {threading.current_thread().name}
    assert g.stats()["faults"]["events_dropped"] == 300 - 256
    assert g.state is GuardState.NOMINAL
    run(g, clock, 2)
    assert len(pub.events) == 256 and g.stats()["violations"]["dt_max"] == 0


def test_a_full_command_queue_counts_what_it_drops() -> None:
    """More than 64 commands within one tick: the oldest go, each drop is counted."""
    clock = FakeClock()
    g = Guard(CallablePolicy(lambda o: [0.2, 0.2], 4, 2), make_env(), clock=clock)
    run(g, clock, 2)
    for _ in range(70):
        g.request_trip("flood")
    run(g, clock, 1)
    assert g.state is GuardState.LATCHED
    assert g.stats()["faults"]["commands_dropped"] == 6


def test_wire_codes_are_pinned() -> None:
    """State codes and violation bits are the wire format the monitor decodes: they are
    fixed numbers (the values shipped so far), not derived from Enum order."""
    assert {s.value: c for s, c in STATE_CODES.items()} == {
        "nominal": 0,
        "hold": 1,
        "fallback": 2,
        "latched": 3,
    }
    assert {v.value: b.bit_length() - 1 for v, b in VIOLATION_BITS.items()} == {
        "latency_max": 4,
        "dt_max": 5,
        "overrun_streak": 6,
        "obs_age": 7,
        "obs_nonfinite": 8,
        "obs_shape": 9,
        "action_nonfinite": 10,
        "action_bounds": 11,
        "action_rate": 12,
        "policy_error": 13,
        "deadline_miss": 14,
        "hold_limit": 15,
        "fallback_error": 16,
        "dt_p50": 17,
        "dt_p95": 18,
        "dt_p99": 19,
        "latency_p50": 20,
        "latency_p95": 21,
        "latency_p99": 22,
        "obs_range": 23,
        "action_saturation": 24,
        "action_frozen": 25,
        "action_chatter": 26,
    }
    assert all(b & (b - 1) == 0 for b in VIOLATION_BITS.values())  # one bit each


def test_decode_flags_inverts_the_tables() -> None:
    """decode_flags returns the state and exactly the violations whose bits are set; an
    unknown state code is refused."""
    import pytest

    from tailguard.errors import ConfigError

    for state, code in STATE_CODES.items():
        for v, bit in VIOLATION_BITS.items():
            assert decode_flags(code | bit | VIOLATION_BITS[Violation.DT_MAX]) == (
                state,
                sorted({v, Violation.DT_MAX}, key=lambda x: VIOLATION_BITS[x]),
            )
    with pytest.raises(ConfigError, match="unknown state code 9"):
        decode_flags(9)

"""Hostile input: the monitor survives >= 10,000 malformed messages with bounded memory."""

from __future__ import annotations

import threading
import time
import tracemalloc

import msgpack
import numpy as np
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st
from tg_monitor_util import MS, S, free_port, heartbeat, hello, msg, ticks

from tailguard.monitor.alerts import AlertSink
from tailguard.monitor.rules import PRESETS
from tailguard.monitor.session import Monitor, run_live
from tailguard.monitor.stats import MonitorState


def _malformed(rng: np.random.Generator, i: int) -> bytes:
    kind = i % 6
    if kind == 0:  # random bytes
        return rng.bytes(int(rng.integers(0, 300)))
    if kind == 1:  # truncated valid message
        data = ticks(i, 1, [MS] * 20, [MS] * 20)
        return data[: int(rng.integers(1, len(data) - 1))]
    if kind == 2:  # wrong types
        return msg(
            "heartbeat",
            i,
            tick=[1],
            ring_overflow="x",
            send_dropped=None,
            events_dropped=1.5,
            heartbeat_ns={},
        )
    if kind == 3:  # huge declared lengths: bin32 / array32 / map32 headers with no body
        return rng.choice(
            [
                b"\xc6\xff\xff\xff\xff",
                b"\xdd\x7f\xff\xff\xff",
                b"\xdf\xff\xff\xff\xff",
                b"\xdb\xff\xff\xff\xf0abc",
            ]
        )
    if kind == 4:  # unknown schema version
        return msgpack.packb({"v": int(rng.integers(2, 1 << 40)), "type": "hello", "seq": i})
    # ticks whose declared count disagrees with the arrays, or a lying histogram layout
    if i % 2:
        return msg(
            "ticks", i, first_tick=1, n=1 << 30, dt_ns=b"", latency_ns=b"", flags=b"", lost=0
        )
    lie = {
        "significant_digits": 5,
        "highest_trackable_value": (1 << 63) - 1,
        "indices": [],
        "counts": [],
    }
    return msg(
        "hist",
        i,
        interval={"dt_ns": lie, "latency_ns": lie},
        lifetime={"dt_ns": lie, "latency_ns": lie},
    )


def test_ten_thousand_malformed_messages_in_process() -> None:
    """10,000 malformed messages are all refused and counted; memory stays bounded."""
    rng = np.random.default_rng(0)
    st_ = MonitorState()
    st_.ingest(hello(0), 0)
    tracemalloc.start()
    try:
        for i in range(10_000):
            st_.ingest(_malformed(rng, i), i * 1000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert st_.malformed + st_.unknown_version == 10_000
    assert st_.unknown_version >= 1600
    assert peak < 16 * 1024 * 1024
    st_.ingest(heartbeat(1), 10**10)  # still works afterwards
    assert st_.received == 2


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_any_bytes_either_decode_or_are_counted(data: bytes) -> None:
    """Arbitrary bytes never raise out of ingest: valid, malformed or unknown version."""
    s = MonitorState()
    s.ingest(data, S)
    assert s.received + s.malformed + s.unknown_version == 1


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "v",
                "type",
                "seq",
                "gid",
                "t_ns",
                "n",
                "first_tick",
                "dt_ns",
                "events",
                "tick",
                "interval",
                "lifetime",
            ]
        ),
        st.one_of(
            st.integers(-(1 << 63), (1 << 64) - 1),
            st.text(max_size=5),
            st.binary(max_size=16),
            st.none(),
            st.lists(st.integers(-(1 << 63), (1 << 63) - 1), max_size=3),
        ),
        max_size=12,
    )
)
def test_structured_garbage_never_raises(fields: dict) -> None:
    """Maps with the right keys and wrong values are refused, never raised."""
    s = MonitorState()
    s.ingest(msgpack.packb({"v": 1, **fields}), S)
    assert s.received + s.malformed + s.unknown_version == 1


def test_malformed_flood_over_a_real_socket() -> None:
    """A live monitor fed 10,000 malformed messages over ZMQ keeps running and counts them."""
    ep = f"tcp://127.0.0.1:{free_port()}"
    ctx = zmq.Context()
    pub = ctx.socket(zmq.XPUB)
    pub.setsockopt(zmq.SNDHWM, 0)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind(ep)
    mon = Monitor(PRESETS["default"], AlertSink(None))
    stop = threading.Event()
    t = threading.Thread(target=run_live, args=(ep, mon), kwargs={"stop": stop}, daemon=True)
    t.start()
    try:
        assert pub.poll(10_000), "the monitor never subscribed"
        pub.recv()
        rng = np.random.default_rng(1)
        pub.send(hello(0))
        for i in range(10_000):
            pub.send(_malformed(rng, i))
        pub.send(heartbeat(1))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and mon.state.received < 2:
            time.sleep(0.05)
        assert t.is_alive()
    finally:
        stop.set()
        t.join(10)
        pub.close(0)
        ctx.term()
    s = mon.state
    assert s.received == 2 and s.malformed + s.unknown_version == 10_000

"""Helpers of the monitor tests: wire messages built by hand, free ports."""

from __future__ import annotations

import socket
from typing import Any

import msgpack
import numpy as np

from tailguard.protocol.telemetry_wire import HIST_DIGITS, HIST_MAX_NS, SCHEMA_VERSION
from tailguard.stats.histogram import LogLinearHistogram

MS = 1_000_000
S = 1_000_000_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def msg(kind: str, seq: int, gid: str = "g1", **fields: Any) -> bytes:
    body = {"v": SCHEMA_VERSION, "type": kind, "seq": seq, "gid": gid, "t_ns": 0, **fields}
    return msgpack.packb(body)


def hello(seq: int, gid: str = "g1", period_ns: int = MS, heartbeat_ns: int = S // 2) -> bytes:
    return msg("hello", seq, gid, period_ns=period_ns, heartbeat_ns=heartbeat_ns, policy="p")


def heartbeat(seq: int, gid: str = "g1", tick: int = 0, **kw: Any) -> bytes:
    base = {
        "tick": tick,
        "ring_overflow": 0,
        "send_dropped": 0,
        "events_dropped": 0,
        "heartbeat_ns": S // 2,
        "sent": seq,
        "subscribers": 1,
        "unobserved": 0,
        "last_gap_ns": 0,
        "closing": False,
    }
    base.update(kw)
    return msg("heartbeat", seq, gid, **base)


def ticks(
    seq: int,
    first: int,
    dt_ns: list[int],
    lat_ns: list[int],
    flags: list[int] | None = None,
    gid: str = "g1",
    lost: int = 0,
) -> bytes:
    n = len(dt_ns)
    f = flags if flags is not None else [0] * n
    return msg(
        "ticks",
        seq,
        gid,
        first_tick=first,
        n=n,
        dt_ns=np.asarray(dt_ns, "<i8").tobytes(),
        latency_ns=np.asarray(lat_ns, "<i8").tobytes(),
        flags=np.asarray(f, "<i8").tobytes(),
        lost=lost,
    )


def events(seq: int, evs: list[list[Any]], gid: str = "g1") -> bytes:
    return msg("events", seq, gid, events=evs, dropped=0)


def hist(seq: int, values: list[int], gid: str = "g1") -> bytes:
    h = LogLinearHistogram(HIST_DIGITS, HIST_MAX_NS)
    h.record_many(np.asarray(values, np.int64))
    sp = {"dt_ns": h.to_sparse(), "latency_ns": h.to_sparse()}
    return msg("hist", seq, gid, interval=sp, lifetime=sp)

"""Decoding telemetry messages from an untrusted socket: size limits, then a schema check.

Anything a peer sends either decodes to a validated ``dict`` or is refused with a short
reason (counted by the monitor); nothing here raises on bad input. msgpack is unpacked with
explicit limits on every container and string, so a hostile length prefix cannot make the
monitor allocate more than :data:`MAX_MESSAGE_BYTES` worth of objects.
"""

from __future__ import annotations

from typing import Any

import msgpack

from tailguard.stats import NEVER_NS

__all__ = [
    "HIST_DIGITS",
    "HIST_MAX_NS",
    "MAX_MESSAGE_BYTES",
    "MAX_TICKS_PER_MESSAGE",
    "MESSAGE_TYPES",
    "SCHEMA_VERSION",
    "decode_message",
]

SCHEMA_VERSION = 1
MESSAGE_TYPES = ("hello", "ticks", "events", "hist", "heartbeat")
HIST_DIGITS = 2
HIST_MAX_NS = NEVER_NS  # the guard's own histogram layout, so snapshots merge with it

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
MAX_TICKS_PER_MESSAGE = 65536
_MAX_EVENTS = 4096
_MAX_HIST_BUCKETS = 16384
_LIMITS = {
    "max_bin_len": 8 * MAX_TICKS_PER_MESSAGE,
    "max_str_len": 64 * 1024,
    "max_array_len": _MAX_HIST_BUCKETS,
    "max_map_len": 256,
    "max_ext_len": 0,
}
_INT64 = (-(1 << 63), (1 << 63) - 1)


def _is_int(x: Any, lo: int = 0, hi: int = _INT64[1]) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and lo <= x <= hi


def _check_hist(h: Any) -> str:
    if not isinstance(h, dict):
        return "histogram is not a map"
    if h.get("significant_digits") != HIST_DIGITS or h.get("highest_trackable_value") != (
        HIST_MAX_NS
    ):
        return "histogram layout differs from the schema's"
    return ""


_FIELDS: dict[str, dict[str, Any]] = {
    "hello": {"period_ns": int},
    "ticks": {
        "first_tick": int,
        "n": int,
        "dt_ns": bytes,
        "latency_ns": bytes,
        "flags": bytes,
        "lost": int,
    },
    "events": {"events": list, "dropped": int},
    "hist": {"interval": dict, "lifetime": dict},
    "heartbeat": {
        "tick": int,
        "ring_overflow": int,
        "send_dropped": int,
        "events_dropped": int,
        "heartbeat_ns": int,
    },
}


def decode_message(data: bytes) -> tuple[dict[str, Any] | None, str]:
    """Unpack and validate one message.

    Args:
        data: the raw ZMQ frame.

    Returns:
        ``(message, "")`` when valid, else ``(None, reason)``; reason ``"version"`` marks
        a well-formed message of another schema version.
    """
    if len(data) > MAX_MESSAGE_BYTES:
        return None, "too large"
    try:
        msg = msgpack.unpackb(data, raw=False, strict_map_key=True, **_LIMITS)
    except Exception:  # every msgpack failure mode (ValueError, ExtraData, Unpack...)
        return None, "not msgpack"
    if not isinstance(msg, dict):
        return None, "not a map"
    if msg.get("v") != SCHEMA_VERSION:
        return None, "version" if _is_int(msg.get("v")) else "no version"
    kind = msg.get("type")
    if kind not in MESSAGE_TYPES:
        return None, "unknown type"
    if not (
        _is_int(msg.get("seq"))
        and isinstance(msg.get("gid"), str)
        and _is_int(msg.get("t_ns"), *_INT64)
    ):
        return None, "bad header"
    for key, typ in _FIELDS[kind].items():
        value = msg.get(key)
        if typ is int:
            if not _is_int(value, *_INT64) and not (kind == "hello" and value is None):
                return None, f"bad field {key}"
        elif not isinstance(value, typ):
            return None, f"bad field {key}"
    if kind == "ticks":
        n = msg["n"]
        if not (_is_int(n, 0, MAX_TICKS_PER_MESSAGE) and msg["first_tick"] >= 0):
            return None, "bad tick count"
        if any(len(msg[k]) != 8 * n for k in ("dt_ns", "latency_ns", "flags")):
            return None, "tick arrays of the wrong length"
    elif kind == "events":
        events = msg["events"]
        if len(events) > _MAX_EVENTS:
            return None, "too many events"
        for e in events:
            if not (
                isinstance(e, list)
                and len(e) == 4
                and isinstance(e[0], str)
                and _is_int(e[1], *_INT64)
                and _is_int(e[2], *_INT64)
                and isinstance(e[3], dict)
            ):
                return None, "bad event"
    elif kind == "hist":
        for scope in ("interval", "lifetime"):
            for name in ("dt_ns", "latency_ns"):
                problem = _check_hist(msg[scope].get(name))
                if problem:
                    return None, problem
    return msg, ""

"""Wire schema between the wall-clock firmware and its clients: msgpack, versioned, bounded.

Every message is one msgpack map with string keys. Common keys:

- ``v``: schema version (int, must equal :data:`SCHEMA_VERSION`);
- ``type``: one of ``hello``, ``info``, ``obs``, ``cmd``, ``status``;
- ``seq``: the sender's sequence number (int, 0 <= seq < 2**63), +1 per message it sends,
  so a receiver sees loss and reordering;
- ``t_ns``: the sender's ``time.monotonic_ns()`` when the message was built (both ends run
  on the same host, so timestamps are comparable).

Type-specific keys (vectors are ``bin`` of little-endian float32):

==========  =========  ===========================================================
type        direction  keys
==========  =========  ===========================================================
``hello``   client->fw ``role`` (str: ``controller`` or ``monitor``)
``info``    fw->client ``env`` (str), ``obs_size``, ``action_size`` (int),
                       ``action_low``, ``action_high`` (vectors),
                       ``physics_rate_hz`` (float), ``command_timeout_ns`` (int)
``obs``     fw->client ``obs`` (vector), ``sim_time_ns`` (int), ``mode`` (str:
                       ``active`` / ``damping``), ``applied_seq`` (int, -1 = none)
``cmd``     client->fw ``action`` (vector), ``obs_seq`` (int, -1 = none)
``status``  fw->client ``event`` (str), ``detail`` (map of str -> int/float/str/bool)
==========  =========  ===========================================================

Within one schema version the key sets are exact: a missing or unknown key rejects the
message (a changed layout needs a new version, and an old peer then says so).

Untrusted input goes through :func:`parse`, which never raises: it returns a message or a
:class:`Reject` reason. The size is checked before unpacking, and msgpack itself is told the
largest string, binary, array and map it may allocate, so a header declaring a 4 GB payload
is refused without allocating it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Any

import msgpack
import numpy as np

from tailguard.errors import ConfigError

__all__ = [
    "MAX_DETAIL_KEYS",
    "MAX_MESSAGE_BYTES",
    "MAX_STR_BYTES",
    "MAX_VECTOR_LEN",
    "SCHEMA_VERSION",
    "Command",
    "Hello",
    "Info",
    "Message",
    "Observation",
    "Reject",
    "Status",
    "encode",
    "parse",
]

#: Version of this schema; a message with any other ``v`` is rejected.
SCHEMA_VERSION = 1
#: Largest message accepted, bytes (checked before unpacking).
MAX_MESSAGE_BYTES = 64 * 1024
#: Largest vector (observation or action), float32 elements.
MAX_VECTOR_LEN = 4096
#: Largest string value, bytes.
MAX_STR_BYTES = 256
#: Largest ``detail`` map of a status message.
MAX_DETAIL_KEYS = 64

_INT_MAX = 2**63 - 1
_F32 = np.dtype("<f4")


class Reject(Enum):
    """Why an incoming message was dropped (stable strings: they appear in summaries)."""

    TOO_LARGE = "too_large"  # above MAX_MESSAGE_BYTES
    NOT_MSGPACK = "not_msgpack"  # does not unpack (truncated, garbage, trailing bytes, limits)
    NOT_A_MAP = "not_a_map"
    BAD_VERSION = "bad_version"  # missing or unknown schema version
    UNKNOWN_TYPE = "unknown_type"
    MISSING_FIELD = "missing_field"
    UNKNOWN_FIELD = "unknown_field"
    BAD_FIELD = "bad_field"  # wrong type or out of range
    # Used by receivers on top of parse():
    BAD_FRAMES = "bad_frames"  # wrong number of ZMQ frames
    WRONG_DIRECTION = "wrong_direction"  # e.g. an obs sent to the firmware
    ACTION_SIZE = "action_size"  # action length differs from the model's actuators
    NONFINITE = "nonfinite"  # NaN or Inf in an action


@dataclass(frozen=True, slots=True)
class Hello:
    """A client announces itself (and keeps its subscription alive)."""

    seq: int
    t_ns: int
    role: str


@dataclass(frozen=True, slots=True)
class Info:
    """The firmware describes the robot: sizes, action range, rates."""

    seq: int
    t_ns: int
    env: str
    obs_size: int
    action_size: int
    action_low: np.ndarray  # (action_size,) float32
    action_high: np.ndarray  # (action_size,) float32
    physics_rate_hz: float
    command_timeout_ns: int


@dataclass(frozen=True, slots=True)
class Observation:
    """One observation, stamped with the firmware's monotonic clock when it was sampled."""

    seq: int
    t_ns: int
    obs: np.ndarray  # (obs_size,) float32, read-only view of the message
    sim_time_ns: int
    mode: str
    applied_seq: int


@dataclass(frozen=True, slots=True)
class Command:
    """One action from a controller, answering the observation ``obs_seq``."""

    seq: int
    t_ns: int
    action: np.ndarray  # (action_size,) float32, read-only view of the message
    obs_seq: int


@dataclass(frozen=True, slots=True)
class Status:
    """An event of the firmware (watchdog trip/recovery, periodic stats, shutdown)."""

    seq: int
    t_ns: int
    event: str
    detail: dict[str, Any]


Message = Hello | Info | Observation | Command | Status

_TYPE_NAME: dict[type, str] = {
    Hello: "hello",
    Info: "info",
    Observation: "obs",
    Command: "cmd",
    Status: "status",
}
_VECTOR_FIELDS = frozenset({"action_low", "action_high", "obs", "action"})

# type name -> (class, {field: kind}); kinds: int, float, str, vec, detail
_SCHEMA: dict[str, tuple[type, dict[str, str]]] = {
    "hello": (Hello, {"role": "str"}),
    "info": (
        Info,
        {
            "env": "str",
            "obs_size": "int",
            "action_size": "int",
            "action_low": "vec",
            "action_high": "vec",
            "physics_rate_hz": "float",
            "command_timeout_ns": "int",
        },
    ),
    "obs": (
        Observation,
        {"obs": "vec", "sim_time_ns": "int", "mode": "str", "applied_seq": "sint"},
    ),
    "cmd": (Command, {"action": "vec", "obs_seq": "sint"}),
    "status": (Status, {"event": "str", "detail": "detail"}),
}
_COMMON = ("v", "type", "seq", "t_ns")


def encode(msg: Message) -> bytes:
    """Pack a message into its wire form.

    Args:
        msg: any of the message dataclasses; vectors may be any float array-like.

    Returns:
        The msgpack bytes.

    Raises:
        ConfigError: (a ``ValueError``) the message would not pass :func:`parse` on the
            other side (too large, a vector too long, an out-of-range integer).
    """
    name = _TYPE_NAME[type(msg)]
    out: dict[str, Any] = {"v": SCHEMA_VERSION, "type": name}
    for field in ("seq", "t_ns", *_SCHEMA[name][1]):
        value = getattr(msg, field)
        if field in _VECTOR_FIELDS:
            arr = np.ascontiguousarray(value, dtype=_F32).reshape(-1)
            if arr.size > MAX_VECTOR_LEN:
                raise ConfigError(
                    f"{name}.{field} has {arr.size} elements; at most {MAX_VECTOR_LEN}"
                )
            value = arr.tobytes()
        elif isinstance(value, np.integer | np.floating):
            value = value.item()
        out[field] = value
    try:
        data: bytes = msgpack.packb(out, use_bin_type=True)
    except (OverflowError, TypeError, ValueError) as exc:  # e.g. an integer beyond 64 bits
        raise ConfigError(f"{name} message cannot be encoded: {exc}") from None
    if len(data) > MAX_MESSAGE_BYTES:
        raise ConfigError(f"{name} message is {len(data)} bytes; at most {MAX_MESSAGE_BYTES}")
    return data


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(
        data,
        raw=False,
        use_list=True,
        strict_map_key=True,
        max_str_len=MAX_STR_BYTES,
        max_bin_len=4 * MAX_VECTOR_LEN,
        max_array_len=MAX_DETAIL_KEYS,
        max_map_len=MAX_DETAIL_KEYS,
        max_ext_len=0,
    )


def _is_int(value: Any, low: int) -> bool:
    return type(value) is int and low <= value <= _INT_MAX


def _convert(kind: str, value: Any) -> Any:
    """The field value in its Python form, or None if it does not fit ``kind``."""
    if kind == "int":
        return value if _is_int(value, 0) else None
    if kind == "sint":
        return value if _is_int(value, -1) else None
    if kind == "float":
        if type(value) in (int, float) and math.isfinite(value):
            return float(value)
        return None
    if kind == "str":
        return value if type(value) is str else None
    if kind == "vec":
        if type(value) is not bytes or len(value) % 4:
            return None
        return np.frombuffer(value, dtype=_F32)
    # detail: a flat map of str -> scalar
    if type(value) is not dict:
        return None
    for k, v in value.items():
        if type(k) is not str or type(v) not in (int, float, str, bool):
            return None
    return value


def parse(data: bytes | bytearray | memoryview) -> Message | Reject:
    """Decode one untrusted message; never raises.

    Args:
        data: the message bytes as received.

    Returns:
        The message dataclass, or the :class:`Reject` reason it was refused for.
    """
    try:
        if len(data) > MAX_MESSAGE_BYTES:
            return Reject.TOO_LARGE
        raw = _unpack(bytes(data))
    except Exception:  # msgpack raises several unrelated types on bad input
        return Reject.NOT_MSGPACK
    if type(raw) is not dict:
        return Reject.NOT_A_MAP
    if raw.get("v") != SCHEMA_VERSION or type(raw.get("v")) is not int:
        return Reject.BAD_VERSION
    name = raw.get("type")
    if type(name) is not str or name not in _SCHEMA:
        return Reject.UNKNOWN_TYPE
    cls, fields = _SCHEMA[name]
    if len(raw) != len(_COMMON) + len(fields):
        extra = set(raw) - set(_COMMON) - set(fields)
        return Reject.UNKNOWN_FIELD if extra else Reject.MISSING_FIELD
    kwargs: dict[str, Any] = {}
    for field, kind in (("seq", "int"), ("t_ns", "int"), *fields.items()):
        if field not in raw:
            return Reject.MISSING_FIELD
        value = _convert(kind, raw[field])
        if value is None:
            return Reject.BAD_FIELD
        kwargs[field] = value
    return cls(**kwargs)  # type: ignore[no-any-return]

"""Wire schema of the firmware link: round trips, size limits, rejects (no sockets)."""

from __future__ import annotations

import struct

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tailguard.firmware_sim import messages as wire

VEC3 = np.array([0.5, -1.0, 2.0], dtype=np.float32)

MESSAGES = [
    wire.Hello(1, 10, "controller"),
    wire.Info(
        2, 20, "Hopper-v5", 11, 3, -np.ones(3, np.float32), np.ones(3, np.float32), 500.0, 10**8
    ),
    wire.Observation(3, 30, np.arange(11, dtype=np.float32), 2_000_000, "active", -1),
    wire.Command(4, 40, VEC3, 3),
    wire.Status(5, 50, "watchdog_trip", {"silence_ns": 123, "ratio": 0.5, "why": "x", "ok": True}),
]


def _fields(msg: wire.Message) -> dict:
    return {
        name: (
            getattr(msg, name).tolist()
            if isinstance(getattr(msg, name), np.ndarray)
            else getattr(msg, name)
        )
        for name in msg.__slots__
    }


def _raw(**over: object) -> bytes:
    """A valid cmd message as a dict, with keys replaced (or removed when None)."""
    base: dict = {
        "v": 1,
        "type": "cmd",
        "seq": 7,
        "t_ns": 99,
        "action": VEC3.tobytes(),
        "obs_seq": 3,
    }
    for key, value in over.items():
        if value is None:
            base.pop(key, None)
        else:
            base[key] = value
    return msgpack.packb(base, use_bin_type=True)


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip(msg: wire.Message) -> None:
    """parse(encode(m)) gives back an equal message of the same type."""
    back = wire.parse(wire.encode(msg))
    assert type(back) is type(msg)
    assert _fields(back) == _fields(msg)


def test_vectors_are_little_endian_float32() -> None:
    """Vectors travel as little-endian float32 bytes, whatever dtype the sender had."""
    data = wire.encode(wire.Command(1, 2, np.array([1.5, -2.0], dtype=np.float64), -1))
    assert msgpack.unpackb(data)["action"] == struct.pack("<2f", 1.5, -2.0)


def test_sequence_and_timestamp_survive_large_values() -> None:
    """seq and t_ns keep their full 63-bit range."""
    msg = wire.parse(wire.encode(wire.Hello(2**63 - 1, 2**62, "monitor")))
    assert isinstance(msg, wire.Hello) and msg.seq == 2**63 - 1 and msg.t_ns == 2**62


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", wire.Reject.NOT_MSGPACK),
        (b"\xc1", wire.Reject.NOT_MSGPACK),  # never-used msgpack byte
        (_raw()[:-3], wire.Reject.NOT_MSGPACK),  # truncated
        (_raw() + b"\x00", wire.Reject.NOT_MSGPACK),  # trailing bytes
        (b"\xc6\xff\xff\xff\xff\x00", wire.Reject.NOT_MSGPACK),  # bin32 declaring 4 GiB
        (b"\xdb\xff\xff\xff\xff", wire.Reject.NOT_MSGPACK),  # str32 declaring 4 GiB
        (b"\xdd\xff\xff\xff\xff", wire.Reject.NOT_MSGPACK),  # array32 of 4G items
        (b"\xdf\xff\xff\xff\xff", wire.Reject.NOT_MSGPACK),  # map32 of 4G pairs
        (b"\xc7\x05\x01abcde", wire.Reject.NOT_MSGPACK),  # ext type: not allowed
        (msgpack.packb([1, 2, 3]), wire.Reject.NOT_A_MAP),
        (msgpack.packb(5), wire.Reject.NOT_A_MAP),
        (msgpack.packb({1: 2}), wire.Reject.NOT_MSGPACK),  # non-string keys
        (bytes(wire.MAX_MESSAGE_BYTES + 1), wire.Reject.TOO_LARGE),
        (_raw(v=None), wire.Reject.BAD_VERSION),
        (_raw(v=2), wire.Reject.BAD_VERSION),
        (_raw(v="1"), wire.Reject.BAD_VERSION),
        (_raw(v=True), wire.Reject.BAD_VERSION),
        (_raw(v=1.0), wire.Reject.BAD_VERSION),
        (_raw(type="teleport"), wire.Reject.UNKNOWN_TYPE),
        (_raw(type=3), wire.Reject.UNKNOWN_TYPE),
        (_raw(obs_seq=None), wire.Reject.MISSING_FIELD),
        (_raw(extra=1), wire.Reject.UNKNOWN_FIELD),
        (_raw(seq=-1), wire.Reject.BAD_FIELD),
        (_raw(seq=True), wire.Reject.BAD_FIELD),
        (_raw(seq=2**64 - 1), wire.Reject.BAD_FIELD),
        (_raw(t_ns=1.5), wire.Reject.BAD_FIELD),
        (_raw(obs_seq=-2), wire.Reject.BAD_FIELD),
        (_raw(action=[0.5, 1.0, 2.0]), wire.Reject.BAD_FIELD),
        (_raw(action="abc"), wire.Reject.BAD_FIELD),
        (_raw(action=b"\x00" * 5), wire.Reject.BAD_FIELD),  # not a whole float32
        (_raw(action=bytes(4 * (wire.MAX_VECTOR_LEN + 1))), wire.Reject.NOT_MSGPACK),  # bin limit
        (
            _raw(type="status", action=None, obs_seq=None, event="x", detail={"a": [1]}),
            wire.Reject.BAD_FIELD,
        ),
        (_raw(type="hello", action=None, obs_seq=None, role="x" * 300), wire.Reject.NOT_MSGPACK),
    ],
)
def test_rejects(data: bytes, reason: wire.Reject) -> None:
    """Each malformed input is refused with its specific reason, without raising."""
    assert wire.parse(data) is reason


@pytest.mark.parametrize(
    ("msg", "fragment"),
    [
        (wire.Command(1, 2, np.zeros(wire.MAX_VECTOR_LEN + 1), -1), "at most 4096"),
        (wire.Status(1, 2, "x", {f"k{i}": "y" * 200 for i in range(400)}), "bytes; at most"),
        (wire.Hello(1, 1 << 70, "controller"), "cannot be encoded"),
    ],
)
def test_encode_refuses_what_parse_would_reject(msg: wire.Message, fragment: str) -> None:
    """encode raises ConfigError (a ValueError) instead of sending what must be dropped."""
    from tailguard.errors import ConfigError

    with pytest.raises(ConfigError, match=fragment):
        wire.encode(msg)


def test_limits_are_consistent() -> None:
    """The largest legal vector fits in the largest legal message."""
    msg = wire.Observation(1, 2, np.zeros(wire.MAX_VECTOR_LEN, np.float32), 0, "active", -1)
    assert len(wire.encode(msg)) <= wire.MAX_MESSAGE_BYTES


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_parse_never_raises_on_bytes(data: bytes) -> None:
    """Any byte string parses to a message or a Reject, never an exception."""
    assert isinstance(wire.parse(data), wire.Message | wire.Reject)


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**64), 2**64 - 1),
    st.floats(),
    st.text(max_size=20),
    st.binary(max_size=40),
)
_values = st.recursive(
    _scalars,
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=3),
    max_leaves=4,
)


@settings(max_examples=150, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["v", "type", "seq", "t_ns", "action", "obs_seq", "role", "detail", "x"]),
        _values,
    )
)
def test_parse_never_raises_on_maps(obj: dict) -> None:
    """Any msgpack map of near-valid keys parses or is rejected, never raises."""
    try:
        data = msgpack.packb(obj, use_bin_type=True)
    except (OverflowError, ValueError):
        return
    assert isinstance(wire.parse(data), wire.Message | wire.Reject)

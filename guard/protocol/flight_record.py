"""The flight-record file format and its reader (no threads, no writes).

File format (all integers little-endian)::

    header  MAGIC (8 bytes) | u16 version | u16 reserved (0)
    frame   u32 payload length | u32 crc32(payload) | payload
    payload msgpack array [seq, kind, tick, t_ns, fields]

The writer is :class:`tailguard.sinks.flight_recorder.FlightRecorder`; the monitor and the
tools read records through :func:`read_flight_record` without importing it.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import msgpack

from tailguard.errors import RecorderError

__all__ = [
    "FORMAT_VERSION",
    "HEADER",
    "HEADER_BYTES",
    "MAGIC",
    "RECORD_KINDS",
    "FlightLog",
    "pack_frame",
    "read_flight_record",
    "rotated_path",
]

MAGIC = b"TGFLTREC"
FORMAT_VERSION = 1
#: Record kinds a guard writes. Other strings are written as they are.
RECORD_KINDS = ("violation", "state", "fault", "note")

HEADER = struct.Struct("<8sHH")
_FRAME_HEAD = struct.Struct("<II")
HEADER_BYTES = HEADER.size


def rotated_path(path: Path) -> Path:
    return path.with_name(path.name + ".1")


def _to_msgpack(obj: Any) -> Any:
    """msgpack fallback: enums by value, numpy scalars and arrays as Python values."""
    if isinstance(obj, Enum):
        return obj.value
    tolist = getattr(obj, "tolist", None)  # numpy scalars and arrays, without importing numpy
    if callable(tolist):
        try:
            return tolist()
        except (TypeError, ValueError):
            pass
    if isinstance(obj, set | frozenset):
        return sorted(obj, key=repr)
    return repr(obj)


def pack_frame(seq: int, kind: str, tick: int, t_ns: int, fields: dict[str, Any]) -> bytes:
    payload = msgpack.packb([seq, kind, tick, t_ns, fields], default=_to_msgpack)
    return _FRAME_HEAD.pack(len(payload), zlib.crc32(payload)) + payload


@dataclass
class FlightLog:
    """What :func:`read_flight_record` found.

    Attributes:
        records: in file order (``PATH.1`` then ``PATH``); each a dict with keys ``seq``,
            ``kind``, ``tick``, ``t_ns`` (ns) and ``fields``.
        truncated_tail: a file ended in the middle of a frame (or of its header), as after
            a crash during a write.
        corrupt_frames: frames whose checksum or content was wrong; reading of that file
            stopped there.
        files: the files read, in order.
    """

    records: list[dict[str, Any]] = field(default_factory=list)
    truncated_tail: bool = False
    corrupt_frames: int = 0
    files: list[str] = field(default_factory=list)


def read_flight_record(path: str | os.PathLike[str]) -> FlightLog:
    """Read a flight record written by :class:`FlightRecorder`, after a crash or not.

    Reads ``PATH.1`` (if present) then ``PATH``. A frame cut short at the end of a file is
    reported in ``truncated_tail``; a frame with a bad checksum or content is counted in
    ``corrupt_frames`` and ends the reading of that file.

    Args:
        path: the live file path the recorder was given.

    Returns:
        The records and what was wrong with the files.

    Raises:
        RecorderError: neither file exists or can be read, a file is not a flight record
            (bad magic), or it has a format version this tailguard cannot read.
    """
    live = Path(path)
    log = FlightLog()
    candidates = [p for p in (rotated_path(live), live) if p.exists()]
    if not candidates:
        raise RecorderError(
            "no flight record here (neither this file nor its '.1' rotation exists); "
            "check the path passed to FlightRecorder",
            live,
        )
    for file_path in candidates:
        try:
            data = file_path.read_bytes()
        except OSError as exc:
            raise RecorderError(f"cannot read ({exc.strerror or exc})", file_path) from exc
        log.files.append(str(file_path))
        _read_file(data, file_path, log)
    return log


def _read_file(data: bytes, file_path: Path, log: FlightLog) -> None:
    if len(data) < HEADER_BYTES:
        if not MAGIC.startswith(data[: len(MAGIC)]):
            raise RecorderError("not a flight record (bad magic)", file_path)
        # Empty (created, nothing written yet) or a header cut short by a crash.
        log.truncated_tail = log.truncated_tail or len(data) > 0
        return
    magic, version, _reserved = HEADER.unpack_from(data, 0)
    if magic != MAGIC:
        raise RecorderError(
            f"not a flight record (bad magic {magic!r}, expected {MAGIC!r})", file_path
        )
    if version != FORMAT_VERSION:
        raise RecorderError(
            f"flight-record format version {version} is not supported "
            f"(this tailguard reads version {FORMAT_VERSION}); read it with a matching release",
            file_path,
        )
    pos = HEADER_BYTES
    end = len(data)
    while pos < end:
        if end - pos < _FRAME_HEAD.size:
            log.truncated_tail = True
            return
        length, crc = _FRAME_HEAD.unpack_from(data, pos)
        start = pos + _FRAME_HEAD.size
        if start + length > end:
            log.truncated_tail = True
            return
        payload = data[start : start + length]
        record = _decode(payload) if zlib.crc32(payload) == crc else None
        if record is None:
            log.corrupt_frames += 1
            return
        log.records.append(record)
        pos = start + length


def _decode(payload: bytes) -> dict[str, Any] | None:
    try:
        seq, kind, tick, t_ns, fields = msgpack.unpackb(payload, raw=False)
    except (ValueError, TypeError, msgpack.exceptions.UnpackException):
        return None
    if not (isinstance(seq, int) and isinstance(kind, str) and isinstance(fields, dict)):
        return None
    return {"seq": seq, "kind": kind, "tick": tick, "t_ns": t_ns, "fields": fields}

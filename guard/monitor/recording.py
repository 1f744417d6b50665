"""``--record`` files: every message as received, with its receive time, for ``--once``.

Format (little-endian)::

    header  MAGIC (8 bytes) | u16 version | u16 reserved (0)
    frame   u32 payload length | i64 receive time (monotonic ns) | i64 wall time (ns) | payload

The payload is the raw ZMQ frame, malformed or not, so an offline analysis sees exactly
what the live monitor saw. A frame cut short at the end (a killed monitor) is ignored.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from pathlib import Path

from tailguard.errors import TailguardError

__all__ = ["MAGIC", "RecordingWriter", "iter_recording"]

MAGIC = b"TGMONREC"
VERSION = 1
_HEADER = struct.Struct("<8sHH")
_FRAME = struct.Struct("<Iqq")
_MAX_FRAME_BYTES = 64 * 1024 * 1024


class RecordingWriter:
    """Appends received messages to a recording, up to ``max_bytes`` (then stops, counting).

    Args:
        path: file to create (replaced if it exists).
        max_bytes: size bound, bytes.

    Raises:
        TailguardError: the file cannot be created.
    """

    def __init__(self, path: str | Path, max_bytes: int = 512 * 1024 * 1024) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.skipped = 0
        try:
            self._f = open(self.path, "wb")  # noqa: SIM115 -- closed in close()
            self._f.write(_HEADER.pack(MAGIC, VERSION, 0))
        except OSError as exc:
            raise TailguardError(f"cannot create the recording ({exc})", self.path) from exc
        self._size = _HEADER.size

    def write(self, payload: bytes, mono_ns: int, wall_ns: int) -> None:
        """Append one message (buffered; flushed by :meth:`flush` and :meth:`close`)."""
        n = _FRAME.size + len(payload)
        if self._size + n > self.max_bytes:
            self.skipped += 1
            return
        self._f.write(_FRAME.pack(len(payload), mono_ns, wall_ns))
        self._f.write(payload)
        self._size += n

    def flush(self) -> None:
        """Hand buffered frames to the OS."""
        self._f.flush()

    def close(self) -> None:
        """Flush and close. Idempotent."""
        if not self._f.closed:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()


def is_recording(path: str | Path) -> bool:
    """True if the file starts with the recording magic."""
    with open(path, "rb") as f:
        return f.read(len(MAGIC)) == MAGIC


def iter_recording(path: str | Path) -> Iterator[tuple[int, int, bytes]]:
    """Yield ``(mono_ns, wall_ns, payload)`` for each complete frame.

    Raises:
        TailguardError: not a recording, or another version.
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise TailguardError(f"cannot read ({exc})", p) from exc
    if len(data) < _HEADER.size:
        raise TailguardError("not a monitor recording (too short)", p)
    magic, version, _ = _HEADER.unpack_from(data, 0)
    if magic != MAGIC:
        raise TailguardError(f"not a monitor recording (magic {magic!r})", p)
    if version != VERSION:
        raise TailguardError(f"recording version {version} is not supported (reads {VERSION})", p)
    pos = _HEADER.size
    while pos + _FRAME.size <= len(data):
        length, mono_ns, wall_ns = _FRAME.unpack_from(data, pos)
        start = pos + _FRAME.size
        if length > _MAX_FRAME_BYTES or start + length > len(data):
            return
        yield mono_ns, wall_ns, data[start : start + length]
        pos = start + length

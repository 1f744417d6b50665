"""Flight recorder: every violation and state change of a guard, on disk, readable after a crash.

The guard's hot path must not do I/O. :meth:`FlightRecorder.append` only puts a tuple on a
deque; a background daemon thread drains the deque every ``flush_interval_s``, packs the
records with msgpack and writes them with ``os.write`` on an ``O_APPEND`` descriptor. There
is no user-space buffering, so a ``kill -9`` loses at most the records not yet drained and
a partially written last frame, which :func:`read_flight_record` reports as a truncated tail.

The file format and the reader are in :mod:`tailguard.protocol.flight_record`.

``seq`` is assigned by the writer, counts up from 0 in each recorder session and skips no
number: a gap means frames were lost on disk. Records the producer could not queue are
counted in ``dropped_count`` and announced by a ``"fault"`` record.

Size is bounded by ``max_bytes``, split over the live file ``PATH`` and one rotated file
``PATH.1``; each holds at most ``max_bytes // 2`` bytes. When the next frame would not fit
in the live file, ``PATH`` is renamed to ``PATH.1`` (replacing it) and a new ``PATH`` starts.
A new recorder moves an existing ``PATH`` to ``PATH.1`` so the previous run (for instance
the one that crashed) stays readable.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import math
import operator
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from tailguard.errors import ConfigError, RecorderError
from tailguard.protocol.flight_record import (
    FORMAT_VERSION,
    HEADER,
    HEADER_BYTES,
    MAGIC,
    RECORD_KINDS,
    FlightLog,
    pack_frame,
    read_flight_record,
    rotated_path,
)

# Re-exported: the writer's users read back what they wrote from here.
__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "RECORD_KINDS",
    "FlightLog",
    "FlightRecorder",
    "read_flight_record",
]

_MIN_MAX_BYTES = 4096
# One os.write per this many bytes at most; keeps the writer's buffer small.
_WRITE_CHUNK_BYTES = 256 * 1024
# Indirection so tests can make writes fail without patching os for the whole process.
_write_fd = os.write


class FlightRecorder:
    """Records guard events to a bounded pair of files from a background thread.

    Example::

        with FlightRecorder("run/flight.tgfr") as recorder:
            ...
            recorder.append(("state", tick, now_ns, {"from": "nominal", "to": "hold"}))

    Args:
        path: the live file. ``PATH.1`` next to it holds the previous half of the budget.
        max_bytes: bound on the combined size of ``PATH`` and ``PATH.1``, bytes (>= 4096).
        max_queue: records that may wait for the writer; more are dropped and counted.
        flush_interval_s: how often the writer drains the queue, s.
        clock: integer-ns clock for the ``t_ns`` of records the writer adds itself,
            called from the writer thread. Give it the producer's time base, so that one
            file holds one clock: a ``Guard`` that creates its recorder passes the start
            of its latest tick on its own clock.

    Raises:
        RecorderError: the file cannot be created (missing directory, permissions), or
            ``PATH`` / ``PATH.1`` exists and is not a flight record (it is not overwritten).
        ValueError: a size or interval argument is out of range.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_bytes: int = 8 * 1024 * 1024,
        max_queue: int = 65536,
        flush_interval_s: float = 0.02,
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int):
            raise ConfigError(f"max_bytes must be an int, got {type(max_bytes).__name__}")
        if max_bytes < _MIN_MAX_BYTES:
            raise ConfigError(f"max_bytes must be >= {_MIN_MAX_BYTES}, got {max_bytes}")
        if isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 1:
            raise ConfigError(f"max_queue must be a positive int, got {max_queue!r}")
        if not (
            isinstance(flush_interval_s, int | float)
            and math.isfinite(flush_interval_s)
            and 0 < flush_interval_s <= 60
        ):
            raise ConfigError(
                f"flush_interval_s must be a number in (0, 60] s, got {flush_interval_s!r}"
            )
        self.path = Path(path)
        self.rotated_path = rotated_path(self.path)
        self.max_bytes = max_bytes
        self.max_queue = max_queue
        self.flush_interval_s = float(flush_interval_s)
        self._clock = clock
        self._file_limit_bytes = max_bytes // 2
        # The largest frame that fits in an empty file; bigger records become a fault record.
        self._max_frame_bytes = self._file_limit_bytes - HEADER_BYTES

        # Producer side (the guard's thread): touched by append() only.
        self._queue: deque[tuple[Any, ...]] = deque()
        self._appended = 0
        self._dropped = 0
        self._closed = False

        # Writer side (background thread).
        self._fd = -1
        self._live_bytes = 0
        self._seq = 0
        self._last_tick = -1
        self._notices: deque[tuple[str, int, int, dict[str, Any]]] = deque()
        self._reported_dropped = 0
        self._pending = b""  # bytes of a write that failed part-way, retried first
        self._pending_records = 0
        self._carry: tuple[bytes, int] | None = None  # a frame that waits for a rotation
        self._written = 0
        self._write_errors = 0
        self._errors_since_ok = 0
        self._last_error = ""
        self._rotations = 0

        self._check_existing(self.path)
        self._check_existing(self.rotated_path)
        try:
            self._rotate()
        except OSError as exc:
            raise RecorderError(
                f"cannot create the flight record ({exc.strerror or exc}); "
                "make sure the directory exists and is writable, or pass another path",
                self.path,
            ) from exc

        self._wake = threading.Event()
        self._stop = False
        self._progress = threading.Condition()
        self._thread = threading.Thread(
            target=self._run, name=f"tailguard-flight-recorder:{self.path.name}", daemon=True
        )
        self._thread.start()
        # Drain on interpreter exit too; the partial keeps one registration per recorder.
        self._atexit = functools.partial(FlightRecorder.close, self)
        atexit.register(self._atexit)

    # -- producer side ----------------------------------------------------------------

    def append(self, record: tuple[Any, ...]) -> None:
        """Queue one record; O(1), no I/O, never raises. Safe from one producer thread.

        Args:
            record: ``(kind, tick, t_ns, fields)`` with ``kind`` one of ``RECORD_KINDS``,
                ``tick`` the guard's tick counter, ``t_ns`` its clock in ns and ``fields``
                a dict of msgpack-able values (enums and numpy values are converted).
                A malformed record is written as a ``"fault"`` record describing it.
        """
        if self._closed or len(self._queue) >= self.max_queue:
            self._dropped += 1
            return
        self._queue.append(record)
        self._appended += 1

    @property
    def dropped_count(self) -> int:
        """Records lost because the queue was full (or the recorder was closed)."""
        return self._dropped

    @property
    def write_errors(self) -> int:
        """Failed writes, renames or opens of the files; the writer keeps retrying."""
        return self._write_errors

    @property
    def written_count(self) -> int:
        """Records appended by the producer that are now completely on disk."""
        return self._written

    @property
    def rotations(self) -> int:
        """How many times the live file was rotated to ``PATH.1`` (not counting startup)."""
        return max(0, self._rotations - 1)

    def flush(self, timeout_s: float = 1.0) -> bool:
        """Wait until every record appended before this call is written to the file.

        Written means handed to the OS with ``os.write``: it survives the process being
        killed, not a power cut.

        Args:
            timeout_s: longest wait, s.

        Returns:
            True if everything was written, False on timeout (for example while writes fail).
        """
        target = self._appended
        if self._written >= target:
            return True
        if not self._thread.is_alive():
            return False
        self._wake.set()
        with self._progress:
            return self._progress.wait_for(lambda: self._written >= target, timeout_s)

    def close(self, timeout_s: float = 2.0) -> None:
        """Drain the queue, write it, and close the file. Idempotent.

        Args:
            timeout_s: longest wait for the writer thread to finish, s.
        """
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self._atexit)
        self._stop = True
        self._wake.set()
        self._thread.join(timeout_s)

    def __enter__(self) -> FlightRecorder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- writer side --------------------------------------------------------------------

    @staticmethod
    def _check_existing(path: Path) -> None:
        """Refuse to rotate away or overwrite a file that is not a flight record."""
        try:
            with open(path, "rb") as existing:
                head = existing.read(len(MAGIC))
        except FileNotFoundError:
            return
        except OSError as exc:
            raise RecorderError(
                f"cannot read the existing file ({exc.strerror or exc}); "
                "fix its permissions or pass another path",
                path,
            ) from exc
        if head and not MAGIC.startswith(head):
            raise RecorderError(
                "exists and is not a flight record; refusing to overwrite it. "
                "Pass another path or remove the file",
                path,
            )

    def _rotate(self) -> None:
        """Move PATH to PATH.1 (if present) and start a new PATH with a header.

        The old descriptor is closed only once the new file is ready. After a failure the
        caller retries on its next drain; a half-made new file is removed first so that the
        retry cannot rename it over the good ``PATH.1``.

        Raises:
            OSError: the rename, open or header write failed.
        """
        if self.path.exists():
            os.replace(self.path, self.rotated_path)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(self.path, flags, 0o644)
        try:
            header = HEADER.pack(MAGIC, FORMAT_VERSION, 0)
            if os.write(fd, header) != len(header):
                raise OSError("short write of the flight-record header")
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            raise
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd = fd
        self._live_bytes = HEADER_BYTES
        self._rotations += 1

    def _run(self) -> None:
        while not self._stop:
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            self._drain_safely()
        self._drain_safely()
        if self._pending:
            # The final drain could not write everything; those records are lost.
            self._pending = b""
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.fsync(self._fd)
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
        with self._progress:
            self._progress.notify_all()

    def _drain_safely(self) -> None:
        try:
            self._drain()
        except Exception as exc:  # the writer thread must outlive any single failure
            self._note_error(exc)
        with self._progress:
            self._progress.notify_all()

    def _note_error(self, exc: BaseException) -> None:
        self._write_errors += 1
        self._errors_since_ok += 1
        self._last_error = f"{type(exc).__name__}: {exc}"

    def _next_frame(self) -> tuple[bytes, int] | None:
        """The next frame to write and how many user records it holds (0 or 1)."""
        if self._notices:
            kind, tick, t_ns, fields = self._notices.popleft()
            user = 0
        elif self._queue:
            record = self._queue.popleft()
            user = 1
            try:
                kind, tick, t_ns, fields = record
                if not (isinstance(kind, str) and isinstance(fields, dict)):
                    raise TypeError("expected (str, int, int, dict)")
                # operator.index accepts numpy integers and rejects floats and strings.
                tick, t_ns = operator.index(tick), operator.index(t_ns)
            except (TypeError, ValueError):
                kind, tick, t_ns = "fault", self._last_tick, self._clock()
                fields = {"reason": "malformed_record", "record": repr(record)[:200]}
        else:
            dropped = self._dropped
            if dropped == self._reported_dropped:
                return None
            fields = {
                "reason": "queue_overflow",
                "dropped": dropped - self._reported_dropped,
                "dropped_total": dropped,
            }
            self._reported_dropped = dropped
            kind, tick, t_ns, user = "fault", self._last_tick, self._clock(), 0
        try:
            frame = pack_frame(self._seq, kind, tick, t_ns, fields)
        except Exception as exc:  # e.g. a value msgpack cannot represent at all
            frame = pack_frame(
                self._seq,
                "fault",
                tick,
                t_ns,
                {"reason": "unencodable_record", "kind": kind, "error": repr(exc)[:200]},
            )
        if len(frame) > self._max_frame_bytes:
            frame = pack_frame(
                self._seq,
                "fault",
                tick,
                t_ns,
                {"reason": "record_too_large", "kind": kind, "bytes": len(frame)},
            )
        self._seq += 1
        self._last_tick = tick
        return frame, user

    def _write(self, data: bytes, records: int) -> bool:
        """Write all of ``data``; on failure keep the unwritten rest for the next drain."""
        view = memoryview(data)
        done = 0
        try:
            while done < len(view):
                done += _write_fd(self._fd, view[done:])
        except OSError as exc:
            self._note_error(exc)
            self._pending = bytes(view[done:])
            self._pending_records = records
            self._live_bytes += done
            return False
        self._live_bytes += done
        self._written += records
        if self._errors_since_ok:
            self._notices.append(
                (
                    "fault",
                    self._last_tick,
                    self._clock(),
                    {
                        "reason": "write_error",
                        "errors": self._errors_since_ok,
                        "last_error": self._last_error[:200],
                    },
                )
            )
            self._errors_since_ok = 0
        return True

    def _drain(self) -> None:
        if self._pending:
            data, records = self._pending, self._pending_records
            self._pending, self._pending_records = b"", 0
            if not self._write(data, records):
                return
        buf = bytearray()
        buf_records = 0
        while True:
            item = self._carry if self._carry is not None else self._next_frame()
            if item is None:
                break
            self._carry = None
            frame, user = item
            if self._live_bytes + len(buf) + len(frame) > self._file_limit_bytes:
                if buf and not self._write(bytes(buf), buf_records):
                    self._carry = item
                    return
                buf.clear()
                buf_records = 0
                try:
                    self._rotate()
                except OSError as exc:
                    self._note_error(exc)
                    self._carry = item
                    return
            buf += frame
            buf_records += user
            if len(buf) >= _WRITE_CHUNK_BYTES:
                if not self._write(bytes(buf), buf_records):
                    return
                buf.clear()
                buf_records = 0
        if buf:
            self._write(bytes(buf), buf_records)

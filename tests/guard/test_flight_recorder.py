"""Tests for tailguard.sinks.flight_recorder: round trip, rotation, loss accounting, crash
survival."""

from __future__ import annotations

import enum
import errno
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tailguard.errors import RecorderError
from tailguard.sinks import flight_recorder
from tailguard.sinks.flight_recorder import MAGIC, FlightRecorder, read_flight_record

REPO_ROOT = Path(__file__).resolve().parents[2]
CHILD = Path(__file__).with_name("_recorder_child.py")
HEADER_BYTES = 12


class _Color(enum.Enum):
    RED = "red"


def _write_records(path: Path, n: int, **kwargs: Any) -> FlightRecorder:
    recorder = FlightRecorder(path, **kwargs)
    for tick in range(n):
        recorder.append(("violation", tick, 1_000 * tick, {"value": tick, "name": f"r{tick}"}))
    recorder.close()
    return recorder


def test_round_trip_preserves_records_in_order(tmp_path: Path) -> None:
    """Every appended record is read back with its kind, tick, t_ns, fields and seq 0..n-1."""
    path = tmp_path / "flight.tgfr"
    kinds = ["violation", "state", "fault", "note"]
    with FlightRecorder(path) as recorder:
        for tick in range(500):
            fields = {"latency_ns": 10 * tick, "ok": tick % 2 == 0, "x": [1.5, -2.0]}
            recorder.append((kinds[tick % 4], tick, 7 * tick, fields))
        assert recorder.flush(timeout_s=5.0)
        assert recorder.written_count == 500
    log = read_flight_record(path)
    assert [r["seq"] for r in log.records] == list(range(500))
    assert [r["kind"] for r in log.records] == [kinds[t % 4] for t in range(500)]
    assert log.records[123] == {
        "seq": 123,
        "kind": "note",
        "tick": 123,
        "t_ns": 861,
        "fields": {"latency_ns": 1230, "ok": False, "x": [1.5, -2.0]},
    }
    assert not log.truncated_tail
    assert log.corrupt_frames == 0
    assert log.files == [str(path)]


def test_enum_and_numpy_values_are_converted(tmp_path: Path) -> None:
    """Enums are written by value and numpy scalars / arrays as plain Python values."""
    path = tmp_path / "flight.tgfr"
    with FlightRecorder(path) as recorder:
        fields = {"color": _Color.RED, "v": np.float32(0.5), "a": np.arange(3), "n": np.int64(4)}
        recorder.append(("violation", np.int64(1), np.int64(2), fields))
    (record,) = read_flight_record(path).records
    assert (record["kind"], record["tick"], record["t_ns"]) == ("violation", 1, 2)
    assert record["fields"] == {"color": "red", "v": 0.5, "a": [0, 1, 2], "n": 4}


@pytest.mark.parametrize(
    "bad_record",
    [
        ("state", 1, 2),
        "not a tuple",
        ("state", "tick?", 2, {}),
        ("state", 1.5, 2, {}),
        (3, 1, 2, {}),
        ("s", 1, 2, []),
    ],
)
def test_malformed_record_becomes_a_fault_record(tmp_path: Path, bad_record: Any) -> None:
    """A malformed record does not stop the writer; it is written as a fault describing it."""
    path = tmp_path / "flight.tgfr"
    with FlightRecorder(path) as recorder:
        recorder.append(bad_record)
        recorder.append(("note", 5, 6, {"after": True}))
    records = read_flight_record(path).records
    assert [r["seq"] for r in records] == [0, 1]
    assert records[0]["kind"] == "fault"
    assert records[0]["fields"]["reason"] == "malformed_record"
    assert records[1]["fields"] == {"after": True}


def test_rotation_bounds_total_size_and_keeps_newest(tmp_path: Path) -> None:
    """With rotation, PATH + PATH.1 never exceed max_bytes and hold the newest records."""
    path = tmp_path / "flight.tgfr"
    max_bytes = 8192
    recorder = FlightRecorder(path, max_bytes=max_bytes)
    for batch in range(20):
        for tick in range(batch * 100, (batch + 1) * 100):
            recorder.append(("state", tick, tick, {"pad": "y" * (tick % 40)}))
        assert recorder.flush(timeout_s=5.0)
        rotated = path.with_name(path.name + ".1")
        total = path.stat().st_size + (rotated.stat().st_size if rotated.exists() else 0)
        assert total <= max_bytes
    recorder.close()
    assert recorder.rotations > 0
    log = read_flight_record(path)
    assert log.files == [str(path) + ".1", str(path)]
    seqs = [r["seq"] for r in log.records]
    assert seqs == list(range(seqs[0], 2000))  # contiguous up to the newest
    assert log.records[-1]["tick"] == 1999
    assert len(log.records) > 50  # at least the rotated half is kept
    assert not log.truncated_tail and log.corrupt_frames == 0


def test_oversized_record_is_replaced_by_a_fault(tmp_path: Path) -> None:
    """A record larger than half of max_bytes is replaced by a record_too_large fault."""
    path = tmp_path / "flight.tgfr"
    with FlightRecorder(path, max_bytes=4096) as recorder:
        recorder.append(("note", 1, 1, {"blob": "z" * 5000}))
        recorder.append(("note", 2, 2, {"small": 1}))
    records = read_flight_record(path).records
    assert records[0]["kind"] == "fault"
    assert records[0]["fields"]["reason"] == "record_too_large"
    assert records[1]["fields"] == {"small": 1}


def test_queue_overflow_is_counted_and_reported(tmp_path: Path) -> None:
    """Records beyond max_queue are dropped, counted, and announced by one fault record."""
    path = tmp_path / "flight.tgfr"
    # A long flush interval keeps the writer asleep while the queue fills.
    recorder = FlightRecorder(path, max_queue=100, flush_interval_s=30.0)
    for tick in range(150):
        recorder.append(("state", tick, tick, {}))
    assert recorder.dropped_count == 50
    assert recorder.flush(timeout_s=5.0)
    recorder.close()
    records = read_flight_record(path).records
    assert [r["tick"] for r in records[:100]] == list(range(100))
    fault = records[100]
    assert fault["kind"] == "fault"
    assert fault["fields"] == {"reason": "queue_overflow", "dropped": 50, "dropped_total": 50}
    assert [r["seq"] for r in records] == list(range(101))


def test_append_after_close_is_counted_not_raised(tmp_path: Path) -> None:
    """append() after close() never raises; the record is counted as dropped."""
    recorder = _write_records(tmp_path / "flight.tgfr", 3)
    recorder.append(("state", 9, 9, {}))
    recorder.close()  # idempotent
    assert recorder.dropped_count == 1
    assert len(read_flight_record(tmp_path / "flight.tgfr").records) == 3


def test_write_errors_are_counted_and_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A partial write then failing writes are retried: no record lost, errors reported."""
    path = tmp_path / "flight.tgfr"
    calls = {"n": 0}
    real_write = os.write

    def flaky_write(fd: int, data: Any) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            return real_write(fd, bytes(data[: len(data) // 2]))  # short write
        if calls["n"] <= 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    recorder = FlightRecorder(path, flush_interval_s=0.005)
    monkeypatch.setattr(flight_recorder, "_write_fd", flaky_write)
    for tick in range(50):
        recorder.append(("violation", tick, tick, {"i": tick}))
    assert recorder.flush(timeout_s=5.0)
    recorder.close()
    assert recorder.write_errors == 3
    log = read_flight_record(path)
    assert log.corrupt_frames == 0 and not log.truncated_tail
    assert [r["seq"] for r in log.records] == list(range(51))
    assert [r["tick"] for r in log.records if r["kind"] == "violation"] == list(range(50))
    (fault,) = [r for r in log.records if r["kind"] == "fault"]
    assert fault["fields"]["reason"] == "write_error"
    assert fault["fields"]["errors"] == 3
    assert "No space left" in fault["fields"]["last_error"]


def test_failed_rotation_keeps_size_bound_and_recovers(tmp_path: Path) -> None:
    """While PATH.1 cannot be replaced, writing pauses within the bound; then nothing is lost."""
    path = tmp_path / "flight.tgfr"
    rotated = tmp_path / "flight.tgfr.1"
    recorder = FlightRecorder(path, max_bytes=4096, flush_interval_s=0.005)
    rotated.mkdir()  # os.replace(file, non-empty directory) fails
    (rotated / "blocker").write_bytes(b"")
    for tick in range(100):
        recorder.append(("state", tick, tick, {"pad": "p" * 20}))
    assert not recorder.flush(timeout_s=0.2)
    assert recorder.write_errors > 0
    assert path.stat().st_size <= 2048
    (rotated / "blocker").unlink()
    rotated.rmdir()
    assert recorder.flush(timeout_s=5.0)
    recorder.close()
    log = read_flight_record(path)
    ticks = [r["tick"] for r in log.records if r["kind"] == "state"]
    assert ticks == list(range(ticks[0], 100))
    assert [r["seq"] for r in log.records] == list(range(log.records[0]["seq"], 101))
    assert any(r["fields"].get("reason") == "write_error" for r in log.records)


def test_truncated_tail_is_flagged_not_raised(tmp_path: Path) -> None:
    """Chopping bytes off the last frame yields the intact records and truncated_tail."""
    path = tmp_path / "flight.tgfr"
    _write_records(path, 10)
    size = path.stat().st_size
    for chop in (1, 3, 9):  # inside the payload, and inside the frame header
        with open(path, "r+b") as f:
            f.truncate(size - chop)
        log = read_flight_record(path)
        assert [r["tick"] for r in log.records] == list(range(9))
        assert log.truncated_tail
        assert log.corrupt_frames == 0


def test_partial_header_is_a_truncated_empty_file(tmp_path: Path) -> None:
    """A live file cut inside its header reads as no records with truncated_tail set."""
    path = tmp_path / "flight.tgfr"
    path.write_bytes(MAGIC[:5])
    log = read_flight_record(path)
    assert log.records == [] and log.truncated_tail


def test_bad_crc_stops_reading_that_file(tmp_path: Path) -> None:
    """A frame with a wrong checksum is counted and reading of that file stops there."""
    path = tmp_path / "flight.tgfr"
    _write_records(path, 10)
    data = bytearray(path.read_bytes())
    pos = HEADER_BYTES
    for _ in range(4):  # skip to the fifth frame
        (length,) = struct.unpack_from("<I", data, pos)
        pos += 8 + length
    data[pos + 8] ^= 0xFF
    path.write_bytes(bytes(data))
    log = read_flight_record(path)
    assert [r["tick"] for r in log.records] == [0, 1, 2, 3]
    assert log.corrupt_frames == 1
    assert not log.truncated_tail


def _header(magic: bytes, version: int) -> bytes:
    return struct.pack("<8sHH", magic, version, 0)


def _frame(payload: bytes) -> bytes:
    return struct.pack("<II", len(payload), zlib.crc32(payload)) + payload


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"this is a text file, not a record\n", "not a flight record (bad magic"),
        (b"XY", "not a flight record (bad magic)"),
        (_header(b"TGFLTREX", 1), "not a flight record (bad magic"),
        (_header(MAGIC, 99), "format version 99 is not supported"),
    ],
)
def test_unreadable_file_raises_recorder_error(
    tmp_path: Path, content: bytes, fragment: str
) -> None:
    """A file that is not a flight record of this version raises RecorderError naming it."""
    path = tmp_path / "flight.tgfr"
    path.write_bytes(content)
    with pytest.raises(RecorderError, match=r"flight\.tgfr") as info:
        read_flight_record(path)
    assert fragment in str(info.value)


def test_frame_with_valid_crc_but_bad_content_is_corrupt(tmp_path: Path) -> None:
    """A checksummed frame whose payload is not a record is counted as corrupt."""
    path = tmp_path / "flight.tgfr"
    path.write_bytes(_header(MAGIC, 1) + _frame(b"\x93\x01\x02\x03"))
    log = read_flight_record(path)
    assert log.records == [] and log.corrupt_frames == 1


def test_missing_record_raises_recorder_error(tmp_path: Path) -> None:
    """Reading a path where no record (nor its rotation) exists raises RecorderError."""
    with pytest.raises(RecorderError, match="no flight record here"):
        read_flight_record(tmp_path / "nothing.tgfr")


def test_missing_directory_raises_recorder_error_with_fix(tmp_path: Path) -> None:
    """Opening a recorder in a missing directory raises RecorderError naming path and fix."""
    path = tmp_path / "no" / "such" / "dir" / "flight.tgfr"
    with pytest.raises(RecorderError, match="make sure the directory exists") as info:
        FlightRecorder(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("name", ["flight.tgfr", "flight.tgfr.1"])
def test_refuses_to_clobber_a_foreign_file(tmp_path: Path, name: str) -> None:
    """A recorder never renames or overwrites an existing file that is not a flight record."""
    foreign = tmp_path / name
    foreign.write_bytes(b"precious data")
    with pytest.raises(RecorderError, match="not a flight record; refusing to overwrite"):
        FlightRecorder(tmp_path / "flight.tgfr")
    assert foreign.read_bytes() == b"precious data"


def test_new_recorder_keeps_previous_run_in_rotation(tmp_path: Path) -> None:
    """Starting a recorder moves the previous run's file to PATH.1 instead of erasing it."""
    path = tmp_path / "flight.tgfr"
    _write_records(path, 5)
    _write_records(path, 2)
    log = read_flight_record(path)
    assert [r["seq"] for r in log.records] == [0, 1, 2, 3, 4, 0, 1]


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"max_bytes": 1000}, "max_bytes must be >= 4096"),
        ({"max_bytes": 8192.0}, "max_bytes must be an int"),
        ({"max_queue": 0}, "max_queue must be a positive int"),
        ({"flush_interval_s": 0}, "flush_interval_s must be a number in (0, 60]"),
        ({"flush_interval_s": float("nan")}, "flush_interval_s must be a number"),
    ],
)
def test_bad_arguments_raise_value_error(
    tmp_path: Path, kwargs: dict[str, Any], fragment: str
) -> None:
    """Out-of-range sizes and intervals raise ValueError naming the argument."""
    with pytest.raises(ValueError) as info:
        FlightRecorder(tmp_path / "flight.tgfr", **kwargs)
    assert fragment in str(info.value)
    assert not (tmp_path / "flight.tgfr").exists()


@pytest.mark.timeout(30)
def test_records_survive_sigkill_of_the_writer_process(tmp_path: Path) -> None:
    """After kill -9 every record read is intact, seq runs 0..n-1, a cut tail is only flagged."""
    path = tmp_path / "flight.tgfr"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    child = subprocess.Popen(
        [sys.executable, str(CHILD), str(path)],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        give_up_s = time.monotonic() + 10.0
        seen = 0
        while time.monotonic() < give_up_s and child.poll() is None:
            if path.exists():
                seen = len(read_flight_record(path).records)
                if seen >= 200:
                    break
            time.sleep(0.01)
        assert child.poll() is None, f"child exited early: {child.stderr.read().decode()!r}"
        assert seen >= 200, f"child wrote only {seen} records in 10 s"
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=5)
        assert child.returncode == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=5)
        if child.stderr is not None:
            child.stderr.close()
    log = read_flight_record(path)
    n = len(log.records)
    assert n >= 200
    assert log.corrupt_frames == 0
    assert [r["seq"] for r in log.records] == list(range(n))
    for record in log.records:
        assert record["kind"] == "state"
        assert record["tick"] == record["seq"] == record["fields"]["tick"]
        assert record["fields"]["pad"] == "x" * (record["tick"] % 97)
    # The kill lands anywhere: the tail is flagged exactly when the file does not end on a
    # frame boundary (walked here from the documented u32 length | u32 crc | payload).
    data = path.read_bytes()
    complete_end = HEADER_BYTES
    while complete_end + 8 <= len(data):
        (length,) = struct.unpack_from("<I", data, complete_end)
        if complete_end + 8 + length > len(data):
            break
        complete_end += 8 + length
    assert log.truncated_tail is (complete_end != len(data))
    assert complete_end > HEADER_BYTES, "the live file holds no complete frame"
    # Both outcomes, whatever the kill did: cut at the last frame boundary -> not flagged,
    # same records; one byte less -> flagged, the last record dropped, nothing corrupt.
    path.write_bytes(data[:complete_end])
    clean = read_flight_record(path)
    assert clean.truncated_tail is False and clean.records == log.records
    path.write_bytes(data[: complete_end - 1])
    cut = read_flight_record(path)
    assert cut.truncated_tail is True and cut.corrupt_frames == 0
    assert cut.records == log.records[:-1]


def test_a_guard_made_recorder_uses_the_guards_time_base(tmp_path: Path) -> None:
    """A recorder the guard creates stamps its own records (here: a malformed record it
    replaces with a fault) on the guard's simulated clock: one file, one time base."""
    from tailguard import CallablePolicy, Guard, starter_envelope

    sim_start_ns = 10**18  # far from any monotonic_ns reading
    now = [sim_start_ns]
    period_ns = 10_000_000
    env = starter_envelope(obs_size=2, action_size=1, period_ns=period_ns)
    path = tmp_path / "sim.tgfr"
    guard = Guard(CallablePolicy(lambda o: [0.0], 2, 1), env, clock=lambda: now[0], recorder=path)
    for tick in range(20):
        if tick == 5:
            guard.request_event(("fault", "not a tick", 0, {}))  # the recorder re-stamps it
        guard.step(np.full(2, np.nan) if tick == 10 else np.zeros(2))
        now[0] += period_ns
    guard.close()
    log = read_flight_record(path)
    reasons = [r["fields"].get("reason") for r in log.records]
    assert "malformed_record" in reasons and len(log.records) >= 3
    assert all(sim_start_ns <= r["t_ns"] <= now[0] for r in log.records), [
        r["t_ns"] for r in log.records
    ]

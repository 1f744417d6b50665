"""The monitor's core loop: messages in, statistics, rules and alerts out.

:class:`Monitor` has no socket and no clock: :func:`run_live` feeds it from a ZMQ SUB
socket with the monotonic clock, :func:`analyse_file` from a recording or a flight record
with the stored times. Both therefore raise the same alerts for the same input.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

from tailguard.errors import RecorderError, TailguardError
from tailguard.monitor.alerts import AlertSink, wall_iso
from tailguard.monitor.recording import RecordingWriter, is_recording, iter_recording
from tailguard.monitor.rules import Rule, RuleEngine
from tailguard.monitor.stats import MonitorState
from tailguard.protocol.telemetry_wire import MAX_MESSAGE_BYTES

__all__ = ["Monitor", "analyse_file", "run_live", "EXIT_OK", "EXIT_WARN", "EXIT_FAIL"]

EXIT_OK, EXIT_WARN, EXIT_FAIL = 0, 1, 2
_NS_PER_S = 1_000_000_000


class Monitor:
    """Statistics + rules + alert dispatch for one watched guard.

    Args:
        rules: alert rules to evaluate every ``eval_interval_s``.
        sink: where alerts go.
        window_s: rolling window of the metrics, s.
        heartbeat_misses: silent heartbeat periods before a ``heartbeat_lost`` alert.
        eval_interval_s: how often rules are evaluated, s (of message time).
        recorder: writes every received message (``--record``), or None.
    """

    def __init__(
        self,
        rules: tuple[Rule, ...],
        sink: AlertSink,
        *,
        window_s: float = 10.0,
        heartbeat_misses: int = 3,
        eval_interval_s: float = 1.0,
        recorder: RecordingWriter | None = None,
    ) -> None:
        self.state = MonitorState(window_s, heartbeat_misses)
        self.engine = RuleEngine(rules)
        self.sink = sink
        self.recorder = recorder
        self._eval_ns = int(eval_interval_s * _NS_PER_S)
        self._next_eval: int | None = None
        self._wall_ns = 0
        self.notes: list[dict[str, Any]] = []  # notable events, bounded

    def on_message(self, data: bytes, mono_ns: int, wall_ns: int) -> None:
        """One raw message received at ``mono_ns`` (never raises on bad input)."""
        if self.recorder is not None:
            self.recorder.write(data, mono_ns, wall_ns)
        self.advance(mono_ns, wall_ns)
        self._handle(self.state.ingest(data, mono_ns), mono_ns)

    def on_record(self, record: dict[str, Any]) -> None:
        """One flight-recorder record (offline analysis)."""
        t_ns = record.get("t_ns")
        t_ns = t_ns if isinstance(t_ns, int) else 0
        self.advance(t_ns, 0, liveness=False)
        self._handle(self.state.ingest_record(record, t_ns), t_ns)

    def advance(self, mono_ns: int, wall_ns: int, liveness: bool = True) -> None:
        """Let time pass: liveness check, and the rules when an evaluation is due."""
        self._wall_ns = wall_ns
        if liveness:
            self._handle(self.state.check_liveness(mono_ns), mono_ns)
        if self._next_eval is None:
            if self.state.last_rx_ns is None:
                return
            self._next_eval = mono_ns + self._eval_ns
        if mono_ns >= self._next_eval and not self.state.silent:
            self._next_eval = mono_ns + self._eval_ns
            metrics = self.state.metrics(mono_ns)
            for alert in self.engine.evaluate(metrics, mono_ns):
                self._emit(alert)

    def _emit(self, alert: dict[str, Any]) -> None:
        alert = {
            "time": wall_iso(self._wall_ns) if self._wall_ns else None,
            **alert,
            "guard_id": self.state.guard_id,
            "tick": self.state.last_tick,
        }
        self.sink.emit(alert)

    def _handle(self, events: list[dict[str, Any]], now_ns: int) -> None:
        for ev in events:
            kind = ev["event"]
            self.notes.append(ev)
            del self.notes[:-200]
            if kind == "heartbeat_lost":
                self._emit(
                    {
                        "rule": "heartbeat_lost",
                        "severity": "fail",
                        "metric": "silence_s",
                        "value": round(ev["silence_s"], 3),
                        "threshold": self.state.heartbeat_misses * self.state.heartbeat_ns / 1e9,
                        "window": f"{self.state.heartbeat_misses} heartbeat periods",
                        "actions": ["log", "alert"],
                    }
                )
            elif kind == "resumed":
                self._emit(
                    {
                        "rule": "resumed",
                        "severity": "info",
                        "metric": "gap_s",
                        "value": round(ev["gap_s"], 3),
                        "source": ev.get("source", "monitor"),
                        **({"unobserved": ev["unobserved"]} if "unobserved" in ev else {}),
                        "actions": ["log", "alert"],
                    }
                )
                self.engine.restart(now_ns)
            elif kind in ("joined", "guard_changed"):
                self.engine.restart(now_ns)

    def exit_code(self) -> int:
        """0 ok, 1 warn (warn alerts, message loss, drops, malformed input), 2 fail."""
        s = self.state
        if self.sink.counts.get("fail", 0):
            return EXIT_FAIL
        pub = s.publisher
        dirty = s.lost_msgs or s.malformed or s.ticks_lost_ring or pub.get("ring_overflow", 0)
        if self.sink.counts.get("warn", 0) or dirty:
            return EXIT_WARN
        return EXIT_OK

    def summary(self, now_ns: int) -> dict[str, Any]:
        """The state summary plus alert counts and the exit code."""
        out = self.state.summary(now_ns)
        out["alerts"] = dict(self.sink.counts)
        out["rules_fired"] = dict(self.engine.fired)
        out["exit_code"] = self.exit_code()
        if self.recorder is not None:
            out["record_skipped"] = self.recorder.skipped
        return out


def analyse_file(path: str | Path, monitor: Monitor) -> None:
    """Feed a ``--record`` recording or a flight-recorder file through ``monitor``.

    Raises:
        TailguardError: the file is neither, or cannot be read.
    """
    p = Path(path)
    try:
        recording = is_recording(p)
    except OSError as exc:
        raise TailguardError(f"cannot read ({exc})", p) from exc
    if recording:
        for mono_ns, wall_ns, payload in iter_recording(p):
            monitor.on_message(payload, mono_ns, wall_ns)
        return
    from tailguard.protocol.flight_record import read_flight_record

    try:
        log = read_flight_record(p)
    except RecorderError as exc:
        raise TailguardError(
            "neither a monitor recording (--record) nor a flight record: " + exc.message, p
        ) from None
    for record in log.records:
        monitor.on_record(record)
    if log.truncated_tail or log.corrupt_frames:
        monitor.state.malformed += log.corrupt_frames + int(log.truncated_tail)


def run_live(
    connect: str,
    monitor: Monitor,
    *,
    duration_s: float | None = None,
    on_refresh: Callable[[int], None] | None = None,
    refresh_interval_s: float = 0.25,
    receive_buffer_bytes: int | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Subscribe to ``connect`` and feed the monitor until stopped.

    Stops after ``duration_s``, on SIGINT/SIGTERM (main thread only) or when ``stop`` is
    set. ``on_refresh(now_ns)`` is called every ``refresh_interval_s`` (live view,
    Prometheus snapshot).
    """
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)  # larger frames drop the peer
    sub.setsockopt(zmq.RCVHWM, 10_000)
    sub.setsockopt(zmq.LINGER, 0)
    if receive_buffer_bytes is not None:
        sub.setsockopt(zmq.RCVBUF, receive_buffer_bytes)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    clock = time.monotonic_ns
    end_ns = None if duration_s is None else clock() + int(duration_s * _NS_PER_S)
    refresh_ns = int(refresh_interval_s * _NS_PER_S)
    next_refresh = 0
    try:
        try:
            sub.connect(connect)
        except zmq.ZMQError as exc:
            raise TailguardError(f"cannot connect to {connect!r} ({exc})") from exc
        poller = zmq.Poller()
        poller.register(sub, zmq.POLLIN)
        while not stop.is_set():
            now = clock()
            if end_ns is not None and now >= end_ns:
                break
            if poller.poll(100):
                for _ in range(1000):
                    try:
                        data = sub.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    monitor.on_message(data, clock(), time.time_ns())
            now = clock()
            monitor.advance(now, time.time_ns())
            if now >= next_refresh:
                next_refresh = now + refresh_ns
                if monitor.recorder is not None:
                    monitor.recorder.flush()
                if on_refresh is not None:
                    on_refresh(now)
    finally:
        sub.close(0)
        ctx.term()

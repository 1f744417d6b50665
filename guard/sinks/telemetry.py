"""Telemetry publisher: the guard's ring and events, published over ZMQ from a background thread.

The guard's hot path only writes the :class:`~tailguard.runtime.tick_ring.TelemetryRing`
(``Guard.step``) and, off the fast path, calls :meth:`TelemetryPublisher.append` (one
deque append). Everything else happens in the publisher thread, which shares the GIL with
the control loop. While it holds the GIL a loop waking from its pacer sleep waits for it
(CPython only forces a hand-off after ``sys.getswitchinterval()``, 5 ms by default), so the
thread works in short slices and starts each one just after the loop finished a tick: it
polls the ring's head every ~0.1 ms until the head moves (at most about one loop period;
then it goes ahead anyway), which leaves a paced loop's idle time to the slice. Every
``drain_interval_s`` one slice reads at most ``max_ticks_per_message`` ticks (numpy copies,
no per-tick Python loop), packs them as raw little-endian int64 bytes and sends them without
blocking, plus events and a due heartbeat; folding the ticks read into the histograms,
building a ``hist`` message and a ``hello`` each get a slice of their own.

Wire schema (version :data:`SCHEMA_VERSION`): one ZMQ frame per message, a msgpack map
with these keys in every message:

    ``v`` schema version (int), ``type`` (str), ``seq`` (int, +1 per message of this
    publisher, starting at 0; a gap means messages were lost), ``gid`` (guard id, str),
    ``t_ns`` (publisher monotonic clock, ns).

and per type:

- ``hello``: ``policy``, ``policy_sha256``, ``envelope_sha256``, ``period_ns``, ``pid``,
  ``ring_capacity``, ``heartbeat_ns``, ``hello_ns``, ``histogram_ns``. Repeated every
  ``hello_interval_s`` so a late subscriber can start.
- ``ticks``: ``first_tick``, ``n``, ``dt_ns`` / ``latency_ns`` / ``flags`` (bin, ``8 * n``
  bytes each, ``<i8``; flags as in ``tailguard.runtime.tick_ring``), ``lost`` (ticks overwritten in
  the ring before this read).
- ``events``: ``events`` = list of ``[kind, tick, t_ns, fields]`` (kind in violation /
  state / fault / note), ``dropped`` (events lost so far because the queue was full).
- ``hist``: ``interval`` and ``lifetime``, each ``{"dt_ns": sparse, "latency_ns": sparse}``
  (:meth:`LogLinearHistogram.to_sparse`; interval = since the previous ``hist``), built by
  the publisher from the ticks it read; mergeable.
- ``heartbeat``: ``tick`` (last tick written), ``ring_overflow``, ``send_dropped``,
  ``events_dropped``, ``sent``, ``subscribers``, ``unobserved`` (messages sent while no
  subscriber was connected), ``last_gap_ns`` (length of the last period without any
  subscriber), ``heartbeat_ns``, ``closing`` (true in the last message before close).

Sending never blocks: the socket is an XPUB with ``XPUB_NODROP`` and a send high-water
mark, sends use ``NOBLOCK``, and a full queue drops the message and counts it in
``send_dropped`` (with several subscribers, one stalled subscriber makes the message drop
for all of them). Subscriptions are read back from the XPUB socket to count subscribers.

Command channel (off by default; :mod:`tailguard.protocol.command`): with ``command_endpoint``,
``server_secret_key_file`` and ``authorized_keys_dir`` the publisher thread also binds a
CURVE-authenticated ROUTER socket and polls it without blocking on every wake-up. A valid
``trip``/``reset`` from an authorized monitor becomes ``guard.request_trip``/``request_reset``
(applied at the guard's next tick, which records a ``note`` event); every refused command or
connection is counted (``cmd_refused`` in heartbeats) and recorded as a ``fault`` event with
``source = "command"`` through the guard's event path (telemetry and flight recorder) and
logged on the ``tailguard.telemetry`` logger, at most 10 per second. The guard's event path
belongs to the control loop's thread: the publisher thread hands the record over with
``guard.request_event`` and the guard emits it at its next tick.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from enum import Enum
from typing import Any

import msgpack
import numpy as np
import zmq

from tailguard.errors import ConfigError, MonitorConfigError, TailguardError
from tailguard.protocol.endpoints import is_loopback_endpoint, require_local_endpoint
from tailguard.protocol.telemetry_wire import (
    HIST_DIGITS,
    HIST_MAX_NS,
    SCHEMA_VERSION,
)
from tailguard.runtime.tick_ring import TelemetryRing
from tailguard.stats.histogram import LogLinearHistogram

__all__ = [
    "TelemetryPublisher",
    "is_loopback_endpoint",
]

_NS_PER_S = 1_000_000_000
# Waiting for the loop to finish a tick before a slice: poll the ring's head this often, for
# at most about one loop period (the last tick's dt) clamped to these bounds.
_POLL_S = 100e-6
_WAIT_MIN_NS = 500_000
_WAIT_MAX_NS = 20_000_000
_FOLD_TICKS = 8192  # ticks read but not yet in the histograms that force a fold slice
_log = logging.getLogger("tailguard.telemetry")


def _to_wire(obj: Any) -> Any:
    """msgpack fallback for event fields: enums by value, numpy values, anything else as str."""
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)[:200]


class TelemetryPublisher:
    """Publishes a guard's per-tick records and events on a ZMQ XPUB socket.

    Args:
        endpoint: where to bind, e.g. ``"tcp://127.0.0.1:5555"`` or ``"ipc:///tmp/tg"``.
        hello: static fields of the hello message (``policy``, ``policy_sha256``,
            ``envelope_sha256``, ``period_ns``).
        allow_non_loopback: permit binding an address that is not loopback.
        ring_capacity: ticks the ring holds (rounded up to a power of two).
        max_events: events that may wait for the thread; more are dropped and counted.
        send_hwm: messages ZMQ may queue per subscriber before sends drop.
        send_buffer_bytes: kernel send buffer (``SO_SNDBUF``), or None for the default.
        drain_interval_s: how often the thread reads the ring, s.
        heartbeat_interval_s, hello_interval_s, histogram_interval_s: periods of those
            messages, s.
        max_ticks_per_message: ticks per ``ticks`` message at most (bounds one slice).
        guard_id: identifies this guard on the wire; default ``host-pid-random``.
        clock: monotonic ns clock for ``t_ns`` and the periods.
        command_endpoint: where to bind the command channel (off when None). Needs both
            key arguments; loopback only unless ``allow_non_loopback``.
        server_secret_key_file: the guard's CURVE secret key (``DIR/guard.key_secret`` of
            ``tailguard keys --dir DIR``).
        authorized_keys_dir: directory of the public keys of the monitors allowed to send
            commands (``DIR/authorized``).

    Raises:
        ConfigError: (a ``ValueError``) an argument out of range or an endpoint that is
            not a ZMQ address.
        TailguardError: a non-loopback endpoint without ``allow_non_loopback``, or an
            endpoint that cannot be bound (in use, bad address).
        MonitorConfigError: a command channel configured halfway, or bad keys.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        hello: Mapping[str, Any] | None = None,
        allow_non_loopback: bool = False,
        ring_capacity: int = 8192,
        max_events: int = 4096,
        send_hwm: int = 1000,
        send_buffer_bytes: int | None = None,
        drain_interval_s: float = 0.01,
        heartbeat_interval_s: float = 0.5,
        hello_interval_s: float = 2.0,
        histogram_interval_s: float = 1.0,
        max_ticks_per_message: int = 1024,
        guard_id: str | None = None,
        clock: Callable[[], int] = time.monotonic_ns,
        command_endpoint: str | None = None,
        server_secret_key_file: str | os.PathLike[str] | None = None,
        authorized_keys_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        if not isinstance(endpoint, str) or "://" not in endpoint:
            raise ConfigError(
                f"telemetry endpoint must look like 'tcp://127.0.0.1:5555' or 'ipc:///path', "
                f"got {endpoint!r}"
            )
        require_local_endpoint(
            endpoint, allow_non_loopback, "telemetry endpoint", "allow_non_loopback=True"
        )
        parts = (command_endpoint, server_secret_key_file, authorized_keys_dir)
        if any(x is not None for x in parts) and any(x is None for x in parts):
            raise MonitorConfigError(
                "the command channel needs command_endpoint, server_secret_key_file and "
                "authorized_keys_dir together (or none of them: off); create keys with "
                "'tailguard keys --dir DIR' and pass DIR/guard.key_secret and DIR/authorized"
            )
        for name, value in (
            ("drain_interval_s", drain_interval_s),
            ("heartbeat_interval_s", heartbeat_interval_s),
            ("hello_interval_s", hello_interval_s),
            ("histogram_interval_s", histogram_interval_s),
        ):
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if not (number and 0 < value <= 3600):
                raise ConfigError(f"{name} must be a number in (0, 3600] s, got {value!r}")
        for name, ivalue in (
            ("max_events", max_events),
            ("send_hwm", send_hwm),
            ("max_ticks_per_message", max_ticks_per_message),
        ):
            if isinstance(ivalue, bool) or not isinstance(ivalue, int) or ivalue < 1:
                raise ConfigError(f"{name} must be a positive int, got {ivalue!r}")
        self.endpoint = endpoint
        self.ring = TelemetryRing(ring_capacity)
        self.guard_id = guard_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._clock = clock
        self._hello_static = dict(hello or {})
        self._max_ticks = max_ticks_per_message
        self._drain_s = float(drain_interval_s)
        self._heartbeat_ns = int(heartbeat_interval_s * _NS_PER_S)
        self._hello_ns = int(hello_interval_s * _NS_PER_S)
        self._hist_ns = int(histogram_interval_s * _NS_PER_S)

        # Producer side (guard thread): append() only.
        self._events: deque[tuple[Any, ...]] = deque()
        self._max_events = max_events
        self._events_dropped = 0
        self._closed = False

        # Thread side.
        self._seq = 0
        self.sent = 0
        self.send_dropped = 0
        self.encode_errors = 0
        self.subscribers = 0
        self.unobserved = 0
        self.last_gap_ns = 0
        self._no_sub_since_ns: int | None = clock()
        self._ever_subscribed = False
        self._h_dt = LogLinearHistogram(HIST_DIGITS, HIST_MAX_NS)
        self._h_lat = LogLinearHistogram(HIST_DIGITS, HIST_MAX_NS)
        self._h_dt_life = LogLinearHistogram(HIST_DIGITS, HIST_MAX_NS)
        self._h_lat_life = LogLinearHistogram(HIST_DIGITS, HIST_MAX_NS)
        # Ticks sent but not yet folded into _h_dt/_h_lat: (dt_ns, latency_ns) arrays.
        self._unfolded: list[tuple[np.ndarray, np.ndarray]] = []
        self._unfolded_ticks = 0
        self._guard: Any = None

        self._ctx = zmq.Context()
        sock = self._ctx.socket(zmq.XPUB)
        sock.setsockopt(zmq.SNDHWM, send_hwm)
        sock.setsockopt(zmq.XPUB_NODROP, 1)
        sock.setsockopt(zmq.XPUB_VERBOSER, 1)  # every (un)subscription: count subscribers
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 100)
        if send_buffer_bytes is not None:
            sock.setsockopt(zmq.SNDBUF, int(send_buffer_bytes))
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as exc:
            sock.close(0)
            self._ctx.term()
            raise TailguardError(
                f"cannot bind the telemetry endpoint {endpoint!r} ({exc}); pick a free port "
                "or another ipc path"
            ) from exc
        self._sock = sock
        self._commands: Any = None
        if command_endpoint is not None:
            from tailguard.sinks.command_server import CommandServer

            try:
                self._commands = CommandServer(
                    self._ctx,
                    command_endpoint,
                    server_secret_key_file,
                    authorized_keys_dir,
                    guard_id=self.guard_id,
                    on_command=self._on_command,
                    on_refusal=self._on_refusal,
                    allow_non_loopback=allow_non_loopback,
                    clock=clock,
                )
            except BaseException:
                sock.close(0)
                self._ctx.term()
                raise
        self._hello_static.setdefault("command_channel", command_endpoint is not None)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tailguard-telemetry", daemon=True)
        self._thread.start()

    # -- guard side --------------------------------------------------------------------

    def append(self, record: tuple[Any, ...]) -> None:
        """Queue one event ``(kind, tick, t_ns, fields)``; O(1), never blocks or raises."""
        if self._closed or len(self._events) >= self._max_events:
            self._events_dropped += 1
            return
        self._events.append(record)

    def attach(self, guard: Any) -> None:
        """Read the guard's own tick ring; remember the guard (for trip/reset requests)."""
        self._guard = guard
        ring = getattr(guard, "tick_ring", None)
        if ring is not None:
            self.ring = ring

    def _on_command(self, cmd: str, reason: str, seq: int, peer: str) -> str:
        """A valid command from an authenticated monitor (publisher thread); "" = accepted."""
        guard = self._guard
        if guard is None:
            return "no_guard"
        text = f"monitor {peer[:12]} seq {seq}: {reason}"[:240]
        if cmd == "trip":
            guard.request_trip(text)
        else:
            guard.request_reset(text)
        _log.warning("command %s accepted (%s)", cmd, text)
        return ""

    def _on_refusal(self, fields: dict[str, Any]) -> None:
        """Record a refused command or connection as a guard event, and log it (publisher
        thread; CommandServer rate-limits the calls)."""
        record = ("fault", self.ring.head, self._clock(), {"source": "command", **fields})
        # The guard's event path reaches the flight recorder as well as this publisher, and
        # its sinks have one producer, the loop thread: the guard emits it at its next tick.
        if self._guard is not None:
            self._guard.request_event(record)
        else:
            self.append(record)
        _log.warning("command refused: %s", fields)

    @property
    def events_dropped(self) -> int:
        """Events lost because the queue was full or the publisher was closed."""
        return self._events_dropped

    def counters(self) -> dict[str, int]:
        """The publisher's loss and traffic counters (a snapshot)."""
        return {
            "sent": self.sent,
            "send_dropped": self.send_dropped,
            "events_dropped": self._events_dropped,
            "ring_overflow": self.ring.overflowed,
            "encode_errors": self.encode_errors,
            "subscribers": self.subscribers,
            "unobserved": self.unobserved,
            "cmd_accepted": self._commands.accepted if self._commands else 0,
            "cmd_refused": self._commands.refused_total if self._commands else 0,
        }

    def close(self, timeout_s: float = 2.0) -> None:
        """Publish what is left plus a closing heartbeat, stop the thread, close. Idempotent.

        Takes at most about ``timeout_s``: the thread's last sends, then ZMQ's transmission of
        what they queued (the socket lingers for the rest of the budget; closing it at once
        would discard the final messages on a loaded machine).
        """
        if self._closed:
            return
        self._closed = True
        end = time.monotonic() + timeout_s
        self._stop.set()
        self._thread.join(timeout_s)
        if not self._thread.is_alive():
            if self._commands is not None:
                with contextlib.suppress(Exception):
                    self._commands.close()
            linger_ms = max(0, int((end - time.monotonic()) * 1000))
            with contextlib.suppress(Exception):
                self._sock.close(linger=linger_ms)
            with contextlib.suppress(Exception):
                self._ctx.term()

    def __enter__(self) -> TelemetryPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- publisher thread ----------------------------------------------------------------

    def _run(self) -> None:
        now = self._clock()
        next_hello = now
        next_heartbeat = now + self._heartbeat_ns
        next_hist = now + self._hist_ns
        after_tick = self._after_tick
        while not self._stop.wait(self._drain_s):
            try:
                after_tick()
                if self._commands is not None:
                    self._commands.poll()
                # ZMQ_EVENTS is cheaper than a recv that raises zmq.Again when nothing came.
                if int(self._sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
                    self._read_subscriptions()
                self._drain()
                now = self._clock()
                if now >= next_heartbeat:
                    next_heartbeat = now + self._heartbeat_ns
                    self._send_heartbeat(closing=False)
                hist_due = now >= next_hist
                if hist_due or self._unfolded_ticks >= _FOLD_TICKS:
                    after_tick()
                    self._fold()
                if hist_due:
                    next_hist = now + self._hist_ns
                    after_tick()
                    self._send_hist()
                if now >= next_hello:
                    next_hello = now + self._hello_ns
                    after_tick()
                    self._send_hello()
            except Exception:  # never let the thread die: count it and carry on
                self.encode_errors += 1
        with contextlib.suppress(Exception):
            self._drain()
            self._fold()
            self._send_hist()
            self._send_heartbeat(closing=True)

    def _after_tick(self) -> None:
        """Wait until the control loop has finished a tick, so the next slice runs while the
        loop is idle; give up after about one loop period (or on close).

        The head moves when the loop starts a tick. A policy that releases the GIL while it
        runs (onnxruntime does) is waited for too, as long as the last tick's latency.
        """
        ring = self.ring
        head = ring.head
        wait_ns = ring.dt_ns[head & ring.mask] if head > 0 else 0
        wait_ns = min(max(wait_ns + (wait_ns >> 2), _WAIT_MIN_NS), _WAIT_MAX_NS)
        # Real time, not the injected clock: this bounds how long the thread itself waits.
        clock, stop, sleep = time.monotonic_ns, self._stop, time.sleep
        end = clock() + wait_ns
        while ring.head == head:
            if clock() >= end or stop.is_set():
                return
            sleep(_POLL_S)
        latency_ns = ring.latency_ns[ring.head & ring.mask]
        if latency_ns > _POLL_S * _NS_PER_S:
            sleep(min(latency_ns, wait_ns) / _NS_PER_S)

    def _read_subscriptions(self) -> None:
        sock = self._sock
        for _ in range(64):
            try:
                msg = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if msg[:1] == b"\x01":
                if self.subscribers == 0 and self._no_sub_since_ns is not None:
                    if self._ever_subscribed:  # a monitor came back: remember how long it was
                        self.last_gap_ns = self._clock() - self._no_sub_since_ns
                    self._no_sub_since_ns = None
                    self._ever_subscribed = True
                    self._send_hello()  # a newcomer should not wait for the next hello
                self.subscribers += 1
            elif msg[:1] == b"\x00":
                self.subscribers = max(0, self.subscribers - 1)
                if self.subscribers == 0:
                    self._no_sub_since_ns = self._clock()

    def _send(self, msg: dict[str, Any]) -> None:
        msg["seq"] = self._seq
        self._seq += 1
        try:
            data = msgpack.packb(msg, default=_to_wire)
        except Exception:
            self.encode_errors += 1
            return
        try:
            self._sock.send(data, zmq.NOBLOCK)
        except zmq.Again:
            self.send_dropped += 1
            return
        except zmq.ZMQError:
            self.send_dropped += 1
            return
        self.sent += 1
        if self.subscribers == 0:
            self.unobserved += 1

    def _header(self, kind: str) -> dict[str, Any]:
        return {
            "v": SCHEMA_VERSION,
            "type": kind,
            "seq": 0,
            "gid": self.guard_id,
            "t_ns": self._clock(),
        }

    def _drain(self) -> None:
        ring = self.ring
        for i in range(8):  # a backlog: at most 8 full batches, the rest waits
            if i and not self._stop.is_set():
                self._after_tick()  # one batch per slice
            batch = ring.read(self._max_ticks)
            if batch is None:
                break
            dt = batch.dt_ns
            n = len(dt)
            if n:
                self._unfolded.append((dt, batch.latency_ns))
                self._unfolded_ticks += n
            msg = self._header("ticks")
            msg["first_tick"] = batch.first_tick
            msg["n"] = n
            msg["dt_ns"] = dt.astype("<i8", copy=False).tobytes()
            msg["latency_ns"] = batch.latency_ns.astype("<i8", copy=False).tobytes()
            msg["flags"] = batch.flags.astype("<i8", copy=False).tobytes()
            msg["lost"] = batch.lost
            self._send(msg)
            if n < self._max_ticks:
                break  # caught up; what the loop wrote since goes with the next wake-up
        events = self._events
        if events:
            out = []
            for _ in range(min(len(events), 256)):
                kind, tick, t_ns, fields = events.popleft()
                out.append([kind, tick, t_ns, fields])
            msg = self._header("events")
            msg["events"] = out
            msg["dropped"] = self._events_dropped
            self._send(msg)

    def _send_hello(self) -> None:
        msg = self._header("hello")
        msg.update(self._hello_static)
        msg.update(
            pid=os.getpid(),
            ring_capacity=self.ring.capacity,
            heartbeat_ns=self._heartbeat_ns,
            hello_ns=self._hello_ns,
            histogram_ns=self._hist_ns,
        )
        self._send(msg)

    def _fold(self) -> None:
        """Count the ticks read since the last fold in the interval histograms (one numpy
        pass per histogram instead of one per ``ticks`` message)."""
        if not self._unfolded:
            return
        dt = np.concatenate([d for d, _ in self._unfolded])
        lat = np.concatenate([x for _, x in self._unfolded])
        self._unfolded.clear()
        self._unfolded_ticks = 0
        # Values < 0 mean "no measurement" (first tick's dt, clock faults).
        self._h_dt.record_many(dt[dt >= 0])
        self._h_lat.record_many(lat[lat >= 0])

    def _send_hist(self) -> None:
        self._h_dt_life.merge(self._h_dt)
        self._h_lat_life.merge(self._h_lat)
        msg = self._header("hist")
        msg["interval"] = {"dt_ns": self._h_dt.to_sparse(), "latency_ns": self._h_lat.to_sparse()}
        msg["lifetime"] = {
            "dt_ns": self._h_dt_life.to_sparse(),
            "latency_ns": self._h_lat_life.to_sparse(),
        }
        self._h_dt.reset()
        self._h_lat.reset()
        self._send(msg)

    def _send_heartbeat(self, closing: bool) -> None:
        msg = self._header("heartbeat")
        msg.update(
            tick=self.ring.head,
            ring_overflow=self.ring.overflowed,
            send_dropped=self.send_dropped,
            events_dropped=self._events_dropped,
            sent=self.sent,
            subscribers=self.subscribers,
            unobserved=self.unobserved,
            last_gap_ns=self.last_gap_ns,
            heartbeat_ns=self._heartbeat_ns,
            closing=closing,
        )
        if self._commands is not None:
            msg["cmd_accepted"] = self._commands.accepted
            msg["cmd_refused"] = self._commands.refused_total
        self._send(msg)

"""The guard side of the command channel, run inside the telemetry publisher's thread.

Two sockets on the publisher's ZMQ context, both polled without blocking once per publisher
wake-up (never from the control loop):

- a ZAP handler (REP on ``inproc://zeromq.zap.01``, bound *before* the command socket so no
  handshake can slip through unauthenticated) that accepts a CURVE client only if its public
  key is in the authorized set, and lets the telemetry socket's NULL mechanism through;
- the command socket: ROUTER, CURVE server, ZAP domain :data:`ZAP_DOMAIN`, with a socket
  monitor so non-CURVE/broken handshakes are counted too.

Each command is answered (ack or refusal). Every refusal is counted in :attr:`refused` and
reported through ``on_refusal`` (rate-limited, with the number suppressed since the last
report), which the publisher turns into a guard event and a log line.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import zmq
from zmq.utils import z85
from zmq.utils.monitor import recv_monitor_message

from tailguard.errors import TailguardError
from tailguard.protocol.command import (
    REFUSALS,
    ZAP_DOMAIN,
    decode_command,
    encode_reply,
    load_server_keys,
)
from tailguard.protocol.endpoints import require_local_endpoint

__all__ = ["CommandServer"]

_ZAP_ENDPOINT = "inproc://zeromq.zap.01"
_MAX_FRAME_BYTES = 64 * 1024  # larger frames make ZMQ drop the peer before we see them
_PER_POLL = 16  # messages of each socket handled per poll: bounds one slice
_REPORTS_PER_S = 10  # refusal reports (events/log lines); the rest are only counted
_HANDSHAKE_FAILED = zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL

#: ``on_command(cmd, reason, seq, peer)`` returns "" when accepted or a refusal name.
OnCommand = Callable[[str, str, int, str], str]
#: ``on_refusal(fields)`` with ``refused``, ``peer``, ``detail``, ``suppressed``.
OnRefusal = Callable[[dict[str, Any]], None]


class CommandServer:
    """Authenticated trip/reset commands for one guard.

    Args:
        ctx: the publisher's ZMQ context (the ZAP handler is per context).
        endpoint: where to bind the command socket.
        secret_key_file: the guard's ``guard.key_secret``.
        authorized_keys_dir: directory of the monitors' public ``.key`` files.
        guard_id: put in every reply.
        on_command: called for each valid command (publisher thread).
        on_refusal: called for reported refusals (publisher thread).
        allow_non_loopback: permit a command endpoint that is not on loopback.
        clock: monotonic ns clock (rate limit of the refusal reports).

    Raises:
        MonitorConfigError: missing or bad keys.
        TailguardError: a non-loopback endpoint without the flag, or a bind failure.
    """

    def __init__(
        self,
        ctx: zmq.Context,
        endpoint: str,
        secret_key_file: Any,
        authorized_keys_dir: Any,
        *,
        guard_id: str,
        on_command: OnCommand,
        on_refusal: OnRefusal,
        allow_non_loopback: bool = False,
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        require_local_endpoint(
            endpoint, allow_non_loopback, "command endpoint", "allow_non_loopback=True"
        )
        public, secret, self._authorized = load_server_keys(secret_key_file, authorized_keys_dir)
        self.endpoint = endpoint
        self._gid = guard_id
        self._on_command = on_command
        self._on_refusal = on_refusal
        self._clock = clock
        self.refused = dict.fromkeys(REFUSALS, 0)
        self.accepted = 0
        self.replies_dropped = 0
        self._suppressed = 0
        self._window_start = 0
        self._window_reports = 0
        self._zap = self._router = self._events = None
        self._poller: zmq.Poller
        try:
            self._zap = zap = ctx.socket(zmq.REP)
            zap.setsockopt(zmq.LINGER, 0)
            zap.bind(_ZAP_ENDPOINT)
            self._router = router = ctx.socket(zmq.ROUTER)
            router.setsockopt(zmq.LINGER, 0)
            router.setsockopt(zmq.CURVE_SERVER, 1)
            router.setsockopt(zmq.CURVE_PUBLICKEY, public)
            router.setsockopt(zmq.CURVE_SECRETKEY, secret)
            router.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN.encode())
            router.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)  # no handler: refuse, never accept
            router.setsockopt(zmq.MAXMSGSIZE, _MAX_FRAME_BYTES)
            router.setsockopt(zmq.RCVHWM, 64)
            router.setsockopt(zmq.SNDHWM, 64)
            self._events = router.get_monitor_socket(_HANDSHAKE_FAILED)
            router.bind(endpoint)
            self._poller = zmq.Poller()
            for sock in (zap, self._events, router):
                self._poller.register(sock, zmq.POLLIN)
        except zmq.ZMQError as exc:
            self.close()
            raise TailguardError(
                f"cannot bind the command endpoint {endpoint!r} ({exc}); pick a free port "
                "or another ipc path"
            ) from exc

    @property
    def refused_total(self) -> int:
        """Refusals of every kind so far."""
        return sum(self.refused.values())

    def poll(self) -> None:
        """Handle pending authentication requests, handshake failures and commands."""
        if self._router is None or not self._poller.poll(0):  # one cheap check when idle
            return
        self._poll_zap()
        self._poll_handshakes()
        self._poll_commands()

    def close(self) -> None:
        """Close the sockets (call from the thread that polled them, or after it ended)."""
        if self._router is not None and self._events is not None:
            with contextlib.suppress(zmq.ZMQError):
                self._router.disable_monitor()
        for sock in (self._events, self._router, self._zap):
            if sock is not None:
                sock.close(0)
        self._zap = self._router = self._events = None

    # -- internals ---------------------------------------------------------------------

    def _refuse(self, kind: str, peer: str, detail: str) -> None:
        self.refused[kind] += 1
        now = self._clock()
        if now - self._window_start >= 1_000_000_000:
            self._window_start, self._window_reports = now, 0
        if self._window_reports >= _REPORTS_PER_S:
            self._suppressed += 1  # a flood must not flood the flight recorder
            return
        self._window_reports += 1
        fields = {"refused": kind, "peer": peer, "detail": detail, "suppressed": self._suppressed}
        self._suppressed = 0
        self._on_refusal(fields)

    def _poll_zap(self) -> None:
        zap = self._zap
        if zap is None:
            return
        for _ in range(_PER_POLL):
            try:
                frames = zap.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            zap.send_multipart(self._authenticate(frames))

    def _authenticate(self, frames: list[bytes]) -> list[bytes]:
        """One ZAP request (RFC 27) -> the reply frames."""
        if len(frames) < 6 or frames[0] != b"1.0":
            request_id = frames[1] if len(frames) > 1 else b""
            return [b"1.0", request_id, b"500", b"malformed ZAP request", b"", b""]
        _, request_id, domain, address, _, mechanism, *credentials = frames
        peer = address.decode("ascii", "replace")[:64]
        if domain != ZAP_DOMAIN.encode():
            # Not the command socket: the telemetry PUB (NULL mechanism) is public by design.
            if mechanism == b"NULL":
                return [b"1.0", request_id, b"200", b"OK", b"", b""]
            self._refuse("unauthenticated", peer, f"mechanism {mechanism[:16]!r} outside domain")
            return [b"1.0", request_id, b"400", b"refused", b"", b""]
        if mechanism == b"CURVE" and len(credentials) == 1 and len(credentials[0]) == 32:
            key = z85.encode(credentials[0])
            if key in self._authorized:
                return [b"1.0", request_id, b"200", b"OK", key, b""]
            self._refuse("unauthenticated", peer, f"key {key[:8].decode()}... not authorized")
        else:
            self._refuse("unauthenticated", peer, f"mechanism {mechanism[:16]!r}")
        return [b"1.0", request_id, b"400", b"not authorized", b"", b""]

    def _poll_handshakes(self) -> None:
        events = self._events
        if events is None:
            return
        for _ in range(_PER_POLL):
            try:
                ev = recv_monitor_message(events, zmq.NOBLOCK)
            except zmq.Again:
                return
            except zmq.ZMQError:
                return
            endpoint = ev.get("endpoint", b"")
            text = endpoint.decode("ascii", "replace") if isinstance(endpoint, bytes) else ""
            self._refuse("handshake_failed", text[:64], f"zmq event {ev.get('event')}")

    def _poll_commands(self) -> None:
        router = self._router
        if router is None:
            return
        for _ in range(_PER_POLL):
            try:
                frames = router.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            rid = frames[0].bytes
            try:
                peer = str(frames[-1].get("User-Id"))[:40]
            except (zmq.ZMQError, UnicodeDecodeError):
                peer = "?"
            if len(frames) != 2:  # counted before answering: an ack/refusal is final
                self._refuse("malformed", peer, f"{len(frames) - 1} frames")
                self._answer(rid, False, None, None, "malformed")
                continue
            data = frames[1].bytes
            cmd, why, seq = decode_command(data)
            if cmd is not None:
                why = self._on_command(cmd["cmd"], cmd["reason"], int(cmd["seq"]), peer)
            if why:
                self._refuse(why, peer, f"{len(data)} bytes, seq {seq}")
                self._answer(rid, False, seq, cmd["cmd"] if cmd else None, why)
                continue
            self.accepted += 1
            self._answer(rid, True, seq, cmd["cmd"] if cmd else None, "accepted")

    def _answer(self, rid: bytes, ok: bool, seq: int | None, cmd: str | None, why: str) -> None:
        if self._router is None:
            return
        try:
            self._router.send_multipart(
                [rid, encode_reply(ok, seq, cmd, why, self._gid)], zmq.NOBLOCK
            )
        except zmq.ZMQError:  # the peer is gone or its queue is full: never wait for it
            self.replies_dropped += 1

"""The monitor side of the command channel: send ``trip``/``reset`` to a guard over CURVE.

:meth:`CommandClient.request` never blocks (the live monitor's ``trip`` rule action uses
it and collects the replies on its refresh); :meth:`CommandClient.send` waits for the reply
(``tailguard monitor --send``). A failed CURVE handshake (our key is not authorized, or the
guard's public key is wrong) is seen through a socket monitor and reported as such instead
of as a plain timeout.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from tailguard.errors import ConfigError, MonitorConfigError
from tailguard.protocol.command import (
    COMMANDS,
    MAX_COMMAND_BYTES,
    MAX_REASON_CHARS,
    decode_reply,
    encode_command,
    load_client_keys,
)

__all__ = ["CommandClient", "CommandResult", "TripAction"]

_log = logging.getLogger("tailguard.monitor")
_AUTH_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)


@dataclass(frozen=True)
class CommandResult:
    """Outcome of one command.

    Attributes:
        ok: the guard acknowledged it.
        reply: the guard's reply, or None (timeout, handshake failure).
        error: why it did not succeed ("" when ok).
    """

    ok: bool
    reply: dict[str, Any] | None
    error: str


class CommandClient:
    """A CURVE DEALER connected to a guard's command endpoint.

    Args:
        endpoint: the guard's command endpoint, e.g. ``"tcp://127.0.0.1:5556"``.
        keys_dir: a ``tailguard keys`` directory (``monitor.key_secret``, ``guard.key``).

    Raises:
        MonitorConfigError: missing or bad keys, or an endpoint ZMQ cannot connect to.
    """

    def __init__(self, endpoint: str, keys_dir: str | os.PathLike[str]) -> None:
        public, secret, server_public = load_client_keys(keys_dir)
        self.endpoint = endpoint
        self._ctx = zmq.Context()
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.CURVE_SERVERKEY, server_public)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
        sock.setsockopt(zmq.MAXMSGSIZE, 64 * 1024)
        sock.setsockopt(zmq.SNDHWM, 16)
        sock.setsockopt(zmq.RCVHWM, 64)
        self._events = sock.get_monitor_socket(_AUTH_FAILED | zmq.EVENT_HANDSHAKE_SUCCEEDED)
        self._sock = sock
        try:
            sock.connect(endpoint)
        except zmq.ZMQError as exc:
            self.close()
            raise MonitorConfigError(f"cannot connect to {endpoint!r} ({exc})") from exc
        self._seq = 0
        self.auth_failures = 0
        self.connected = False

    def request(self, cmd: str, reason: str = "") -> int:
        """Queue one command without waiting; returns its sequence number.

        Raises:
            ConfigError: (a ``ValueError``) an unknown command.
        """
        if cmd not in COMMANDS:
            raise ConfigError(f"unknown command {cmd!r}; valid choices are {list(COMMANDS)}")
        self._seq += 1
        self.send_raw(encode_command(cmd, reason[:MAX_REASON_CHARS], self._seq))
        return self._seq

    def send_raw(self, data: bytes) -> bool:
        """Send one raw frame (tests use it for malformed commands); False if not queued."""
        try:
            self._sock.send(data, zmq.NOBLOCK)
        except zmq.ZMQError:
            return False
        return True

    def collect(self, timeout_ms: int = 0) -> list[dict[str, Any]]:
        """Replies received so far (waiting up to ``timeout_ms`` for the first one)."""
        self._read_events()
        out: list[dict[str, Any]] = []
        if timeout_ms and not self._sock.poll(timeout_ms):
            self._read_events()
            return out
        for _ in range(64):
            try:
                data = self._sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            reply = decode_reply(data[: MAX_COMMAND_BYTES + 1])
            if reply is not None:
                out.append(reply)
        return out

    def send(self, cmd: str, reason: str = "", timeout_s: float = 3.0) -> CommandResult:
        """Send one command and wait for its reply.

        Returns:
            the outcome; ``ok`` only when the guard acknowledged this very command.
        """
        seq = self.request(cmd, reason)
        end = time.monotonic_ns() + int(timeout_s * 1e9)
        while (left_ms := (end - time.monotonic_ns()) // 1_000_000) > 0:
            for reply in self.collect(int(min(left_ms, 50))):
                if reply.get("seq") == seq:
                    ok = reply["type"] == "ack"
                    return CommandResult(ok, reply, "" if ok else f"refused: {reply['why']}")
            if self.auth_failures and not self.connected:
                return CommandResult(
                    False,
                    None,
                    "the guard refused the connection (CURVE handshake failed): is this "
                    "monitor's public key in the guard's authorized keys, and guard.key the "
                    "guard's public key?",
                )
        return CommandResult(False, None, f"no reply from {self.endpoint} within {timeout_s} s")

    def _read_events(self) -> None:
        for _ in range(64):
            try:
                ev = recv_monitor_message(self._events, zmq.NOBLOCK)
            except zmq.ZMQError:
                return
            if ev.get("event") == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.connected = True
            else:
                self.auth_failures += 1
                self.connected = False

    def close(self) -> None:
        """Close the socket and its context. Idempotent."""
        if self._sock.closed:
            return
        with contextlib.suppress(zmq.ZMQError):
            self._sock.disable_monitor()
        self._events.close(0)
        self._sock.close(0)
        self._ctx.term()

    def __enter__(self) -> CommandClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TripAction:
    """The ``trip`` rule action of a live monitor: request, never wait; log the replies.

    Args:
        client: a connected command client.
    """

    def __init__(self, client: CommandClient) -> None:
        self.client = client
        self.sent = 0
        self.acked = 0
        self.refused = 0

    def __call__(self, alert: dict[str, Any]) -> None:
        """Send ``trip`` for an alert (called by :class:`~tailguard.monitor.alerts.AlertSink`)."""
        reason = f"rule {alert.get('rule')}: {alert.get('metric')}={alert.get('value')}"
        self.client.request("trip", reason)
        self.sent += 1

    def poll(self) -> None:
        """Log the replies that arrived (call from the monitor's refresh)."""
        for reply in self.client.collect(0):
            if reply["type"] == "ack":
                self.acked += 1
                _log.warning("guard acknowledged %s (seq %s)", reply.get("cmd"), reply.get("seq"))
            else:
                self.refused += 1
                _log.warning("guard refused command seq %s: %s", reply.get("seq"), reply["why"])

"""The command channel's protocol and keys: what a monitor may send a guard, and who may.

Off by default. When on, the guard's publisher binds a CURVE-server ROUTER socket
(:class:`tailguard.sinks.command_server.CommandServer`) and a monitor connects a DEALER
(:class:`tailguard.monitor.command_client.CommandClient`). Only clients whose public key is in
the guard's authorized-keys directory get through the handshake.

Keys (``tailguard keys --dir DIR`` writes them; pyzmq's ``zmq.auth`` format)::

    DIR/guard.key, DIR/guard.key_secret       the guard's (server) pair
    DIR/monitor.key, DIR/monitor.key_secret   the monitor's (client) pair
    DIR/authorized/monitor.key                public keys the guard accepts

The guard loads ``DIR/guard.key_secret`` and ``DIR/authorized``; the monitor loads
``DIR/monitor.key_secret`` and ``DIR/guard.key`` (see :func:`server_key_paths`).

Wire (schema version :data:`COMMAND_SCHEMA_VERSION`), one msgpack map per ZMQ frame, at
most :data:`MAX_COMMAND_BYTES`:

- command: ``{"v": 1, "type": "command", "cmd": "trip" | "reset", "reason": str,
  "seq": int}`` (no other keys; reason at most :data:`MAX_REASON_CHARS` characters);
- reply: ``{"v": 1, "type": "ack" | "refused", "seq": int | None, "cmd": str | None,
  "why": str, "gid": str}``. An ack means the guard accepted the request; it takes effect
  at the guard's next tick.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import msgpack

from tailguard.errors import MonitorConfigError

__all__ = [
    "AUTHORIZED_DIR",
    "COMMANDS",
    "COMMAND_SCHEMA_VERSION",
    "MAX_COMMAND_BYTES",
    "MAX_REASON_CHARS",
    "REFUSALS",
    "ZAP_DOMAIN",
    "decode_command",
    "decode_reply",
    "encode_command",
    "encode_reply",
    "load_client_keys",
    "load_server_keys",
    "server_key_paths",
]

COMMAND_SCHEMA_VERSION = 1
COMMANDS = ("trip", "reset")
MAX_COMMAND_BYTES = 1024
MAX_REASON_CHARS = 200
ZAP_DOMAIN = "tailguard-command"
AUTHORIZED_DIR = "authorized"
#: Why a command (or a connection) was refused; each is counted separately.
REFUSALS = (
    "unauthenticated",  # CURVE key not in the authorized directory (ZAP said 400)
    "handshake_failed",  # not a CURVE client, or a broken handshake
    "too_large",
    "malformed",
    "version",
    "unknown_command",
    "no_guard",
)
_COMMAND_KEYS = frozenset(("v", "type", "cmd", "reason", "seq"))
_LIMITS = {
    "max_bin_len": 0,
    "max_str_len": MAX_COMMAND_BYTES,
    "max_array_len": 16,
    "max_map_len": 16,
    "max_ext_len": 0,
}


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x < (1 << 63)


def encode_command(cmd: str, reason: str, seq: int) -> bytes:
    """One command message (not validated: tests use it to build bad ones too)."""
    body = {"v": COMMAND_SCHEMA_VERSION, "type": "command", "cmd": cmd, "reason": reason}
    body["seq"] = seq
    return msgpack.packb(body)


def decode_command(data: bytes) -> tuple[dict[str, Any] | None, str, int | None]:
    """Unpack and validate one command from an (authenticated but untrusted) peer.

    Args:
        data: the raw frame.

    Returns:
        ``(command, "", seq)`` when valid, else ``(None, refusal, seq)`` with ``refusal``
        one of :data:`REFUSALS` and ``seq`` the command's sequence number if it had a
        usable one (so the refusal can name it), else None. Never raises.
    """
    if len(data) > MAX_COMMAND_BYTES:
        return None, "too_large", None
    try:
        msg = msgpack.unpackb(data, raw=False, strict_map_key=True, **_LIMITS)
    except Exception:  # every msgpack failure mode
        return None, "malformed", None
    if not isinstance(msg, dict):
        return None, "malformed", None
    seq = msg.get("seq") if _is_int(msg.get("seq")) else None
    if msg.get("v") != COMMAND_SCHEMA_VERSION:
        return None, "version", seq
    if (
        msg.get("type") != "command"
        or seq is None
        or not isinstance(msg.get("cmd"), str)
        or not isinstance(msg.get("reason"), str)
        or len(msg["reason"]) > MAX_REASON_CHARS
        or set(msg) != _COMMAND_KEYS
    ):
        return None, "malformed", seq
    if msg["cmd"] not in COMMANDS:
        return None, "unknown_command", seq
    return msg, "", seq


def encode_reply(ok: bool, seq: int | None, cmd: str | None, why: str, gid: str) -> bytes:
    """The guard's answer to one command."""
    return msgpack.packb(
        {
            "v": COMMAND_SCHEMA_VERSION,
            "type": "ack" if ok else "refused",
            "seq": seq,
            "cmd": cmd,
            "why": why,
            "gid": gid,
        }
    )


def decode_reply(data: bytes) -> dict[str, Any] | None:
    """A validated reply, or None for anything else (never raises)."""
    if len(data) > MAX_COMMAND_BYTES:
        return None
    try:
        msg = msgpack.unpackb(data, raw=False, strict_map_key=True, **_LIMITS)
    except Exception:
        return None
    if not (
        isinstance(msg, dict)
        and msg.get("v") == COMMAND_SCHEMA_VERSION
        and msg.get("type") in ("ack", "refused")
        and (msg.get("seq") is None or _is_int(msg.get("seq")))
        and isinstance(msg.get("why"), str)
    ):
        return None
    return msg


def server_key_paths(keys_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``(server secret key file, authorized keys dir)`` inside a ``tailguard keys`` dir."""
    d = Path(keys_dir)
    return d / "guard.key_secret", d / AUTHORIZED_DIR


def _read_key_file(path: Path, role: str) -> tuple[bytes, bytes | None]:
    import zmq.auth

    if not path.is_file():
        raise MonitorConfigError(
            f"no {role} key file here; create the keys with: tailguard keys --dir DIR", path
        )
    try:
        return zmq.auth.load_certificate(str(path))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise MonitorConfigError(f"not a CURVE key file ({exc})", path) from None


def _load_pair(path: Path, role: str) -> tuple[bytes, bytes]:
    public, secret = _read_key_file(path, role)
    if secret is None:
        raise MonitorConfigError(
            f"holds no secret key; the {role} needs its '.key_secret' file", path
        )
    return public, secret


def load_server_keys(
    secret_key_file: str | os.PathLike[str], authorized_keys_dir: str | os.PathLike[str]
) -> tuple[bytes, bytes, frozenset[bytes]]:
    """The guard's CURVE pair and the public keys of the monitors it accepts.

    Returns:
        ``(public, secret, authorized)``, all Z85-encoded (40 bytes each).

    Raises:
        MonitorConfigError: a missing or unreadable key file, a public key file where the
            secret one is needed, or an authorized-keys directory without any key.
    """
    import zmq.auth

    public, secret = _load_pair(Path(secret_key_file), "guard (server)")
    auth_dir = Path(authorized_keys_dir)
    if not auth_dir.is_dir():
        raise MonitorConfigError(
            "authorized-keys directory not found; it holds the monitors' public '.key' files",
            auth_dir,
        )
    try:
        keys = frozenset(zmq.auth.load_certificates(str(auth_dir)).keys())
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise MonitorConfigError(f"cannot read the authorized keys ({exc})", auth_dir) from None
    if not keys:
        raise MonitorConfigError(
            "no '.key' file in the authorized-keys directory: no monitor could connect",
            auth_dir,
        )
    return public, secret, keys


def load_client_keys(keys_dir: str | os.PathLike[str]) -> tuple[bytes, bytes, bytes]:
    """The monitor's CURVE pair and the guard's public key from a ``tailguard keys`` dir.

    Returns:
        ``(client_public, client_secret, server_public)``, Z85-encoded.

    Raises:
        MonitorConfigError: a key file is missing or unreadable.
    """
    d = Path(keys_dir)
    public, secret = _load_pair(d / "monitor.key_secret", "monitor (client)")
    server_public, _ = _read_key_file(d / "guard.key", "guard (server) public")
    return public, secret, server_public

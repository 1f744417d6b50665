"""Where a tailguard socket may bind: loopback by default, anything else only when asked.

One implementation for every socket that binds (telemetry, the command channel, the
simulated firmware): ``ipc://`` and ``inproc://`` are local by nature, ``tcp://`` counts as
local only on 127.0.0.0/8, ``::1`` or ``localhost``. ``tcp://*:PORT``, ``0.0.0.0`` and
interface names bind (or may bind) every interface and count as remote.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from tailguard.errors import TailguardError

__all__ = ["LOCAL_TRANSPORTS", "is_loopback_endpoint", "require_local_endpoint"]

#: Transports that never leave the machine.
LOCAL_TRANSPORTS = ("ipc://", "inproc://")
_KNOWN = ("tcp://", *LOCAL_TRANSPORTS)


def _tcp_host(endpoint: str) -> str:
    """The host part of a ``tcp://`` endpoint ("" when it cannot be parsed)."""
    try:
        return urlsplit(endpoint).hostname or ""
    except ValueError:  # e.g. an unbalanced "[" in an IPv6 literal
        return ""


def is_loopback_endpoint(endpoint: str) -> bool:
    """True for ``ipc://``/``inproc://`` and ``tcp://`` on 127.0.0.0/8, ``::1`` or localhost.

    Args:
        endpoint: a ZMQ endpoint, e.g. ``"tcp://127.0.0.1:5555"``.

    Returns:
        Whether binding it provably stays on this machine (unknown transports: False).
    """
    if not isinstance(endpoint, str):
        return False
    if endpoint.startswith(LOCAL_TRANSPORTS):
        return True
    if not endpoint.startswith("tcp://"):
        return False
    host = _tcp_host(endpoint)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # an interface name or "*": not provably loopback


def require_local_endpoint(
    endpoint: str, allow_remote: bool, what: str = "endpoint", flag: str = "--allow-remote"
) -> None:
    """Refuse an endpoint with an unknown transport, or a non-loopback one unless allowed.

    Args:
        endpoint: the ZMQ endpoint about to be bound.
        allow_remote: the caller's explicit opt-in to bind a non-loopback address.
        what: what binds it, for the message (e.g. ``"telemetry endpoint"``).
        flag: how the user opts in, for the message (a CLI flag or a keyword argument).

    Raises:
        TailguardError: not ``tcp://``/``ipc://``/``inproc://``, or not loopback and
            ``allow_remote`` is false.
    """
    if not isinstance(endpoint, str) or not endpoint.startswith(_KNOWN):
        raise TailguardError(
            f"{what} {endpoint!r} must start with tcp://, ipc:// or inproc://, "
            "e.g. tcp://127.0.0.1:5555"
        )
    if not allow_remote and not is_loopback_endpoint(endpoint):
        raise TailguardError(
            f"{what} {endpoint!r} is not a loopback address; use tcp://127.0.0.1:PORT or an "
            f"ipc:// path, or pass {flag} to expose it on a network (and secure that network)"
        )

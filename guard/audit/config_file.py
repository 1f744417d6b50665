"""Reading the audit's user-written files (sweep files, sweep manifests): bounded in size,
UTF-8, TOML by the ``.toml`` suffix and JSON otherwise, one clear error for each failure."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tailguard.errors import ConfigError

__all__ = ["read_config"]


def read_config(path: Path, what: str, max_bytes: int) -> tuple[Any, bytes]:
    """The decoded document and the file's bytes (to hash, say).

    Args:
        path: the file.
        what: what it is, for the messages (``"sweep file"``, ``"manifest"``).
        max_bytes: larger files are refused before they are parsed.

    Raises:
        ConfigError: unreadable, too large, not UTF-8, or not valid TOML/JSON.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what}: {exc.strerror or exc}", path) from None
    if len(raw) > max_bytes:
        raise ConfigError(f"{what} larger than {max_bytes} bytes; refused", path)
    try:
        text = raw.decode("utf-8")
        if path.suffix.lower() == ".toml":
            import tomllib

            return tomllib.loads(text), raw
        return json.loads(text), raw
    except (UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(
            f"not a valid {path.suffix or 'JSON'} {what}: {exc}; expected TOML (.toml) or JSON",
            path,
        ) from None

"""Where alerts and notable events go: a JSONL file, a log line, a command to run."""

from __future__ import annotations

import json
import logging
import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tailguard.errors import TailguardError

__all__ = ["AlertSink", "wall_iso"]

_log = logging.getLogger("tailguard.monitor")
_MAX_CHILDREN = 4  # exec actions running at once; more are skipped and counted


def wall_iso(wall_ns: int) -> str:
    """UTC ISO-8601 time of a wall-clock ns timestamp (for humans and log tools)."""
    return datetime.fromtimestamp(wall_ns / 1e9, tz=UTC).isoformat(timespec="milliseconds")


class AlertSink:
    """Dispatches alerts to their actions.

    Args:
        alerts_path: JSONL file to append alerts to (None: no file).
        trip: called with the alert for a ``trip`` action (command channel), or None.
    """

    def __init__(self, alerts_path: str | Path | None = None, trip: Any = None) -> None:
        self._file = None
        self.trip = trip
        self.exec_skipped = 0
        self.exec_errors = 0
        self.alerts: list[dict[str, Any]] = []  # the last ones, bounded
        self.counts = {"warn": 0, "fail": 0, "info": 0}
        self._children: list[subprocess.Popen[bytes]] = []
        if alerts_path is not None:
            try:
                self._file = open(alerts_path, "a", encoding="utf-8")  # noqa: SIM115
            except OSError as exc:
                raise TailguardError(f"cannot open the alerts file ({exc})", alerts_path) from exc

    def emit(self, alert: dict[str, Any]) -> None:
        """Run an alert's actions (``log``, ``alert``, ``exec``, ``trip``)."""
        actions = alert.pop("actions", ["log", "alert"])
        command = alert.pop("exec", [])
        sev = alert.get("severity", "info")
        self.counts[sev] = self.counts.get(sev, 0) + 1
        self.alerts.append(alert)
        del self.alerts[:-100]
        if "log" in actions:
            _log.warning("%s", json.dumps(alert, default=str))
        if "alert" in actions and self._file is not None:
            self._file.write(json.dumps(alert, default=str) + "\n")
            self._file.flush()
        if "exec" in actions and command:
            self._exec(command, alert)
        if "trip" in actions and self.trip is not None:
            self.trip(alert)

    def _exec(self, command: list[str], alert: dict[str, Any]) -> None:
        self._children = [c for c in self._children if c.poll() is None]
        if len(self._children) >= _MAX_CHILDREN:
            self.exec_skipped += 1
            return
        env = dict(os.environ, TAILGUARD_ALERT=json.dumps(alert, default=str))
        try:
            self._children.append(
                subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, start_new_session=True)
            )
        except OSError:
            self.exec_errors += 1

    def close(self) -> None:
        """Close the alerts file."""
        if self._file is not None:
            self._file.close()
            self._file = None

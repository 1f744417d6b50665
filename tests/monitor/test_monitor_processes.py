"""Fault tests with real processes on loopback: monitor killed/restarted/stalled, guard killed.

Every wait is bounded and waits for a condition (a file grown, a counter in the guard's
status file), never for a fixed time; every child runs in its own process group and is
killed in finally. No timing assertions beyond "the loop kept running" (timing targets live
in bench/).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from tg_monitor_util import free_port

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
pytestmark = pytest.mark.timeout(120)


def _spawn(args: list[str]) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        args,
        cwd=ROOT,
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _guard(ep: str, out: Path, seconds: float, *extra: str) -> subprocess.Popen[bytes]:
    return _spawn(
        [
            sys.executable,
            str(HERE / "tg_monitor_guard.py"),
            ep,
            "--seconds",
            str(seconds),
            "--rate-hz",
            "1000",
            "--out",
            str(out),
            *extra,
        ]
    )


def _monitor(ep: str, tmp: Path, name: str, seconds: float, *extra: str) -> subprocess.Popen:
    return _spawn(
        [
            sys.executable,
            "-m",
            "tailguard",
            "monitor",
            "--connect",
            ep,
            "--no-live",
            "--duration-s",
            str(seconds),
            "--alerts",
            str(tmp / f"{name}.jsonl"),
            "--summary-json",
            str(tmp / f"{name}.json"),
            *extra,
        ]
    )


def _kill(*procs: subprocess.Popen) -> None:
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGCONT)
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.communicate(timeout=10)


def _wait_for(pred, timeout_s: float) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.05)
    return False


def _status(path: Path) -> dict:
    """The guard helper's last status (publisher counters and ``t_ns``); {} before the first."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}


def _wait_status(path: Path, pred: Callable[[dict], bool], timeout_s: float) -> dict | None:
    """The first status of the guard helper that satisfies ``pred``, or None after the timeout."""
    found: list[dict] = []

    def check() -> bool:
        status = _status(path)
        if status and pred(status):
            found.append(status)
            return True
        return False

    return found[0] if _wait_for(check, timeout_s) else None


def _alerts(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_monitor_killed_restarted_guard_unaffected(tmp_path: Path) -> None:
    """kill -9 of the monitor leaves the guard running; a new monitor reports the whole gap."""
    ep = f"tcp://127.0.0.1:{free_port()}"
    status = tmp_path / "status.json"
    g = _guard(ep, tmp_path / "g.json", 7, "--status", str(status))
    a = b = None
    try:
        a = _monitor(ep, tmp_path, "a", 30, "--record", str(tmp_path / "a.rec"))
        assert _wait_for(
            lambda: (tmp_path / "a.rec").exists() and (tmp_path / "a.rec").stat().st_size > 2000, 30
        )
        assert _wait_status(status, lambda s: s["subscribers"] >= 1, 10) is not None
        os.killpg(a.pid, signal.SIGKILL)
        a.wait(10)
        # The gap starts before the guard reports no subscriber and lasts at least until
        # the next monitor starts; let 20 messages go out unobserved in between.
        gap_seen = _wait_status(status, lambda s: s["subscribers"] == 0, 10)
        assert gap_seen is not None, "the guard never noticed the monitor was gone"
        gap_long = _wait_status(
            status, lambda s: s["unobserved"] >= gap_seen["unobserved"] + 20, 10
        )
        assert gap_long is not None and gap_long["subscribers"] == 0
        b = _monitor(ep, tmp_path, "b", 3)
        assert b.wait(30) in (0, 1, 2)
        assert g.wait(60) == 0, g.stderr.read() if g.stderr else ""
    finally:
        _kill(g, *(p for p in (a, b) if p is not None))
    stats = json.loads((tmp_path / "g.json").read_text())
    assert stats["ticks"] == 7000
    assert stats["publisher"]["unobserved"] >= gap_long["unobserved"]
    resumed = [x for x in _alerts(tmp_path / "b.jsonl") if x["rule"] == "resumed"]
    assert resumed and resumed[0]["source"] == "publisher"
    assert resumed[0]["unobserved"] >= gap_long["unobserved"]
    at_least_s = (gap_long["t_ns"] - gap_seen["t_ns"]) / 1e9
    assert resumed[0]["value"] >= round(at_least_s, 3) - 0.001, (resumed[0], at_least_s)


def test_monitor_stalled_drops_counted(tmp_path: Path) -> None:
    """A SIGSTOPped monitor fills the send queue: sends drop and are counted, the loop runs."""
    ep = f"tcp://127.0.0.1:{free_port()}"
    status = tmp_path / "status.json"
    g = _guard(
        ep,
        tmp_path / "g.json",
        10,
        "--send-hwm",
        "8",
        "--send-buffer-bytes",
        "4096",
        "--status",
        str(status),
    )
    m = _monitor(ep, tmp_path, "m", 30, "--receive-buffer-bytes", "4096")
    try:
        subscribed = _wait_status(status, lambda s: s["subscribers"] >= 1, 30)
        assert subscribed is not None, "the monitor never subscribed"
        os.killpg(m.pid, signal.SIGSTOP)
        dropped = _wait_status(status, lambda s: s["send_dropped"] > 0, 30)
        os.killpg(m.pid, signal.SIGCONT)
        assert dropped is not None, "no send was dropped while the monitor was stopped"
        assert g.wait(60) == 0
        os.killpg(m.pid, signal.SIGTERM)
        m.wait(30)
    finally:
        _kill(g, m)
    stats = json.loads((tmp_path / "g.json").read_text())
    assert stats["ticks"] == 10000
    assert stats["publisher"]["send_dropped"] >= dropped["send_dropped"] > 0
    summary = json.loads((tmp_path / "m.json").read_text())
    assert summary["lost_msgs"] > 0


def test_guard_killed_heartbeat_loss_alert(tmp_path: Path) -> None:
    """kill -9 of the guard gives a heartbeat_lost alert (fail) within the configured time."""
    ep = f"tcp://127.0.0.1:{free_port()}"
    g = _guard(ep, tmp_path / "g.json", 60)
    m = _monitor(
        ep, tmp_path, "m", 8, "--heartbeat-misses", "3", "--record", str(tmp_path / "m.rec")
    )
    try:
        assert _wait_for(
            lambda: (tmp_path / "m.rec").exists() and (tmp_path / "m.rec").stat().st_size > 2000, 30
        )
        os.killpg(g.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        assert _wait_for(
            lambda: any(x["rule"] == "heartbeat_lost" for x in _alerts(tmp_path / "m.jsonl")), 10
        )
        detected_s = time.monotonic() - killed_at
        assert m.wait(30) == 2
    finally:
        _kill(g, m)
    assert detected_s < 5.0  # 3 x 0.5 s heartbeats, plus generous slack for a loaded host

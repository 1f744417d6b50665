"""Command channel: CURVE-authenticated trip/reset, refusals counted and recorded, off by default.

Real ZMQ sockets on 127.0.0.1. The guard runs in-process on a simulated clock (stepped by
the test); the publisher thread is real. Every wait is bounded; everything is closed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq
import zmq.auth
from tg_monitor_util import free_port

from tailguard import CallablePolicy, Guard, GuardState, starter_envelope
from tailguard.errors import MonitorConfigError, TailguardError
from tailguard.monitor.alerts import AlertSink
from tailguard.monitor.cli import keys_command
from tailguard.monitor.command_client import CommandClient, TripAction
from tailguard.monitor.rules import load_rules
from tailguard.protocol.command import MAX_REASON_CHARS, encode_command
from tailguard.sinks.flight_recorder import read_flight_record
from tailguard.sinks.telemetry import TelemetryPublisher

ROOT = Path(__file__).resolve().parent.parent.parent
PERIOD_NS = 1_000_000
pytestmark = pytest.mark.timeout(60)


def _make_keys(path: Path) -> Path:
    assert keys_command(argparse.Namespace(dir=path)) == 0
    return path


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def intruder_keys(tmp_path_factory: pytest.TempPathFactory, keys: Path) -> Path:
    """A monitor key pair the guard never authorized (with the guard's real public key)."""
    d = tmp_path_factory.mktemp("intruder")
    zmq.auth.create_certificates(str(d), "monitor")
    shutil.copyfile(keys / "guard.key", d / "guard.key")
    return d


@dataclass
class Rig:
    guard: Guard
    pub: TelemetryPublisher
    command_ep: str
    telemetry_ep: str
    record: Path
    step: Callable[[], None]

    def step_until(self, cond: Callable[[], bool], timeout_s: float = 5.0) -> bool:
        """Tick the guard (sim clock) until ``cond()``; the publisher thread runs meanwhile."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            self.step()
            if cond():
                return True
            time.sleep(0.002)  # real time for the publisher thread, not the guard's clock
        return False


@pytest.fixture
def rig(keys: Path, tmp_path: Path) -> Iterator[Rig]:
    now = [0]
    env = starter_envelope(obs_size=2, action_size=1, period_ns=PERIOD_NS)
    command_ep = f"tcp://127.0.0.1:{free_port()}"
    telemetry_ep = f"tcp://127.0.0.1:{free_port()}"
    pub = TelemetryPublisher(
        telemetry_ep,
        drain_interval_s=0.005,
        command_endpoint=command_ep,
        server_secret_key_file=keys / "guard.key_secret",
        authorized_keys_dir=keys / "authorized",
    )
    record = tmp_path / "flight.tgfr"
    guard = Guard(
        CallablePolicy(lambda o: [0.0], 2, 1),
        env,
        clock=lambda: now[0],
        telemetry=pub,
        recorder=record,
    )
    obs = np.zeros(2, np.float32)

    def step() -> None:
        now[0] += PERIOD_NS
        guard.step(obs)

    try:
        yield Rig(guard, pub, command_ep, telemetry_ep, record, step)
    finally:
        guard.close()


def _records(rig: Rig) -> list[dict]:
    rig.guard.close()  # flushes the flight recorder
    return read_flight_record(rig.record).records


def test_trip_latches_and_reset_recovers(rig: Rig, keys: Path) -> None:
    """An authorized trip latches the running guard; reset brings it back to nominal."""
    rig.step_until(lambda: rig.guard.tick >= 5, 1.0)
    with CommandClient(rig.command_ep, keys) as client:
        result = client.send("trip", "test trip", timeout_s=5.0)
        assert result.ok, result.error
        assert result.reply is not None and result.reply["gid"] == rig.pub.guard_id
        assert rig.step_until(lambda: rig.guard.state is GuardState.LATCHED)
        rig.step()
        assert rig.guard.state is GuardState.LATCHED  # sticky
        assert client.send("reset", "test reset", timeout_s=5.0).ok
        assert rig.step_until(lambda: rig.guard.state is GuardState.NOMINAL)
    assert rig.pub.counters()["cmd_accepted"] == 2
    assert rig.pub.counters()["cmd_refused"] == 0
    notes = [r["fields"] for r in _records(rig) if r["kind"] == "note"]
    assert [n["command"] for n in notes] == ["trip", "reset"]
    assert "test trip" in notes[0]["reason"]


def test_wrong_key_is_refused_counted_and_recorded(rig: Rig, intruder_keys: Path) -> None:
    """A client whose key is not authorized never gets a command through; it is counted."""
    with CommandClient(rig.command_ep, intruder_keys) as client:
        result = client.send("trip", "intruder", timeout_s=3.0)
    assert not result.ok and result.reply is None
    assert "handshake failed" in result.error
    rig.step_until(lambda: rig.pub._commands.refused["unauthenticated"] > 0, 2.0)
    assert rig.pub._commands.refused["unauthenticated"] >= 1
    assert rig.pub.counters()["cmd_accepted"] == 0
    assert rig.guard.state is GuardState.NOMINAL
    faults = [r["fields"] for r in _records(rig) if r["kind"] == "fault"]
    assert any(f.get("source") == "command" and f["refused"] == "unauthenticated" for f in faults)


def test_plain_client_without_curve_is_refused(rig: Rig) -> None:
    """A client without CURVE cannot complete the handshake; the failure is counted."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    # A DEALER's send blocks while no peer has completed the handshake, which here is
    # never: every call on this socket is bounded, and close() never waits.
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDTIMEO, 500)
    sock.setsockopt(zmq.RCVTIMEO, 500)
    try:
        sock.connect(rig.command_ep)
        with contextlib.suppress(zmq.Again):  # not queued: no handshake, no pipe
            sock.send(encode_command("trip", "no auth", 1), zmq.NOBLOCK)
        counted = rig.step_until(lambda: rig.pub._commands.refused_total > 0, 5.0)
        assert not sock.poll(0)  # never answered
    finally:
        sock.close(0)
        ctx.term()
    assert counted
    assert rig.pub._commands.refused["handshake_failed"] >= 1
    assert rig.pub.counters()["cmd_accepted"] == 0
    assert rig.guard.state is GuardState.NOMINAL


def _packed(**kw: object) -> bytes:
    body: dict[str, object] = {
        "v": 1,
        "type": "command",
        "cmd": "trip",
        "reason": "r",
        "seq": 7,
    }
    body.update(kw)
    return msgpack.packb({k: v for k, v in body.items() if v is not ...})


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"\xc1\xff\x00garbage", "malformed"),
        (b"", "malformed"),
        (msgpack.packb([1, "command", "trip"]), "malformed"),
        (_packed(v=2), "version"),
        (_packed(v=...), "version"),
        (_packed(type="hello"), "malformed"),
        (_packed(cmd="explode"), "unknown_command"),
        (_packed(cmd=3), "malformed"),
        (_packed(seq=True), "malformed"),
        (_packed(seq=-1), "malformed"),
        (_packed(reason="x" * (MAX_REASON_CHARS + 1)), "malformed"),
        (_packed(extra=1), "malformed"),
        (_packed(reason=b"bytes"), "malformed"),
        (b"\x92" + b"\xdb\xff\xff\xff\xff", "malformed"),  # a huge declared string length
        (_packed(reason="y" * 4000), "too_large"),
    ],
    ids=lambda x: x if isinstance(x, str) else None,
)
def test_bad_commands_are_refused(rig: Rig, keys: Path, payload: bytes, why: str) -> None:
    """Malformed, oversized, other-version and unknown commands get a refusal and a count."""
    with CommandClient(rig.command_ep, keys) as client:
        assert client.send_raw(payload)
        replies = []
        end = time.monotonic() + 5.0
        while not replies and time.monotonic() < end:
            replies = client.collect(50)
        assert replies and replies[0]["type"] == "refused"
        assert replies[0]["why"] == why
        # The channel still works after a bad command.
        assert client.send("reset", "still alive", timeout_s=5.0).ok
    assert rig.pub._commands.refused[why] == 1
    assert rig.pub.counters()["cmd_refused"] == 1
    faults = [r["fields"] for r in _records(rig) if r["kind"] == "fault"]
    assert [f["refused"] for f in faults if f.get("source") == "command"] == [why]


def test_commands_without_a_guard_are_refused(keys: Path) -> None:
    """A publisher not attached to a guard refuses commands with 'no_guard'."""
    ep = f"tcp://127.0.0.1:{free_port()}"
    pub = TelemetryPublisher(
        f"tcp://127.0.0.1:{free_port()}",
        drain_interval_s=0.005,
        command_endpoint=ep,
        server_secret_key_file=keys / "guard.key_secret",
        authorized_keys_dir=keys / "authorized",
    )
    try:
        with CommandClient(ep, keys) as client:
            result = client.send("trip", "", timeout_s=5.0)
        assert not result.ok and "no_guard" in result.error
        assert pub._commands.refused["no_guard"] == 1
    finally:
        pub.close()


def test_channel_is_off_by_default() -> None:
    """Without the command arguments no command socket exists and nothing answers."""
    env = starter_envelope(obs_size=2, action_size=1, period_ns=PERIOD_NS)
    guard = Guard(
        CallablePolicy(lambda o: [0.0], 2, 1),
        env,
        telemetry=f"tcp://127.0.0.1:{free_port()}",
    )
    try:
        pub = guard._telemetry
        assert pub._commands is None
        assert pub._hello_static["command_channel"] is False
        assert pub.counters()["cmd_accepted"] == pub.counters()["cmd_refused"] == 0
    finally:
        guard.close()


def test_telemetry_still_flows_with_the_channel_on(rig: Rig) -> None:
    """The ZAP handler lets the unauthenticated telemetry subscriber through."""
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    try:
        sub.connect(rig.telemetry_ep)
        hello = None
        end = time.monotonic() + 5.0
        while hello is None and time.monotonic() < end:
            if sub.poll(50):
                msg = msgpack.unpackb(sub.recv())
                hello = msg if msg["type"] == "hello" else None
    finally:
        sub.close(0)
        ctx.term()
    assert hello is not None and hello["command_channel"] is True


@pytest.mark.parametrize(
    ("change", "error", "fragment"),
    [
        ({"server_secret_key_file": None}, MonitorConfigError, "together"),
        ({"command_endpoint": None}, MonitorConfigError, "together"),
        ({"authorized_keys_dir": "nowhere"}, MonitorConfigError, "directory not found"),
        ({"authorized_keys_dir": "EMPTY"}, MonitorConfigError, "no '.key' file"),
        ({"server_secret_key_file": "guard.key"}, MonitorConfigError, "holds no secret key"),
        ({"server_secret_key_file": "missing"}, MonitorConfigError, "tailguard keys"),
        ({"server_secret_key_file": "garbage"}, MonitorConfigError, "not a CURVE key"),
        ({"command_endpoint": "tcp://0.0.0.0:1"}, TailguardError, "not a loopback"),
        ({"command_endpoint": "udp://127.0.0.1:1"}, TailguardError, "must start with"),
    ],
)
def test_bad_channel_configuration_raises(
    keys: Path, tmp_path: Path, change: dict, error: type, fragment: str
) -> None:
    """Half-configured channels, bad keys and remote endpoints fail at construction."""
    (tmp_path / "EMPTY").mkdir()
    (tmp_path / "garbage").write_text("not a key\n")
    shutil.copyfile(keys / "guard.key", tmp_path / "guard.key")
    kw: dict = {
        "command_endpoint": f"tcp://127.0.0.1:{free_port()}",
        "server_secret_key_file": keys / "guard.key_secret",
        "authorized_keys_dir": keys / "authorized",
    }
    for k, v in change.items():
        kw[k] = tmp_path / v if isinstance(v, str) and "://" not in v else v
    telemetry_ep = f"tcp://127.0.0.1:{free_port()}"
    with pytest.raises(error, match=fragment):
        TelemetryPublisher(telemetry_ep, **kw)
    TelemetryPublisher(telemetry_ep).close()  # the failed attempt released the port


def test_trip_rule_action_latches_the_guard(rig: Rig, keys: Path, tmp_path: Path) -> None:
    """A rule with the 'trip' action (allowed once the channel is on) latches the guard."""
    rules = tmp_path / "rules.toml"
    rules.write_text(
        '[[rule]]\nname = "t"\nmetric = "violations_total"\nop = ">"\nthreshold = 0\n'
        'actions = ["trip"]\n'
    )
    with pytest.raises(TailguardError, match="command channel"):
        load_rules(rules)
    assert load_rules(rules, command_enabled=True)[0].actions == ("trip",)
    with CommandClient(rig.command_ep, keys) as client:
        action = TripAction(client)
        sink = AlertSink(None, trip=action)
        sink.emit({"rule": "t", "severity": "fail", "metric": "m", "value": 1, "actions": ["trip"]})
        assert rig.step_until(lambda: rig.guard.state is GuardState.LATCHED)
        end = time.monotonic() + 5.0
        while action.acked == 0 and time.monotonic() < end:
            action.poll()
            time.sleep(0.01)
    assert (action.sent, action.acked, action.refused) == (1, 1, 0)


def test_keys_command_writes_both_sides_and_never_overwrites(tmp_path: Path) -> None:
    """`tailguard keys` writes the pairs plus authorized/monitor.key, then refuses to overwrite."""
    d = _make_keys(tmp_path / "k")
    names = sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file())
    assert names == [
        "authorized/monitor.key",
        "guard.key",
        "guard.key_secret",
        "monitor.key",
        "monitor.key_secret",
    ]
    assert (d / "guard.key_secret").stat().st_mode & 0o077 == 0
    assert keys_command(argparse.Namespace(dir=d)) == 1


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "tailguard", "monitor", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


class _Ticker:
    """Steps the rig's guard in a background thread while a CLI subprocess talks to it."""

    def __init__(self, rig: Rig) -> None:
        import threading

        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(rig,), daemon=True)

    def _loop(self, rig: Rig) -> None:
        while not self._stop.wait(0.002):
            rig.step()

    def __enter__(self) -> _Ticker:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def test_cli_send_exit_codes(rig: Rig, keys: Path, intruder_keys: Path) -> None:
    """`monitor --send`: 0 on ack (and the guard latches), 1 when refused, 2 when misused."""
    with _Ticker(rig):
        ok = _cli("--send", "trip", "--command-connect", rig.command_ep, "--keys-dir", str(keys))
        assert ok.returncode == 0, ok.stderr
        assert "acknowledged" in ok.stdout
        refused = _cli(
            "--send",
            "reset",
            "--command-connect",
            rig.command_ep,
            "--keys-dir",
            str(intruder_keys),
            "--command-timeout-s",
            "2",
        )
        assert refused.returncode == 1
        assert "handshake failed" in refused.stderr
    assert rig.guard.state is GuardState.LATCHED  # the refused reset changed nothing
    misuse = _cli("--send", "trip", "--command-connect", rig.command_ep)
    assert misuse.returncode == 2 and "go together" in misuse.stderr


def test_trip_reaches_a_guard_in_another_process(keys: Path, tmp_path: Path) -> None:
    """A real guard process with the channel on latches when `monitor --send trip` is acked."""
    telemetry_ep = f"tcp://127.0.0.1:{free_port()}"
    command_ep = f"tcp://127.0.0.1:{free_port()}"
    out = tmp_path / "guard.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    guard = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).parent / "tg_monitor_guard.py"),
            telemetry_ep,
            "--seconds",
            "4",
            "--rate-hz",
            "500",
            "--out",
            str(out),
            "--command-endpoint",
            command_ep,
            "--keys-dir",
            str(keys),
        ],
        cwd=ROOT,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        sent = _cli(
            "--send",
            "trip",
            "--reason",
            "process test",
            "--command-connect",
            command_ep,
            "--keys-dir",
            str(keys),
            "--command-timeout-s",
            "10",
        )
        assert sent.returncode == 0, sent.stderr
        _, err = guard.communicate(timeout=30)
        assert guard.returncode == 0, err.decode()[-2000:]
    finally:
        if guard.poll() is None:
            os.killpg(guard.pid, 9)
            guard.wait(5)
    stats = json.loads(out.read_text())
    assert stats["state"] == "latched" and stats["state_ticks"]["latched"] > 0
    assert stats["publisher"]["cmd_accepted"] == 1 and stats["publisher"]["cmd_refused"] == 0


def test_monitor_reports_refused_commands_from_heartbeats() -> None:
    """The guard's command counters in heartbeats become a metric rules can alert on."""
    from tg_monitor_util import S, heartbeat, hello

    from tailguard.monitor.prometheus import render_metrics
    from tailguard.monitor.stats import MonitorState

    state = MonitorState(10.0, 3)
    state.ingest(hello(0), 0)
    state.ingest(heartbeat(1, cmd_accepted=2, cmd_refused=5), S // 2)
    metrics = state.metrics(S)
    assert metrics["commands_refused_total"] == 5
    assert state.publisher["cmd_accepted"] == 2
    text = render_metrics(metrics, state.lifetime()["latency_ns"], "g1")
    assert "# TYPE tailguard_commands_refused_total counter" in text

"""The wall-clock firmware: watchdog and link logic (injected times), then real processes.

Process tests start ``python -m tailguard.firmware_sim.firmware_cli`` on 127.0.0.1 with a port
chosen
by ZMQ (``tcp://127.0.0.1:*``, reported through ``--ready-file``), bound every wait in time
and kill their process groups in ``finally``. Timing checks are deliberately loose: the
machine may be loaded.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import msgpack
import numpy as np
import pytest

from tailguard.errors import ProfileError, TailguardError
from tailguard.firmware_sim import messages as wire
from tailguard.firmware_sim.firmware_config import FirmwareConfig, check_endpoint
from tailguard.firmware_sim.link_faults import LinkFaults
from tailguard.firmware_sim.watchdog import CommandWatchdog

pytest.importorskip("mujoco")
pytest.importorskip("gymnasium")

REPO = Path(__file__).resolve().parents[2]
MS = 1_000_000
S = 1_000_000_000


def test_split_modules_keep_the_firmware_names_importable() -> None:
    """The names that moved out of firmware.py (and bench_cli.py) are the same objects there."""
    from tailguard.firmware_sim import firmware
    from tailguard.tools import bench_cli, bench_cyclictest, bench_loop

    assert firmware.CommandWatchdog is CommandWatchdog and firmware.LinkFaults is LinkFaults
    assert firmware.FirmwareConfig is FirmwareConfig and firmware.check_endpoint is check_endpoint
    assert bench_cli.run_guarded_loop is bench_loop.run_guarded_loop
    assert bench_cli.run_cyclictest is bench_cyclictest.run_cyclictest
    assert set(bench_cli.__all__) >= {"LoopResult", "measure_bench_cost", "CHUNK", "MAX_TICKS"}


# ------------------------------------------------------------------ logic, no sockets --
def test_watchdog_starts_tripped_and_recovers_on_first_command() -> None:
    """The robot damps until the first command, which reports the gap since start."""
    wd = CommandWatchdog(100 * MS, now_ns=0)
    assert wd.tripped
    assert wd.command(30 * MS) == 30 * MS
    assert not wd.tripped and wd.recoveries == 1


def test_watchdog_trips_only_after_timeout_and_reports_gap() -> None:
    """Silence up to the timeout is tolerated; beyond it trips once; a command recovers."""
    wd = CommandWatchdog(100 * MS, now_ns=0)
    wd.command(0)
    assert wd.check(100 * MS) is None
    assert wd.check(100 * MS + 1) == 100 * MS + 1
    assert wd.check(500 * MS) is None  # already tripped: reported once
    assert wd.trips == 1
    assert wd.command(700 * MS) == 700 * MS
    assert not wd.tripped


def test_commands_keep_watchdog_quiet() -> None:
    """Regular commands inside the timeout never trip the watchdog."""
    wd = CommandWatchdog(100 * MS, now_ns=0)
    for t in range(0, 10 * S, 50 * MS):
        wd.command(t)
        assert wd.check(t + 99 * MS) is None
    assert wd.trips == 0


@pytest.mark.parametrize(
    ("spec", "drop", "expect"),
    [("nominal", 0.0, 1000), ("fixed:ms=5", 0.0, 1000 + 5 * MS), ("nominal", 1.0, None)],
)
def test_link_faults(spec: str, drop: float, expect: int | None) -> None:
    """Latency profiles delay delivery by their sample; drop_prob=1 drops everything."""
    faults = LinkFaults(spec, drop, seed=0)
    assert [faults.delivery_ns(1000) for _ in range(5)] == [expect] * 5


def test_link_drop_rate_matches_probability() -> None:
    """About drop_prob of commands are dropped (seeded)."""
    faults = LinkFaults("nominal", 0.25, seed=3)
    dropped = sum(faults.delivery_ns(0) is None for _ in range(4000))
    assert 800 < dropped < 1200


@pytest.mark.parametrize("spec", ["fixed:s=1e10", "uniform:lo_ms=0,hi_ms=1e13"])
def test_latency_beyond_int64_ns_is_refused_at_start(spec: str) -> None:
    """A latency spec whose samples overflow int64 ns fails at start, never in the loop."""
    with pytest.raises(TailguardError):
        LinkFaults(spec, 0.0, seed=0)


@pytest.mark.parametrize("spec", ["fixed:s=7200", "uniform:lo_s=3000,hi_s=4000"])
def test_latency_beyond_the_link_bound_is_refused_at_start(spec: str) -> None:
    """Samples that fit int64 ns but exceed the link's one-hour bound are refused at start."""
    from tailguard.errors import ConfigError

    with pytest.raises(ConfigError, match="the link accepts"):
        LinkFaults(spec, 0.0, seed=0)


def test_run_time_latency_outside_the_bound_is_clamped_and_counted() -> None:
    """A sample the start-up probe did not meet is clamped (never a crash) and counted."""
    from tailguard.firmware_sim.link_faults import MAX_LINK_LATENCY_NS

    faults = LinkFaults("fixed:ms=1", 0.0, seed=0)

    class Huge:
        def next_ns(self) -> int:
            return 1 << 70

    faults.profile = Huge()  # type: ignore[assignment]
    assert faults.delivery_ns(5) == 5 + MAX_LINK_LATENCY_NS and faults.clamped == 1


def test_bad_latency_spec_is_refused() -> None:
    """An unknown profile kind fails at start with the profile parser's error."""
    with pytest.raises(ProfileError, match="did you mean"):
        LinkFaults("lognormol:median_ms=2,sigma=0.5", 0.0, seed=0)


@pytest.mark.parametrize(
    ("endpoint", "allow", "fragment"),
    [
        ("tcp://0.0.0.0:5555", False, "not a loopback"),
        ("tcp://*:5555", False, "not a loopback"),
        ("tcp://192.168.1.4:5555", False, "--allow-remote"),
        ("udp://127.0.0.1:5555", False, "must start with tcp://"),
    ],
)
def test_endpoint_refused(endpoint: str, allow: bool, fragment: str) -> None:
    """Non-loopback addresses need the explicit flag; unknown transports are refused."""
    with pytest.raises(TailguardError, match=fragment):
        check_endpoint(endpoint, allow)


@pytest.mark.parametrize(
    "endpoint",
    [
        "tcp://127.0.0.1:5555",
        "tcp://127.0.0.1:*",
        "tcp://localhost:1",
        "tcp://[::1]:5",
        "ipc:///tmp/x",
    ],
)
def test_endpoint_accepted(endpoint: str) -> None:
    """Loopback and local transports bind without any flag."""
    check_endpoint(endpoint, allow_remote=False)
    check_endpoint("tcp://0.0.0.0:5555", allow_remote=True)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"publish_every": 0}, "publish_every must be an integer in 1.."),
        ({"command_timeout_ns": 0}, "command_timeout_ns"),
        ({"command_timeout_ns": 10**26}, r"command_timeout_ns must be an integer in 1\.\."),
        ({"spin_ns": 10**12}, "spin_ns"),
        ({"drop_prob": 1.5}, "drop_prob must be a probability"),
        ({"drop_prob": float("nan")}, "drop_prob must be a probability"),
        ({"physics_rate_hz": -5.0}, "physics_rate_hz"),
        ({"physics_rate_hz": float("inf")}, "physics_rate_hz"),
        ({"cpu_burn_threads": 1000}, r"cpu_burn_threads must be an integer in 0\.\.64"),
        ({"seed": -1}, "seed must be an integer"),
        ({"bind": "tcp://10.0.0.1:5"}, "not a loopback"),
    ],
)
def test_config_validation(kwargs: dict, fragment: str) -> None:
    """Bad settings are refused at construction with a message naming the setting."""
    with pytest.raises(TailguardError, match=fragment):
        FirmwareConfig(**kwargs)


@pytest.mark.timeout(30)
def test_handshake_ends_early_on_a_stop_request() -> None:
    """A stop request ends the wait for a silent firmware at once, with a clear error."""
    from tailguard.firmware_sim.run_client import FirmwareLink

    link = FirmwareLink("tcp://127.0.0.1:9")
    try:
        t0 = time.monotonic()
        with pytest.raises(TailguardError, match="stopped before the firmware"):
            link.handshake(600 * S, should_stop=lambda: True)
        assert time.monotonic() - t0 < 10  # not the 600 s handshake timeout
    finally:
        link.close()


# ------------------------------------------------------------------- real processes --
def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def _spawn(args: list[str], cwd: Path, name: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tailguard.firmware_sim.firmware_cli", *args],
        cwd=cwd,
        env=_env(),
        stdout=(cwd / f"{name}.out").open("wb"),
        stderr=(cwd / f"{name}.err").open("wb"),
        start_new_session=True,  # own process group: killpg reaches every child
    )


def _kill(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    if proc.poll() is None:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def _log(tmp: Path, name: str) -> str:
    path = tmp / f"{name}.err"
    return path.read_text(errors="replace")[-2000:] if path.exists() else ""


@contextmanager
def firmware(tmp: Path, *extra: str) -> Iterator[tuple[subprocess.Popen, str]]:
    """A running firmware process and its endpoint; killed on exit."""
    ready = tmp / "ready.json"
    args = ["firmware", "--bind", "tcp://127.0.0.1:*", "--ready-file", str(ready)]
    args += ["--summary", str(tmp / "summary.json"), "--report-every-s", "0", *extra]
    proc = _spawn(args, tmp, "firmware")
    try:
        end = time.monotonic() + 60
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > end:
                pytest.fail(f"firmware did not start (rc={proc.poll()}):\n{_log(tmp, 'firmware')}")
            time.sleep(0.05)
        yield proc, json.loads(ready.read_text())["endpoint"]
    finally:
        _kill(proc)


def _stop(proc: subprocess.Popen, tmp: Path) -> dict:
    """SIGTERM the firmware; it must exit 0 and leave its summary."""
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=30) == 0, _log(tmp, "firmware")
    return json.loads((tmp / "summary.json").read_text())


def _wait_for(link, pred: Callable[[], bool], timeout_s: float, what: str, tmp: Path) -> None:
    if not link.wait(pred, round(timeout_s * S)):
        pytest.fail(f"timed out waiting for {what}:\n{_log(tmp, 'firmware')}")


def _events(link, name: str) -> list[dict]:
    return [d for e, d in link.events if e == name]


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    from tailguard.runtime.onnx_build import write_mlp

    return write_mlp(tmp_path / "hopper.onnx", (11, 64, 64, 3))


@pytest.mark.timeout(120)
def test_watchdog_trips_when_client_killed_and_recovers(tmp_path: Path, policy: Path) -> None:
    """SIGKILLing the controller trips damping within the timeout; a new client recovers it."""
    from tailguard.firmware_sim.run_client import FirmwareLink

    timeout_ms = 200
    clients: list[subprocess.Popen] = []
    with firmware(tmp_path, "--command-timeout-ms", str(timeout_ms)) as (fw, endpoint):
        monitor = FirmwareLink(endpoint, role="monitor")
        try:
            monitor.handshake(30 * S)
            run = ["run", "--policy", str(policy), "--connect", endpoint, "--rate-hz", "50"]
            clients.append(_spawn(run, tmp_path, "client_a"))
            _wait_for(
                monitor,
                lambda: _events(monitor, "watchdog_recover"),
                60,
                "first commands",
                tmp_path,
            )
            _wait_for(
                monitor, lambda: monitor.last_obs.mode == "active", 10, "active mode", tmp_path
            )

            _kill(clients[0], signal.SIGKILL)
            _wait_for(
                monitor, lambda: _events(monitor, "watchdog_trip"), 20, "watchdog trip", tmp_path
            )
            trip = _events(monitor, "watchdog_trip")[0]
            assert trip["timeout_ns"] == timeout_ms * MS
            # Trips at the first physics step past the timeout (loose bound: loaded machine).
            assert timeout_ms * MS < trip["silence_ns"] < timeout_ms * MS + 2 * S
            _wait_for(
                monitor, lambda: monitor.last_obs.mode == "damping", 10, "damping obs", tmp_path
            )

            clients.append(_spawn(run, tmp_path, "client_b"))
            _wait_for(
                monitor,
                lambda: len(_events(monitor, "watchdog_recover")) >= 2,
                60,
                "recovery",
                tmp_path,
            )
            recover = _events(monitor, "watchdog_recover")[1]
            assert recover["gap_ns"] > timeout_ms * MS
            _wait_for(
                monitor, lambda: monitor.last_obs.mode == "active", 10, "active again", tmp_path
            )
        finally:
            monitor.close()
            for c in clients:
                _kill(c)
        summary = _stop(fw, tmp_path)
    wd = summary["watchdog"]
    assert wd["trips"] >= 1 and wd["recoveries"] >= 2
    assert summary["commands"]["applied"] > 0
    assert summary["commands"]["rejected_total"] == 0


def _fuzz_corpus(seed: int) -> list[list[bytes]]:
    """A few thousand malformed messages (each a list of ZMQ frames), all to be rejected."""
    rng = random.Random(seed)
    good = msgpack.packb(
        {"v": 1, "type": "cmd", "seq": 1, "t_ns": 1, "action": bytes(12), "obs_seq": -1}
    )
    valid_obs = wire.encode(wire.Observation(1, 1, np.zeros(11, np.float32), 0, "active", -1))
    out: list[list[bytes]] = []
    out += [[rng.randbytes(rng.randrange(0, 200))] for _ in range(1000)]
    out += [[good[: rng.randrange(0, len(good))]] for _ in range(500)]
    wrong = [-5, 1.5, "x", b"x", [1], {"a": 1}, None, True, 2**64 - 1]
    for _ in range(500):
        obj = msgpack.unpackb(good)
        obj[rng.choice(["seq", "t_ns", "action", "obs_seq"])] = rng.choice(wrong)
        out.append([msgpack.packb(obj, use_bin_type=True)])
    heads = [b"\xc6", b"\xdb", b"\xdd", b"\xdf", b"\xc5", b"\xda", b"\xdc", b"\xde"]
    out += [
        [rng.choice(heads) + b"\xff\xff\xff\xff"[: rng.randrange(2, 5)] + rng.randbytes(8)]
        for _ in range(300)
    ]
    for _ in range(300):
        obj = msgpack.unpackb(good)
        obj["v"] = rng.choice([0, 2, 3, 99, "1", 1.0, None, -1])
        out.append([msgpack.packb(obj, use_bin_type=True)])
    out += [[good + rng.randbytes(wire.MAX_MESSAGE_BYTES)] for _ in range(20)]  # oversized
    out += [[good, good] for _ in range(50)]  # wrong frame count
    out += [[valid_obs] for _ in range(50)]  # wrong direction
    nan = msgpack.unpackb(good)
    nan["action"] = np.array([np.nan, 0, 0], np.float32).tobytes()
    short = msgpack.unpackb(good)
    short["action"] = bytes(8)
    out += [[msgpack.packb(nan)]] * 50 + [[msgpack.packb(short)]] * 50
    return out


@pytest.mark.timeout(120)
def test_fuzzed_messages_are_counted_and_firmware_survives(tmp_path: Path) -> None:
    """Thousands of malformed messages are each dropped and counted; the loop keeps running."""
    import zmq

    from tailguard.firmware_sim.run_client import FirmwareLink

    corpus = _fuzz_corpus(seed=1)
    with firmware(tmp_path) as (fw, endpoint):
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDTIMEO, 20_000)
        link = FirmwareLink(endpoint, role="monitor")
        try:
            sock.connect(endpoint)
            for frames in corpus:
                sock.send_multipart(frames)
            # Same connection, in order: once info answers, every fuzz message was handled.
            sock.send(wire.encode(wire.Hello(1, time.monotonic_ns(), "monitor")))
            assert sock.poll(30_000), _log(tmp_path, "firmware")
            deadline = time.monotonic() + 30
            while not isinstance(wire.parse(sock.recv()), wire.Info):
                assert time.monotonic() < deadline, "no info after the fuzz messages"
            link.handshake(30 * S)  # and a fresh client is still served observations
            first = link.last_obs.sim_time_ns
            _wait_for(
                link, lambda: link.last_obs.sim_time_ns > first, 10, "physics advancing", tmp_path
            )
        finally:
            sock.close(0)
            ctx.term()
            link.close()
        assert fw.poll() is None, _log(tmp_path, "firmware")
        summary = _stop(fw, tmp_path)
    cmds = summary["commands"]
    assert cmds["rejected_total"] == len(corpus)
    assert cmds["applied"] == 0
    for reason in ("not_msgpack", "bad_field", "bad_version", "too_large", "bad_frames",
                   "wrong_direction", "nonfinite", "action_size"):  # fmt: skip
        assert cmds["rejected"].get(reason, 0) > 0, reason


@pytest.mark.timeout(120)
def test_run_client_against_live_firmware(tmp_path: Path, policy: Path) -> None:
    """`run` for ~2 s produces paced ticks, commands the firmware applies, and guard stats."""
    with firmware(tmp_path) as (fw, endpoint):
        out = tmp_path / "run.json"
        args = ["run", "--policy", str(policy), "--connect", endpoint, "--rate-hz", "50"]
        client = _spawn([*args, "--duration-s", "2", "--json", str(out)], tmp_path, "client")
        try:
            assert client.wait(timeout=90) == 0, _log(tmp_path, "client")
        finally:
            _kill(client)
        summary = _stop(fw, tmp_path)
    run = json.loads(out.read_text())
    assert run["exit_reason"] == "duration"
    assert run["ticks"] >= 10
    assert run["guard"]["ticks"] == run["ticks"]
    assert set(run["guard"]) >= {"state", "violations", "latency_ns", "dt_ns", "interventions"}
    assert run["pacer_lateness_ns"]["count"] == run["ticks"]
    assert run["firmware_events"].get("watchdog_recover", 0) >= 1
    assert summary["commands"]["applied"] >= 10
    assert summary["lateness_ns"]["count"] == summary["steps"] > 0


def test_run_refuses_policy_of_wrong_size(tmp_path: Path) -> None:
    """A policy whose sizes differ from the firmware's is refused with both sizes named."""
    from tailguard.runtime.onnx_build import write_mlp

    bad = write_mlp(tmp_path / "bad.onnx", (17, 8, 6))
    with firmware(tmp_path) as (_, endpoint):
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "tailguard.firmware_sim.firmware_cli",
                "run",
                "--policy",
                str(bad),
                "--connect",
                endpoint,
                "--duration-s",
                "1",
            ],
            cwd=tmp_path,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=90,
        )
    assert res.returncode == 1
    assert "17 observations to 6 actions" in res.stderr and "11 -> 3" in res.stderr

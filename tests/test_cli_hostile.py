"""Hostile and careless command lines: every subcommand answers with a message, never a traceback.

For every flag of every subcommand, a table of bad values per flag type (numbers: nan, inf,
negative, absurd, not a number; integers: negative seeds, fractions, 25-digit values;
endpoints; ports; paths: a directory where a file goes, a missing parent, a file where a
directory goes) must give the usage exit code (2, ``tailguard.cli_args.EXIT_USAGE``), a
message naming the flag, and no traceback, before any work starts. These run in-process
through ``tailguard.tools.cli.main`` under a per-test timeout. The loops that used to hang
(low rates, signals) run as real subprocesses with a timeout.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from argparse import ArgumentTypeError
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tailguard import cli_args as ca
from tailguard.cli_args import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from tailguard.tools.cli import main

NUMBER_BAD = ["nan", "inf", "-inf", "1e400", "abc", ""]
POSITIVE_BAD = [*NUMBER_BAD, "0", "-1"]
NON_NEGATIVE_BAD = [*NUMBER_BAD, "-1", "-1e-9"]
DURATION_BAD = [*POSITIVE_BAD, "1e-300"]  # rounds to 0 ns
INTEGER_BAD = ["1.5", "abc", "1e3", "9" * 25, "", "0x10"]
SEED_BAD = [*INTEGER_BAD, "-1"]
ENDPOINT_BAD = ["garbage", "tcp://", "tcp://127.0.0.1", "tcp://127.0.0.1:99999", "http://x:1"]
PORT_BAD = ["0", "99999", "-1", "abc", "80.5"]
FILE_BAD = ["{dir}", "{dir}/missing/x.json"]
DIR_BAD = ["{file}"]

P = "{policy}"
# (subcommand argv before the flag, flag, bad values); other required flags are given
# valid values so that only the flag under test can be refused.
CASES: list[tuple[list[str], str, list[str]]] = [
    (["demo"], "--seconds", [*POSITIVE_BAD, "1e9"]),
    (["demo"], "--seed", SEED_BAD),
    (["demo"], "--json", FILE_BAD),
    (["envelope", "init", "--policy", P, "-o", "{dir}/e.json"], "--period-ms", DURATION_BAD),
    (["envelope", "init", "--policy", P, "--period-ms", "10"], "--output", FILE_BAD),
    (
        ["envelope", "init", "--policy", P, "--period-ms", "10", "-o", "{dir}/e.json"],
        "--action-bound",
        POSITIVE_BAD,
    ),
    (["inspect", P], "--ticks", [*INTEGER_BAD, "-5", "0"]),
    (["replay", "--policy", P, "--env", "Hopper-v5"], "--deadline-ms", DURATION_BAD),
    (["replay", "--policy", P, "--env", "Hopper-v5"], "--drop-prob", [*NUMBER_BAD, "1.5"]),
    (["replay", "--policy", P, "--env", "Hopper-v5"], "--drop-burst", [*INTEGER_BAD, "0"]),
    (["replay", "--policy", P, "--env", "Hopper-v5"], "--episodes", [*INTEGER_BAD, "0", "-3"]),
    (["replay", "--policy", P, "--env", "Hopper-v5"], "--seed", SEED_BAD),
    (["replay", "--policy", P, "--env", "Hopper-v5"], "--json", FILE_BAD),
    (["firmware"], "--bind", ENDPOINT_BAD),
    (["firmware"], "--seed", SEED_BAD),
    (["firmware"], "--physics-rate-hz", [*POSITIVE_BAD, "1e9"]),
    (["firmware"], "--publish-every", [*INTEGER_BAD, "0"]),
    (["firmware"], "--command-timeout-ms", [*DURATION_BAD, "1e20"]),
    (["firmware"], "--link-latency", ["fixed:s=1e10", "fixed:s=7200", "lognormx"]),
    (["firmware"], "--drop-prob", [*NUMBER_BAD, "2"]),
    (["firmware"], "--cpu-burn", [*INTEGER_BAD, "-1", "65"]),
    (["firmware"], "--spin-us", [*NON_NEGATIVE_BAD, "1e12"]),
    (["firmware"], "--report-every-s", [*NON_NEGATIVE_BAD, "1e12"]),
    (["firmware"], "--duration-s", [*DURATION_BAD, "1e12"]),
    (["firmware"], "--summary", FILE_BAD),
    (["firmware"], "--ready-file", FILE_BAD),
    (["run", "--policy", P], "--connect", ENDPOINT_BAD),
    (["run", "--policy", P], "--rate-hz", [*POSITIVE_BAD, "1e9", "1e-9"]),
    (["run", "--policy", P], "--deadline-ms", DURATION_BAD),
    (["run", "--policy", P], "--duration-s", DURATION_BAD),
    (["run", "--policy", P], "--spin-us", [*NON_NEGATIVE_BAD, "1e12"]),
    (["run", "--policy", P], "--connect-timeout-s", DURATION_BAD),
    (["run", "--policy", P], "--json", FILE_BAD),
    (["monitor"], "--connect", ENDPOINT_BAD),
    (["monitor"], "--prometheus", PORT_BAD),
    (["monitor"], "--record-max-mb", POSITIVE_BAD),
    (["monitor"], "--window-s", DURATION_BAD),
    (["monitor"], "--heartbeat-misses", [*INTEGER_BAD, "0"]),
    (["monitor"], "--eval-interval-s", DURATION_BAD),
    (["monitor"], "--duration-s", DURATION_BAD),
    (["monitor"], "--receive-buffer-bytes", [*INTEGER_BAD, "-1"]),
    (["monitor"], "--command-connect", ENDPOINT_BAD),
    (["monitor"], "--command-timeout-s", DURATION_BAD),
    (["monitor"], "--alerts", FILE_BAD),
    (["monitor"], "--record", FILE_BAD),
    (["monitor"], "--summary-json", FILE_BAD),
    (["keys"], "--dir", DIR_BAD),
    (["bench", "--policy", P, "--out", "{dir}/o"], "--rate-hz", [*POSITIVE_BAD, "1e9"]),
    (["bench", "--policy", P, "--out", "{dir}/o"], "--duration-s", DURATION_BAD),
    (["bench", "--policy", P, "--out", "{dir}/o"], "--spin-us", [*NON_NEGATIVE_BAD, "1e12"]),
    (["bench", "--policy", P, "--out", "{dir}/o"], "--threads", [*INTEGER_BAD, "0"]),
    (["bench", "--policy", P, "--out", "{dir}/o"], "--warmup-ticks", [*INTEGER_BAD, "-1"]),
    (["bench", "--policy", P, "--out", "{dir}/o"], "--fifo", [*INTEGER_BAD, "0", "100"]),
    (["bench", "--policy", P, "--out", "{dir}/o"], "--cpu", [*INTEGER_BAD, "-1"]),
    (["bench", "--policy", P], "--out", DIR_BAD),
    (["export", "rsl-rl", "{dir}/x.pt", "-o", "{dir}/p.onnx"], "--tolerance", POSITIVE_BAD),
    (["export", "rsl-rl", "{dir}/x.pt", "-o", "{dir}/p.onnx"], "--hidden-sizes", INTEGER_BAD),
    (["export", "sb3", "{dir}/m.zip"], "--output", FILE_BAD),
    (["audit", "--policy", P, "--env", "Hopper-v5", "--out", "{dir}/a"], "--seed", SEED_BAD),
    (["audit", "--policy", P, "--env", "Hopper-v5", "--out", "{dir}/a"], "--alpha", POSITIVE_BAD),
    (["audit", "--policy", P, "--env", "Hopper-v5"], "--out", DIR_BAD),
    (
        ["certify", "--policy", P, "--env", "Hopper-v5", "--out", "{dir}/c", "--envelope", P],
        "--episodes",
        [*INTEGER_BAD, "-1"],
    ),
]

FLAG_VALUES = [
    pytest.param(argv, flag, value, id=f"{' '.join(argv[:2])} {flag} {value!r}")
    for argv, flag, values in CASES
    for value in values
]


@pytest.fixture(scope="module")
def paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    from tailguard.runtime.onnx_build import write_mlp

    root = tmp_path_factory.mktemp("hostile")
    policy = write_mlp(root / "hopper_sized.onnx", [11, 8, 3])
    some_file = root / "a_file.txt"
    some_file.write_text("x")
    return {"dir": str(root), "file": str(some_file), "policy": str(policy)}


def _fill(argv: list[str], paths: dict[str, str]) -> list[str]:
    return [a.format(**paths) for a in argv]


def _call(argv: list[str]) -> tuple[int, str]:
    err, out = io.StringIO(), io.StringIO()
    with redirect_stderr(err), redirect_stdout(out):
        code = main(argv)
    return code, err.getvalue()


def _long_flag(flag: str) -> str:
    return flag if flag != "--output" else "-o/--output"


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("argv", "flag", "value"), FLAG_VALUES)
def test_hostile_flag_value_is_a_usage_error_naming_the_flag(
    paths: dict[str, str], argv: list[str], flag: str, value: str
) -> None:
    """Each bad value exits 2 (usage) with a message naming the flag and no traceback."""
    code, err = _call(
        [*_fill(argv, paths), flag if flag != "--output" else "-o", _fill([value], paths)[0]]
    )
    assert "Traceback" not in err
    assert code == EXIT_USAGE, err
    assert _long_flag(flag) in err


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (
            ["bench", "--policy", P, "--out", "{dir}/o", "--rate-hz", "1e-6", "--duration-s", "1"],
            "less than one tick",
        ),
        (["bench", "--policy", P, "--out", "{dir}/o", "--duration-s", "1e9"], "ticks"),
        (
            ["replay", "--policy", P, "--env", "Hopper-v5", "--no-guard", "--deadline-ms", "5"],
            "--no-guard cannot be combined",
        ),
        (["monitor", "--command-connect", "tcp://127.0.0.1:5"], "go together"),
        (["nosuchcommand"], "invalid choice"),
    ],
)
def test_contradictory_or_impossible_flags_are_usage_errors(
    paths: dict[str, str], argv: list[str], fragment: str
) -> None:
    """Flags that only conflict together exit 2 with a message saying how; no traceback."""
    code, err = _call(_fill(argv, paths))
    assert "Traceback" not in err and code == EXIT_USAGE and fragment in err, err


@pytest.mark.timeout(60)
def test_rules_file_nested_5000_deep_is_refused_with_a_clear_error(
    paths: dict[str, str], tmp_path: Path
) -> None:
    """A 5000-deep rules file is refused (monitor's fail code, 2) naming the depth bound."""
    deep = tmp_path / "deep.toml"
    deep.write_text("x = " + "[" * 5000 + "]" * 5000 + "\n")
    record = tmp_path / "empty.rec"
    record.write_bytes(b"")
    code, err = _call(["monitor", "--once", str(record), "--rules", str(deep)])
    assert "Traceback" not in err and code == 2
    assert "5000 levels deep" in err and "deep.toml" in err


def test_rules_with_brackets_in_strings_and_comments_still_load(tmp_path: Path) -> None:
    """The depth pre-scan ignores brackets inside strings and comments: a real file loads."""
    from tailguard.monitor.rules import load_rules, toml_nesting_depth

    text = (
        "# [[[[[[[[ a comment\n"
        "[[rule]]\n"
        'name = "p99 [[[[[[[[[[ high"\n'
        "metric = 'latency_p99_period'\n"
        "op = '>'\nthreshold = 0.75\nseverity = 'warn'\nactions = ['log']\n"
    )
    assert toml_nesting_depth(text) == 2
    rules_file = tmp_path / "r.toml"
    rules_file.write_text(text)
    (rule,) = load_rules(rules_file)
    assert rule.name == "p99 [[[[[[[[[[ high" and rule.threshold == 0.75


@pytest.mark.timeout(60)
def test_run_refuses_an_envelope_for_another_period_before_connecting(
    paths: dict[str, str], tmp_path: Path
) -> None:
    """run --rate-hz 100 with a 20 ms envelope exits 1 naming both periods, without a peer."""
    from tailguard.envelope.model import save_envelope, starter_envelope

    env = tmp_path / "env20.json"
    save_envelope(starter_envelope(obs_size=11, action_size=3, period_ns=20_000_000), env)
    argv = ["run", "--policy", paths["policy"], "--envelope", str(env), "--rate-hz", "100"]
    t0 = time.monotonic()
    code, err = _call([*argv, "--connect", "tcp://127.0.0.1:9", "--connect-timeout-s", "30"])
    assert time.monotonic() - t0 < 30  # refused before the 30 s handshake could start
    assert "Traceback" not in err and code == EXIT_FAILED
    assert "20000000" in err and "10000000" in err and "--rate-hz 100" in err


# ------------------------------------------------------------- real processes, real time --


def _spawn(args: list[str], cwd: Path, name: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "tailguard", *args],
        cwd=cwd,
        env=env,
        stdout=(cwd / f"{name}.out").open("wb"),
        stderr=(cwd / f"{name}.err").open("wb"),
        start_new_session=True,
    )


def _wait_file(path: Path, timeout_s: float, proc: subprocess.Popen[bytes]) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if path.exists() and path.stat().st_size > 0:
            return
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"{path.name} did not appear within {timeout_s} s")


def _wait_text(path: Path, text: str, timeout_s: float, proc: subprocess.Popen[bytes]) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in {path.name} within {timeout_s} s")


def _finish(proc: subprocess.Popen[bytes], timeout_s: float) -> int:
    try:
        return proc.wait(timeout=timeout_s)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.fixture
def sim() -> None:
    pytest.importorskip("mujoco")
    pytest.importorskip("gymnasium")


@pytest.fixture
def firmware_proc(sim: None, tmp_path: Path) -> Iterator[str]:
    """A firmware process at its normal rate; yields its endpoint."""
    ready = tmp_path / "fw.ready"
    proc = _spawn(
        ["firmware", "--bind", "tcp://127.0.0.1:*", "--ready-file", str(ready), "--quiet"],
        tmp_path,
        "fw",
    )
    try:
        _wait_file(ready, 60, proc)
        yield json.loads(ready.read_text())["endpoint"]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        _finish(proc, 30)


@pytest.mark.timeout(120)
def test_firmware_at_a_low_physics_rate_stops_at_its_duration(sim: None, tmp_path: Path) -> None:
    """firmware --physics-rate-hz 0.01 --duration-s 1 exits 0 on time (exit_reason duration)."""
    summary = tmp_path / "fw.json"
    args = ["firmware", "--bind", "tcp://127.0.0.1:*", "--physics-rate-hz", "0.01"]
    proc = _spawn(
        [*args, "--duration-s", "1", "--summary", str(summary), "--quiet"], tmp_path, "fw"
    )
    assert _finish(proc, 60) == EXIT_OK, (tmp_path / "fw.err").read_text()
    assert json.loads(summary.read_text())["exit_reason"] == "duration"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_firmware_at_a_low_physics_rate_answers_a_signal(
    sim: None, tmp_path: Path, sig: signal.Signals
) -> None:
    """A firmware waiting 100 s for its next step stops within seconds of SIGTERM/SIGINT."""
    ready, summary = tmp_path / "fw.ready", tmp_path / "fw.json"
    args = ["firmware", "--bind", "tcp://127.0.0.1:*", "--physics-rate-hz", "0.01"]
    proc = _spawn([*args, "--ready-file", str(ready), "--summary", str(summary)], tmp_path, "fw")
    _wait_file(ready, 60, proc)
    os.killpg(proc.pid, sig)
    assert _finish(proc, 20) == EXIT_OK, (tmp_path / "fw.err").read_text()
    assert json.loads(summary.read_text())["exit_reason"] == "signal"
    assert "Traceback" not in (tmp_path / "fw.err").read_text()


@pytest.mark.timeout(180)
def test_run_at_a_low_rate_stops_at_its_duration(
    firmware_proc: str, paths: dict[str, str], tmp_path: Path
) -> None:
    """run --rate-hz 0.01 --duration-s 1 exits 0 on time with exit_reason duration."""
    out = tmp_path / "run.json"
    args = ["run", "--policy", paths["policy"], "--connect", firmware_proc, "--rate-hz", "0.01"]
    proc = _spawn([*args, "--duration-s", "1", "--json", str(out)], tmp_path, "run")
    assert _finish(proc, 60) == EXIT_OK, (tmp_path / "run.err").read_text()
    assert json.loads(out.read_text())["exit_reason"] == "duration"


@pytest.mark.timeout(180)
def test_run_at_a_low_rate_answers_sigterm(
    firmware_proc: str, paths: dict[str, str], tmp_path: Path
) -> None:
    """A run waiting 100 s for its next tick stops within seconds of SIGTERM, exit 0."""
    out = tmp_path / "run.json"
    args = ["run", "--policy", paths["policy"], "--connect", firmware_proc, "--rate-hz", "0.01"]
    proc = _spawn([*args, "--json", str(out)], tmp_path, "run")
    _wait_text(tmp_path / "run.err", "run: connected", 60, proc)
    os.killpg(proc.pid, signal.SIGTERM)
    assert _finish(proc, 20) == EXIT_OK, (tmp_path / "run.err").read_text()
    assert json.loads(out.read_text())["exit_reason"] == "signal"


# ------------------------------------------------------------------- parser properties --

_TEXT = st.one_of(
    st.text(max_size=40),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
)


@given(_TEXT)
def test_number_parser_returns_an_in_range_value_or_refuses(text: str) -> None:
    """A Number parser returns a finite value inside its range, or raises ArgumentTypeError."""
    parse = ca.duration("ms", maximum=60_000.0)
    try:
        value = parse(text)
    except ArgumentTypeError as exc:
        assert "expected a finite number of ms in (0, 60000]" in str(exc)
        return
    assert 0 < value <= 60_000.0 and round(value * 1e6) >= 1


@given(_TEXT)
def test_integer_parser_returns_an_in_range_int_or_refuses(text: str) -> None:
    """An Integer parser returns an int inside its range, or raises ArgumentTypeError."""
    try:
        value = ca.seed()(text)
    except ArgumentTypeError as exc:
        assert "expected an integer in 0..4294967295" in str(exc)
        return
    assert isinstance(value, int) and 0 <= value < 1 << 32


@given(st.one_of(st.text(max_size=60), st.text(max_size=30).map(lambda t: "tcp://" + t)))
def test_endpoint_parser_accepts_only_well_formed_endpoints(text: str) -> None:
    """An endpoint parser returns its input only for tcp://HOST:PORT, ipc://, inproc://."""
    try:
        value = ca.endpoint(bind=False)(text)
    except ArgumentTypeError:
        return
    assert value == text and value.startswith(("tcp://", "ipc://", "inproc://"))
    if value.startswith("tcp://"):
        port = value.rpartition(":")[2]
        assert port.isascii() and 1 <= int(port) <= 65535


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"connect_timeout_s": float("nan")}, "connect_timeout_s"),
        ({"duration_s": float("inf")}, "duration_s"),
        ({"deadline_ms": -1.0}, "deadline_ms"),
        ({"spin_us": 1e12}, "spin_us"),
        ({"rate_hz": 0.0}, "rate_hz"),
    ],
)
def test_run_policy_checks_its_arguments_with_the_flag_ranges(
    paths: dict[str, str], kwargs: dict[str, float], name: str
) -> None:
    """run_policy (the library call behind `run`) refuses the same values, naming them."""
    pytest.importorskip("zmq")
    from tailguard.errors import ConfigError
    from tailguard.firmware_sim.run_client import run_policy

    args = {"rate_hz": 50.0, **kwargs}
    with pytest.raises(ConfigError, match=name):
        run_policy(paths["policy"], "tcp://127.0.0.1:9", **args)  # type: ignore[arg-type]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "argv",
    [
        ["demo"], ["envelope", "init"], ["envelope", "check"], ["inspect"], ["export", "rsl-rl"],
        ["export", "sb3"], ["replay"], ["firmware"], ["run"], ["monitor"], ["keys"], ["bench"],
    ],
    ids=" ".join,
)  # fmt: skip
def test_every_subcommand_help_renders(argv: list[str]) -> None:
    """`--help` of every subcommand exits 0 (help texts with units and ranges format cleanly)."""
    err, out = io.StringIO(), io.StringIO()
    with redirect_stderr(err), redirect_stdout(out):
        code = main([*argv, "--help"])
    assert code == EXIT_OK and "usage:" in out.getvalue() and "Traceback" not in err.getvalue()


@given(st.floats(min_value=0.0, max_value=2e10, allow_nan=False))
def test_every_accepted_duration_fits_int64_ns(value_s: float) -> None:
    """Any duration in seconds the parser accepts converts to an int64 count of ns."""
    try:
        accepted = ca.duration("s")(repr(value_s))
    except ArgumentTypeError:
        return
    assert 1 <= round(accepted * 1e9) <= ca.INT64_MAX

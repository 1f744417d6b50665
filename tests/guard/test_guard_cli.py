"""The `tailguard` console script: the pendulum demo, envelope init/check, inspect; import
hygiene (the Hopper demo: test_demo.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tailguard.tools.cli import main
from tailguard.tools.demo import run_pendulum_demo


def test_import_guard_does_not_import_heavy_packages() -> None:
    """`import guard` (and its CLI) never pulls in torch, mujoco or gymnasium."""
    code = (
        "import sys, tailguard, tailguard.tools.cli, tailguard.tools.demo\n"
        "heavy = [m for m in ('torch', 'mujoco', 'gymnasium', 'onnx') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


def test_pendulum_demo_guard_prevents_the_fall() -> None:
    """Same seed: balanced under nominal timing, falls with bursts unguarded, balances guarded."""
    nominal, unguarded, guarded = run_pendulum_demo(seconds=30.0, seed=0)
    assert nominal.fell_at_s is None and guarded.fell_at_s is None
    assert unguarded.fell_at_s is not None
    assert guarded.stats["violations"]["deadline_miss"] > 0
    assert guarded.stats["latency_ns"]["lifetime"]["max"] <= 5_100_000  # answered by the deadline
    assert sum(nominal.stats["violations"].values()) == 0


def test_envelope_init_then_check(mlp_path: Path, tmp_path: Path, capsys) -> None:
    """init writes a placeholder envelope bound to the policy; check accepts it."""
    env = tmp_path / "e.json"
    args = ["envelope", "init", "--policy", str(mlp_path), "--period-ms", "20", "-o", str(env)]
    assert main([*args, "--action-bound", "2"]) == 0
    data = json.loads(env.read_text())
    assert data["policy"]["obs_size"] == 17 and data["provenance"]["audited"] is False
    assert data["policy"]["action_high"] == [2.0] * 6
    assert main(args) == 1  # refuses to overwrite without --force
    assert main(["envelope", "check", str(env), "--policy", str(mlp_path)]) == 0
    assert "NOT audited" in capsys.readouterr().out


def test_envelope_check_reports_every_problem(tmp_path: Path, capsys) -> None:
    """check prints each problem with its key path and exits 1."""
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps(
            {
                "schema_version": 1,
                "policy": {"obs_size": 17, "action_sise": 6},
                "timing": {"period_ns": 20.5, "latncy": {}},
            }
        )
    )
    assert main(["envelope", "check", str(bad)]) == 1
    out = capsys.readouterr().out
    for fragment in ("did you mean 'action_size'", "did you mean 'latency'", "timing.period_ns"):
        assert fragment in out


def test_envelope_check_detects_hash_mismatch(mlp_path: Path, tmp_path: Path, capsys) -> None:
    """check --policy refuses an envelope written for another model file."""
    from tg_models import build_mlp

    other = build_mlp(tmp_path / "other.onnx", seed=5)
    env = tmp_path / "e.json"
    assert (
        main(["envelope", "init", "--policy", str(other), "--period-ms", "10", "-o", str(env)]) == 0
    )
    assert main(["envelope", "check", str(env), "--policy", str(mlp_path)]) == 1
    assert "differs from the envelope" in capsys.readouterr().err


def test_inspect_reports_interface_and_latency(mlp_path: Path, capsys) -> None:
    """inspect --json reports names, sizes and a latency summary with ordered percentiles."""
    assert main(["inspect", str(mlp_path), "--ticks", "200", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    lat = report["latency_ns"]
    assert report["obs_size"] == 17 and report["action_size"] == 6
    assert 0 < lat["min"] <= lat["p50"] <= lat["p99"] <= lat["max"]
    assert sum(n for _, n in report["histogram"]) == 200


def test_inspect_bad_file_exits_1(tmp_path: Path, capsys) -> None:
    """A missing policy file is a clear error with exit code 1, not a traceback."""
    assert main(["inspect", str(tmp_path / "missing.onnx")]) == 1
    assert "cannot read the policy file" in capsys.readouterr().err


def test_python_m_guard_runs() -> None:
    """`python -m tailguard --version` works (the console script's twin)."""
    out = subprocess.run(
        [sys.executable, "-m", "tailguard", "--version"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and out.stdout.startswith("tailguard ")


def test_help_describes_the_demo_and_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    """`tailguard --help` names the Hopper demo (not "a built-in plant") and every exit code."""
    from tailguard.cli_args import EXIT_CODES

    assert main(["--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "Hopper" in text and "built-in plant with spikes" not in text
    for code, meaning in EXIT_CODES.items():
        assert f"{code} {' '.join(meaning.split())}" in text


def test_exit_codes_are_defined_once_and_distinct() -> None:
    """The table holds 0 ok, 1 failed, 2 usage, 130 interrupted; every code is distinct."""
    from tailguard import cli_args as ca

    assert (ca.EXIT_OK, ca.EXIT_FAILED, ca.EXIT_USAGE, ca.EXIT_INTERRUPTED) == (0, 1, 2, 130)
    assert sorted(ca.EXIT_CODES) == [0, 1, 2, 130]


def test_envelope_init_refuses_a_directory_as_output_before_loading(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """-o DIR is a usage error (2) found at parse time: the policy file is never opened."""
    code = main(
        ["envelope", "init", "--policy", str(tmp_path / "absent.onnx"), "--period-ms", "10",
         "-o", str(tmp_path)]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "-o/--output" in err and "is a directory" in err

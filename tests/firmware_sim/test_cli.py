"""`tailguard replay` subcommand: exit codes, JSON layout, reproducibility outside `run`."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import pytest

pytest.importorskip("gymnasium")
pytest.importorskip("mujoco")

from firmware_sim.cli import register


def _run(argv: list[str]) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="tailguard")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    out = io.StringIO()
    return args.handler(args, out), out.getvalue()


def test_replay_writes_reproducible_json(hopper_onnx: Path, tmp_path: Path) -> None:
    """Two runs with the same inputs give identical JSON outside `run`; seeds are S+i."""
    docs = []
    for name in ("a.json", "b.json"):
        code, text = _run([
            "replay", "--policy", str(hopper_onnx), "--env", "Hopper-v5", "--episodes", "2",
            "--seed", "10", "--profile", "lognormal:median_ms=2,sigma=0.8,cap_ms=15",
            "--dt-profile", "gaussian:std_ms=0.5", "--drop-prob", "0.01", "--no-guard",
            "--json", str(tmp_path / name),
        ])  # fmt: skip
        assert code == 0 and "return" in text
        docs.append(json.loads((tmp_path / name).read_text()))
    a, b = docs
    assert [e["seed"] for e in a["episodes"]] == [10, 11]
    for e in a["episodes"]:
        assert {"seed", "return", "length", "terminated"} <= set(e)
    assert {"duration_s", "host"} <= set(a["run"])
    a.pop("run"), b.pop("run")
    assert a == b


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--envelope", "e.json"], "not wired yet"),
        (["--no-guard", "--profile", "lognormx"], "did you mean 'lognormal'"),
        (["--no-guard", "--env", "NoSuchEnv-v0"], "NoSuchEnv-v0"),
        (["--no-guard", "--episodes", "0"], "--episodes"),
    ],
)
def test_replay_bad_input_exits_2(
    hopper_onnx: Path, extra: list[str], fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bad input or an unavailable feature exits with code 2 and a message on stderr."""
    argv = ["replay", "--policy", str(hopper_onnx), "--env", "Hopper-v5", "--episodes", "1"]
    code, _ = _run(argv + extra)
    assert code == 2 and fragment in capsys.readouterr().err


def test_replay_missing_policy_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A missing policy file exits with code 2 naming the file."""
    code, _ = _run(["replay", "--policy", str(tmp_path / "x.onnx"), "--env", "Hopper-v5",
                    "--no-guard"])  # fmt: skip
    assert code == 2 and "x.onnx" in capsys.readouterr().err

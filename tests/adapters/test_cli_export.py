"""`export` CLI: exit codes, messages, flags; run as a real subprocess and in-process."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ckpt_factory import OBS_DIM, Case, build  # noqa: E402

from tailguard.adapters import cli  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def _ckpt(tmp_path: Path, case: Case) -> Path:
    ckpt, _ = build(case)
    path = tmp_path / "model_100.pt"
    torch.save(ckpt, path)
    return path


def test_subprocess_export_succeeds(tmp_path: Path) -> None:
    """`python -m tailguard.adapters.cli export rsl-rl` exits 0, writes one file and prints
    parity."""
    source = _ckpt(tmp_path, Case("2", "gru", True, "std"))
    recorded = tmp_path / "obs.npy"
    np.save(recorded, np.random.default_rng(0).normal(size=(12, OBS_DIM)).astype(np.float32))
    out = tmp_path / "policy.onnx"
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "tailguard.adapters.cli", "export", "rsl-rl", str(source)),
            *("-o", str(out), "--observations", str(recorded)),
            *("--hidden-sizes", "8", "6", "--exporter", "legacy"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "exported rsl-rl 2.x" in proc.stdout
    assert "parity ok" in proc.stdout and "12 recorded" in proc.stdout
    assert out.is_file()


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--hidden-sizes", "64", "64"], "hidden sizes [64, 64] were requested"),
        (["--activation", "relu6"], "unknown activation 'relu6'"),
    ],
)
def test_refused_inputs_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], fragment: str
) -> None:
    """Refused inputs exit 1 with one `error:` line naming the problem; nothing is written."""
    source = _ckpt(tmp_path, Case("5"))
    out = tmp_path / "p.onnx"
    code = cli.main(["export", "rsl-rl", str(source), "-o", str(out), *extra])
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and fragment in err
    assert not out.exists()


def test_foreign_file_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A foreign checkpoint file exits 1 with the refusal message."""
    source = tmp_path / "weights.pt"
    torch.save({"net": {"w": torch.zeros(2)}}, source)
    assert cli.main(["export", "rsl-rl", str(source), "-o", str(tmp_path / "p.onnx")]) == 1
    assert "unrecognised RSL-RL checkpoint layout" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "flag"),
    [
        ([], "-o/--output"),
        (["-o", "."], "-o/--output"),
        (["-o", "no/such/dir/p.onnx"], "-o/--output"),
        (["-o", "p.onnx", "--tolerance", "nan"], "--tolerance"),
        (["-o", "p.onnx", "--hidden-sizes", "64", "-3"], "--hidden-sizes"),
    ],
)
def test_usage_error_exits_2(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    flag: str,
) -> None:
    """A missing or bad flag is a usage error: main returns 2 and the message names it."""
    monkeypatch.chdir(tmp_path)
    assert cli.main(["export", "rsl-rl", str(tmp_path / "x.pt"), *extra]) == 2
    assert flag in capsys.readouterr().err


def test_register_adds_export_with_both_sources() -> None:
    """register() adds `export` with `rsl-rl` and `sb3` whose handlers return ints."""
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["export", "sb3", "m.zip", "-o", "p.onnx", "--vecnormalize", "v.pkl"])
    assert args.export_kind == "sb3" and args.vecnormalize == Path("v.pkl")
    assert callable(args.func)


def test_importing_adapters_does_not_import_torch() -> None:
    """`import tailguard.adapters.cli` stays light: torch is imported only when
    exporting."""
    code = "import sys, tailguard.adapters, tailguard.adapters.cli; print('torch' in sys.modules)"
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert proc.stdout.strip() == "False", proc.stderr

"""The package's shape: one import name, the layer contracts, and a wheel that carries the demo.

`lint-imports` reads the package from the folder ``tailguard`` maps to. In a checkout that is
``guard/``, whose ``adapters`` and ``firmware_sim`` entries are links to the top-level folders,
so plain ``lint-imports`` sees the whole package. The test checks a staged copy of the
installed layout instead (links resolved), which does not depend on how the package was
installed; ``python tests/test_architecture.py`` runs the same check.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {
    "guard": "tailguard",
    "adapters": "tailguard/adapters",
    "firmware_sim": "tailguard/firmware_sim",
}

# The lint-imports console script, run with this interpreter.
_LINT = (
    "import sys; from importlinter.cli import lint_imports_command; "
    "sys.exit(lint_imports_command())"
)


def stage_package(dest: Path) -> Path:
    """Copy the sources into the installed layout under ``dest``; returns ``dest``."""
    for folder, target in FOLDERS.items():
        shutil.copytree(
            ROOT / folder,
            dest / target,
            ignore=shutil.ignore_patterns("__pycache__", "*.onnx", "*.pt", "*.npy"),
            dirs_exist_ok=True,
        )
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    return dest


def run_lint_imports(staged: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(staged)}
    return subprocess.run(
        [sys.executable, "-c", _LINT, "--config", "pyproject.toml", "--no-cache"],
        cwd=staged,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_import_contracts_hold(tmp_path: Path) -> None:
    """lint-imports keeps every contract in pyproject.toml (layers, forbidden imports)."""
    pytest.importorskip("importlinter")
    proc = run_lint_imports(stage_package(tmp_path / "staged"))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "broken" not in proc.stdout.lower().replace("0 broken", "")


def test_a_layer_violation_is_caught(tmp_path: Path) -> None:
    """The contracts bite: a runtime module importing zmq or the tools breaks them."""
    pytest.importorskip("importlinter")
    staged = stage_package(tmp_path / "staged")
    with (staged / "tailguard" / "runtime" / "pacer.py").open("a") as handle:
        handle.write("\nimport zmq  # noqa\nimport tailguard.tools.cli  # noqa\n")
    proc = run_lint_imports(staged)
    assert proc.returncode != 0
    assert "tailguard.runtime.pacer -> zmq" in proc.stdout
    assert "tailguard.runtime.pacer -> tailguard.tools.cli" in proc.stdout


def test_importing_tailguard_leaves_no_generic_names() -> None:
    """Importing tailguard (all layers) puts no guard/adapters/firmware_sim in sys.modules."""
    code = (
        "import sys, tailguard, tailguard.tools.cli, tailguard.monitor, tailguard.adapters, "
        "tailguard.firmware_sim, tailguard.sinks.telemetry, tailguard.sinks.flight_recorder\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('guard', 'adapters', 'firmware_sim')))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


@pytest.mark.parametrize("folder", sorted(FOLDERS))
def test_a_folder_cannot_be_imported_under_its_own_name(folder: str) -> None:
    """From the repository root `import guard` fails loudly instead of making a second copy."""
    proc = subprocess.run(
        [sys.executable, "-c", f"import {folder}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert f"is the package '{FOLDERS[folder].replace('/', '.')}'" in proc.stderr


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(out),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = out.glob("tailguard-*.whl")
    return path


def test_wheel_installs_only_tailguard(wheel: Path) -> None:
    """The wheel's top-level names are tailguard and its dist-info, nothing generic."""
    with zipfile.ZipFile(wheel) as archive:
        tops = {name.split("/")[0] for name in archive.namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"tailguard"}


def test_wheel_carries_the_demo_policies_and_every_module(wheel: Path) -> None:
    """Shipped policies are package data; every source module is in the wheel."""
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    for policy in ("hopper_nominal.onnx", "hopper_robust.onnx", "hopper_nominal.envelope.json"):
        assert f"tailguard/policies/{policy}" in names
    assert "tailguard/py.typed" in names
    for folder, target in FOLDERS.items():
        for source in (ROOT / folder).rglob("*.py"):
            rel = source.relative_to(ROOT / folder).as_posix()
            assert f"{target}/{rel}" in names, f"{folder}/{rel} is missing from the wheel"


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        result = run_lint_imports(stage_package(Path(tmp)))
        print(result.stdout, result.stderr)
        sys.exit(result.returncode)

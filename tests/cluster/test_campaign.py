"""`tailguard sweep`: a manifest of checkpoints x envs x sweep files into one results tree
with an index, on real Ray and locally: every manifest problem at once, a broken checkpoint
failing only its own entries, Ctrl-C leaving a partial tree, --resume completing it without
redoing finished units, to the summaries an uninterrupted run writes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from cluster_plants import PLANT_PATH

from tailguard.audit.campaign import load_manifest, run_sweep
from tailguard.audit.outputs import dump_json
from tailguard.errors import ConfigError
from tailguard.tools.cli import main as cli_main

pytestmark = pytest.mark.timeout(120)

ENV = "py:audit_plants:integrator"
SWEEP = """
dimensions = ["latency_fixed"]
[levels]
latency_fixed = [0.25, 0.75]
"""


def _manifest(tmp: Path, policies: dict[str, Path], envs: list[str], **top: Any) -> Path:
    (tmp / "timing.toml").write_text(SWEEP)
    lines = [f"envs = {json.dumps(envs)}", 'sweeps = ["timing.toml"]']
    lines += [f"{k} = {json.dumps(v)}" for k, v in top.items()]
    for name, path in policies.items():
        lines += ["[[checkpoints]]", f'name = "{name}"', f'policy = "{path}"']
    path = tmp / "manifest.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _summaries(out: Path) -> dict[str, str]:
    docs = {}
    for f in sorted((out / "entries").glob("*/summary.json")):
        doc = json.loads(f.read_text())
        docs[f.parent.name] = dump_json({k: v for k, v in doc.items() if k != "run"})
    return docs


def test_manifest_problems_are_all_reported_at_once(tmp_path: Path, plant_policy: Path) -> None:
    """Unknown keys (with a hint), a missing policy, a bad mode and episodes, a certify-only
    key in audit mode, duplicate names: one ConfigError listing every problem."""
    bad = tmp_path / "bad.toml"
    bad.write_text(
        'mode = "audti"\nenvs = []\nepisodes = 1\nfalback = "hold"\n'
        f'[[checkpoints]]\npolicy = "{plant_policy}"\nname = "a"\n'
        '[[checkpoints]]\npolicy = "missing.onnx"\n'
        f'[[checkpoints]]\npolicy = "{plant_policy}"\nname = "a"\nenvelope = "x.json"\n'
    )
    with pytest.raises(ConfigError) as info:
        load_manifest(bad)
    text = str(info.value)
    for fragment in (
        "mode: expected 'audit' or 'certify'",
        "envs: expected a non-empty list",
        "episodes: expected an integer in [2, 100000]",
        "unknown key 'falback' (did you mean 'fallback'?)",
        "checkpoints[1].policy: file not found",
        "checkpoints[2].name: 'a' is also checkpoints[0]'s name",
    ):
        assert fragment in text, fragment
    assert "problem(s)" in text and text.count("\n  - ") >= 6
    unknown_env = _manifest(tmp_path, {"a": plant_policy}, ["NoSuchEnv-v0"])
    with pytest.raises(ConfigError, match="envs: 'NoSuchEnv-v0'"):
        load_manifest(unknown_env)


def test_sweep_on_ray_broken_checkpoint_fails_only_its_entries(
    ray_local: Any, plant_policy: Path, tmp_path: Path
) -> None:
    """Two checkpoints x two envs on Ray: the broken checkpoint's entries and the entry whose
    unit raises are failed with their errors; the rest are ok; the index says so."""
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx file")
    manifest = _manifest(
        tmp_path,
        {"good": plant_policy, "broken": broken},
        [ENV, "py:cluster_plants:exploding"],
        episodes=4,
        resamples=200,
    )
    out = tmp_path / "out"
    outcome = run_sweep(manifest, out, executor="ray", html_report=False)
    assert outcome.exit_code == 1 and not outcome.interrupted
    index = json.loads((out / "index.json").read_text())
    status = {e["id"]: e for e in index["entries"]}
    ok = "good__py_audit_plants_integrator__timing"
    exploding = "good__py_cluster_plants_exploding__timing"
    assert status[ok]["status"] == "ok" and status[ok]["verdict"] in ("FAIL", "DEGRADED")
    assert status[exploding]["status"] == "failed"
    assert "plant exploded at reset seed 3" in status[exploding]["error"]
    for e in index["entries"]:
        if e["checkpoint"] == "broken":
            assert e["status"] == "failed" and "broken.onnx" in e["error"], e
    assert index["state"] == "complete" and index["counts"] == {"ok": 1, "failed": 3, "pending": 0}
    assert json.loads((out / "entries" / ok / "done.json").read_text())["status"] == "ok"
    page = (out / "index.html").read_text()
    assert "plant exploded" in page and "PARTIAL" not in page


def test_interrupted_sweep_resumes_without_redoing_units(
    ray_local: Any, plant_policy: Path, plant_fallback: Path, tmp_path: Path
) -> None:
    """Ctrl-C during the second entry (on Ray) leaves a partial tree: the first entry ok, the
    second pending. --resume skips the first, reuses the second's finished units, and the
    summaries are those of an uninterrupted run."""
    policies = {"main": plant_policy, "robust": plant_fallback}
    manifest = _manifest(tmp_path, policies, [ENV], episodes=4, resamples=200)
    clean = tmp_path / "clean"
    run_sweep(manifest, clean, executor="ray", html_report=False)
    out = tmp_path / "out"
    seen: dict[str, int] = {}

    def interrupt(entry: str, done: int, total: int) -> None:
        seen[entry] = done
        if entry.startswith("robust") and done >= 8:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(manifest, out, executor="ray", html_report=False, progress=interrupt)
    index = json.loads((out / "index.json").read_text())
    assert index["state"] == "partial" and index["interrupted"] is True
    assert [e["status"] for e in index["entries"]] == ["ok", "pending"]
    assert "PARTIAL" in (out / "index.html").read_text()
    with pytest.raises(ConfigError, match="pass --resume"):
        run_sweep(manifest, out, html_report=False)
    resumed = run_sweep(manifest, out, executor="ray", html_report=False, resume=True)
    assert resumed.skipped == ["main__py_audit_plants_integrator__timing"]
    assert resumed.reused_units >= 2 and resumed.exit_code == 0
    assert json.loads((out / "index.json").read_text())["state"] == "complete"
    assert _summaries(out) == _summaries(clean) and len(_summaries(out)) == 2


def test_ctrl_c_on_the_cli_leaves_a_partial_tree(plant_policy: Path, tmp_path: Path) -> None:
    """SIGINT to a running `tailguard sweep` (local executor, a slow plant): exit 130 and an
    index marked partial and interrupted; `--resume` completes it (exit 0)."""
    manifest = _manifest(
        tmp_path, {"a": plant_policy, "b": plant_policy}, ["py:cluster_plants:slow"], episodes=3
    )
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "tailguard", "sweep", str(manifest), "--out", str(out)]
    cmd += ["--no-html", "--quiet"]
    env = {**os.environ, "PYTHONPATH": PLANT_PATH}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (out / "entries").is_dir() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # inside the first entry's episodes
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err.decode()[-2000:]
    index = json.loads((out / "index.json").read_text())
    assert index["state"] == "partial" and index["interrupted"] is True
    assert index["counts"]["pending"] >= 1
    assert cli_main(["sweep", str(manifest), "--out", str(out), "--resume", "--quiet"]) == 0
    assert json.loads((out / "index.json").read_text())["counts"]["ok"] == 2


def test_certify_sweep_resumed_matches_certify(
    plant_policy: Path, plant_fallback: Path, tmp_path: Path
) -> None:
    """Certify mode (local executor): interrupted after two units and resumed, the entry's
    summary is the one `certify` writes directly (guarded units read back exactly)."""
    from tailguard.audit.audit import run_audit
    from tailguard.audit.certification import certify
    from tailguard.envelope.model import save_envelope

    audited = run_audit(plant_policy, ENV, episodes=4, quick=True, n_resamples=200)
    envelope = tmp_path / "envelope.json"
    save_envelope(audited.envelope, envelope)
    manifest = tmp_path / "certify.json"
    manifest.write_text(
        json.dumps(
            {
                "mode": "certify",
                "envs": [ENV],
                "episodes": 3,
                "resamples": 200,
                "fallback": str(plant_fallback),
                "checkpoints": [{"policy": str(plant_policy), "envelope": str(envelope)}],
            }
        )
    )
    out = tmp_path / "out"

    def interrupt(entry: str, done: int, total: int) -> None:
        if done >= 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(manifest, out, html_report=False, progress=interrupt)
    resumed = run_sweep(manifest, out, html_report=False, resume=True)
    assert resumed.reused_units == 2 and resumed.exit_code == 0
    direct = certify(
        plant_policy, envelope, ENV, fallback=str(plant_fallback), episodes=3, n_resamples=200
    )
    doc = {k: v for k, v in direct.summary().items() if k != "run"}
    assert list(_summaries(out).values()) == [dump_json(doc)]

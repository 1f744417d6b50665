"""`tailguard demo`: the Hopper demo's structure, determinism, report and honest goal
statements; the shipped audited envelope; the pendulum fallback without the sim extra."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
from pathlib import Path

import pytest

from tailguard.tools.cli import main
from tailguard.tools.demo import hopper_available

needs_hopper = pytest.mark.skipif(
    not hopper_available(), reason="needs mujoco, gymnasium, scipy and the shipped files"
)


def _body(text: str) -> str:
    """The output without its last line (the report's path differs between runs)."""
    lines = text.rstrip("\n").split("\n")
    assert lines[-1].startswith("report: ")
    return "\n".join(lines[:-1])


@pytest.fixture(scope="module")
def runs(
    tmp_path_factory: pytest.TempPathFactory,
) -> list[tuple[str, dict, Path]]:
    """The demo run three times: twice on 2 workers, once in-process (1 worker)."""
    runs = []
    for i, workers in enumerate(("2", "2", "1")):
        out = tmp_path_factory.mktemp(f"demo{i}")
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            argv = ["demo", "--episodes", "2", "--seed", "1000", "--out", str(out)]
            assert main([*argv, "--workers", workers]) == 0
        runs.append((buf.getvalue(), json.loads((out / "demo.json").read_text()), out))
    return runs


@needs_hopper
def test_hopper_demo_structure(runs: list[tuple[str, dict, Path]]) -> None:
    """Eight paired columns (nominal timing: nominal only and guarded; each fault profile:
    nominal only, robust only, guarded), every column with its episodes, ratio interval
    and fall interval; the output names the audited envelope and the command reproducing
    it, and the self-contained report exists and is not empty."""
    from tailguard.tools.demo_hopper import AUDIT_COMMAND, COLUMNS

    text, payload, out = runs[0]
    assert payload["plant"] == "hopper" and payload["episodes"] == 2
    cols = payload["columns"]
    assert [c["label"] for c in cols] == [c.label for c in COLUMNS]
    assert [(c["profile"], c["mode"]) for c in cols][:2] == [
        ("nominal", "nominal"),
        ("nominal", "guarded"),
    ]
    for c in cols:
        assert len(c["returns"]) == 2 and 0 <= c["falls"] <= 2
        lo, hi = c["falls_ci95"]
        assert 0.0 <= lo <= c["falls"] / 2 <= hi <= 1.0
        if c is not cols[0]:
            low, high = c["ratio_interval"]
            assert low <= c["ratio_to_nominal"] <= high
        if c["mode"] != "guarded":
            assert c["interventions"] == 0 and c["fallback_fraction"] == 0.0
    assert "AUDITED envelope" in text and AUDIT_COMMAND in text
    for c in cols:
        assert c["label"] in text
    assert payload["envelope_summary"]["audited"] is True
    report = out / "report.html"
    html = report.read_text(encoding="utf-8")
    assert report.stat().st_size > 1000 and html.startswith("<!DOCTYPE html>")
    assert "http://" not in html and "https://" not in html  # self-contained
    assert f"report: {report}" in text


@needs_hopper
def test_hopper_demo_is_deterministic_for_a_seed(runs: list[tuple[str, dict, Path]]) -> None:
    """Same seed: the same text and the same numbers, twice on 2 workers and once on 1."""
    (t0, p0, _), (t1, p1, _), (t2, p2, _) = runs
    assert _body(t0) == _body(t1) == _body(t2)
    assert p0 == p1 == p2


@needs_hopper
def test_goal_statements_follow_from_the_numbers(runs: list[tuple[str, dict, Path]]) -> None:
    """Each goal's MET/MISSED is re-derived here from the per-episode numbers in demo.json
    (guarded >= max(nominal only, robust only) - 5 % of the nominal return; falls cut by
    >= 80 %; interventions < 0.1 % of ticks under nominal timing) and printed as such."""
    text, payload, _ = runs[0]
    cols = {(c["profile"], c["mode"]): c for c in payload["columns"]}
    base = sum(cols[("nominal", "nominal")]["returns"]) / 2
    expected = []
    g = cols[("nominal", "guarded")]
    expected.append(g["interventions"] / g["ticks"] < 0.001)
    for p in ("long_tail", "gc_bursts"):
        mean = {m: sum(cols[(p, m)]["returns"]) / 2 for m in ("nominal", "robust", "guarded")}
        expected.append(mean["guarded"] >= max(mean["nominal"], mean["robust"]) - 0.05 * base)
        ung, gua = cols[(p, "nominal")]["falls"], cols[(p, "guarded")]["falls"]
        expected.append(gua == 0 if ung == 0 else 1 - gua / ung >= 0.8)
    goals = payload["goals"]
    assert [g["met"] for g in goals] == expected
    for goal in goals:
        assert f"  - {goal['text']}" in text
        assert ("MET" if goal["met"] else "MISSED") in goal["text"]
        assert ("MISSED" in goal["text"]) != goal["met"]
    assert f"{sum(expected)} of {len(expected)} goals met." in text
    # The process-wide profile's misses are explained (and only then).
    gc_missed = not all(goals[i]["met"] for i in (3, 4))
    assert ("Why GC bursts miss" in text) == gc_missed


@needs_hopper
def test_shipped_envelope_is_audited_for_the_shipped_nominal_policy() -> None:
    """The shipped envelope comes from `tailguard audit` on the shipped nominal policy (its
    hash), with the seed and episodes of the command the demo prints, and lets nominal
    timing through (latency and dt thresholds at or above zero latency / the period)."""
    from tailguard.envelope.model import load_envelope
    from tailguard.runtime.policy import OnnxPolicy
    from tailguard.tools.demo_hopper import AUDIT_COMMAND, ENVELOPE_FILE, POLICY_DIR

    env = load_envelope(POLICY_DIR / ENVELOPE_FILE)
    assert env.provenance is not None and env.provenance.audited
    assert env.policy.sha256 == OnnxPolicy(POLICY_DIR / "hopper_nominal.onnx").sha256
    results = env.provenance.results or {}
    seed, episodes = results["seed"], results["episodes_per_condition"]
    assert f"--seed {seed} " in AUDIT_COMMAND and f"--episodes {episodes} " in AUDIT_COMMAND
    assert env.timing.dt.max_ns >= env.timing.period_ns
    # Audited with the robust fallback: a deadline miss is answered by it.
    from tailguard.runtime.state import Response, Violation

    assert "--fallback guard/policies/hopper_robust.onnx" in AUDIT_COMMAND
    assert env.responses[Violation.DEADLINE_MISS] is Response.FALLBACK


@needs_hopper
def test_guarded_columns_run_at_the_envelope_deadline_with_the_measured_fallback() -> None:
    """The guarded columns run the guard in deadline mode at the envelope's latency cap, the
    fallback's inference taking the latency `tailguard bench` measured for it (the shipped
    empirical profile the printed command writes); GC bursts pause the whole process."""
    from tailguard.envelope.model import load_envelope
    from tailguard.firmware_sim.profile_spec import parse_profile
    from tailguard.tools.demo_hopper import (
        BENCH_COMMAND,
        ENVELOPE_FILE,
        FALLBACK_LATENCY_FILE,
        POLICY_DIR,
        PROFILES,
    )

    env = load_envelope(POLICY_DIR / ENVELOPE_FILE)
    assert env.timing.latency.max_ns is not None
    doc = json.loads((POLICY_DIR / FALLBACK_LATENCY_FILE).read_text())
    assert (doc["source"], doc["metric"], doc["policy"]) == (
        "tailguard bench",
        "latency_ns",
        "hopper_robust.onnx",
    )
    assert f"cp bench-robust/empirical_profile.json guard/policies/{FALLBACK_LATENCY_FILE}" in (
        BENCH_COMMAND
    )
    profile = parse_profile(f"empirical:{POLICY_DIR / FALLBACK_LATENCY_FILE}")
    draws = [profile.next_ns() for _ in range(200)]
    assert min(draws) > 0 and max(draws) <= doc["summary_ns"]["max"] * 1.01
    assert max(draws) < env.timing.latency.max_ns  # the fallback answers well within a period
    assert [k for k, v in PROFILES.items() if v[2]] == ["gc_bursts"]


def test_pendulum_fallback_says_why(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Without mujoco (the sim extra) the demo runs the pendulum, says why, and still
    writes its report."""
    real = importlib.util.find_spec

    def no_mujoco(name: str, *args: object) -> object:
        return None if name == "mujoco" else real(name, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(importlib.util, "find_spec", no_mujoco)
    out = tmp_path / "p"
    assert main(["demo", "--seconds", "3", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "pendulum fallback" in text and "mujoco not installed" in text
    assert "tailguard[sim]" in text and "spikes, guarded" in text
    assert (out / "report.html").stat().st_size > 0
    payload = json.loads((out / "demo.json").read_text())
    assert [p["label"] for p in payload] == [
        "nominal timing",
        "spikes, unguarded",
        "spikes, guarded",
    ]


def test_default_out_is_a_fresh_temp_directory(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Without --out the report goes into a fresh temp directory, and the output says so."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "mujoco" else real(name, *a),
    )
    assert main(["demo", "--seconds", "1"]) == 0
    last = capsys.readouterr().out.rstrip().split("\n")[-1]
    assert "a fresh temp directory" in last
    report = Path(last.split("report: ", 1)[1].split(" (", 1)[0])
    assert report.parent.parent == tmp_path and report.stat().st_size > 0

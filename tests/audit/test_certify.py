"""Certification on the integrator plant: constructed pass/warn/fail cases and refusals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from audit_plants import PERIOD_NS, write_gain_onnx

from tailguard.audit.audit import run_audit
from tailguard.audit.certification import CertifyResult, Check, certify
from tailguard.audit.outputs import write_audit, write_certify
from tailguard.audit.schema import SUMMARY_SCHEMA
from tailguard.audit.sweep import build_sweep
from tailguard.envelope.model import load_envelope, save_envelope
from tailguard.errors import EnvelopeError, HashMismatchError
from tailguard.tools.cli import main as cli_main

ENV = "py:audit_plants:integrator"


@pytest.fixture(scope="module")
def plant_envelope(plant_policy: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    conds = build_sweep(
        PERIOD_NS, dimensions=["latency_fixed"], levels={"latency_fixed": [0.25, 0.5, 0.625, 0.75]}
    )
    r = run_audit(plant_policy, ENV, episodes=5, conditions=conds, n_resamples=1000)
    out = tmp_path_factory.mktemp("audit")
    return write_audit(r, out, html=False)["envelope"]


@pytest.fixture(scope="module")
def plant_cert(plant_policy: Path, plant_envelope: Path, plant_fallback: Path) -> Any:
    return certify(
        plant_policy,
        plant_envelope,
        ENV,
        fallback=str(plant_fallback),
        episodes=5,
        n_resamples=1000,
    )


def _result(statuses: list[str]) -> CertifyResult:
    checks = [Check(f"c{i}", s, "", "") for i, s in enumerate(statuses)]
    return CertifyResult(None, {}, "", None, checks, [], [], {}, None, "MILD", 0, 0)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("statuses", "verdict", "code"),
    [
        (["pass", "pass"], "pass", 0),
        (["pass", "warn"], "warn", 1),
        (["warn", "fail", "pass"], "fail", 2),
    ],
)
def test_verdict_and_exit_code(statuses: list[str], verdict: str, code: int) -> None:
    """Any fail -> fail (2); else any warn -> warn (1); else pass (0); failing() names them."""
    r = _result(statuses)
    assert (r.verdict, r.exit_code) == (verdict, code)
    assert [c.status for c in r.failing()] == [s for s in statuses if s != "pass"]


def test_in_envelope_profiles_keep_the_rating_without_interventions(plant_cert: Any) -> None:
    """Every audited level and the near-threshold stress keep the rating with no guard
    intervention; nominal causes no false alarm."""
    inside = [c for c in plant_cert.checks if c.name in ("in_envelope", "false_alarms")]
    assert {c.condition for c in inside} >= {
        "nominal",
        "near/latency",
        "audited/latency_fixed/0.625",
    }
    assert all(c.status == "pass" for c in inside), [c.message for c in inside]


def test_out_of_envelope_is_detected_and_the_guard_helps(plant_cert: Any) -> None:
    """A constant latency well above the envelope (unstable for the policy) is detected in
    every episode with zero delay, and the guarded loop (robust fallback) beats the bare
    one: the paired interval of guarded - unguarded is above 0."""
    checks = [c for c in plant_cert.checks if c.condition == "out/latency_p50"]
    detect, better = checks
    assert detect.status == "pass" and detect.numbers["detected_episodes"] == 5
    assert max(detect.numbers["detection_delay_ticks"]) == 0
    assert better.status == "pass" and better.numbers["difference"]["ci_low"] > 0
    assert plant_cert.worst is not None and "fallback" in plant_cert.worst["states"]


def test_certify_verdict_is_consistent_and_written(plant_cert: Any, tmp_path: Path) -> None:
    """The verdict follows the checks; determinism and parity pass; summary.json validates
    against the schema; summary.md names every non-passing check."""
    assert plant_cert.exit_code in (0, 1)
    assert {c.name: c.status for c in plant_cert.checks}["determinism"] == "pass"
    files = write_certify(plant_cert, tmp_path, html=False)
    doc = json.loads(files["summary"].read_text())
    jsonschema.Draft202012Validator(SUMMARY_SCHEMA).validate(doc)
    assert doc["exit_code"] == plant_cert.exit_code
    md = files["markdown"].read_text()
    for c in plant_cert.failing():
        assert c.message in md


def test_an_envelope_wider_than_tolerated_fails_certification(
    plant_policy: Path, plant_envelope: Path, tmp_path: Path
) -> None:
    """Widen the latency thresholds past the plant's margin (0.9 h): the stress just below
    them destabilises the loop, so certify fails (exit 2) naming in_envelope near/latency."""
    import dataclasses

    env = load_envelope(plant_envelope)
    wide = dataclasses.replace(
        env.timing.latency,
        p50_ns=18_000_000,
        p95_ns=18_000_000,
        p99_ns=18_000_000,
        max_ns=18_000_000,
    )
    path = tmp_path / "wide.json"
    save_envelope(
        dataclasses.replace(env, timing=dataclasses.replace(env.timing, latency=wide)), path
    )
    r = certify(plant_policy, path, ENV, episodes=4, n_resamples=500)
    assert r.exit_code == 2
    failed = {(c.name, c.condition) for c in r.checks if c.status == "fail"}
    assert ("in_envelope", "near/latency") in failed


def test_envelope_for_another_policy_or_period_is_refused(
    plant_envelope: Path, tmp_path: Path
) -> None:
    """Another policy's envelope raises HashMismatchError (the CLI exits 2 saying so); an
    envelope for another period raises EnvelopeError naming both periods."""
    other = write_gain_onnx(tmp_path / "other.onnx", 10.0)
    with pytest.raises(HashMismatchError, match="written for the policy"):
        certify(other, plant_envelope, ENV, episodes=2)
    code = cli_main(
        [
            "certify",
            "--policy",
            str(other),
            "--envelope",
            str(plant_envelope),
            "--env",
            ENV,
            "--out",
            str(tmp_path / "c"),
            "--quiet",
        ]
    )
    assert code == 2
    import dataclasses

    env = load_envelope(plant_envelope)
    moved = dataclasses.replace(
        env,
        policy=dataclasses.replace(env.policy, sha256=None),
        timing=dataclasses.replace(env.timing, period_ns=10_000_000),
    )
    path = tmp_path / "p.json"
    save_envelope(moved, path)
    with pytest.raises(EnvelopeError, match="10000000 differs"):
        certify(other, path, ENV, episodes=2)


def test_measured_profiles_are_placed_and_judged(
    plant_policy: Path, plant_envelope: Path, plant_fallback: Path, tmp_path: Path
) -> None:
    """A measured trace inside the envelope (5 ms) is judged like an in-envelope profile; one
    outside it (18 ms, beyond the plant's 13.3 ms margin) must be detected and helped."""
    inside = tmp_path / "fast.json"
    inside.write_text(json.dumps({"trace_ns": [5_000_000] * 50}))
    outside = tmp_path / "slow.json"
    outside.write_text(json.dumps({"trace_ns": [18_000_000] * 50}))
    r = certify(
        plant_policy,
        plant_envelope,
        ENV,
        fallback=str(plant_fallback),
        episodes=3,
        n_resamples=500,
        profiles=[str(inside), str(outside)],
    )
    assert r.placement["measured/fast.json"] == "inside"
    assert r.placement["measured/slow.json#1"] == "outside"
    by_cond: dict[str, list[Check]] = {}
    for c in r.checks:
        by_cond.setdefault(c.condition, []).append(c)
    assert all(c.name == "measured" for c in by_cond["measured/fast.json"])
    assert {c.status for c in by_cond["measured/fast.json"]} == {"pass"}
    detect, better = by_cond["measured/slow.json#1"]
    assert detect.status == "pass" and better.status == "pass"

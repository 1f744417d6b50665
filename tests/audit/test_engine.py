"""The audit engine on a plant whose delay tolerance is known: pairing, determinism across
executors, envelope derivation, faults, outputs and their schema."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
from audit_plants import GAIN_KH, PERIOD_NS, write_nan_onnx

from tailguard.audit.audit import run_audit
from tailguard.audit.conditions import NOMINAL, Condition
from tailguard.audit.derive import SAMPLING_HEADROOM
from tailguard.audit.executor import LocalExecutor, ProcessExecutor, parse_workers
from tailguard.audit.outputs import dump_json, write_audit
from tailguard.audit.ratings import Rating
from tailguard.audit.schema import SUMMARY_SCHEMA
from tailguard.audit.sweep import build_sweep
from tailguard.envelope.model import load_envelope
from tailguard.errors import ConfigError
from tailguard.tools.cli import main as cli_main

ENV = "py:audit_plants:integrator"
LEVELS = [0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875]
#: The largest stable constant latency of the plant: k L < 1 with k h = 1.5.
MARGIN_NS = PERIOD_NS / GAIN_KH


def _ladder() -> list[Condition]:
    return build_sweep(PERIOD_NS, dimensions=["latency_fixed"], levels={"latency_fixed": LEVELS})


@pytest.fixture(scope="module")
def plant_audit(plant_policy: Path) -> Any:
    return run_audit(plant_policy, ENV, episodes=6, conditions=_ladder(), n_resamples=2000)


def _without_run(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != "run"}


def test_derived_latency_threshold_lands_below_the_known_margin(plant_audit: Any) -> None:
    """The integrator tolerates a constant latency below h / 1.5 = 13.3 ms: the ladder's
    0.625 h (12.5 ms) is the last tolerated level, 0.75 h fails, and the envelope's latency
    thresholds are the tolerated samples' 12.5 ms (nearest rank, guard windows) plus the
    sampling headroom, still below the plant's margin."""
    rated = {c.condition.name: c.rating for c in plant_audit.conditions[1:]}
    for v in LEVELS:
        rating = rated[f"latency_fixed/{v:g}"]
        assert rating.tolerated == (v * PERIOD_NS < MARGIN_NS), v
    assert rated["latency_fixed/0.75"].rating is Rating.FAIL
    lat = plant_audit.envelope.timing.latency
    with_headroom = math.ceil(12_500_000 * (1 + SAMPLING_HEADROOM))
    assert lat.p50_ns == lat.p95_ns == lat.p99_ns == lat.max_ns == with_headroom
    assert lat.max_ns < MARGIN_NS < 0.75 * PERIOD_NS
    measured = plant_audit.derivation["latency"]["measured"]
    assert set(measured.values()) == {12_500_000}
    dims = plant_audit.derivation["dimensions"]["latency_fixed"]
    assert dims["tolerated_level"] == "latency_fixed/0.625" and dims["non_monotone"] == []
    prov = plant_audit.envelope.provenance
    assert prov.source == "audit" and prov.audited
    assert prov.results["policy_sha256"] == plant_audit.envelope.policy.sha256
    assert prov.results["bootstrap"]["n_resamples"] == 2000


def test_pairing_same_seeds_same_nominal_episodes(plant_policy: Path) -> None:
    """Common random numbers: a condition with nominal specs under another name, and two
    copies of one stochastic latency condition, reproduce each other episode by episode."""
    lat = "lognormal:median_ms=3,sigma=1.0"
    conds = [
        NOMINAL,
        Condition(name="nominal-copy", dimension="custom"),
        Condition(name="ln-a", dimension="custom", latency=lat),
        Condition(name="ln-b", dimension="custom", latency=lat, level=1),
    ]
    r = run_audit(plant_policy, ENV, episodes=4, conditions=conds, n_resamples=200, derive=False)
    nom, copy, a, b = r.conditions
    assert nom.returns.tolist() == copy.returns.tolist()
    assert [e.latency_ns.tolist() for e in a.episodes] == [
        e.latency_ns.tolist() for e in b.episodes
    ]
    assert a.returns.tolist() == b.returns.tolist()
    assert copy.ratio is not None and copy.ratio.ratio == 1.0


def test_summary_byte_identical_for_one_and_two_workers(plant_policy: Path) -> None:
    """The same inputs and seed give the same summary.json bytes (``run`` aside) whether the
    units run in this process or on a 2-process pool."""
    conds = build_sweep(
        PERIOD_NS,
        dimensions=["latency_fixed", "dt_jitter"],
        levels={"latency_fixed": [0.25, 0.75], "dt_jitter": [0.2]},
    )
    kw: dict[str, Any] = dict(episodes=5, conditions=conds, n_resamples=500, block=2)
    one = run_audit(plant_policy, ENV, executor=LocalExecutor(), **kw)
    two = run_audit(plant_policy, ENV, executor=ProcessExecutor(2), **kw)
    assert two.run["executor"] == "ProcessExecutor" and one.run["executor"] == "LocalExecutor"
    assert dump_json(_without_run(one.summary())) == dump_json(_without_run(two.summary()))


def test_policy_faults_are_counted_and_fail_the_condition(tmp_path: Path) -> None:
    """A policy returning NaN (sqrt of a negative state) is counted per episode, its
    conditions are FAIL, and the audit still finishes."""
    policy = write_nan_onnx(tmp_path / "nan.onnx")
    conds = [NOMINAL, Condition(name="lat", dimension="custom", latency="fixed:ms=1")]
    r = run_audit(policy, ENV, episodes=4, conditions=conds, n_resamples=200, derive=False)
    faulted = r.conditions[1]
    assert faulted.faults > 0 and r.conditions[0].faults > 0
    assert faulted.rating.rating is Rating.FAIL and "fault" in faulted.rating.reason


def test_outputs_validate_and_envelope_check_accepts(plant_audit: Any, tmp_path: Path) -> None:
    """summary.json validates against the shipped schema (and the copy written next to it),
    keeps every per-episode return and length, and `tailguard envelope check` accepts
    envelope.json."""
    files = write_audit(plant_audit, tmp_path, html=False)
    doc = json.loads(files["summary"].read_text())
    jsonschema.Draft202012Validator(SUMMARY_SCHEMA).validate(doc)
    assert json.loads(files["schema"].read_text()) == SUMMARY_SCHEMA
    for c, r in zip(doc["conditions"], plant_audit.conditions, strict=True):
        assert c["returns"] == r.returns.tolist()
        assert c["lengths"] == [e.length for e in r.episodes]
    assert doc["task"]["resolution"] == "substep"
    assert list(doc)[-1] == "run"
    assert cli_main(["envelope", "check", str(files["envelope"])]) == 0
    assert load_envelope(files["envelope"]).timing.latency.max_ns == math.ceil(
        12_500_000 * (1 + SAMPLING_HEADROOM)
    )
    md = files["markdown"].read_text()
    assert "latency_fixed/0.75" in md and "FAIL" in md


def test_nonmonotone_ladder_resolved_conservatively(plant_policy: Path) -> None:
    """A harsher level that passes after a milder one failed is reported and ignored: the
    boundary stays below the first failure."""
    conds = [NOMINAL] + [
        Condition(
            name=f"latency_fixed/{v}",
            dimension="latency_fixed",
            level=i,
            severity=v,
            latency=f"fixed:ns={round(v * PERIOD_NS)}",
        )
        for i, v in enumerate([0.25, 0.8, 0.5])  # the middle one fails, the last passes
    ]
    r = run_audit(plant_policy, ENV, episodes=4, conditions=conds, n_resamples=300)
    info = r.derivation["dimensions"]["latency_fixed"]
    assert info["tolerated_level"] == "latency_fixed/0.25"
    assert info["non_monotone"] == ["latency_fixed/0.5"]
    assert r.envelope.timing.latency.max_ns == math.ceil(
        round(0.25 * PERIOD_NS) * (1 + SAMPLING_HEADROOM)
    )
    assert any("non-monotone" in n for n in r.derivation["notes"])


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"episodes": 1}, "at least 2|>= 2"),
        ({"require": "FAIL"}, "valid choices"),
        ({"require": "DEGRADED"}, "PASS or MILD"),
    ],
)
def test_bad_arguments_refused_before_running(
    plant_policy: Path, kwargs: dict[str, Any], fragment: str
) -> None:
    """Bad arguments raise ConfigError before any episode."""
    with pytest.raises(ConfigError, match=fragment):
        run_audit(plant_policy, ENV, conditions=[NOMINAL], **kwargs)


def test_policy_env_size_mismatch_names_both(tmp_path: Path) -> None:
    """A policy whose sizes do not fit the env is refused, naming both sides."""
    from audit_plants import write_gain_onnx

    policy = write_gain_onnx(tmp_path / "p.onnx", 1.0, obs_size=3, action_size=1)
    with pytest.raises(ConfigError, match=r"takes 3 observations.*gives 1 observations"):
        run_audit(policy, ENV, conditions=[NOMINAL])


def test_workers_parsing() -> None:
    """--workers takes 'auto' or a positive integer."""
    assert parse_workers("auto") >= 1
    assert parse_workers("3") == 3
    for bad in ("0", "-1", "x"):
        with pytest.raises(ConfigError):
            parse_workers(bad)


def test_timing_summary_uses_the_guard_percentile(plant_audit: Any) -> None:
    """Per-condition latency percentiles and d = ceil(latency / period) are nearest rank
    over the pooled ticks."""
    from tailguard.stats.percentile import percentile

    c = plant_audit.conditions[3]
    lat = np.concatenate([e.latency_ns for e in c.episodes])
    assert c.timing["latency"]["p99_ns"] == percentile(lat, 99)
    assert c.timing["delay_steps"]["d_p99"] == -(-percentile(lat, 99) // PERIOD_NS)


def test_latency_jitter_frontier(plant_policy: Path) -> None:
    """The (L, J) grid: latency uniform on [L, L + J] P. Every cell that never exceeds the
    plant's margin (L + J <= 0.625) is tolerated, a cell whose mean latency is beyond it
    (L = 0.5, J = 0.5) is not, the frontier's J shrinks as L grows, and frontier cells do not
    move the envelope's thresholds."""
    from tailguard.audit.sweep import frontier_conditions

    conds = [NOMINAL, *frontier_conditions(PERIOD_NS, (0.0, 0.25, 0.5), (0.125, 0.25, 0.5))]
    r = run_audit(plant_policy, ENV, episodes=4, conditions=conds, n_resamples=300)
    front = r.derivation["frontier"]
    cells = {(row["L"], c["J"]): c["tolerated"] for row in front["rows"] for c in row["cells"]}
    assert all(ok for (lat, jit), ok in cells.items() if lat + jit <= 0.625)
    assert not cells[(0.5, 0.5)]
    max_j = [row["max_J"] or 0.0 for row in front["rows"]]
    assert max_j == sorted(max_j, reverse=True)
    assert r.envelope.timing.latency.p50_ns is None  # only the frontier was swept


def test_overrun_limit_allows_the_tolerated_miss_pattern(plant_policy: Path) -> None:
    """max_consecutive_overruns is the longest overrun run of the tolerated set (the guard
    allows that many and trips on one more), so a tolerated miss pattern never trips it."""
    conds = build_sweep(
        PERIOD_NS, dimensions=["deadline_misses"], levels={"deadline_misses": [0.01, 0.1]}
    )
    r = run_audit(plant_policy, ENV, episodes=3, conditions=conds, n_resamples=300)
    kept = set(r.derivation["tolerated_conditions"])
    streaks = [c.timing["max_overrun_streak"] for c in r.conditions if c.condition.name in kept]
    assert r.envelope.timing.max_consecutive_overruns == max(1, *streaks)
    assert "deadline_misses/1in100" in kept  # one miss in 100 ticks is harmless here


def test_a_fallback_policy_answers_deadline_misses(plant_audit: Any) -> None:
    """Derived for a fallback *policy*, a deadline miss is answered with the fallback (and
    the derivation says why); without one, or with hold/zero, the guard's default (hold)
    stays. Nothing else of the envelope depends on the fallback."""
    from tailguard.audit.derive import derive_envelope
    from tailguard.runtime.state import Response, Violation

    base = plant_audit.envelope
    assert base.responses[Violation.DEADLINE_MISS] is Response.HOLD
    info = plant_audit.derivation
    kwargs = dict(
        period_ns=base.timing.period_ns,
        obs_size=base.policy.obs_size,
        action_size=base.policy.action_size,
        action_low=base.policy.action_low,
        action_high=base.policy.action_high,
        provenance={},
        tool_version="test",
    )
    for fallback, expected in (("robust.onnx", Response.FALLBACK), ("hold", Response.HOLD)):
        env, record = derive_envelope(plant_audit.conditions, fallback=fallback, **kwargs)
        assert env.responses[Violation.DEADLINE_MISS] is expected
        assert record["fallback"] == fallback
        assert env.timing == base.timing
        others = {v: r for v, r in env.responses.items() if v is not Violation.DEADLINE_MISS}
        assert others == {
            v: r for v, r in base.responses.items() if v is not Violation.DEADLINE_MISS
        }
    assert any("deadline miss" in n for n in derive_envelope(
        plant_audit.conditions, fallback="robust.onnx", **kwargs)[1]["notes"])  # fmt: skip
    assert "fallback" not in info

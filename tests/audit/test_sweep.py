"""Default ladders, quick sweeps, sweep files (all errors at once) and measured profiles."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tailguard.audit.sweep import DIMENSIONS, QUICK, build_sweep, load_sweep_file, measured
from tailguard.errors import ConfigError, ProfileError
from tailguard.firmware_sim.profile_spec import parse_profile

PERIOD_NS = 8_000_000


def test_default_ladders_are_valid_specs_mildest_first() -> None:
    """Every default condition is a valid spec of the simulator's language, nominal comes
    first, levels within a dimension are numbered mildest first, names are unique."""
    conds = build_sweep(PERIOD_NS)
    assert conds[0].is_nominal
    assert {c.dimension for c in conds[1:]} == set(DIMENSIONS)
    for c in conds:
        parse_profile(c.latency, nominal_ns=0)
        parse_profile(c.dt, nominal_ns=PERIOD_NS)
        parse_profile(c.obs_delay, nominal_ns=0)
    for dim in DIMENSIONS:
        sev = [c.severity for c in conds if c.dimension == dim]
        assert sev == sorted(sev) and [c.level for c in conds if c.dimension == dim] == list(
            range(len(sev))
        )
    assert len({c.name for c in conds}) == len(conds)


def test_ladder_values_are_fractions_of_the_period() -> None:
    """latency_fixed/0.5 on an 8 ms period is a constant 4 ms; a rate change to x2 doubles
    the period; a deadline-miss pattern is m spikes above the period every K ticks."""
    by_name = {c.name: c for c in build_sweep(PERIOD_NS)}
    assert by_name["latency_fixed/0.5"].latency == "fixed:ns=4000000"
    assert by_name["rate_change/2"].dt == "fixed:ns=16000000"
    miss = by_name["deadline_misses/2in20"]
    assert miss.miss_pattern == (2, 20)
    assert miss.latency == "spikes:every=20,len=2,ns=12000000,phase=10"


def test_quick_sweep_is_small() -> None:
    """--quick runs only the QUICK ladders."""
    conds = build_sweep(PERIOD_NS, quick=True)
    assert len(conds) == 1 + sum(len(v) for v in QUICK.values())


def test_unknown_dimension_has_a_hint() -> None:
    """A misspelt dimension names the valid ones and the closest."""
    with pytest.raises(ConfigError, match="did you mean 'dt_jitter'"):
        build_sweep(PERIOD_NS, dimensions=["dt_jiter"])


@pytest.mark.parametrize("suffix", [".json", ".toml"])
def test_sweep_file_json_and_toml(tmp_path: Path, suffix: str) -> None:
    """The same sweep as JSON and TOML: chosen dimensions, replaced levels, extra condition."""
    if suffix == ".json":
        text = json.dumps(
            {
                "dimensions": ["latency_fixed"],
                "levels": {"latency_fixed": [0.1, 0.3]},
                "conditions": [{"name": "wide", "latency": "lognormal:median_ms=2,sigma=1.2"}],
            }
        )
    else:
        text = (
            'dimensions = ["latency_fixed"]\n[levels]\nlatency_fixed = [0.1, 0.3]\n'
            '[[conditions]]\nname = "wide"\nlatency = "lognormal:median_ms=2,sigma=1.2"\n'
        )
    path = tmp_path / f"sweep{suffix}"
    path.write_text(text)
    cfg = load_sweep_file(path, PERIOD_NS)
    conds = build_sweep(
        PERIOD_NS, dimensions=cfg["dimensions"], levels=cfg["levels"], extra=cfg["extra"]
    )
    assert [c.name for c in conds] == ["nominal", "latency_fixed/0.1", "latency_fixed/0.3", "wide"]
    assert conds[-1].dimension == "custom"


def test_sweep_file_reports_every_problem_at_once(tmp_path: Path) -> None:
    """Unknown keys, unknown dimensions, bad levels, bad specs and a missing name are all
    listed in one error."""
    path = tmp_path / "bad.json"
    path.write_text(
        json.dumps(
            {
                "dimension": ["x"],
                "levels": {"latency_fixed": [0.5, 0.2], "nope": [1]},
                "conditions": [
                    {"name": "a", "latency": "fixd:ms=1", "drop_prob": 2},
                    {"latency": "nominal"},
                ],
            }
        )
    )
    with pytest.raises(ConfigError) as info:
        load_sweep_file(path, PERIOD_NS)
    text = str(info.value)
    for fragment in (
        "did you mean 'dimensions'",
        "values must increase",
        "unknown dimension 'nope'",
        "conditions[0].latency",
        "did you mean 'fixed'",
        "conditions[0].drop_prob",
        "conditions[1].name",
    ):
        assert fragment in text, fragment
    assert "6 problem(s)" in text


@pytest.mark.parametrize(
    ("content", "fragment"),
    [(b"\xff\xfe", "not a valid"), (b"{", "not a valid"), (b"[1, 2]", "expected an object")],
)
def test_sweep_file_refuses_garbage(tmp_path: Path, content: bytes, fragment: str) -> None:
    """Non-UTF-8, truncated JSON and a non-object are refused with ConfigError."""
    path = tmp_path / "s.json"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=fragment):
        load_sweep_file(path, PERIOD_NS)


def test_huge_sweep_file_is_refused(tmp_path: Path) -> None:
    """A sweep file above 1 MiB is refused before parsing."""
    path = tmp_path / "big.json"
    path.write_bytes(b" " * (1 << 20) + b"{}")
    with pytest.raises(ConfigError, match="larger than"):
        load_sweep_file(path, PERIOD_NS)


def test_measured_profile_condition(tmp_path: Path) -> None:
    """A measured trace becomes an empirical latency condition; a truncated file is refused
    before any episode runs."""
    good = tmp_path / "trace.json"
    good.write_text(json.dumps({"trace_ns": [100_000, 200_000, 5_000_000]}))
    cond = measured(str(good))
    assert cond.dimension == "measured" and cond.latency == f"empirical:{good}"
    bad = tmp_path / "cut.json"
    bad.write_text('{"trace_ns": [1, 2')
    with pytest.raises(ProfileError):
        measured(str(bad))

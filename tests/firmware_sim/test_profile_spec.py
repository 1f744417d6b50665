"""Profile spec parsing: text and JSON forms agree; bad specs raise ProfileError with hints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tailguard.errors import ProfileError
from tailguard.firmware_sim.profile_spec import parse_profile
from tailguard.firmware_sim.profiles import (
    FixedProfile,
    LognormalProfile,
    MixtureProfile,
    SpikeProfile,
    UniformProfile,
)

MS = 1_000_000


@pytest.mark.parametrize(
    ("text", "obj"),
    [
        ("fixed:ms=8", {"kind": "fixed", "ms": 8}),
        (
            "lognormal:median_ms=2,sigma=0.8,cap_ms=15",
            {"kind": "lognormal", "median_ms": 2, "sigma": 0.8, "cap_ms": 15},
        ),
        (
            "mix:0.97*nominal+0.03*pareto:scale_ms=5,alpha=1.5",
            {
                "kind": "mix",
                "components": [
                    {"weight": 0.97, "profile": "nominal"},
                    {"weight": 0.03, "profile": {"kind": "pareto", "scale_ms": 5, "alpha": 1.5}},
                ],
            },
        ),
        ("spikes:every=500,len=3,ms=40", {"kind": "spikes", "every": 500, "len": 3, "ms": 40}),
    ],
)
def test_text_and_json_specs_are_equivalent(text: str, obj: dict) -> None:
    """A text spec and its JSON equivalent (object or JSON text) give the same stream."""
    a = parse_profile(text, seed=1).sample(2000)
    b = parse_profile(obj, seed=1).sample(2000)
    c = parse_profile(json.dumps(obj), seed=1).sample(2000)
    assert np.array_equal(a, b) and np.array_equal(a, c)


def test_kinds_and_units() -> None:
    """Kinds map to their classes; s/ms/us/ns units convert to integer ns."""
    assert isinstance(parse_profile("nominal", nominal_ns=5), FixedProfile)
    assert parse_profile("nominal", nominal_ns=5).next_ns() == 5
    assert parse_profile("fixed:us=250").next_ns() == 250_000
    assert parse_profile("fixed:s=0.001").next_ns() == MS
    assert parse_profile("fixed:ns=7").next_ns() == 7
    assert isinstance(parse_profile("lognormal:median_ms=2,sigma=1"), LognormalProfile)
    assert isinstance(parse_profile("mix:0.5*nominal+0.5*fixed:ms=1"), MixtureProfile)
    assert isinstance(parse_profile("spikes:p=0.1,ms=3"), SpikeProfile)
    u = parse_profile("uniform:jitter_ms=1", nominal_ns=8 * MS)
    assert isinstance(u, UniformProfile) and (u.low_ns, u.high_ns) == (7 * MS, 9 * MS)
    assert parse_profile("gaussian:std_ms=1", nominal_ns=8 * MS).quantile_ns(0.5) == 8 * MS


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("", "empty profile spec"),
        ("lognormx:median_ms=2", "did you mean 'lognormal'"),
        ("lognormal:median_ms=2,sigmaa=0.8", "did you mean 'sigma'"),
        ("lognormal:median_ms=2", r"needs \['sigma'\]"),
        ("lognormal:median=2,sigma=1", "needs a unit suffix"),
        ("lognormal:median_ms=x,sigma=1", "must be a number"),
        ("lognormal:median_ms=2,sigma=-1", "sigma > 0"),
        ("lognormal:median_ms=2,median_us=3,sigma=1", "given twice"),
        ("fixed:ms=-1", ">= 0"),
        ("fixed:ms", "key=value"),
        ("fixed:ms=nan", "finite"),
        ("uniform:lo_ms=3,hi_ms=1", "low <= high"),
        ("uniform:jitter_ms=1,lo_ms=0", "not both"),
        ("pareto:scale_ms=5", r"needs \['alpha'\]"),
        ("mix:0.5*nominal+0.4*fixed:ms=1", "sum to 1"),
        ("mix:nominal", "WEIGHT\\*SPEC"),
        ("mix:1*mix:1*nominal", "cannot contain another mix"),
        ("spikes:ms=40", "exactly one of every"),
        ("spikes:every=10,len=11,ms=40", "len <= every"),
        ("spikes:every=2.5,ms=40", "must be an integer"),
        ("spikes:p=2,ms=40", r"\[0, 1\]"),
        ("empirical:", "needs a file"),
        ("empirical:/nonexistent/x.json", "not found"),
        ("{not json", "not valid JSON"),
        ('{"median_ms": 2}', "needs a 'kind'"),
        ('{"kind": "mix", "components": []}', "components"),
        ('{"kind": "empirical", "pathh": "x"}', "did you mean 'path'"),
        ('{"kind": "fixed", "ms": true}', "must be a number"),
    ],
)
def test_bad_specs_raise_profile_error(spec: str, fragment: str) -> None:
    """Every malformed spec raises ProfileError whose message names the problem."""
    with pytest.raises(ProfileError, match=fragment):
        parse_profile(spec)


def test_unknown_kind_lists_known_kinds() -> None:
    """An unknown kind's error lists every known kind."""
    with pytest.raises(ProfileError) as info:
        parse_profile("weird")
    for kind in ("nominal", "fixed", "lognormal", "pareto", "mix", "spikes", "empirical"):
        assert kind in str(info.value)


def test_empirical_text_spec_from_json_file(tmp_path: Path) -> None:
    """empirical:PATH loads a {value_ns: count} JSON histogram and samples only its values."""
    path = tmp_path / "h.json"
    path.write_text(json.dumps({"counts": {"1000": 3, "5000": 1}}))
    p = parse_profile(f"empirical:{path}", seed=0)
    x = p.sample(10_000)
    assert set(np.unique(x)) == {1000, 5000}
    assert p.quantile_ns(0.75) == 1000 and p.quantile_ns(0.76) == 5000

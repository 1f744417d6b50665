"""Profile spec parsing: text and JSON forms agree; bad specs raise ProfileError with hints."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


_NEST = '{"kind": "mix", "components": [{"weight": 1, "profile": '
_DEEP_MIX = _NEST * 3000 + '"nominal"' + "}]}" * 3000
_MID_MIX = _NEST * 600 + '"nominal"' + "}]}" * 600  # parses as JSON, nests in the builder


@pytest.mark.parametrize(
    ("spec", "error", "fragment"),
    [
        ("pareto:scale_ms=5,alpha=0.001", ProfileError, "heavy tail without a cap"),
        ("lognormal:median_ms=2,sigma=1000", ProfileError, "Add a tail cap"),
        ("gaussian:std_s=1e9", ProfileError, "99.99th percentile"),
        ("mix:0.99*nominal+0.01*pareto:scale_ms=5,alpha=0.01", ProfileError, "alpha=0.01: a heavy"),
        ("fixed:s=1e10", ProfileError, r"'fixed' time 's' must be a duration in \[0, 4611"),
        ("fixed:s=1e300", ProfileError, "about 146 years"),
        (
            "lognormal:median_ms=2,sigma=1,cap_s=1e12",
            ProfileError,
            "time 'cap_s' must be a duration",
        ),
        ('{"kind": "fixed", "ms": 1, "cap_s": 1e12}', ProfileError, "must be a duration"),
        ("uniform:lo_s=1,hi_s=4.7e9", ProfileError, "time 'hi_s' must be a duration"),
        ("spikes:every=1e12,ms=4", ProfileError, "'every' must be at most 1000000000"),
        ("spikes:p=0.1,len=1e12,ms=4", ProfileError, "'len' must be at most"),
        ("lognormal:median_ms=2,sigma=1e400", ProfileError, "must be finite"),
        ('{"kind": "empirical", "trace_ns": [1e300, 10]}', ProfileError, "trace value 1e+300"),
        ('{"kind": "empirical", "trace_ns": [10, -1]}', ProfileError, "negative durations"),
        ('{"kind": "empirical", "counts": {"1000": 1e309}}', ProfileError, "must be finite"),
        ('{"kind": "empirical", "counts": {"1e3": 1}}', ProfileError, "integer value"),
        (_DEEP_MIX, ProfileError, "nests too deep"),
        (_MID_MIX, ProfileError, "nests too deep"),
    ],
)
def test_out_of_range_specs_are_refused(spec: str, error: type[Exception], fragment: str) -> None:
    """Absurd durations, uncapped heavy tails and out-of-range data raise with the rule broken."""
    with pytest.raises(error, match=re.escape(fragment) if "+" in fragment else fragment):
        parse_profile(spec)


def test_pareto_with_a_cap_is_accepted_and_bounded() -> None:
    """The refused heavy tail with a cap samples within [scale, cap] and never wraps negative."""
    p = parse_profile("pareto:scale_ms=5,alpha=0.001,cap_ms=100", seed=3)
    x = p.sample(50_000)
    assert x.min() >= 5 * MS and x.max() == 100 * MS


def test_counts_summing_to_infinity_are_normalised() -> None:
    """counts {1000: 1e308, 2000: 1e308} weigh both values equally (the sum is infinite)."""
    p = parse_profile('{"kind": "empirical", "counts": {"1000": 1e308, "2000": 1e308}}', seed=0)
    assert p.quantile_ns(0.5) == 1000 and p.quantile_ns(0.51) == 2000
    assert set(np.unique(p.sample(1000)).tolist()) == {1000, 2000}


_TIME_VALUES = st.one_of(
    st.sampled_from(["0", "1", "0.5", "1e-300", "1e3", "1e6", "1e9", "4.6e9", "1e12", "1e300"]),
    st.floats(0.0, 1e12, allow_nan=False).map(repr),
)
_NUMBERS = st.one_of(
    st.sampled_from(["1e-300", "0.001", "0.5", "1", "1.5", "3", "50", "1000", "1e300"]),
    st.floats(1e-3, 1e3).map(repr),
)
_UNITS = st.sampled_from(["s", "ms", "us", "ns"])


@st.composite
def _text_specs(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["fixed", "uniform", "gaussian", "lognormal", "pareto", "spikes"]))
    u = draw(_UNITS)
    t = lambda: draw(_TIME_VALUES)  # noqa: E731
    keys = {
        "fixed": [f"{u}={t()}"],
        "uniform": draw(
            st.sampled_from([[f"lo_{u}={t()}", f"hi_{u}={t()}"], [f"jitter_{u}={t()}"]])
        ),
        "gaussian": [f"std_{u}={t()}"],
        "lognormal": [f"median_{u}={t()}", f"sigma={draw(_NUMBERS)}"],
        "pareto": [f"scale_{u}={t()}", f"alpha={draw(_NUMBERS)}"],
        "spikes": [f"every={draw(st.integers(1, 10**13))}", f"{u}={t()}", "len=1"],
    }[kind]
    if draw(st.booleans()):
        keys.append(f"cap_{draw(_UNITS)}={t()}")
    spec = f"{kind}:" + ",".join(keys)
    if draw(st.booleans()):
        spec = f"mix:0.5*nominal+0.5*{spec}"
    return spec


@settings(max_examples=300, deadline=None)
@given(_text_specs(), st.integers(0, 10**12), st.integers(0, 2**32))
def test_any_accepted_spec_samples_ints_in_range(spec: str, nominal_ns: int, seed: int) -> None:
    """Any spec either raises ProfileError or samples int64 values in [0, 2**62), every way."""
    try:
        p = parse_profile(spec, nominal_ns=nominal_ns, seed=seed)
    except ProfileError:
        return
    x = p.sample(600)
    assert x.dtype == np.int64
    assert x.min() >= 0 and x.max() < 2**62
    single = p.next_ns()
    assert type(single) is int and 0 <= single < 2**62


@settings(max_examples=100, deadline=None)
@given(
    st.one_of(
        st.lists(st.one_of(st.integers(-5, 2**64), st.floats(allow_nan=True)), max_size=20),
        st.dictionaries(
            st.one_of(st.integers(-5, 2**64).map(str), st.text(max_size=5)),
            st.one_of(st.floats(allow_nan=True), st.integers(-5, 2**64)),
            max_size=10,
        ),
    )
)
def test_any_accepted_inline_data_samples_ints_in_range(data: list | dict) -> None:
    """Any inline trace or counts either raises ProfileError or samples ints in [0, 2**62)."""
    key = "trace_ns" if isinstance(data, list) else "counts"
    try:
        p = parse_profile({"kind": "empirical", key: data})
    except ProfileError:
        return
    x = p.sample(300)
    assert x.dtype == np.int64 and x.min() >= 0 and x.max() < 2**62

"""Tests for tailguard.envelope: validation, bounded loading, saving, starter, period rule."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tailguard.envelope as envelope_api
import tailguard.envelope.model as envelope_model
from tailguard.envelope import (
    MAX_ENVELOPE_BYTES,
    MAX_NESTING_DEPTH,
    PERIOD_TOLERANCE_PPM,
    SCHEMA_VERSION,
    ActionLimits,
    Envelope,
    PolicyBinding,
    Provenance,
    Recovery,
    Thresholds,
    Timing,
    Window,
    check_envelope_file,
    envelope_from_dict,
    json_io,
    load_envelope,
    period_matches,
    read_envelope_file,
    require_period,
    rules,
    save_envelope,
    starter_envelope,
)
from tailguard.errors import ConfigError, EnvelopeError, EnvelopeMismatchError
from tailguard.runtime.pacer import Pacer
from tailguard.runtime.state import DEFAULT_RESPONSES, Response, Violation

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "envelopes" / "hopper_50hz.json"
SHA = "ab" * 32
DELETE = object()


def valid_dict() -> dict[str, Any]:
    """A complete, valid envelope as plain JSON data (fresh copy each call)."""
    return {
        "schema_version": 1,
        "policy": {
            "sha256": SHA,
            "obs_size": 11,
            "action_size": 3,
            "action_low": [-1.0, -1.0, -1.0],
            "action_high": [1.0, 1.0, 1.0],
        },
        "timing": {
            "period_ns": 20_000_000,
            "dt": {
                "p50_ns": 21_000_000,
                "p95_ns": 24_000_000,
                "p99_ns": 30_000_000,
                "max_ns": 60_000_000,
            },
            "latency": {
                "p50_ns": 1_000_000,
                "p95_ns": 2_000_000,
                "p99_ns": 4_000_000,
                "max_ns": 10_000_000,
            },
            "obs_age_max_ns": 30_000_000,
            "max_consecutive_overruns": 3,
        },
        "actions": {"max_delta": [0.5, 0.5, 0.5]},
        "window": {"ticks": 100, "check_every_ticks": 10},
        "responses": {"latency_max": "hold", "dt_p99": "latch"},
        "recovery": {"recovery_ticks": 20, "dwell_ns": 100_000_000, "max_hold_ticks": 4},
        "safe_action": "zero",
        "provenance": {
            "source": "audit",
            "audited": True,
            "tool_version": "0.1.0",
            "created_utc": "2025-01-31T12:00:00Z",
            "notes": "test",
            "results": {"ratio": [0.98, 0.97], "scenarios": {"dt": {"severity": 2}}},
        },
    }


def mutate(data: dict[str, Any], key_path: str, value: Any) -> dict[str, Any]:
    """Set (or delete, with DELETE) the value at a dotted key path; returns data."""
    *parents, last = key_path.split(".")
    node = data
    for key in parents:
        node = node[key]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return data


def problems_of(data: Any) -> list[str]:
    """The rendered problems of invalid data (fails the test if the data loads)."""
    with pytest.raises(EnvelopeError) as info:
        envelope_from_dict(data)
    return [str(p) for p in info.value.problems]


def test_valid_dict_loads() -> None:
    """The reference data is a valid envelope and keeps its values."""
    env = envelope_from_dict(valid_dict())
    assert env.policy.sha256 == SHA
    assert env.timing.latency.p99_ns == 4_000_000
    assert env.responses[Violation.DT_P99] is Response.LATCH
    assert env.responses[Violation.OBS_AGE] is DEFAULT_RESPONSES[Violation.OBS_AGE]


def test_minimal_dict_takes_defaults() -> None:
    """Only the required keys are needed; everything else takes the documented defaults."""
    env = envelope_from_dict(
        {
            "schema_version": 1,
            "policy": {"obs_size": 4, "action_size": 2},
            "timing": {"period_ns": 1000},
        }
    )
    assert env.policy.sha256 is None
    assert env.timing.dt == Thresholds()
    assert env.window == Window() and env.recovery == Recovery() and env.actions == ActionLimits()
    assert dict(env.responses) == DEFAULT_RESPONSES
    assert env.safe_action == "hold"
    assert env.provenance == Provenance(source="manual", audited=False)


def test_example_file_is_valid() -> None:
    """The shipped example loads, and says it is hand-written and not audited."""
    assert check_envelope_file(EXAMPLE) == []
    env = load_envelope(EXAMPLE)
    assert env.provenance.source == "manual" and env.provenance.audited is False
    assert env.timing.period_ns == 20_000_000


BAD_CASES: list[tuple[str, Any, str, str]] = [
    # (key path to change, new value, key path of the problem, message fragment)
    ("schema_version", DELETE, "schema_version", "missing"),
    ("schema_version", SCHEMA_VERSION + 1, "schema_version", "upgrade tailguard"),
    ("schema_version", 0, "schema_version", "an integer from 1 to"),
    ("schema_version", True, "schema_version", "boolean"),
    ("schema_version", "1", "schema_version", "remove the quotes"),
    ("policy", DELETE, "policy", "obs_size and action_size"),
    ("policy", [], "policy", "an object"),
    ("polcy", {}, "polcy", "did you mean 'policy'?"),
    ("policy.sha256", "abc", "policy.sha256", "64 hex digits"),
    ("policy.sha256", "zz" * 32, "policy.sha256", "64 hex digits"),
    ("policy.obs_size", 0, "policy.obs_size", ">= 1"),
    ("policy.obs_size", 11.0, "policy.obs_size", "write 11"),
    ("policy.action_size", DELETE, "policy.action_size", "missing"),
    ("policy.action_low", [-1.0, -1.0], "policy.action_low", "3 numbers"),
    ("policy.action_low", [-1.0, math.nan, -1.0], "policy.action_low[1]", "finite"),
    ("policy.action_low", [-1.0, "a", -1.0], "policy.action_low[1]", "a number"),
    ("policy.action_low", [-1.0, True, -1.0], "policy.action_low[1]", "boolean"),
    ("policy.action_low", "-1", "policy.action_low", "an array"),
    ("policy.action_high", [1.0, -1.0, 1.0], "policy.action_high[1]", "> action_low[1]"),
    ("policy.action_high", None, "policy.action_high", "go together"),
    ("policy.action_hi", [1.0], "policy.action_hi", "did you mean 'action_high'?"),
    ("timing", DELETE, "timing", "period_ns"),
    ("timing.period_ns", DELETE, "timing.period_ns", "missing"),
    ("timing.period_ns", -5, "timing.period_ns", ">= 1"),
    ("timing.period_ns", 0.02, "timing.period_ns", "20 ms is 20000000"),
    ("timing.period_ns", "20ms", "timing.period_ns", "nanoseconds"),
    ("timing.period_ns", 2**63, "timing.period_ns", "<="),
    ("timing.period_ns", None, "timing.period_ns", "null"),
    ("timing.latency.p99_ns", 1_500_000, "timing.latency.p99_ns", "p50_ns <= p95_ns"),
    ("timing.dt.max_ns", 25_000_000, "timing.dt.max_ns", ">= p99_ns"),
    ("timing.latency.p99", 1, "timing.latency.p99", "did you mean 'p99_ns'?"),
    ("timing.latency_ns", {}, "timing.latency_ns", "did you mean 'latency'?"),
    ("timing.dt", None, "timing.dt", "an object"),
    ("timing.dt.p50_ns", 21_000_000.5, "timing.dt.p50_ns", "nanoseconds"),
    ("timing.obs_age_max_ns", True, "timing.obs_age_max_ns", "true/false"),
    ("timing.max_consecutive_overruns", 0, "timing.max_consecutive_overruns", ">= 1"),
    ("actions.max_delta", [0.5, 0.5], "actions.max_delta", "3 numbers"),
    ("actions.max_delta", [0.0, 0.5, 0.5], "actions.max_delta[0]", "> 0"),
    ("actions.max_delta", [math.inf, 0.5, 0.5], "actions.max_delta[0]", "finite"),
    ("window.ticks", 5, "window.ticks", ">= 10"),
    ("window.ticks", 10**9, "window.ticks", "<= 1000000"),
    ("window.check_every_ticks", 101, "window.check_every_ticks", "at most ticks (100)"),
    ("window.check_every_ticks", 0, "window.check_every_ticks", ">= 1"),
    ("responses", ["hold"], "responses", "an object"),
    ("responses.latency_max", "clip", "responses.latency_max", "only applies to action"),
    ("responses.latency_max", "holdd", "responses.latency_max", "did you mean 'hold'?"),
    ("responses.latency_max", 3, "responses.latency_max", "one of 'log'"),
    ("responses.latency_mx", "hold", "responses.latency_mx", "did you mean 'latency_max'?"),
    ("responses.fallback_error", "hold", "responses.fallback_error", "'fallback', 'latch'"),
    ("responses.obs_nonfinite", "log", "responses.obs_nonfinite", "'hold', 'fallback'"),
    ("recovery.dwell_ns", -1, "recovery.dwell_ns", ">= 0"),
    ("recovery.max_hold_ticks", 0, "recovery.max_hold_ticks", ">= 1"),
    ("recovery.recovery_tick", 3, "recovery.recovery_tick", "did you mean 'recovery_ticks'?"),
    ("safe_action", "zeros", "safe_action", "did you mean 'zero'?"),
    ("safe_action", None, "safe_action", "one of 'hold', 'zero'"),
    ("provenance.source", "audited", "provenance.source", "did you mean 'audit'?"),
    ("provenance.audited", "no", "provenance.audited", "true or false"),
    ("provenance.source", "init", "provenance.audited", "false for source 'init'"),
    ("provenance.created_utc", "yesterday", "provenance.created_utc", "ISO 8601"),
    ("provenance.notes", 5, "provenance.notes", "a string"),
    ("provenance.results", [1], "provenance.results", "an object"),
    ("provenance.results", {"a": [1, math.nan]}, "provenance.results.a[1]", "finite"),
    # an unknown key in every object of the schema gets a did-you-mean hint
    ("safe_actoin", "hold", "safe_actoin", "did you mean 'safe_action'?"),
    ("policy.obs_sise", 11, "policy.obs_sise", "did you mean 'obs_size'?"),
    ("timing.period", 1, "timing.period", "did you mean 'period_ns'?"),
    ("timing.dt.p95", 1, "timing.dt.p95", "did you mean 'p95_ns'?"),
    ("actions.max_delt", [1.0], "actions.max_delt", "did you mean 'max_delta'?"),
    ("window.tick", 10, "window.tick", "did you mean 'ticks'?"),
    ("recovery.dwell", 1, "recovery.dwell", "did you mean 'dwell_ns'?"),
    ("provenance.note", "x", "provenance.note", "did you mean 'notes'?"),
]


@pytest.mark.parametrize(("key_path", "value", "problem_path", "fragment"), BAD_CASES)
def test_bad_envelope_reports_key_path_and_reason(
    key_path: str, value: Any, problem_path: str, fragment: str
) -> None:
    """Each single mistake is reported at its key path with an explanatory message."""
    with pytest.raises(EnvelopeError) as info:
        envelope_from_dict(mutate(valid_dict(), key_path, value))
    matching = [p for p in info.value.problems if p.key_path == problem_path]
    assert matching, [str(p) for p in info.value.problems]
    assert any(fragment in str(p) for p in matching), [str(p) for p in matching]


def test_root_must_be_an_object() -> None:
    """A JSON document that is not an object is one problem at the root."""
    assert problems_of([1, 2]) == [
        "<root>: expected a JSON object with the envelope sections, found [1, 2] (array)"
    ]


def test_all_problems_reported_at_once() -> None:
    """A file with five different mistakes reports exactly five problems in one error."""
    data = valid_dict()
    mutate(data, "timing.latency.p99_ns", 1)  # breaks ordering
    mutate(data, "timing.latncy", {})  # unknown key
    mutate(data, "window.ticks", 5)  # out of range
    mutate(data, "responses.latency_max", "clip")  # not allowed
    mutate(data, "provenance.audited", "yes")  # wrong type
    with pytest.raises(EnvelopeError) as info:
        envelope_from_dict(data, "env.json")
    paths = [p.key_path for p in info.value.problems]
    assert sorted(paths) == sorted(
        [
            "timing.latency.p99_ns",
            "timing.latncy",
            "window.ticks",
            "responses.latency_max",
            "provenance.audited",
        ]
    )
    assert "env.json: invalid envelope (5 problems)" in str(info.value)


def test_problems_are_listed_in_file_order() -> None:
    """Problems come in the order of the top-level keys, schema_version first."""
    data = mutate(mutate(valid_dict(), "safe_action", "x"), "schema_version", 0)
    mutate(data, "policy.obs_size", 0)
    paths = [p.split(":")[0] for p in problems_of(data)]
    assert paths == ["schema_version", "policy.obs_size", "safe_action"]


def test_newer_schema_version_reports_only_the_version() -> None:
    """A file from a newer tailguard gets one 'upgrade' problem, not noise about new keys."""
    data = mutate(valid_dict(), "schema_version", SCHEMA_VERSION + 1)
    mutate(data, "brand_new_section", {})
    problems = problems_of(data)
    assert len(problems) == 1 and "upgrade tailguard" in problems[0]


def test_problem_lists_valid_keys_when_nothing_is_close() -> None:
    """An unknown key that resembles nothing lists the valid keys instead of guessing."""
    (problem,) = problems_of(mutate(valid_dict(), "window.zzz", 1))
    assert "valid keys here: ticks, check_every_ticks" in problem


def test_duplicate_keys_in_file_are_problems(tmp_path: Path) -> None:
    """A key given twice in the JSON text is reported (JSON would keep only the last)."""
    text = json.dumps(valid_dict()).replace('"ticks": 100', '"ticks": 100, "ticks": 200')
    path = tmp_path / "dup.json"
    path.write_text(text)
    problems = check_envelope_file(path)
    assert [p.key_path for p in problems] == ["window.ticks"]
    assert "at most once" in str(problems[0])


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b'{"schema_version": 1,\n  "policy": {,}}', "line 2, column 14"),
        (b"", "line 1, column 1"),
        (b"\x08\x07\x12\x04\xff\xfe", "not UTF-8"),
        (b"[{" * 1000 + b"\xff\xfe", "not the policy"),  # a binary file: not called "deep"
        (b"[" * 100_000 + b"]" * 100_000, f"at most {MAX_NESTING_DEPTH} levels deep"),
        (b'{"schema_version": ' + b"9" * 5000 + b"}", "JSON of a sane size"),
    ],
    ids=["syntax", "empty", "binary", "binary-brackets", "deep", "long-integer"],
)
def test_unparsable_file_is_one_problem(tmp_path: Path, content: bytes, fragment: str) -> None:
    """Invalid JSON or non-text raises EnvelopeError naming the file and where it broke."""
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(EnvelopeError) as info:
        load_envelope(path)
    assert str(path) in str(info.value) and fragment in str(info.value)
    (problem,) = check_envelope_file(path)
    assert fragment in str(problem)


def test_missing_file_is_envelope_error(tmp_path: Path) -> None:
    """A file that does not exist raises EnvelopeError, not OSError."""
    with pytest.raises(EnvelopeError, match="readable envelope file"):
        load_envelope(tmp_path / "nope.json")


def test_save_load_round_trip(tmp_path: Path) -> None:
    """save -> load and to_dict -> from_dict give back an equal envelope."""
    env = envelope_from_dict(valid_dict())
    path = tmp_path / "env.json"
    save_envelope(env, path)
    assert load_envelope(path) == env
    assert envelope_from_dict(env.to_dict()) == env
    assert envelope_from_dict(json.loads(json.dumps(env.to_dict()))) == env


def test_saved_file_is_stable_pretty_json(tmp_path: Path) -> None:
    """Saving is deterministic, indented, schema-ordered and ends with a newline."""
    env = envelope_from_dict(valid_dict())
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    save_envelope(env, first)
    save_envelope(load_envelope(first), second)
    text = first.read_text()
    assert text == second.read_text()
    # valid_dict() is a version-1 file: it is written back migrated to the current version
    assert text.endswith("}\n") and text.startswith(
        f'{{\n  "schema_version": {SCHEMA_VERSION},\n  "policy"'
    )
    assert list(json.loads(text)) == [
        "schema_version",
        "policy",
        "timing",
        "actions",
        "window",
        "responses",
        "recovery",
        "safe_action",
        "provenance",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json"]  # no temp files


def test_save_to_missing_directory_raises_envelope_error(tmp_path: Path) -> None:
    """A write failure is an EnvelopeError naming the path."""
    env = envelope_from_dict(valid_dict())
    with pytest.raises(EnvelopeError, match="cannot write"):
        save_envelope(env, tmp_path / "missing" / "env.json")


@pytest.mark.parametrize(
    ("period_ns", "ticks", "cadence"),
    [
        (20_000_000, 100, 10),
        (1_000_000, 2000, 200),
        (2_000_000_000, 10, 1),
        (3, 1_000_000, 100_000),
    ],
)
def test_starter_envelope_is_valid_placeholder(period_ns: int, ticks: int, cadence: int) -> None:
    """The starter envelope validates, covers ~2 s of ticks and says it is not audited."""
    env = starter_envelope(obs_size=11, action_size=3, period_ns=period_ns, sha256=SHA)
    assert envelope_from_dict(env.to_dict()) == env
    assert (env.window.ticks, env.window.check_every_ticks) == (ticks, cadence)
    assert env.provenance.source == "init" and env.provenance.audited is False
    assert "PLACEHOLDER" in env.provenance.notes and "NOT audited" in env.provenance.notes
    assert "audit" in env.provenance.notes.split("NOT audited", 1)[1]
    assert env.actions.max_delta is None
    assert env.timing.max_consecutive_overruns == 3
    for th in (env.timing.dt, env.timing.latency):
        values = [th.p50_ns, th.p95_ns, th.p99_ns, th.max_ns]
        assert all(isinstance(v, int) for v in values) and values == sorted(values)


def test_starter_envelope_thresholds_scale_with_period() -> None:
    """Starter thresholds are the documented multiples of the period."""
    env = starter_envelope(obs_size=1, action_size=1, period_ns=20_000_000)
    assert env.timing.dt == Thresholds(21_000_000, 24_000_000, 30_000_000, 60_000_000)
    assert env.timing.latency == Thresholds(5_000_000, 10_000_000, 15_000_000, 20_000_000)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"period_ns": 0}, "timing.period_ns"),
        ({"period_ns": 0.02}, "timing.period_ns"),
        ({"action_low": [-1.0], "action_high": [1.0]}, "action_low: expected 3 numbers"),
        ({"sha256": "nothex"}, "sha256"),
    ],
)
def test_starter_envelope_rejects_bad_arguments(kwargs: dict[str, Any], fragment: str) -> None:
    """Bad starter arguments raise EnvelopeError, not TypeError or ZeroDivisionError."""
    args: dict[str, Any] = {"obs_size": 11, "action_size": 3, "period_ns": 20_000_000, **kwargs}
    with pytest.raises(EnvelopeError, match=fragment):
        starter_envelope(**args)


@pytest.mark.parametrize(
    ("build", "fragment"),
    [
        (lambda: Thresholds(p50_ns=10, p95_ns=5), "p95_ns: expected a value >= p50_ns"),
        (lambda: Thresholds(max_ns=1.5), "max_ns"),
        (lambda: Timing(period_ns=0), "period_ns"),
        (lambda: Timing(period_ns=10, dt={"p50_ns": 1}), "dt: expected a Thresholds"),
        (lambda: PolicyBinding(None, 3, 2, action_low=(0.0, 0.0)), "action_high"),
        (lambda: PolicyBinding(None, 3, 2, (0.0, 0.0), (1.0,)), "action_high: expected 2 numbers"),
        (lambda: ActionLimits(max_delta=(-1.0,)), "max_delta[0]"),
        (lambda: Window(ticks=20, check_every_ticks=30), "check_every_ticks"),
        (lambda: Recovery(dwell_ns=-1), "dwell_ns"),
        (lambda: Provenance(source="init", audited=True), "audited"),
        (lambda: Provenance(source="manual", audited=False, results={"x": object()}), "results.x"),
        (
            lambda: Envelope(PolicyBinding(None, 3, 2), Timing(10), ActionLimits(max_delta=(1.0,))),
            "actions.max_delta: expected 2 numbers",
        ),
        (
            lambda: Envelope(PolicyBinding(None, 3, 2), Timing(10), safe_action="stop"),
            "safe_action",
        ),
        (lambda: Envelope(PolicyBinding(None, 3, 2), Timing(10), schema_version=3), "upgrade"),
        (
            lambda: Envelope(
                PolicyBinding(None, 3, 2), Timing(10), responses={Violation.OBS_AGE: Response.CLIP}
            ),
            "responses.obs_age",
        ),
        (lambda: Envelope(PolicyBinding(None, 3, 2), None), "timing: expected a Timing"),  # type: ignore[arg-type]
    ],
)
def test_direct_construction_validates(build: Any, fragment: str) -> None:
    """Dataclasses built in Python obey the same rules and raise EnvelopeError."""
    with pytest.raises(EnvelopeError) as info:
        build()
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Thresholds(p99=1), "Thresholds has no field 'p99'; did you mean 'p99_ns'?"),
        (lambda: PolicyBinding(None, 3, 2, action_hi=(1.0,)), "did you mean 'action_high'?"),
        (lambda: Timing(period=10), "did you mean 'period_ns'?"),
        (lambda: ActionLimits(max_delt=(1.0,)), "did you mean 'max_delta'?"),
        (lambda: Window(tick=10), "did you mean 'ticks'?"),
        (lambda: Recovery(dwell=1), "did you mean 'dwell_ns'?"),
        (lambda: Provenance(source="manual", audited=False, note=""), "did you mean 'notes'?"),
        (
            lambda: Envelope(PolicyBinding(None, 3, 2), Timing(10), safe_actoin="hold"),
            "Envelope has no field 'safe_actoin'; did you mean 'safe_action'?",
        ),
        (lambda: Window(zzz=1), "valid fields: ticks, check_every_ticks"),
        (lambda: dataclasses.replace(Window(), tick=20), "did you mean 'ticks'?"),
    ],
)
def test_unknown_keyword_names_the_field_it_resembles(build: Any, message: str) -> None:
    """An unknown keyword in Python is a TypeError with the same did-you-mean hint as a file."""
    with pytest.raises(TypeError) as info:
        build()
    assert message in str(info.value)


def test_direct_construction_normalizes_without_mutating_inputs() -> None:
    """numpy/list inputs become ints and float tuples; the caller's objects are untouched."""
    low = np.array([-1, -2], dtype=np.int32)
    results = {"a": [1, 2]}
    policy = PolicyBinding(SHA.upper(), np.int64(3), 2, low, [1, 2])
    assert policy.sha256 == SHA and type(policy.obs_size) is int
    assert policy.action_low == (-1.0, -2.0) and policy.action_high == (1.0, 2.0)
    prov = Provenance(source="manual", audited=False, results=results)
    assert results == {"a": [1, 2]}
    assert prov.results["a"] == (1, 2)
    assert type(Timing(period_ns=np.int64(5)).period_ns) is int


def test_envelope_objects_are_read_only() -> None:
    """Fields, responses and results cannot be changed in place."""
    env = envelope_from_dict(valid_dict())
    with pytest.raises(dataclasses.FrozenInstanceError):
        env.safe_action = "hold"  # type: ignore[misc]
    with pytest.raises(TypeError):
        env.responses[Violation.LATENCY_MAX] = Response.LATCH  # type: ignore[index]
    with pytest.raises(TypeError):
        env.provenance.results["x"] = 1  # type: ignore[index]
    with pytest.raises(TypeError):
        env.provenance.results["scenarios"]["dt"]["severity"] = 3


def test_envelopes_pickle_and_deep_copy_equal_and_read_only() -> None:
    """Envelopes cross process boundaries (pickle) and deep-copy; copies stay read-only."""
    import pickle

    env = envelope_from_dict(valid_dict())
    for copied in (pickle.loads(pickle.dumps(env)), copy.deepcopy(env), copy.copy(env)):
        assert copied == env and copied.digest() == env.digest()
        with pytest.raises(TypeError):
            copied.responses[Violation.LATENCY_MAX] = Response.LATCH  # type: ignore[index]
        with pytest.raises(TypeError):
            copied.provenance.results["scenarios"]["dt"]["severity"] = 3


def test_partial_responses_are_completed_with_defaults() -> None:
    """Responses given in Python (enums or strings) are merged over the defaults."""
    env = Envelope(PolicyBinding(None, 3, 2), Timing(10), responses={"latency_max": "latch"})
    assert set(env.responses) == set(Violation)
    assert env.responses[Violation.LATENCY_MAX] is Response.LATCH
    assert env.responses[Violation.DT_MAX] is DEFAULT_RESPONSES[Violation.DT_MAX]


def test_with_helpers_return_new_validated_envelopes() -> None:
    """with_policy_hash / with_responses copy and validate; the original is unchanged."""
    env = envelope_from_dict(valid_dict())
    bound = env.with_policy_hash("cd" * 32)
    assert bound.policy.sha256 == "cd" * 32 and env.policy.sha256 == SHA
    assert bound.timing is env.timing
    assert env.with_policy_hash(None).policy.sha256 is None
    with pytest.raises(EnvelopeError, match="sha256"):
        env.with_policy_hash("xyz")
    latched = env.with_responses({Violation.OBS_AGE: Response.LATCH})
    assert latched.responses[Violation.OBS_AGE] is Response.LATCH
    assert latched.responses[Violation.DT_P99] is Response.LATCH  # kept from env
    assert env.responses[Violation.OBS_AGE] is Response.HOLD
    with pytest.raises(EnvelopeError, match=r"responses\.obs_age"):
        env.with_responses({"obs_age": "clip"})


def test_input_dict_is_not_mutated() -> None:
    """Loading never changes the caller's data."""
    data = valid_dict()
    before = copy.deepcopy(data)
    envelope_from_dict(data)
    assert data == before


# --- property test: any JSON-able mutation loads or raises EnvelopeError ----------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def key_paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path (dict keys and list indices) into a JSON structure."""
    paths = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, child in node.items():
            paths += key_paths(child, (*prefix, key))
    elif isinstance(node, list):
        for i, child in enumerate(node):
            paths += key_paths(child, (*prefix, i))
    return paths


ALL_PATHS = key_paths(valid_dict())
mutations = st.lists(
    st.tuples(
        st.sampled_from(ALL_PATHS),
        st.sampled_from(["set", "delete", "add"]),
        json_values,
        st.text(max_size=12),
    ),
    min_size=1,
    max_size=4,
)


def apply_mutation(data: Any, path: tuple[Any, ...], op: str, value: Any, new_key: str) -> None:
    """Replace, delete or add next to the node at path, if the path still exists."""
    node = data
    for key in path[:-1]:
        try:
            node = node[key]
        except (KeyError, IndexError, TypeError):
            return
    last = path[-1]
    try:
        if op == "set":
            node[last] = value
        elif op == "delete":
            del node[last]
        elif isinstance(node, dict):
            node[new_key] = value
        elif isinstance(node, list):
            node.append(value)
    except (KeyError, IndexError, TypeError):
        return


@settings(max_examples=150, deadline=None)
@given(mutations)
def test_any_mutation_loads_or_raises_envelope_error(changes: list[Any]) -> None:
    """Any JSON-able mutation of a valid envelope loads and round-trips, or raises EnvelopeError."""
    data = valid_dict()
    for path, op, value, new_key in changes:
        apply_mutation(data, path, op, value, new_key)
    try:
        env = envelope_from_dict(data)
    except EnvelopeError as exc:
        assert exc.problems and str(exc)
        return
    assert envelope_from_dict(env.to_dict()) == env
    json.dumps(env.to_dict(), allow_nan=False)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
def test_any_file_content_loads_or_raises_envelope_error(tmp_path: Path, content: bytes) -> None:
    """Arbitrary bytes in an envelope file never raise anything but EnvelopeError."""
    path = tmp_path / "fuzz.json"
    path.write_bytes(content)
    try:
        load_envelope(path)
    except EnvelopeError as exc:
        assert exc.problems
    assert isinstance(check_envelope_file(path), list)


# --- the package's import surface -------------------------------------------------------


def test_model_module_and_package_export_the_same_objects() -> None:
    """Every public name of tailguard.envelope.model is importable, identical, from the package."""
    assert sorted(envelope_model.__all__) == sorted(envelope_api.__all__)
    for name in envelope_model.__all__:
        assert getattr(envelope_model, name) is getattr(envelope_api, name), name


# --- bounded reading: size, depth, file kinds, one parse -----------------------------------


def padded_envelope_bytes(size: int) -> bytes:
    """A valid envelope file of exactly ``size`` bytes (the notes are padded with spaces)."""
    data = valid_dict()
    data["provenance"]["notes"] = ""
    text = json.dumps(data).encode()
    assert len(text) <= size
    data["provenance"]["notes"] = " " * (size - len(text))
    text = json.dumps(data).encode()
    assert len(text) == size
    return text


def test_file_at_the_size_limit_loads(tmp_path: Path) -> None:
    """A valid file of exactly MAX_ENVELOPE_BYTES bytes is read (the bound is inclusive)."""
    path = tmp_path / "at_limit.json"
    path.write_bytes(padded_envelope_bytes(MAX_ENVELOPE_BYTES))
    assert load_envelope(path).provenance.notes.strip() == ""


def test_file_above_the_size_limit_is_refused_before_parsing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One byte over the limit: an EnvelopeError naming both sizes, and nothing is parsed."""
    path = tmp_path / "big.json"
    path.write_bytes(padded_envelope_bytes(MAX_ENVELOPE_BYTES + 1))

    def no_parse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("an oversized file must be refused before it is parsed")

    monkeypatch.setattr(json_io, "_parse", no_parse)
    with pytest.raises(EnvelopeError) as info:
        load_envelope(path)
    message = str(info.value)
    assert str(path) in message
    assert f"at most {MAX_ENVELOPE_BYTES} bytes" in message
    assert f"found {MAX_ENVELOPE_BYTES + 1} bytes" in message
    (problem,) = check_envelope_file(path)
    assert f"{MAX_ENVELOPE_BYTES + 1} bytes" in str(problem)


@pytest.mark.parametrize("extra_levels", [0, 1, 1000])
def test_nesting_deeper_than_the_bound_is_refused(tmp_path: Path, extra_levels: int) -> None:
    """A file nested past MAX_NESTING_DEPTH is one problem naming the depth and the bound."""
    data = valid_dict()
    total = MAX_NESTING_DEPTH + 1 + extra_levels
    depth = total - 3  # the envelope, provenance and results objects are 3 levels
    data["provenance"]["results"] = {"deep": 0}
    text = json.dumps(data).replace('"deep": 0', '"deep": ' + "[" * depth + "]" * depth)
    path = tmp_path / "deep.json"
    path.write_text(text)
    (problem,) = check_envelope_file(path)
    assert f"at most {MAX_NESTING_DEPTH} levels deep" in str(problem)
    assert f"found {total} levels" in str(problem)


def test_nesting_at_the_bound_is_parsed_and_judged_by_the_schema(tmp_path: Path) -> None:
    """At exactly MAX_NESTING_DEPTH the file is parsed; the results' own depth rule applies."""
    data = valid_dict()
    depth = MAX_NESTING_DEPTH - 3  # with the envelope, provenance and results objects
    data["provenance"]["results"] = {"deep": 0}
    text = json.dumps(data).replace('"deep": 0', '"deep": ' + "[" * depth + "]" * depth)
    path = tmp_path / "deep.json"
    path.write_text(text)
    problems = check_envelope_file(path)
    assert problems and all(p.key_path.startswith("provenance.results.deep") for p in problems)
    assert f"at most {rules.MAX_RESULTS_DEPTH} levels of nesting" in str(problems[0])


def test_brackets_inside_strings_are_not_nesting(tmp_path: Path) -> None:
    """Brackets and escaped quotes inside strings do not count towards the depth bound."""
    data = valid_dict()
    data["provenance"]["notes"] = '[{\\"' * 500 + "]"
    path = tmp_path / "notes.json"
    path.write_text(json.dumps(data))
    assert load_envelope(path).provenance.notes == data["provenance"]["notes"]


def reference_depth(value: Any) -> int:
    """Nesting depth of parsed JSON, the plain recursive way (a scalar is depth 0)."""
    if isinstance(value, dict):
        return 1 + max((reference_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((reference_depth(v) for v in value), default=0)
    return 0


tricky_text = st.text(alphabet='[]{}"\\ab:,\né€', max_size=8)
nested_json = st.recursive(
    st.none() | st.integers() | tricky_text,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(tricky_text, children, max_size=3)
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(nested_json, st.booleans())
def test_nesting_depth_matches_a_recursive_reference(value: Any, ascii_only: bool) -> None:
    """The byte-level depth scan equals the depth of the parsed data, brackets in strings aside."""
    raw = json.dumps(value, ensure_ascii=ascii_only).encode()
    assert json_io._nesting_depth(raw) == reference_depth(value)


def test_directory_is_refused(tmp_path: Path) -> None:
    """A directory where the envelope file should be is an EnvelopeError saying so."""
    with pytest.raises(EnvelopeError, match="a directory"):
        load_envelope(tmp_path)


def test_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    """A named pipe is refused at once (opening it must not block until a writer comes)."""
    import os
    import threading

    if not hasattr(os, "mkfifo"):
        pytest.skip("no named pipes on this platform")
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    outcome: list[BaseException] = []

    def load() -> None:
        try:
            load_envelope(fifo)
        except BaseException as exc:  # handed to the test thread
            outcome.append(exc)

    reader = threading.Thread(target=load, daemon=True)
    reader.start()
    reader.join(timeout=10.0)
    if reader.is_alive():  # release the blocked open() so the thread ends, then fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        reader.join(timeout=10.0)
        pytest.fail("load_envelope blocked on a named pipe")
    (exc,) = outcome
    assert isinstance(exc, EnvelopeError) and "not a regular file" not in str(exc)
    assert "a device, pipe or socket" in str(exc)


def test_read_envelope_file_parses_and_validates_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One read gives the envelope or every problem; the text is parsed once, each rule run once."""
    path = tmp_path / "env.json"
    path.write_text(json.dumps(valid_dict()))
    calls: dict[str, int] = {}

    def counting(name: str, real: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            calls[name] = calls.get(name, 0) + 1
            return real(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(json_io.json, "loads", counting("json.loads", json.loads))
    for name in ("check_policy", "check_timing", "check_provenance", "check_envelope"):
        monkeypatch.setattr(rules, name, counting(name, getattr(rules, name)))
    envelope, problems = read_envelope_file(path)
    assert problems == [] and envelope == envelope_from_dict(valid_dict())
    assert calls == {
        "json.loads": 1,
        "check_policy": 2,  # once for the file, once for envelope_from_dict above
        "check_timing": 2,
        "check_provenance": 2,
        "check_envelope": 2,
    }
    path.write_text(json.dumps(mutate(valid_dict(), "window.ticks", 5)))
    envelope, problems = read_envelope_file(path)
    assert envelope is None and [p.key_path for p in problems] == ["window.ticks"]


# --- one rule for "does the envelope fit the loop's period" --------------------------------


def envelope_with_period(period_ns: int) -> Envelope:
    """A valid envelope for a loop of ``period_ns``."""
    return starter_envelope(obs_size=4, action_size=2, period_ns=period_ns)


@pytest.mark.parametrize(
    ("envelope_period_ns", "loop_period_ns"),
    [
        (20_000_000, 20_000_000),
        (33_333_000, Pacer(30.0).period_ns),  # --period-ms 33.333 against --rate-hz 30
        (Pacer(30.0).period_ns, 33_333_000),
        (1_001_000, 1_000_000),  # exactly the tolerance
        (999_000, 1_000_000),
    ],
)
def test_require_period_accepts_the_same_period(
    envelope_period_ns: int, loop_period_ns: int
) -> None:
    """Periods within PERIOD_TOLERANCE_PPM of the loop's are the same period."""
    assert period_matches(envelope_period_ns, loop_period_ns)
    require_period(envelope_with_period(envelope_period_ns), loop_period_ns, where="the test")


@pytest.mark.parametrize(
    ("envelope_period_ns", "loop_period_ns"),
    [
        (20_000_000, 10_000_000),  # a 50 Hz envelope at --rate-hz 100
        (10_000_000, 20_000_000),
        (1_001_001, 1_000_000),  # one ns past the tolerance
        (998_999, 1_000_000),
    ],
)
def test_require_period_refuses_another_period(
    envelope_period_ns: int, loop_period_ns: int
) -> None:
    """A period outside the tolerance raises EnvelopeMismatchError (an EnvelopeError)."""
    assert not period_matches(envelope_period_ns, loop_period_ns)
    with pytest.raises(EnvelopeMismatchError) as info:
        require_period(envelope_with_period(envelope_period_ns), loop_period_ns, where="x")
    assert isinstance(info.value, EnvelopeError)
    (problem,) = info.value.problems
    assert problem.key_path == "timing.period_ns"


def test_require_period_message_says_expected_found_and_how_to_fix() -> None:
    """The refusal names the file, both periods (ns, ms, Hz), what set the loop's, and fixes."""
    with pytest.raises(EnvelopeError) as info:
        require_period(
            envelope_with_period(20_000_000), 10_000_000, where="--rate-hz 100", path="env.json"
        )
    message = str(info.value)
    assert message.startswith("env.json: ")
    assert "expected 10000000 ns (10 ms, 100 Hz) to match --rate-hz 100" in message
    assert "found 20000000 ns (20 ms, 50 Hz)" in message
    assert "tailguard envelope init --period-ms 10" in message
    assert "run the loop at 50 Hz" in message


@pytest.mark.parametrize("period_ns", [0, -1, 1.5, True, "20000000", None, 2**63])
def test_require_period_refuses_a_bad_loop_period(period_ns: Any) -> None:
    """A loop period that is not a positive int64 of ns is a ConfigError, not a mismatch."""
    with pytest.raises(ConfigError, match="period_ns must be a positive integer"):
        require_period(envelope_with_period(20_000_000), period_ns, where="x")


def test_period_tolerance_is_a_tenth_of_a_percent() -> None:
    """The documented tolerance: 0.1 %, far below any two distinct common rates."""
    assert PERIOD_TOLERANCE_PPM == 1_000
    rates_hz = [30, 50, 60, 100, 120, 200, 250, 400, 500, 1000]
    for a in rates_hz:
        for b in rates_hz:
            same = period_matches(Pacer(float(a)).period_ns, Pacer(float(b)).period_ns)
            assert same == (a == b), (a, b)

"""Deployment failure detectors (envelope schema 2): the observation range, saturated,
frozen and chattering actions. Each fires exactly when the rule in
``tailguard.runtime.state`` says, at the tick it says; none fires on a stationary nominal
sequence inside the ranges; a version-1 envelope loads and behaves as before."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tailguard.envelope import SCHEMA_VERSION, envelope_from_dict, load_envelope, save_envelope
from tailguard.envelope.schema import (
    ActionRules,
    ChatterRule,
    Envelope,
    FrozenRule,
    ObservationRange,
    PolicyBinding,
    Recovery,
    SaturationRule,
    Timing,
    Window,
)
from tailguard.errors import EnvelopeError
from tailguard.runtime.guard import Guard
from tailguard.runtime.policy import CallablePolicy, OnnxPolicy
from tailguard.runtime.state import GuardState, Violation

PERIOD = 10_000_000
DETECTORS = {
    Violation.OBS_RANGE,
    Violation.ACTION_SATURATION,
    Violation.ACTION_FROZEN,
    Violation.ACTION_CHATTER,
}


class Clock:
    """One period per tick, no time within a tick (no timing violation can occur)."""

    def __init__(self) -> None:
        self.now = 1_000_000_000

    def __call__(self) -> int:
        return self.now


def envelope(obs_size: int = 3, action_size: int = 2, **kwargs) -> Envelope:
    return Envelope(
        PolicyBinding(None, obs_size, action_size, (-1.0,) * action_size, (1.0,) * action_size),
        Timing(PERIOD),
        window=kwargs.pop("window", Window(ticks=20, check_every_ticks=5)),
        **kwargs,
    )


def run(
    env: Envelope,
    actions: Callable[[int], np.ndarray],
    observations: Callable[[int], np.ndarray],
    ticks: int,
    policy=None,
) -> tuple[Guard, list, list[GuardState]]:
    """Run ``ticks`` ticks; the policy's action on tick t is ``actions(t)``."""
    count = [0]

    def fn(obs: np.ndarray) -> np.ndarray:
        count[0] += 1
        return actions(count[0])

    a, o = env.policy.action_size, env.policy.obs_size
    records: list = []
    clock = Clock()
    g = Guard(policy or CallablePolicy(fn, o, a), env, clock=clock, recorder=records)
    states = []
    for t in range(1, ticks + 1):
        clock.now += PERIOD
        g.step(np.asarray(observations(t), dtype=np.float32))
        states.append(g.state)
    return g, records, states


def fired(records: list, violation: Violation) -> list[int]:
    return [
        r.tick for r in records if r.kind == "violation" and r.fields["kind"] == violation.value
    ]


def moving_obs(t: int) -> np.ndarray:
    return np.array([0.01 * t % 1.0, 0.5, -0.5])


# ------------------------------------------------------------------ the window rules --
def test_saturation_fires_when_more_than_the_fraction_of_samples_sit_at_a_bound() -> None:
    """Samples at ticks 5, 10, ...; window 20 ticks = 4 samples. The action sits at its
    upper bound from tick 30: 1/4 at 30, 2/4 at 35 (not above 0.5), 3/4 at tick 40."""
    env = envelope(action_rules=ActionRules(saturation=SaturationRule(fraction=0.5, margin=0.01)))

    def actions(t: int) -> np.ndarray:
        return np.array([0.2, 0.995 if t >= 30 else 0.3])  # within 1 % of the bound

    g, records, states = run(env, actions, moving_obs, 60)
    assert fired(records, Violation.ACTION_SATURATION) == [40]  # counted once per episode
    assert set(states) == {GuardState.NOMINAL}  # default response: log
    assert g.stats()["violations"]["action_saturation"] == 1


def test_frozen_fires_after_the_ticks_while_the_observation_moves() -> None:
    """The action stops changing at tick 23; the run starts at the sample of tick 25 and
    is 15 >= 12 ticks long at tick 40 (the observation moved 0.15 > 0.1): FALLBACK."""
    env = envelope(
        action_rules=ActionRules(frozen=FrozenRule(ticks=12, epsilon=1e-3, obs_delta=0.1)),
        recovery=Recovery(recovery_ticks=3, dwell_ns=0),
    )

    def actions(t: int) -> np.ndarray:
        return np.array([0.3, 0.3]) if 23 <= t <= 60 else np.array([0.1 * math.sin(t), 0.0])

    _, records, states = run(env, actions, moving_obs, 80)
    assert fired(records, Violation.ACTION_FROZEN) == [40]
    assert states[39] is GuardState.FALLBACK and states[38] is GuardState.NOMINAL
    # still frozen (the policy runs in FALLBACK): no recovery until the sample of tick 65
    assert all(s is GuardState.FALLBACK for s in states[39:64])
    assert states[-1] is GuardState.NOMINAL


def test_frozen_does_not_fire_while_the_observation_stands_still() -> None:
    env = envelope(action_rules=ActionRules(frozen=FrozenRule(ticks=12, obs_delta=0.1)))
    _, records, _ = run(env, lambda t: np.array([0.3, 0.3]), lambda t: np.zeros(3), 100)
    assert fired(records, Violation.ACTION_FROZEN) == []


def test_chatter_fires_on_sign_flips_above_min_delta() -> None:
    """A slow ramp (changes below min_delta) until tick 30, then +-0.5 tick after tick:
    each check tick's sample (ticks t-2, t-1, t) flips from tick 35; 3/4 > 0.5 at 45."""
    env = envelope(action_rules=ActionRules(chatter=ChatterRule(fraction=0.5, min_delta=0.01)))

    def actions(t: int) -> np.ndarray:
        if t <= 30:
            return np.array([0.001 * t, 0.0])
        return np.array([0.5 if t % 2 else -0.5, 0.0])

    _, records, states = run(env, actions, moving_obs, 70)
    assert fired(records, Violation.ACTION_CHATTER) == [45]
    assert set(states) == {GuardState.NOMINAL}


def test_chatter_is_judged_on_the_policy_while_in_fallback() -> None:
    """With response fallback: the policy chatters from tick 31, FALLBACK at tick 45; the
    policy still chatters (its own output is sampled, two probes per check, though the
    fallback's actions are applied) until tick 70; 2/4 samples at tick 80 clear the rule,
    and after 3 clean ticks (80, 81, 82) the guard recovers."""
    env = envelope(
        action_rules=ActionRules(chatter=ChatterRule(fraction=0.5, min_delta=0.01)),
        responses={"action_chatter": "fallback"},
        recovery=Recovery(recovery_ticks=3, dwell_ns=0),
    )

    def actions(t: int) -> np.ndarray:
        if t <= 30 or t > 70:
            return np.array([0.001 * t, 0.0])
        return np.array([0.5 if t % 2 else -0.5, 0.0])

    _, records, states = run(env, actions, moving_obs, 100)
    assert fired(records, Violation.ACTION_CHATTER) == [45]
    changes = [(r.tick, r.fields["to"]) for r in records if r.kind == "state"]
    assert changes == [(45, "fallback"), (82, "nominal")]
    assert states[43] is GuardState.NOMINAL and states[-1] is GuardState.NOMINAL


def test_noise_below_min_delta_is_not_chatter() -> None:
    env = envelope(action_rules=ActionRules(chatter=ChatterRule(fraction=0.1, min_delta=0.01)))
    _, records, _ = run(env, lambda t: np.array([0.005 * (-1) ** t, 0.0]), moving_obs, 100)
    assert fired(records, Violation.ACTION_CHATTER) == []


def test_window_rules_are_judged_again_after_reset() -> None:
    """reset() forgets the samples: the window must fill again before a verdict."""
    env = envelope(action_rules=ActionRules(saturation=SaturationRule(fraction=0.5)))
    records: list = []
    clock = Clock()
    g = Guard(
        CallablePolicy(lambda o: np.array([1.0, 0.0]), 3, 2), env, clock=clock, recorder=records
    )
    for t in range(1, 101):
        clock.now += PERIOD
        if t == 51:
            g.reset()
        g.step(moving_obs(t).astype(np.float32))
    # full at 20 (samples 5..20, all saturated); after the reset before tick 51 the
    # window holds 20 ticks again at tick 70
    assert fired(records, Violation.ACTION_SATURATION) == [20, 70]


def test_plain_path_is_kept_on_nominal_ticks_with_rules_on() -> None:
    """Between samples a nominal tick takes step()'s plain path: the rules cost it nothing."""
    env = envelope(
        observations=ObservationRange((-2.0,) * 3, (2.0,) * 3),
        action_rules=ActionRules(
            saturation=SaturationRule(0.5), frozen=FrozenRule(50), chatter=ChatterRule(0.5)
        ),
    )
    g, records, _ = run(env, lambda t: np.array([0.1 * math.sin(t / 7), 0.0]), moving_obs, 41)
    assert not g._general and records == []
    assert g._next_due == 44  # the next probe: the tick before the check tick 45


# ------------------------------------------------------------------ the observation range --
def _range_sequence(t: int) -> np.ndarray:
    obs = np.full(4, 0.5)
    if t == 10:
        obs[2] = 1.15  # beyond high = 1 but within the tolerance (0.1 * width 2 = 0.2)
    if t == 11:
        obs[2] = 1.3
    if t == 12:
        obs[1] = -1.25
    if t == 13:
        obs[0] = np.nan
    return obs


@pytest.mark.parametrize("kind", ["onnx", "onnx_reference", "callable"])
def test_observation_range_fires_beyond_the_tolerance(kind: str, tmp_path: Path) -> None:
    """obs_range on ticks 11 and 12 only (10 is within the tolerance, 13 is non-finite),
    answered by the fallback (its default), with the ONNX check graph, the numpy
    reference and a callable policy alike."""
    tg_models = pytest.importorskip("tg_models")
    env = envelope(
        4,
        2,
        observations=ObservationRange((-1.0,) * 4, (1.0,) * 4, tolerance=0.1),
        recovery=Recovery(recovery_ticks=2, dwell_ns=0),
    )
    policy = None
    if kind != "callable":
        path = tg_models.build_mlp(tmp_path / "m.onnx", sizes=(4, 8, 2), act="Tanh")
        policy = OnnxPolicy(path, fast_checks=kind == "onnx")
    g, records, states = run(
        env, lambda t: np.array([0.0, 0.0]), _range_sequence, 20, policy=policy
    )
    assert g.policy.checks_observation and g._obs_test is False
    assert fired(records, Violation.OBS_RANGE) == [11, 12]
    assert fired(records, Violation.OBS_NONFINITE) == [13]
    assert states[9] is GuardState.NOMINAL and states[10] is GuardState.FALLBACK
    assert states[-1] is GuardState.NOMINAL


def test_range_check_graph_matches_the_numpy_reference(tmp_path: Path) -> None:
    """The Sub nodes write the same bits as the reference, in range and out of it."""
    tg_models = pytest.importorskip("tg_models")
    path = tg_models.build_mlp(tmp_path / "m.onnx", sizes=(5, 8, 3))
    fast, ref = OnnxPolicy(path), OnnxPolicy(path, fast_checks=False)
    low, high = np.linspace(-1, 0, 5), np.linspace(0.5, 2, 5)
    for p in (fast, ref):
        p.set_observation_range(low, high)
        p.set_limits([-1] * 3, [1] * 3, [0.5] * 3)
    rng = np.random.default_rng(0)
    for i in range(20):
        obs = rng.uniform(-2, 3, 5).astype(np.float32)
        for p in (fast, ref):
            p.buffers.obs[:] = obs
            p.run_slot(i & 1)
        np.testing.assert_array_equal(fast._chk.view(np.uint32), ref._chk.view(np.uint32))
        assert fast.observation_outside() == bool(((obs < low) | (obs > high)).any())
    fast.set_observation_range(None, None)  # back to the plain check vector
    assert fast.obs_range is None and fast._chk.shape == (2, 5 + 12 * 3)


# ------------------------------------------------------------------ stationary: none fires --
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    obs_size=st.integers(1, 4),
    center=st.floats(-0.4, 0.4),
    amplitude=st.floats(0.0, 0.5),
    period=st.integers(16, 400),
    phase=st.floats(0.0, 6.3),
    every=st.sampled_from([1, 2, 5, 10]),
)
def test_no_detector_fires_on_a_stationary_nominal_sequence(
    obs_size: int, center: float, amplitude: float, period: int, phase: float, every: int
) -> None:
    """A slow stationary signal inside the range, a policy that follows it smoothly and
    stays clear of its bounds: no detector fires, whatever the sampling cadence."""
    env = envelope(
        obs_size,
        2,
        window=Window(ticks=40, check_every_ticks=every),
        observations=ObservationRange((-1.0,) * obs_size, (1.0,) * obs_size),
        action_rules=ActionRules(
            saturation=SaturationRule(fraction=0.2, margin=0.02),
            frozen=FrozenRule(ticks=30, epsilon=1e-4, obs_delta=0.05),
            chatter=ChatterRule(fraction=0.5, min_delta=1e-3),
        ),
    )

    def observations(t: int) -> np.ndarray:
        return np.full(obs_size, center + amplitude * math.sin(2 * math.pi * t / period + phase))

    def policy(obs: np.ndarray) -> np.ndarray:
        a = 0.45 * math.tanh(float(obs.mean()))
        return np.array([a, -a])

    records: list = []
    clock = Clock()
    g = Guard(CallablePolicy(policy, obs_size, 2), env, clock=clock, recorder=records)
    for t in range(1, 301):
        clock.now += PERIOD
        g.step(observations(t).astype(np.float32))
    assert [r for r in records if r.kind == "violation"] == []
    assert g.state is GuardState.NOMINAL


# ------------------------------------------------------------------ schema --
def _v1_dict() -> dict:
    return {
        "schema_version": 1,
        "policy": {
            "sha256": None,
            "obs_size": 3,
            "action_size": 2,
            "action_low": [-1, -1],
            "action_high": [1, 1],
        },
        "timing": {"period_ns": PERIOD, "max_consecutive_overruns": 3},
        "window": {"ticks": 20, "check_every_ticks": 5},
        "responses": {"obs_nonfinite": "fallback"},
    }


def test_a_version_1_file_loads_migrated_and_behaves_as_before(tmp_path: Path) -> None:
    """A version-1 envelope has no range and no rules: the policy's check vector keeps its
    version-1 layout, and observations far outside anything, pinned, frozen or chattering
    actions change nothing; it is written back as the current version, unchanged else."""
    path = tmp_path / "v1.json"
    path.write_text(json.dumps(_v1_dict()))
    env = load_envelope(path)
    assert env.schema_version == SCHEMA_VERSION == 2
    assert env.observations is None and not env.action_rules.any
    g, records, states = run(
        env,
        lambda t: np.array([1.0, 1.0]) if t < 50 else np.array([(-1.0) ** t, 0.0]),
        lambda t: np.full(3, 1e6 * t),
        100,
    )
    assert records == [] and set(states) == {GuardState.NOMINAL}
    assert g.policy.obs_range is None and g._action_rules is None
    assert g.policy._chk.shape == (2, 3 + 12 * 2)
    save_envelope(env, tmp_path / "out.json")
    written = json.loads((tmp_path / "out.json").read_text())
    assert written["schema_version"] == 2
    assert "observations" not in written and "action_rules" not in written
    assert load_envelope(tmp_path / "out.json") == env


def test_version_2_sections_round_trip() -> None:
    env = envelope(
        observations=ObservationRange((0.0, -1.0, 2.0), (1.0, 1.0, 2.0), tolerance=0.2),
        action_rules=ActionRules(
            saturation=SaturationRule(0.3, 0.05),
            frozen=FrozenRule(100, 1e-5, 0.2),
            chatter=ChatterRule(0.4, 0.01),
        ),
    )
    data = json.loads(json.dumps(env.to_dict()))
    assert data["observations"]["tolerance"] == 0.2
    assert data["action_rules"]["frozen"] == {"ticks": 100, "epsilon": 1e-5, "obs_delta": 0.2}
    assert envelope_from_dict(data) == env
    assert env.observations is not None
    low, high = env.observations.limits()
    assert low == pytest.approx((-0.2, -1.4, 2.0)) and high == pytest.approx((1.2, 1.4, 2.0))


def test_version_2_sections_in_a_version_1_file_are_refused() -> None:
    data = _v1_dict()
    data["observations"] = {"low": [0, 0, 0], "high": [1, 1, 1]}
    data["action_rules"] = {"chatter": {"fraction": 0.5}}
    with pytest.raises(EnvelopeError) as info:
        envelope_from_dict(data)
    assert [p.key_path for p in info.value.problems] == ["observations", "action_rules"]
    assert all("schema_version 2" in p.hint for p in info.value.problems)


def test_every_problem_of_the_new_sections_at_once() -> None:
    data = _v1_dict()
    data["schema_version"] = 2
    data["policy"]["action_low"] = data["policy"]["action_high"] = None
    data["observations"] = {"low": [0, 0], "high": [1, -1], "tolerance": -0.1}
    data["action_rules"] = {
        "saturation": {"fraction": 1.0, "margn": 0.1},
        "frozen": {"ticks": 1, "obs_delta": 0},
        "chatter": {"min_delta": "big"},
    }
    with pytest.raises(EnvelopeError) as info:
        envelope_from_dict(data)
    paths = [p.key_path for p in info.value.problems]
    assert paths == [
        "observations.tolerance",
        "observations.high[1]",
        "action_rules.saturation.margn",
        "action_rules.saturation.fraction",
        "action_rules.frozen.ticks",
        "action_rules.frozen.obs_delta",
        "action_rules.chatter.fraction",
        "action_rules.chatter.min_delta",
    ]
    assert "did you mean 'margin'" in info.value.problems[2].hint
    # cross-section rules, once the sections themselves are valid
    data["observations"] = {"low": [0, 0], "high": [1, 1]}
    data["action_rules"] = {"saturation": {"fraction": 0.5}, "frozen": None}
    with pytest.raises(EnvelopeError) as info:
        envelope_from_dict(data)
    assert [p.key_path for p in info.value.problems] == [
        "observations.low",
        "action_rules.saturation",
    ]


def test_default_responses_of_the_detectors() -> None:
    env = envelope()
    assert env.responses[Violation.OBS_RANGE].value == "fallback"
    assert env.responses[Violation.ACTION_FROZEN].value == "fallback"
    assert env.responses[Violation.ACTION_SATURATION].value == "log"
    assert env.responses[Violation.ACTION_CHATTER].value == "log"
    assert (
        dataclasses.replace(env, responses={"action_chatter": "latch"})
        .responses[Violation.ACTION_CHATTER]
        .value
        == "latch"
    )
    with pytest.raises(EnvelopeError, match="clip"):
        env.with_responses({"obs_range": "clip"})

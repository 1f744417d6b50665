"""The failure detectors in the audit: thresholds derived from nominal episodes, the
false-alarm rate on held-out nominal episodes, per-condition firing, and certify's
distribution-shift check (a real Guard and a real ONNX policy replay the observations)."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tailguard.audit.derive import _detector_sections
from tailguard.audit.detectors import MAX_FALSE_ALARM, OBS_QUANTILE, derive_detectors
from tailguard.audit.shift import distribution_shift
from tailguard.audit.units import EpisodeOutcome
from tailguard.envelope.schema import (
    Envelope,
    ObservationRange,
    PolicyBinding,
    Timing,
    Window,
)
from tailguard.runtime.onnx_build import write_mlp

WINDOW, EVERY = 50, 5


def episode(i: int, obs: np.ndarray, acts: np.ndarray) -> EpisodeOutcome:
    n = len(obs)
    z = np.zeros(n, np.int64)
    return EpisodeOutcome(
        episode=i,
        ret=0.0,
        length=n,
        fell=False,
        faults=0,
        latency_ns=z,
        dt_ns=z[1:],
        obs_age_ns=z,
        max_abs_daction=np.zeros(acts.shape[1]),
        max_norm_daction=0.0,
        max_norm_d2action=0.0,
        max_overrun_streak=0,
        observations=obs.astype(np.float32),
        actions=acts.astype(np.float32),
    )


def nominal_episode(i: int, n: int = 600, shift: float = 0.0) -> EpisodeOutcome:
    rng = np.random.default_rng(i)
    t = np.arange(n)[:, None]
    obs = 0.6 * np.sin(2 * math.pi * t / (80 + 7 * i) + np.arange(4)) + 0.02 * rng.standard_normal(
        (n, 4)
    )
    acts = 0.5 * np.tanh(obs[:, :2] + obs[:, 2:])
    return episode(i, obs + shift, acts)


def condition(name: str, episodes: list[EpisodeOutcome]) -> SimpleNamespace:
    return SimpleNamespace(
        condition=SimpleNamespace(name=name, is_nominal=name == "nominal"), episodes=episodes
    )


def derive(results):
    return derive_detectors(
        results, window=WINDOW, every=EVERY, action_low=[-1, -1], action_high=[1, 1]
    )


def test_derived_ranges_and_rules_hold_nominal_and_catch_shifts() -> None:
    nominal = [nominal_episode(i) for i in range(8)]
    shifted = [nominal_episode(i, shift=2.0) for i in range(8, 10)]
    frozen = nominal_episode(10)
    assert frozen.actions is not None
    frozen.actions[300:] = frozen.actions[300]  # the policy stops reacting
    derived, record = derive(
        [
            condition("nominal", nominal),
            condition("shifted", shifted),
            condition("frozen", [frozen]),
        ]
    )
    assert derived is not None
    obs = np.concatenate([e.observations for e in nominal])
    assert np.all(np.asarray(derived["observations"]["low"]) < np.quantile(obs, 0.001, axis=0))
    assert np.all(np.asarray(derived["observations"]["high"]) > np.quantile(obs, 0.999, axis=0))
    assert record["observation_quantile"] == OBS_QUANTILE and record["observation_margin"] > 0
    assert set(derived["action_rules"]) == {"saturation", "frozen", "chatter"}
    # false alarms under nominal timing, on episodes the thresholds were not derived from
    assert record["nominal_held_out"]["ticks"] == 4 * 600
    assert record["nominal_false_alarm_rate"] < MAX_FALSE_ALARM and record["false_alarm_ok"]
    per = record["per_condition"]
    assert per["shifted"]["obs_range"]["rate"] > 0.9
    assert per["frozen"]["action_frozen"]["episodes"] == 1
    assert per["nominal"]["any"]["ticks"] == 0
    # the data builds the envelope's sections
    env = Envelope(
        PolicyBinding(None, 4, 2, (-1.0, -1.0), (1.0, 1.0)),
        Timing(20_000_000),
        window=Window(WINDOW, EVERY),
        **_detector_sections(derived),
    )
    assert env.observations is not None and env.action_rules.frozen is not None


def test_the_range_covers_the_tolerated_conditions_not_the_others() -> None:
    """A tolerated condition that moves the robot a little further than nominal timing
    does (here: observations offset by 0.3) is inside the range; a condition outside the
    envelope (offset 2) still fires, and the action rules stay those of nominal episodes."""
    nominal = [nominal_episode(i) for i in range(8)]
    wider = condition("tolerated", [nominal_episode(i, shift=0.3) for i in range(8, 14)])
    outside = condition("outside", [nominal_episode(i, shift=2.0) for i in range(14, 16)])
    results = [condition("nominal", nominal), wider, outside]
    alone, _ = derive(results)
    derived, record = derive_detectors(
        results,
        window=WINDOW,
        every=EVERY,
        action_low=[-1, -1],
        action_high=[1, 1],
        in_envelope=[results[0], wider],
    )
    assert alone is not None and derived is not None
    assert record["observation_range_from"] == ["nominal", "tolerated"]
    per = record["per_condition"]
    assert per["tolerated"]["obs_range"]["rate"] == 0.0
    assert per["outside"]["obs_range"]["rate"] > 0.9
    assert np.all(np.asarray(derived["observations"]["high"]) > alone["observations"]["high"])
    rules, base = derived["action_rules"], alone["action_rules"]
    assert (rules["saturation"], rules["chatter"]) == (base["saturation"], base["chatter"])
    # the frozen rule's obs_delta is a share of the range's width, so it widens with it
    assert rules["frozen"]["ticks"] == base["frozen"]["ticks"]
    assert rules["frozen"]["epsilon"] == base["frozen"]["epsilon"]


def test_a_policy_that_saturates_nominally_gets_no_saturation_rule() -> None:
    eps = []
    for i in range(4):
        e = nominal_episode(i)
        assert e.actions is not None
        e.actions[:] = np.sign(e.actions)  # bang-bang
        eps.append(e)
    derived, record = derive([condition("nominal", eps)])
    assert derived is not None and "saturation" not in derived["action_rules"]
    assert any("saturation rule is left off" in n for n in record["notes"])


def test_no_traced_episodes_no_detectors() -> None:
    e = nominal_episode(0)
    e.observations = None
    derived, record = derive([condition("nominal", [e])])
    assert derived is None and record["notes"]


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    return write_mlp(tmp_path / "p.onnx", (4, 8, 2), seed=3)


def _env(low, high) -> Envelope:
    return Envelope(
        PolicyBinding(None, 4, 2, (-10.0, -10.0), (10.0, 10.0)),
        Timing(20_000_000),
        observations=ObservationRange(tuple(low), tuple(high)),
    )


def test_distribution_shift_check_passes_with_the_derived_range(policy: Path) -> None:
    eps = [nominal_episode(i, n=200) for i in range(3)]
    derived, _ = derive([condition("nominal", [nominal_episode(i) for i in range(6)])])
    assert derived is not None
    obs = derived["observations"]
    status, detail, numbers = distribution_shift(_env(obs["low"], obs["high"]), str(policy), eps)
    assert status == "pass", detail
    for name in ("offset_all", "offset_one", "scaled"):
        assert numbers["shifts"][name]["detected"] == 3
    assert numbers["shifts"]["offset_all"]["delays"] == [0, 0, 0]
    assert numbers["unshifted_obs_range_ticks"] == 0


def test_distribution_shift_check_fails_on_a_range_the_nominal_run_leaves(policy: Path) -> None:
    eps = [nominal_episode(i, n=200) for i in range(2)]
    status, detail, _ = distribution_shift(_env([-0.1] * 4, [0.1] * 4), str(policy), eps)
    assert status == "fail" and "unshifted" in detail


def test_distribution_shift_check_warns_without_a_range(policy: Path) -> None:
    env = Envelope(PolicyBinding(None, 4, 2), Timing(20_000_000))
    status, detail, _ = distribution_shift(env, str(policy), [nominal_episode(0, n=50)])
    assert status == "warn" and "no observation range" in detail


def test_episodes_the_policy_fails_on_its_own_are_not_false_alarms(policy: Path) -> None:
    """Leaving the audited range before an unguarded fall is a detection: the shift check's
    unshifted count and certify's false-alarm totals leave such episodes out (listed)."""
    from tailguard.audit.certification import _guard_totals

    fell = nominal_episode(1, n=200, shift=0.5)  # strays out of the range below
    fell.fell = True
    ok = nominal_episode(2, n=200)
    status, _, numbers = distribution_shift(_env([-0.7] * 4, [0.7] * 4), str(policy), [fell, ok])
    assert status == "pass"
    assert numbers["unshifted_ticks"] == 200 and numbers["own_failure_obs_range_ticks"][0] > 0
    fell.guard = {"interventions": 30, "violations": {"obs_range": 30}}
    ok.guard = {"interventions": 0, "violations": {}}
    totals = _guard_totals(SimpleNamespace(episodes=[fell, ok]), frozenset({1}))
    assert totals["intervention_fraction"] == 0.0 and totals["ticks"] == 200
    assert totals["left_out_episodes"] == [1]
    assert totals["left_out_violations"] == [{"obs_range": 30}]

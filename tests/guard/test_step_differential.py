"""step()'s plain path against the general path: same actions, states, records, counters.

The same random tick script (observation kinds, timestamps, latencies, periods, actions,
commands, resets) runs through two guards on simulated clocks: one as shipped (nominal
ticks take step()'s inlined plain path), one forced through the general path on every
tick (``Guard._plain_path = False``, the reference). Everything observable must agree.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from test_core import MS, PERIOD, make_env
from tg_models import FakeClock

from tailguard import CallablePolicy, Guard
from tailguard.envelope.model import Recovery, Thresholds, Window
from tailguard.runtime.state import ALLOWED_RESPONSES, Response, Violation


class Sink:
    """A telemetry stand-in: keeps every record and reads the guard's tick ring."""

    def __init__(self) -> None:
        self.ring: Any = None
        self.records: list[tuple] = []

    def attach(self, guard: Guard) -> None:
        self.ring = guard.tick_ring

    def append(self, record: tuple) -> None:
        self.records.append(tuple(record))

    def close(self) -> None:
        pass


_OBS = {
    "np32": lambda: np.full(4, 0.25, np.float32),
    "np64": lambda: np.full(4, 0.25),
    "list": lambda: [0.25] * 4,
    "tuple": lambda: (0.25,) * 4,
    "row": lambda: np.full((1, 4), 0.25),
    "nan": lambda: np.array([0.0, np.nan, 0.0, 0.0]),
    "nan_list": lambda: [0.0, float("inf"), 0.0, 0.0],
    "short": lambda: np.zeros(3),
    "column": lambda: np.zeros((4, 1)),
    "text": lambda: "obs",
    "none": lambda: None,
}
_ACTIONS = {
    "ok": [0.1, -0.1],
    "ok2": [0.3, 0.2],
    "big": [3.0, -0.2],
    "jump": [0.9, -0.9],
    "nan": [np.nan, 0.0],
    "raise": None,
}
_TS = ["none", "fresh", "stale", "ahead", "text", "nan", "inf"]
_FAST_LAT = [1 * MS] * 6 + [int(0.5 * MS)]
_LAT = st.sampled_from([*_FAST_LAT, 3 * MS, 4 * MS, 6 * MS, 9 * MS, 11 * MS, 12 * MS])
_GAP = st.sampled_from([PERIOD] * 8 + [13 * MS, 21 * MS, 35 * MS])

_TICK = st.tuples(
    st.sampled_from(list(_OBS)).filter(lambda k: True),
    _LAT,
    _GAP,
    st.sampled_from(_TS),
    st.sampled_from(list(_ACTIONS)),
    st.sampled_from(["-"] * 40 + ["trip", "reset", "request_reset", "g.reset"]),
)
_NOMINAL_TICK = st.tuples(
    st.sampled_from(["np32", "np64", "list", "row"]),
    st.sampled_from(_FAST_LAT),
    st.just(PERIOD),
    st.sampled_from(["none", "fresh"]),
    st.sampled_from(["ok", "ok2"]),
    st.just("-"),
)
_SCRIPT = st.lists(st.one_of(_NOMINAL_TICK, _NOMINAL_TICK, _TICK), min_size=1, max_size=150)

_OVERRIDABLE = [
    Violation.LATENCY_MAX,
    Violation.OBS_NONFINITE,
    Violation.OBS_SHAPE,
    Violation.OBS_AGE,
    Violation.ACTION_BOUNDS,
    Violation.ACTION_RATE,
    Violation.DT_MAX,
    Violation.LATENCY_P99,
    Violation.HOLD_LIMIT,
]


@st.composite
def _configs(draw) -> dict[str, Any]:
    responses = {}
    for v in draw(st.lists(st.sampled_from(_OVERRIDABLE), max_size=4, unique=True)):
        allowed = sorted(ALLOWED_RESPONSES[v], key=lambda r: r.severity)
        responses[v] = draw(st.sampled_from(allowed))
    ticks = draw(st.integers(10, 25))
    return {
        "lat": draw(
            st.sampled_from(
                [
                    Thresholds(max_ns=8 * MS),
                    Thresholds(p99_ns=3 * MS, max_ns=8 * MS),
                    Thresholds(p50_ns=2 * MS, p95_ns=5 * MS, p99_ns=7 * MS, max_ns=10 * MS),
                ]
            )
        ),
        "dt": draw(
            st.sampled_from(
                [
                    Thresholds(max_ns=3 * PERIOD),
                    Thresholds(p95_ns=12 * MS, p99_ns=20 * MS, max_ns=3 * PERIOD),
                ]
            )
        ),
        "window": Window(ticks=ticks, check_every_ticks=draw(st.integers(1, 5))),
        "overruns": draw(st.sampled_from([None, 1, 2])),
        "age": draw(st.sampled_from([None, 5 * MS])),
        "max_delta": draw(st.sampled_from([None, 0.3])),
        "recovery": Recovery(
            recovery_ticks=draw(st.integers(1, 4)),
            dwell_ns=draw(st.sampled_from([0, 30 * MS])),
            max_hold_ticks=draw(st.integers(1, 3)),
        ),
        "responses": responses or None,
        "safe_action": draw(st.sampled_from(["hold", "zero"])),
        "fallback": draw(st.sampled_from(["hold", "zero", "callable", "nan_callable"])),
        "checks_observation": draw(st.booleans()),
    }


def _simulate(script, config: dict[str, Any], *, plain: bool) -> dict[str, Any]:
    """Run ``script`` through a fresh guard; everything observable, tick by tick."""
    config = dict(config)
    fb_kind = config.pop("fallback")
    obs_in_check = config.pop("checks_observation", True)
    clock = FakeClock(start_ns=10**12)
    mode = {"action": "ok", "latency_ns": 1 * MS}

    def policy(obs):
        clock.advance(mode["latency_ns"])
        action = _ACTIONS[mode["action"]]
        if action is None:
            raise RuntimeError("policy failed")
        return action

    fallback = {
        "hold": "hold",
        "zero": "zero",
        "callable": lambda o: np.tanh(np.asarray(o[:2]) * 4.0),
        "nan_callable": lambda o: [np.nan, 0.0],
    }[fb_kind]
    sink = Sink()
    main = CallablePolicy(policy, 4, 2)
    if main.checks_observation != obs_in_check:  # both kinds of policy, one guard
        main._init_buffers(4, 2, checks_observation=obs_in_check)
    g = Guard(
        main,
        make_env(**config),
        fallback=fallback,
        clock=clock,
        telemetry=sink,
    )
    g._plain_path = plain
    g._set_fast(g._fast)
    out: dict[str, list] = {"actions": [], "states": [], "plain_ticks": []}
    for obs_kind, latency_ns, gap_ns, ts_kind, action_kind, command in script:
        if command == "trip":
            g.request_trip("script")
        elif command == "request_reset":
            g.request_reset("script")
        elif command == "g.reset":
            g.reset()
        mode["action"], mode["latency_ns"] = action_kind, latency_ns
        start = clock.now_ns
        ts = {
            "none": None,
            "fresh": start - 1 * MS,
            "stale": start - 6 * MS,
            "ahead": start + 1 * MS,
            "text": "123",
            "nan": float("nan"),
            "inf": float("inf"),
        }[ts_kind]
        out["plain_ticks"].append(not g._general)
        action = g.step(_OBS[obs_kind](), obs_timestamp_ns=ts)
        out["actions"].append(action.tobytes())
        out["states"].append(g.state)
        clock.now_ns = start + gap_ns
    stats = g.stats()
    batch = sink.ring.read()
    g.close()
    return {
        "actions": out["actions"],
        "states": out["states"],
        "records": sink.records,
        "stats": stats,
        "flags": [] if batch is None else batch.flags.tolist(),
        "ring_dt": [] if batch is None else batch.dt_ns.tolist(),
        "ring_latency": [] if batch is None else batch.latency_ns.tolist(),
        "streaks": (g._hold_streak, g._clean_streak, g._overruns),
        "plain_ticks": sum(out["plain_ticks"]),
    }


def _assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    for key in ("states", "actions", "records", "stats", "flags", "ring_dt", "ring_latency"):
        assert a[key] == b[key], key
    assert a["streaks"] == b["streaks"]


@settings(max_examples=250)
@given(script=_SCRIPT, config=_configs())
def test_plain_and_general_paths_agree(script, config) -> None:
    """Any tick script gives identical actions, states, records, ring contents and stats
    through step()'s plain path and through the general path."""
    plain = _simulate(script, config, plain=True)
    general = _simulate(script, config, plain=False)
    assert general["plain_ticks"] == 0
    _assert_same(plain, general)


def test_both_kinds_of_policy_are_compared() -> None:
    """The script runs a policy that tests the observation in its check vector and one
    that leaves it to the guard; a NaN observation is obs_nonfinite with either."""
    script = [("np32", 1 * MS, PERIOD, "none", "ok", "-")] * 3
    script += [("nan", 1 * MS, PERIOD, "none", "ok", "-"), *script]
    results = []
    for obs_in_check in (True, False):
        config = {"fallback": "hold", "checks_observation": obs_in_check}
        plain = _simulate(script, config, plain=True)
        _assert_same(plain, _simulate(script, config, plain=False))
        assert plain["stats"]["violations"]["obs_nonfinite"] == 1
        results.append(plain)
    _assert_same(results[0], results[1])


def test_the_comparison_exercises_the_plain_path() -> None:
    """A nominal script with a percentile tail takes the plain path on most ticks, and the
    two paths still agree (the differential test is not comparing the general path with
    itself)."""
    script = [("list" if k % 3 else "np64", 1 * MS, PERIOD, "fresh", "ok", "-") for k in range(300)]
    for k in (120, 150):
        script[k] = ("np32", 6 * MS, PERIOD, "none", "ok", "-")
    config = {
        "lat": Thresholds(p99_ns=5 * MS, max_ns=8 * MS),
        "window": Window(ticks=100, check_every_ticks=10),
        "age": 5 * MS,
        "fallback": "zero",
    }
    plain = _simulate(script, config, plain=True)
    general = _simulate(script, config, plain=False)
    assert plain["plain_ticks"] > 200
    _assert_same(plain, general)
    assert plain["stats"]["violations"]["latency_p99"] == 1


def test_log_response_on_actions_applies_them_unclipped() -> None:
    """Response log on action_bounds / action_rate counts the violation and applies the
    policy's action as it is, on both paths."""
    script = [
        ("np32", 1 * MS, PERIOD, "none", "ok", "-"),
        ("np32", 1 * MS, PERIOD, "none", "big", "-"),
    ]
    config = {
        "responses": {Violation.ACTION_BOUNDS: Response.LOG, Violation.ACTION_RATE: Response.LOG},
        "max_delta": 0.3,
        "fallback": "hold",
    }
    plain = _simulate(script, config, plain=True)
    _assert_same(plain, _simulate(script, config, plain=False))
    last = np.frombuffer(plain["actions"][-1], np.float32)
    assert last.tolist() == [3.0, np.float32(-0.2)]
    assert plain["stats"]["violations"]["action_bounds"] == 1
    assert plain["stats"]["violations"]["action_rate"] == 1

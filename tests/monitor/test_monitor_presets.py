"""Monitor presets for timing and the failure detectors: the metrics they read exist and are
computed from the wire, the presets fire on what they say, and a rules file is checked whole
(unknown metrics included)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tg_monitor_util import MS, S, events, msg, ticks

from tailguard.errors import TailguardError
from tailguard.monitor.rules import PRESETS, RuleEngine, load_rules, metric_names
from tailguard.monitor.stats import MonitorState

T0 = 10 * S


def _state(p99_limit: int | None) -> MonitorState:
    st = MonitorState(window_s=10)
    st.ingest(
        msg("hello", 0, period_ns=MS, heartbeat_ns=S // 2, envelope_latency_p99_ns=p99_limit),
        T0,
    )
    return st


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_metric_exists(preset: str) -> None:
    known = set(metric_names())
    assert [r.metric for r in PRESETS[preset] if r.metric not in known] == []
    names = {r.name for r in PRESETS[preset]}
    assert {"latency_p99_envelope", "heartbeat", "message_loss", "ring_overflow"} <= names
    assert {"obs_out_of_range", "action_frozen", "action_saturation", "action_chatter"} <= names


def test_latency_against_the_envelope_and_detector_counts() -> None:
    """latency_p99_envelope is the window p99 over the envelope's p99 (from the hello);
    each violation kind has its rolling-window count."""
    st = _state(200_000)
    st.ingest(ticks(1, 1, [MS] * 100, [300_000] * 100), T0 + S)
    st.ingest(
        events(2, [["violation", 5, 0, {"kind": "obs_range"}]] * 3
               + [["violation", 9, 0, {"kind": "action_frozen"}]]),
        T0 + S,
    )  # fmt: skip
    m = st.metrics(T0 + S)
    assert m["latency_p99_envelope"] == pytest.approx(1.5)
    assert m["obs_range_window"] == 3 and m["action_frozen_window"] == 1
    assert m["action_chatter_window"] == 0
    assert _state(None).metrics(T0)["latency_p99_envelope"] is None  # no limit: no data


def test_default_preset_fires_on_detectors_and_the_envelope_tail() -> None:
    st = _state(200_000)
    st.ingest(ticks(1, 1, [MS] * 100, [300_000] * 100), T0 + S)
    st.ingest(events(2, [["violation", 5, 0, {"kind": "action_frozen"}]]), T0 + S)
    engine = RuleEngine(PRESETS["default"])
    engine.restart(T0)
    fired: dict[str, str] = {}
    for k in range(5):
        now = T0 + 3 * S + k * S // 10
        st.ingest(msg("heartbeat", 3 + k, tick=100, ring_overflow=0, send_dropped=0,
                      events_dropped=0, heartbeat_ns=S // 2, sent=3 + k), now)  # fmt: skip
        fired.update({a["rule"]: a["severity"] for a in engine.evaluate(st.metrics(now), now)})
    assert fired["action_frozen"] == "fail"
    assert fired["latency_p99_envelope"] == "warn"
    assert "obs_out_of_range" not in fired and "heartbeat" not in fired


def test_a_rules_file_reports_every_problem_at_once(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(
        "[[rule]]\nname = 'a'\nmetric = 'obs_range_windw'\nop = '>'\nthreshold = 0\n"
        "[[rule]]\nname = 'b'\nmetric = 'latency_p99_envelope'\nop = '~'\nthreshold = 'x'\n"
        "[[rule]]\nmetric = 'action_frozen_window'\nop = '>'\nthreshold = 0\nseverty = 'fail'\n"
    )
    with pytest.raises(TailguardError) as info:
        load_rules(path)
    text = str(info.value)
    assert "rule[0]: unknown metric 'obs_range_windw'; did you mean 'obs_range_window'?" in text
    assert "rule[1]: unknown op '~'" in text and "rule[1]: 'threshold' must be a number" in text
    assert "rule[2]: unknown key 'severty'" in text and "rule[2]: missing key 'name'" in text
    ok = tmp_path / "ok.toml"
    ok.write_text(
        "[[rule]]\nname = 'f'\nmetric = 'action_frozen_window'\nop = '>'\nthreshold = 0\n"
    )
    assert load_rules(ok)[0].metric == "action_frozen_window"

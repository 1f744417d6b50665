"""Monitor core with injected times: loss, liveness, rules, --once, Prometheus text."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
from tg_monitor_util import MS, S, events, heartbeat, hello, hist, msg, ticks

from tailguard.errors import TailguardError
from tailguard.monitor.alerts import AlertSink
from tailguard.monitor.cli import monitor_command
from tailguard.monitor.prometheus import PrometheusExporter, render_metrics
from tailguard.monitor.recording import RecordingWriter
from tailguard.monitor.rules import PRESETS, RuleEngine, load_rules, parse_rules
from tailguard.monitor.session import Monitor
from tailguard.monitor.stats import MonitorState
from tailguard.sinks.flight_recorder import FlightRecorder

T0 = 10 * S


def test_sequence_gap_counts_lost_messages() -> None:
    """A jump in seq adds the missing count to lost_msgs; the first message sets the base."""
    st = MonitorState()
    st.ingest(hello(100), T0)
    st.ingest(heartbeat(101), T0 + 1)
    st.ingest(heartbeat(105), T0 + 2)
    assert st.lost_msgs == 3


def test_ticks_feed_window_metrics_and_state_time() -> None:
    """Tick batches give window percentiles, tick count and time per state."""
    st = MonitorState(window_s=10)
    st.ingest(hello(0, period_ns=MS), T0)
    st.ingest(ticks(1, 2, [MS] * 100, [100_000] * 99 + [900_000], [0] * 99 + [3]), T0 + S)
    m = st.metrics(T0 + S)
    assert m["latency_max_ns"] == 900_000 and m["latency_p50_ns"] == 100_000
    assert m["dt_p50_period"] == pytest.approx(1.0)
    assert m["latched"] == 1 and st.ticks_seen == 100
    assert st.state_time_ns["nominal"] == 99 * MS


def test_heartbeat_loss_then_resumed_with_gap() -> None:
    """Silence beyond misses x heartbeat raises heartbeat_lost once; the next message resumes."""
    st = MonitorState(heartbeat_misses=3)
    st.ingest(hello(0, heartbeat_ns=S // 2), T0)
    assert st.check_liveness(T0 + S) == []
    lost = st.check_liveness(T0 + 2 * S)
    assert lost and lost[0]["event"] == "heartbeat_lost"
    assert st.check_liveness(T0 + 3 * S) == []
    out = st.ingest(heartbeat(1), T0 + 4 * S)
    assert out[0]["event"] == "resumed" and out[0]["gap_s"] == pytest.approx(4.0)


def test_closing_heartbeat_is_not_a_loss() -> None:
    """A guard that said goodbye (closing heartbeat) raises no heartbeat-loss alert."""
    st = MonitorState()
    st.ingest(heartbeat(0, closing=True), T0)
    assert st.check_liveness(T0 + 100 * S) == []


def test_publisher_reported_gap_on_join() -> None:
    """A (re)started monitor reports the subscriber gap the publisher measured."""
    st = MonitorState()
    out = st.ingest(heartbeat(50, last_gap_ns=2 * S, unobserved=40), T0)
    assert any(e["event"] == "resumed" and e["gap_s"] == 2.0 for e in out)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\xc1", "not msgpack"),
        (b"\x92\x01\x02", "not a map"),
        (msg("hello", 0).replace(b"\xa1v\x01", b"\xa1v\x09"), "version"),
        (msg("bogus", 0), "unknown type"),
        (
            msg("ticks", 0, first_tick=1, n=5, dt_ns=b"", latency_ns=b"", flags=b"", lost=0),
            "tick arrays of the wrong length",
        ),
        (msg("events", 0, events=[[1, 2, 3]], dropped=0), "bad event"),
        (msg("heartbeat", 0, tick="x"), "bad field tick"),
    ],
)
def test_malformed_messages_counted(data: bytes, reason: str) -> None:
    """Each malformed message is refused with its reason and counted, never raised."""
    st = MonitorState()
    assert st.ingest(data, T0) == []
    assert st.received == 0
    if reason == "version":
        assert (st.unknown_version, st.malformed) == (1, 0)
    else:
        assert (st.unknown_version, st.malformed) == (0, 1)
        assert st.malformed_reasons == {reason: 1}


@pytest.mark.parametrize(
    ("doc", "fragment"),
    [
        ({"rule": [{"name": "a", "metric": "m", "op": "~", "threshold": 1}]}, "unknown op"),
        ({"rule": [{"name": "a", "metric": "m", "op": ">", "treshold": 1}]}, "did you mean"),
        (
            {
                "rule": [
                    {"name": "a", "metric": "m", "op": ">", "threshold": 1, "actions": ["trip"]}
                ]
            },
            "command channel",
        ),
        (
            {
                "rule": [
                    {
                        "name": "a",
                        "metric": "m",
                        "op": ">",
                        "threshold": 1,
                        "mode": "rolling",
                        "count": 5,
                        "of": 2,
                    }
                ]
            },
            "cannot exceed",
        ),
        (
            {
                "rule": [
                    {"name": "a", "metric": "m", "op": ">", "threshold": 1, "actions": ["exec"]}
                ]
            },
            "needs 'exec'",
        ),
        ({"rules": []}, "unknown top-level key"),
    ],
)
def test_bad_rules_rejected(doc: dict, fragment: str) -> None:
    """Invalid rule documents raise TailguardError with a precise message."""
    with pytest.raises(TailguardError, match=fragment):
        parse_rules(doc)


def test_rules_file_and_presets(tmp_path: Path) -> None:
    """Presets load by name; a TOML file parses into rules; a missing file is refused."""
    assert load_rules("strict") == PRESETS["strict"]
    f = tmp_path / "r.toml"
    f.write_text('[[rule]]\nname="x"\nmetric="latched"\nop="=="\nthreshold=1\nseverity="fail"\n')
    (rule,) = load_rules(f)
    assert rule.severity == "fail"
    with pytest.raises(TailguardError, match="presets are"):
        load_rules(tmp_path / "nope.toml")


def test_engine_consecutive_rolling_grace_cooldown() -> None:
    """consecutive needs N in a row; rolling N of M; grace delays; cooldown rate-limits."""
    rules = parse_rules(
        {
            "rule": [
                {
                    "name": "c",
                    "metric": "x",
                    "op": ">",
                    "threshold": 0,
                    "count": 2,
                    "cooldown_s": 0,
                },
                {
                    "name": "r",
                    "metric": "x",
                    "op": ">",
                    "threshold": 0,
                    "mode": "rolling",
                    "count": 2,
                    "of": 3,
                    "cooldown_s": 10,
                },
                {
                    "name": "g",
                    "metric": "x",
                    "op": ">",
                    "threshold": 0,
                    "grace_s": 5,
                    "cooldown_s": 0,
                },
            ]
        }
    )
    eng = RuleEngine(rules)
    fired = [
        [a["rule"] for a in eng.evaluate({"x": v}, T0 + i * S)]
        for i, v in enumerate([1, 0, 1, 1, 1, 1])
    ]
    assert fired[0] == [] and fired[2] == ["r"] and fired[3] == ["c"]
    assert "g" in fired[5] and all("g" not in f for f in fired[:5])
    assert sum(f.count("r") for f in fired) == 1  # cooldown 10 s


def _record(path: Path, frames: list[tuple[int, bytes]]) -> None:
    w = RecordingWriter(path)
    for t, data in frames:
        w.write(data, t, 1_700_000_000 * S + t)
    w.close()


def _once(path: Path, tmp_path: Path, rules: str = "default") -> tuple[int, list[dict], dict]:
    import argparse

    from tailguard.monitor.cli import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    alerts, summary = tmp_path / "alerts.jsonl", tmp_path / "summary.json"
    args = parser.parse_args(
        [
            "monitor",
            "--once",
            str(path),
            "--alerts",
            str(alerts),
            "--summary-json",
            str(summary),
            "--rules",
            rules,
        ]
    )
    code = monitor_command(args)
    lines = alerts.read_text().splitlines() if alerts.exists() else []
    return code, [json.loads(x) for x in lines], json.loads(summary.read_text())


def test_once_clean_recording_exits_ok(tmp_path: Path) -> None:
    """A recording of a healthy guard analyses to exit 0 with no alerts."""
    frames = [(T0, hello(0))]
    for i in range(1, 6):
        frames.append((T0 + i * S // 2, ticks(i, 1 + (i - 1) * 10, [MS] * 10, [50_000] * 10)))
    frames.append((T0 + 3 * S, heartbeat(6, closing=True)))
    _record(tmp_path / "rec.tgmr", frames)
    code, alerts, summary = _once(tmp_path / "rec.tgmr", tmp_path)
    assert (code, alerts) == (0, []) and summary["ticks_seen"] == 50


def test_once_gap_gives_heartbeat_loss_and_fail(tmp_path: Path) -> None:
    """A 5 s silence in a recording yields heartbeat_lost (fail, exit 2) and a resumed gap."""
    frames = [(T0, hello(0)), (T0 + S // 2, heartbeat(1)), (T0 + 6 * S, heartbeat(3))]
    _record(tmp_path / "rec.tgmr", frames)
    code, alerts, summary = _once(tmp_path / "rec.tgmr", tmp_path)
    rules = [a["rule"] for a in alerts]
    assert code == 2 and rules[:2] == ["heartbeat_lost", "resumed"]
    assert alerts[1]["value"] == pytest.approx(5.5) and summary["lost_msgs"] == 1
    assert alerts[0]["guard_id"] == "g1" and "time" in alerts[0] and "window" in alerts[0]


def test_once_flight_record_violations_warn(tmp_path: Path) -> None:
    """A flight record with violations analyses to a warn (exit 1) under the default preset."""
    path = tmp_path / "flight.tgfr"
    with FlightRecorder(path) as rec:
        for i in range(5):
            rec.append(("violation", 10 * i, T0 + i * S, {"kind": "dt_max"}))
        rec.append(("state", 41, T0 + 5 * S, {"from": "nominal", "to": "fallback"}))
    code, alerts, summary = _once(path, tmp_path)
    assert code == 1 and summary["violations"] == {"dt_max": 5}
    assert {a["rule"] for a in alerts} == {"violations"}


def test_once_garbage_file_fails(tmp_path: Path) -> None:
    """A file that is neither format exits 2 (fail) instead of silently passing."""
    bad = tmp_path / "x.bin"
    bad.write_bytes(b"hello world")
    import argparse

    from tailguard.monitor.cli import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    assert monitor_command(parser.parse_args(["monitor", "--once", str(bad)])) == 2


def test_monitor_events_and_hist_do_not_alert_when_clean() -> None:
    """Hist snapshots replace the lifetime view; events count violations by kind."""
    mon = Monitor(PRESETS["default"], AlertSink(None))
    mon.on_message(hello(0), T0, 0)
    mon.on_message(hist(1, [MS, 2 * MS]), T0 + 1, 0)
    mon.on_message(events(2, [["violation", 5, 0, {"kind": "latency_max"}]]), T0 + 2, 0)
    assert mon.state.lifetime()["dt_ns"].total_count == 2
    assert mon.state.violations == {"latency_max": 1}


def test_prometheus_text_and_server() -> None:
    """The exposition has counters, gauges and a cumulative latency histogram, over HTTP."""
    st = MonitorState()
    st.ingest(hello(0), T0)
    st.ingest(ticks(1, 2, [MS] * 10, [20_000] * 10), T0 + S)
    text = render_metrics(st.metrics(T0 + S), st.lifetime()["latency_ns"], "g1")
    assert "# TYPE tailguard_msg_lost_total counter" in text
    assert 'tailguard_latency_seconds_bucket{le="+Inf"} 10' in text
    assert 'tailguard_latency_seconds_bucket{le="2e-05"} 0' in text
    assert 'tailguard_latency_seconds_bucket{le="5e-05"} 10' in text
    exp = PrometheusExporter(0)
    try:
        exp.publish(text)
        body = urllib.request.urlopen(f"http://127.0.0.1:{exp.port}/metrics", timeout=5).read()
        assert body.decode() == text
    finally:
        exp.close()

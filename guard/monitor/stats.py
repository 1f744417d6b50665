"""The monitor's view of one guard, built from decoded telemetry messages. No I/O, no clock.

Every method takes the receive time ``now_ns`` (monitor monotonic clock, or the time stored
in a recording), so the same code runs live and offline and tests need no sleeps.
"""

from __future__ import annotations

from collections import Counter, deque
from typing import Any

import numpy as np

from tailguard.protocol.telemetry_wire import HIST_DIGITS, HIST_MAX_NS, decode_message
from tailguard.runtime.state import GuardState, Violation
from tailguard.runtime.tick_ring import STATE_CODES
from tailguard.stats.histogram import LogLinearHistogram
from tailguard.stats.percentile import percentiles

__all__ = ["MonitorState", "PERCENTILES", "WINDOW_KINDS"]

PERCENTILES = (50.0, 99.0, 99.9)
# State names by wire code, from the runtime's explicit table (never from Enum order); the
# codes are dense from 0, so a gap fails here at import.
#: Violation kinds counted per rolling window as their own metric ``<kind>_window``.
WINDOW_KINDS = tuple(v.value for v in Violation)
_STATES = [""] * len(STATE_CODES)
for _state, _code in STATE_CODES.items():
    _STATES[_code] = _state.value
_NS_PER_S = 1_000_000_000
_MAX_WINDOW_TICKS = 200_000  # bounds the window's memory whatever the tick rate
_MAX_REASONS = 32


def _pkey(p: float) -> str:
    return "p" + f"{p:g}".replace(".", "")


def _hist() -> LogLinearHistogram:
    return LogLinearHistogram(HIST_DIGITS, HIST_MAX_NS)


class MonitorState:
    """Statistics, loss accounting and liveness of the guard being watched.

    Args:
        window_s: length of the rolling window for percentiles and rates, s.
        heartbeat_misses: heartbeat periods of silence before the guard counts as lost.
        default_heartbeat_ns: heartbeat period assumed until a hello/heartbeat says.
    """

    def __init__(
        self,
        window_s: float = 10.0,
        heartbeat_misses: int = 3,
        default_heartbeat_ns: int = 500_000_000,
    ) -> None:
        self.window_ns = int(window_s * _NS_PER_S)
        self.heartbeat_misses = heartbeat_misses
        self.heartbeat_ns = default_heartbeat_ns
        self.received = 0
        self.malformed = 0
        self.malformed_reasons: dict[str, int] = {}
        self.unknown_version = 0
        self.lost_msgs = 0
        self.guard_id: str | None = None
        self.guard_restarts = 0
        self.hello: dict[str, Any] = {}
        self.publisher: dict[str, int] = {}  # latest heartbeat counters
        self.ticks_seen = 0
        self.ticks_lost_ring = 0
        self.last_tick = 0
        self.state = "unknown"
        self.violations: dict[str, int] = {}
        self.state_changes = 0
        self.state_time_ns: dict[str, int] = dict.fromkeys(_STATES, 0)
        self.events_seen = 0
        self.lifetime_dt = _hist()
        self.lifetime_lat = _hist()
        self.publisher_lifetime: dict[str, LogLinearHistogram] = {}
        self.last_rx_ns: int | None = None
        self.silent = False
        self.closed = False
        self.max_gap_ns = 0
        self._expected_seq: int | None = None
        self._fresh = False
        self._window: deque[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = deque()
        self._window_ticks = 0
        self._viol_window: deque[tuple[int, str]] = deque(maxlen=100_000)

    # ------------------------------------------------------------------ input --
    def ingest(self, data: bytes, now_ns: int) -> list[dict[str, Any]]:
        """Take one raw message; returns notable events (dicts with an ``event`` key)."""
        out: list[dict[str, Any]] = []
        msg, reason = decode_message(data)
        if msg is None:
            if reason == "version":
                self.unknown_version += 1
            else:
                self.malformed += 1
                if reason in self.malformed_reasons or len(self.malformed_reasons) < _MAX_REASONS:
                    self.malformed_reasons[reason] = self.malformed_reasons.get(reason, 0) + 1
            return out
        self.received += 1
        if self.silent and self.last_rx_ns is not None:
            gap = now_ns - self.last_rx_ns
            self.max_gap_ns = max(self.max_gap_ns, gap)
            out.append({"event": "resumed", "gap_s": gap / _NS_PER_S})
        self.silent = False
        self.closed = False
        self.last_rx_ns = now_ns
        gid = msg["gid"]
        if gid != self.guard_id:
            if self.guard_id is not None:
                self.guard_restarts += 1
                out.append({"event": "guard_changed", "from": self.guard_id, "to": gid})
            else:
                out.append({"event": "joined", "seq": msg["seq"], "guard_id": gid})
            self.guard_id = gid
            self._expected_seq = None
            self._fresh = True
        seq = msg["seq"]
        if self._expected_seq is not None and seq != self._expected_seq:
            if seq > self._expected_seq:
                lost = seq - self._expected_seq
                self.lost_msgs += lost
                out.append({"event": "message_loss", "lost": lost, "seq": seq})
            else:
                out.append({"event": "sequence_restart", "seq": seq})
        self._expected_seq = seq + 1
        getattr(self, "_on_" + msg["type"])(msg, now_ns, out)
        return out

    def _on_hello(self, msg: dict[str, Any], now_ns: int, out: list[dict[str, Any]]) -> None:
        keys = (
            "policy",
            "policy_sha256",
            "envelope_sha256",
            "period_ns",
            "pid",
            "heartbeat_ns",
            "envelope_latency_p99_ns",
        )
        self.hello = {k: msg.get(k) for k in keys}
        hb = msg.get("heartbeat_ns")
        if isinstance(hb, int) and hb > 0:
            self.heartbeat_ns = hb

    def _on_heartbeat(self, msg: dict[str, Any], now_ns: int, out: list[dict[str, Any]]) -> None:
        keys = (
            "tick",
            "ring_overflow",
            "send_dropped",
            "events_dropped",
            "sent",
            "subscribers",
            "unobserved",
            "last_gap_ns",
            "cmd_accepted",
            "cmd_refused",
        )
        self.publisher = {k: msg[k] for k in keys if isinstance(msg.get(k), int)}
        if self._fresh:  # first heartbeat since joining: did the guard miss a monitor?
            self._fresh = False
            gap = self.publisher.get("last_gap_ns", 0)
            if gap > 0:
                out.append(
                    {
                        "event": "resumed",
                        "gap_s": gap / _NS_PER_S,
                        "source": "publisher",
                        "unobserved": self.publisher.get("unobserved", 0),
                    }
                )
        if msg["heartbeat_ns"] > 0:
            self.heartbeat_ns = msg["heartbeat_ns"]
        if msg.get("closing") is True:
            self.closed = True
            out.append({"event": "guard_closed", "tick": msg["tick"]})

    def _on_ticks(self, msg: dict[str, Any], now_ns: int, out: list[dict[str, Any]]) -> None:
        n = msg["n"]
        if n == 0:
            return
        dt = np.frombuffer(msg["dt_ns"], dtype="<i8")
        lat = np.frombuffer(msg["latency_ns"], dtype="<i8")
        flags = np.frombuffer(msg["flags"], dtype="<i8")
        first = msg["first_tick"]
        if first <= 1:
            dt = dt[1:]  # the first tick's dt is measured from clock zero
        self.ticks_seen += n
        self.ticks_lost_ring += max(0, msg["lost"])
        self.last_tick = first + n - 1
        self.lifetime_dt.record_many(dt)
        self.lifetime_lat.record_many(lat)
        codes = flags & 0xF
        code = int(codes[-1])
        self.state = _STATES[code] if code < len(_STATES) else "unknown"
        valid = codes < len(_STATES)
        w = dt if len(dt) == n else np.concatenate(([0], dt))
        spent = np.bincount(codes[valid], weights=np.maximum(w[valid], 0), minlength=len(_STATES))
        for i, name in enumerate(_STATES):
            self.state_time_ns[name] += int(spent[i])
        self._window.append((now_ns, dt, lat, flags))
        self._window_ticks += n
        self._prune(now_ns)

    def _on_events(self, msg: dict[str, Any], now_ns: int, out: list[dict[str, Any]]) -> None:
        for kind, tick, _t_ns, fields in msg["events"]:
            self.events_seen += 1
            if kind == "violation":
                name = str(fields.get("kind", "?"))[:40]
                if name in self.violations or len(self.violations) < 64:
                    self.violations[name] = self.violations.get(name, 0) + 1
                self._viol_window.append((now_ns, name))
            elif kind == "state":
                self.state_changes += 1
                to = fields.get("to")
                if isinstance(to, str) and to in _STATES:
                    self.state = to
                out.append({"event": "state", "tick": tick, "from": fields.get("from"), "to": to})
            elif kind == "fault":
                out.append({"event": "fault", "tick": tick, "fields": fields})
        self.publisher["events_dropped"] = max(
            self.publisher.get("events_dropped", 0), msg["dropped"]
        )

    def _on_hist(self, msg: dict[str, Any], now_ns: int, out: list[dict[str, Any]]) -> None:
        try:
            self.publisher_lifetime = {
                k: LogLinearHistogram.from_sparse(msg["lifetime"][k])
                for k in ("dt_ns", "latency_ns")
            }
        except (ValueError, TypeError, KeyError):
            self.malformed += 1

    def ingest_record(self, record: dict[str, Any], now_ns: int) -> list[dict[str, Any]]:
        """Take one flight-recorder record (``kind``, ``tick``, ``t_ns``, ``fields``)."""
        self.received += 1
        self.last_rx_ns = now_ns
        fields = record.get("fields")
        tick = record.get("tick")
        if not isinstance(fields, dict) or not isinstance(tick, int):
            self.malformed += 1
            return []
        self.last_tick = max(self.last_tick, tick)
        msg = {"events": [[str(record.get("kind")), tick, now_ns, fields]], "dropped": 0}
        out: list[dict[str, Any]] = []
        self._on_events(msg, now_ns, out)
        return out

    # ------------------------------------------------------------------ time --
    def check_liveness(self, now_ns: int) -> list[dict[str, Any]]:
        """A ``heartbeat_lost`` event once the guard has been silent too long."""
        if self.last_rx_ns is None or self.silent or self.closed:
            return []
        silence = now_ns - self.last_rx_ns
        if silence > self.heartbeat_misses * self.heartbeat_ns:
            self.silent = True
            return [{"event": "heartbeat_lost", "silence_s": silence / _NS_PER_S}]
        return []

    def _prune(self, now_ns: int) -> None:
        w = self._window
        horizon = now_ns - self.window_ns
        while w and (w[0][0] < horizon or self._window_ticks - len(w[0][2]) >= _MAX_WINDOW_TICKS):
            self._window_ticks -= len(w.popleft()[2])
        vw = self._viol_window
        while vw and vw[0][0] < horizon:
            vw.popleft()

    # ------------------------------------------------------------------ output --
    def metrics(self, now_ns: int) -> dict[str, float | int | None]:
        """Current values of every metric rules and exporters can use (None = no data)."""
        self._prune(now_ns)
        m: dict[str, float | int | None] = {}
        period = self.hello.get("period_ns")
        period_ns = period if isinstance(period, int) and period > 0 else None
        w = self._window
        dt = np.concatenate([x[1] for x in w]) if w else np.empty(0, np.int64)
        lat = np.concatenate([x[2] for x in w]) if w else np.empty(0, np.int64)
        flags = np.concatenate([x[3] for x in w]) if w else np.empty(0, np.int64)
        for name, arr in (("dt", dt), ("latency", lat)):
            ranked = percentiles(arr, PERCENTILES)  # the nearest rank, as the guard's
            for p in PERCENTILES:
                v = int(ranked[p]) if len(arr) else None
                m[f"{name}_{_pkey(p)}_ns"] = v
                m[f"{name}_{_pkey(p)}_period"] = (
                    None if v is None or period_ns is None else v / period_ns
                )
            m[f"{name}_max_ns"] = int(arr.max()) if len(arr) else None
        if w:
            span = max(now_ns - w[0][0], 1)
            m["tick_rate_hz"] = len(lat) * _NS_PER_S / max(span, self.window_ns // 10)
            m["non_nominal_fraction"] = float(np.count_nonzero(flags & 0xF)) / len(flags)
        else:
            m["tick_rate_hz"] = 0.0 if self.last_rx_ns is not None else None
            m["non_nominal_fraction"] = None
        m["violation_flag_ticks"] = int(np.count_nonzero(flags & ~0xF)) if len(flags) else 0
        # the tail against the envelope the guard enforces (its hello says the p99 limit)
        limit = self.hello.get("envelope_latency_p99_ns")
        p99 = m.get("latency_p99_ns")
        m["latency_p99_envelope"] = (
            p99 / limit if isinstance(limit, int) and limit > 0 and p99 is not None else None
        )
        m["violations_window"] = len(self._viol_window)
        per_kind = Counter(name for _, name in self._viol_window)
        for kind in WINDOW_KINDS:  # e.g. obs_range_window: that kind in the rolling window
            m[f"{kind}_window"] = per_kind.get(kind, 0)
        m["violations_total"] = sum(self.violations.values())
        m["latched"] = int(self.state == GuardState.LATCHED.value)
        m["fallback"] = int(self.state == GuardState.FALLBACK.value)
        m["msg_lost_total"] = self.lost_msgs
        m["malformed_total"] = self.malformed
        m["ring_overflow_total"] = max(self.publisher.get("ring_overflow", 0), 0)
        m["ring_lost_ticks_total"] = self.ticks_lost_ring
        m["send_dropped_total"] = self.publisher.get("send_dropped", 0)
        m["events_dropped_total"] = self.publisher.get("events_dropped", 0)
        m["commands_refused_total"] = self.publisher.get("cmd_refused", 0)
        m["silence_s"] = None if self.last_rx_ns is None else (now_ns - self.last_rx_ns) / 1e9
        m["ticks_total"] = self.ticks_seen
        return m

    def lifetime(self) -> dict[str, LogLinearHistogram]:
        """Lifetime histograms: the publisher's (since guard start) if seen, else our own."""
        if self.publisher_lifetime:
            return self.publisher_lifetime
        return {"dt_ns": self.lifetime_dt, "latency_ns": self.lifetime_lat}

    def summary(self, now_ns: int) -> dict[str, Any]:
        """Everything worth reporting, JSON-safe."""
        life = {}
        for name, h in self.lifetime().items():
            n = h.total_count
            life[name] = (
                {"count": n}
                if n == 0
                else {
                    "count": n,
                    **{_pkey(p): h.value_at_percentile(p) for p in PERCENTILES},
                    "max": h.max_value,
                }
            )
        return {
            "guard_id": self.guard_id,
            "hello": self.hello,
            "state": self.state,
            "received": self.received,
            "malformed": self.malformed,
            "malformed_reasons": dict(self.malformed_reasons),
            "unknown_version": self.unknown_version,
            "lost_msgs": self.lost_msgs,
            "ticks_seen": self.ticks_seen,
            "ticks_lost_ring": self.ticks_lost_ring,
            "last_tick": self.last_tick,
            "violations": dict(self.violations),
            "state_changes": self.state_changes,
            "state_time_ns": dict(self.state_time_ns),
            "publisher": dict(self.publisher),
            "guard_restarts": self.guard_restarts,
            "max_gap_s": self.max_gap_ns / _NS_PER_S,
            "window": self.metrics(now_ns),
            "lifetime": life,
        }

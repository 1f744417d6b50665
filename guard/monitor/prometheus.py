"""``--prometheus PORT``: text exposition of the monitor's metrics on 127.0.0.1."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tailguard.stats.histogram import LogLinearHistogram

__all__ = ["PrometheusExporter", "render_metrics"]

_COUNTERS = (
    "msg_lost_total",
    "malformed_total",
    "ring_overflow_total",
    "send_dropped_total",
    "events_dropped_total",
    "violations_total",
    "ticks_total",
    "ring_lost_ticks_total",
    "commands_refused_total",
)
_BUCKETS_S = (1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1, 1.0)


def _histogram(name: str, h: LogLinearHistogram) -> list[str]:
    """Cumulative buckets (seconds) from a log-linear histogram."""
    import numpy as np

    counts = np.frombuffer(h.counts, dtype=np.int64)
    idx = np.flatnonzero(counts)
    low, width = h.bucket_bounds(idx)
    highs = (low + width - 1).astype(np.float64)
    c = counts[idx]
    out = [f"# TYPE {name} histogram"]
    for le in _BUCKETS_S:
        out.append(f'{name}_bucket{{le="{le:g}"}} {int(c[highs <= le * 1e9].sum())}')
    out.append(f'{name}_bucket{{le="+Inf"}} {h.total_count}')
    out.append(f"{name}_sum {h.mean * h.total_count / 1e9 if h.total_count else 0.0:.9f}")
    out.append(f"{name}_count {h.total_count}")
    return out


def render_metrics(metrics: dict[str, Any], latency: LogLinearHistogram, guard_id: str) -> str:
    """Prometheus text format (version 0.0.4)."""
    lines = []
    label = '{guard_id="' + guard_id.replace("\\", "\\\\").replace('"', '\\"') + '"}'
    for key, value in sorted(metrics.items()):
        if value is None or isinstance(value, bool):
            continue
        kind = "counter" if key in _COUNTERS else "gauge"
        name = f"tailguard_{key}"
        lines.append(f"# TYPE {name} {kind}")
        lines.append(f"{name}{label} {float(value):g}")
    lines += _histogram("tailguard_latency_seconds", latency)
    return "\n".join(lines) + "\n"


class PrometheusExporter:
    """Serves the last published snapshot at ``http://127.0.0.1:PORT/metrics``.

    Args:
        port: TCP port on 127.0.0.1 (0 picks a free one; see :attr:`port`).
    """

    def __init__(self, port: int) -> None:
        self._text = b"# no data yet\n"
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = exporter._text
                self.send_response(200 if self.path in ("/", "/metrics") else 404)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, daemon=True, name="tailguard-prometheus"
        )
        self._thread.start()

    def publish(self, text: str) -> None:
        """Replace the served snapshot."""
        self._text = text.encode()

    def close(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()

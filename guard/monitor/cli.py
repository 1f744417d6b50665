"""``tailguard monitor`` and ``tailguard keys``.

Exit codes of ``monitor`` (live session end and ``--once``): 0 ok; 1 warn (a warn alert,
message loss, ring drops or malformed input); 2 fail (a fail alert such as heartbeat loss
or a latched guard, or an input file that cannot be analysed).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from guard.errors import TailguardError

__all__ = ["register", "monitor_command", "keys_command"]


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``monitor`` and ``keys`` subcommands (those not already present)."""
    if "keys" not in sub.choices:
        k = sub.add_parser("keys", help="create CURVE keys for the guard/monitor command channel")
        k.add_argument("--dir", type=Path, required=True, help="directory to write the keys to")
        k.set_defaults(func=keys_command)
    if "monitor" in sub.choices:  # guard.cli's placeholder when another command was asked
        return
    p = sub.add_parser(
        "monitor",
        help="watch a running guard (ZMQ sidecar)",
        epilog="exit codes: 0 ok, 1 warn, 2 fail",
    )
    p.add_argument("--connect", default="tcp://127.0.0.1:5555", help="the guard's telemetry")
    p.add_argument(
        "--once",
        type=Path,
        default=None,
        help="analyse a --record file or a flight record offline, then exit",
    )
    p.add_argument(
        "--rules",
        default="default",
        help="rules TOML file or preset (default, strict); default: default",
    )
    p.add_argument("--alerts", type=Path, default=None, help="append alerts here (JSONL)")
    p.add_argument("--record", type=Path, default=None, help="record every received message")
    p.add_argument("--record-max-mb", type=float, default=512.0, help="recording size bound")
    p.add_argument(
        "--prometheus",
        type=int,
        default=None,
        metavar="PORT",
        help="serve metrics on http://127.0.0.1:PORT/metrics",
    )
    p.add_argument("--window-s", type=float, default=10.0, help="rolling metrics window, s")
    p.add_argument(
        "--heartbeat-misses",
        type=int,
        default=3,
        help="silent heartbeat periods before a heartbeat-loss alert (default 3)",
    )
    p.add_argument("--eval-interval-s", type=float, default=1.0, help="rule evaluation period")
    p.add_argument("--duration-s", type=float, default=None, help="stop after this long")
    p.add_argument("--no-live", action="store_true", help="no live view (logs only)")
    p.add_argument("--summary-json", type=Path, default=None, help="write the summary as JSON")
    p.add_argument(
        "--receive-buffer-bytes",
        type=int,
        default=None,
        help="kernel receive buffer (SO_RCVBUF); default: the OS's",
    )
    p.set_defaults(func=monitor_command)


def _setup_logging() -> None:
    log = logging.getLogger("tailguard.monitor")
    if not log.handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(h)
        log.setLevel(logging.INFO)
        log.propagate = False


def monitor_command(args: argparse.Namespace) -> int:
    """Run a live monitor session or an offline analysis; returns the exit code."""
    from guard.monitor.alerts import AlertSink
    from guard.monitor.recording import RecordingWriter
    from guard.monitor.rules import load_rules
    from guard.monitor.session import EXIT_FAIL, Monitor, analyse_file, run_live
    from guard.monitor.view import format_summary

    _setup_logging()
    if args.heartbeat_misses < 1 or args.window_s <= 0 or args.eval_interval_s <= 0:
        print(
            "error: --heartbeat-misses >= 1, --window-s > 0 and --eval-interval-s > 0 needed",
            file=sys.stderr,
        )
        return EXIT_FAIL
    try:
        rules = load_rules(args.rules)
        sink = AlertSink(args.alerts)
        recorder = None
        if args.record is not None and args.once is None:
            recorder = RecordingWriter(args.record, int(args.record_max_mb * 1024 * 1024))
    except TailguardError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAIL
    monitor = Monitor(
        rules,
        sink,
        window_s=args.window_s,
        heartbeat_misses=args.heartbeat_misses,
        eval_interval_s=args.eval_interval_s,
        recorder=recorder,
    )
    exporter = None
    try:
        if args.once is not None:
            try:
                analyse_file(args.once, monitor)
            except TailguardError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return EXIT_FAIL
            end_ns = monitor.state.last_rx_ns or 0
        else:
            exporter, refresh = _live_outputs(args, monitor)
            try:
                run_live(
                    args.connect,
                    monitor,
                    duration_s=args.duration_s,
                    on_refresh=refresh,
                    receive_buffer_bytes=args.receive_buffer_bytes,
                )
            finally:
                if refresh is not None and hasattr(refresh, "stop"):
                    refresh.stop()
            end_ns = time.monotonic_ns()
        summary = monitor.summary(end_ns)
        print(format_summary(summary))
        if args.summary_json is not None:
            args.summary_json.write_text(json.dumps(summary, indent=2, default=str) + "\n")
        return int(summary["exit_code"])
    except TailguardError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAIL
    finally:
        sink.close()
        if recorder is not None:
            recorder.close()
        if exporter is not None:
            exporter.close()


def _live_outputs(args: argparse.Namespace, monitor: Any) -> tuple[Any, Any]:
    """The Prometheus exporter (or None) and the refresh callback of the live loop."""
    exporter = None
    if args.prometheus is not None:
        from guard.monitor.prometheus import PrometheusExporter

        try:
            exporter = PrometheusExporter(args.prometheus)
        except OSError as exc:
            raise TailguardError(
                f"cannot serve Prometheus on 127.0.0.1:{args.prometheus} ({exc})"
            ) from exc
    live = None
    if not args.no_live and sys.stdout.isatty():
        from rich.live import Live

        live = Live(refresh_per_second=4, transient=False)
        live.start()

    class Refresh:
        def __call__(self, now_ns: int) -> None:
            state = monitor.state
            if exporter is not None:
                from guard.monitor.prometheus import render_metrics

                exporter.publish(
                    render_metrics(
                        state.metrics(now_ns), state.lifetime()["latency_ns"], state.guard_id or ""
                    )
                )
            if live is not None:
                from guard.monitor.view import render_live

                live.update(render_live(monitor.summary(now_ns), state.lifetime()["latency_ns"]))

        def stop(self) -> None:
            if live is not None:
                live.stop()

    return exporter, Refresh()


def keys_command(args: argparse.Namespace) -> int:
    """Write CURVE key pairs ``guard.key(_secret)`` and ``monitor.key(_secret)`` to --dir."""
    import zmq.auth

    args.dir.mkdir(parents=True, exist_ok=True)
    for name in ("guard", "monitor"):
        if (args.dir / f"{name}.key_secret").exists():
            print(
                f"error: {args.dir / (name + '.key_secret')} exists; not overwriting it",
                file=sys.stderr,
            )
            return 1
    for name in ("guard", "monitor"):
        public, secret = zmq.auth.create_certificates(str(args.dir), name)
        Path(secret).chmod(0o600)
        print(f"wrote {public} and {secret}")
    return 0

"""``tailguard monitor`` and ``tailguard keys``.

Exit codes of ``monitor`` (live session end and ``--once``) are its verdict: 0 ok; 1 warn
(a warn alert, message loss, ring drops or malformed input); 2 fail (a fail alert such as
heartbeat loss or a latched guard, or an input file, rules file or key that cannot be used).
A flag whose value is outside its range (:mod:`tailguard.cli_args`) is a usage error, also
2, before anything starts.

With ``--send trip|reset`` (needs ``--command-connect`` and ``--keys-dir``) the monitor
sends one command and exits: 0 acknowledged, 1 refused or no reply, 2 bad configuration.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from tailguard import cli_args as ca
from tailguard.errors import TailguardError

__all__ = ["register", "monitor_command", "keys_command"]


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``monitor`` and ``keys`` subcommands (those not already present)."""
    if "keys" not in sub.choices:
        k = sub.add_parser("keys", help="create CURVE keys for the guard/monitor command channel")
        k.add_argument(
            "--dir", type=ca.output_dir, required=True, help="directory to write the keys to"
        )
        k.set_defaults(func=keys_command)
    if "monitor" in sub.choices:  # tailguard.tools.cli's placeholder when another command was asked
        return
    p = sub.add_parser(
        "monitor",
        help="watch a running guard (ZMQ sidecar)",
        epilog="exit codes: 0 ok, 1 warn, 2 fail",
    )
    p.add_argument(
        "--connect",
        type=ca.endpoint(bind=False),
        default="tcp://127.0.0.1:5555",
        help="the guard's telemetry",
    )
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
    p.add_argument("--alerts", type=ca.output_file, default=None, help="append alerts here (JSONL)")
    p.add_argument(
        "--record", type=ca.output_file, default=None, help="record every received message"
    )
    p.add_argument(
        "--record-max-mb",
        type=ca.Number("MB", minimum=0.0, maximum=1e6, min_open=True),
        default=512.0,
        help="recording size bound, MB in (0, 1e6]",
    )
    p.add_argument(
        "--prometheus",
        type=ca.port(),
        default=None,
        metavar="PORT",
        help="serve metrics on http://127.0.0.1:PORT/metrics (1..65535)",
    )
    p.add_argument(
        "--window-s",
        type=ca.duration("s", maximum=86_400.0),
        default=10.0,
        help="rolling metrics window, s in (0, 86400]",
    )
    p.add_argument(
        "--heartbeat-misses",
        type=ca.Integer(1, 1_000_000),
        default=3,
        help="silent heartbeat periods before a heartbeat-loss alert (default 3)",
    )
    p.add_argument(
        "--eval-interval-s",
        type=ca.duration("s", maximum=3600.0),
        default=1.0,
        help="rule evaluation period, s in (0, 3600]",
    )
    p.add_argument(
        "--duration-s",
        type=ca.duration("s", maximum=1e7),
        default=None,
        help="stop after this long, s",
    )
    p.add_argument("--no-live", action="store_true", help="no live view (logs only)")
    p.add_argument(
        "--summary-json", type=ca.output_file, default=None, help="write the summary as JSON"
    )
    p.add_argument(
        "--receive-buffer-bytes",
        type=ca.Integer(1024, (1 << 31) - 1, "bytes"),
        default=None,
        help="kernel receive buffer (SO_RCVBUF); default: the OS's",
    )
    c = p.add_argument_group("command channel (off unless both are given)")
    c.add_argument(
        "--command-connect",
        type=ca.endpoint(bind=False),
        default=None,
        metavar="ENDPOINT",
        help="the guard's command endpoint; enables the 'trip' rule action and --send",
    )
    c.add_argument(
        "--keys-dir",
        type=Path,
        default=None,
        help="'tailguard keys' directory (monitor.key_secret, guard.key)",
    )
    c.add_argument(
        "--send",
        choices=("trip", "reset"),
        default=None,
        help="send one command and exit: 0 acknowledged, 1 refused or no reply",
    )
    c.add_argument("--reason", default="manual", help="reason sent with --send")
    c.add_argument(
        "--command-timeout-s",
        type=ca.duration("s", maximum=3600.0),
        default=3.0,
        help="wait for the reply of --send, s in (0, 3600]",
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
    from tailguard.monitor.alerts import AlertSink
    from tailguard.monitor.recording import RecordingWriter
    from tailguard.monitor.rules import load_rules
    from tailguard.monitor.session import EXIT_FAIL, Monitor, analyse_file, run_live
    from tailguard.monitor.view import format_summary

    _setup_logging()
    if (args.command_connect is None) != (args.keys_dir is None):
        print("error: --command-connect and --keys-dir go together", file=sys.stderr)
        return ca.EXIT_USAGE
    if args.send is not None:
        return _send_command(args)
    trip = None
    try:
        if args.command_connect is not None and args.once is None:
            from tailguard.monitor.command_client import CommandClient, TripAction

            trip = TripAction(CommandClient(args.command_connect, args.keys_dir))
        rules = load_rules(args.rules, command_enabled=args.command_connect is not None)
        sink = AlertSink(args.alerts, trip=trip)
        recorder = None
        if args.record is not None and args.once is None:
            recorder = RecordingWriter(args.record, int(args.record_max_mb * 1024 * 1024))
    except TailguardError as exc:
        if trip is not None:
            trip.client.close()
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
            exporter, refresh = _live_outputs(args, monitor, trip)
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
        if trip is not None:
            trip.poll()
            trip.client.close()


def _send_command(args: argparse.Namespace) -> int:
    """``--send``: one command, exit 0 on ack, 1 on refusal or timeout, 2 on bad setup."""
    from tailguard.monitor.command_client import CommandClient

    if args.command_connect is None:
        print("error: --send needs --command-connect and --keys-dir", file=sys.stderr)
        return ca.EXIT_USAGE
    try:
        client = CommandClient(args.command_connect, args.keys_dir)
    except TailguardError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with client:
        result = client.send(args.send, args.reason, args.command_timeout_s)
    if result.ok:
        print(f"{args.send}: acknowledged by guard {result.reply and result.reply.get('gid')}")
        return 0
    print(f"{args.send}: {result.error}", file=sys.stderr)
    return 1


def _live_outputs(args: argparse.Namespace, monitor: Any, trip: Any = None) -> tuple[Any, Any]:
    """The Prometheus exporter (or None) and the refresh callback of the live loop."""
    exporter = None
    if args.prometheus is not None:
        from tailguard.monitor.prometheus import PrometheusExporter

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
            if trip is not None:
                trip.poll()
            if exporter is not None:
                from tailguard.monitor.prometheus import render_metrics

                exporter.publish(
                    render_metrics(
                        state.metrics(now_ns), state.lifetime()["latency_ns"], state.guard_id or ""
                    )
                )
            if live is not None:
                from tailguard.monitor.view import render_live

                live.update(render_live(monitor.summary(now_ns), state.lifetime()["latency_ns"]))

        def stop(self) -> None:
            if live is not None:
                live.stop()

    return exporter, Refresh()


def keys_command(args: argparse.Namespace) -> int:
    """Write the command channel's CURVE keys to --dir (layout: :mod:`tailguard.protocol.command`).

    ``guard.key(_secret)`` (the guard's pair), ``monitor.key(_secret)`` (the monitor's) and
    ``authorized/monitor.key`` (the public keys the guard accepts). Never overwrites.
    """
    import shutil

    import zmq.auth

    from tailguard.protocol.command import AUTHORIZED_DIR

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
    authorized = args.dir / AUTHORIZED_DIR
    authorized.mkdir(exist_ok=True)
    shutil.copyfile(args.dir / "monitor.key", authorized / "monitor.key")
    print(
        f"wrote {authorized / 'monitor.key'}\n"
        f"guard:   TelemetryPublisher(..., command_endpoint=EP, "
        f"server_secret_key_file='{args.dir / 'guard.key_secret'}', "
        f"authorized_keys_dir='{authorized}')\n"
        f"monitor: tailguard monitor --command-connect EP --keys-dir {args.dir}"
    )
    return 0

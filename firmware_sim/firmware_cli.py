"""``tailguard firmware`` and ``tailguard run``: the wall-clock firmware and its controller.

    tailguard firmware --env Hopper-v5 --bind tcp://127.0.0.1:5555 --summary fw.json
    tailguard run --policy hopper.onnx --connect tcp://127.0.0.1:5555 --rate-hz 50

``firmware`` runs until SIGTERM/SIGINT (or ``--duration-s``), prints status events (watchdog
trips and recoveries, periodic lateness) to stderr as ``firmware: EVENT {json}`` lines and
writes its JSON summary to ``--summary`` (and stdout) on exit. ``--bind`` accepts port ``*``
(any free port); ``--ready-file`` then tells other processes the endpoint chosen.

Every flag states its unit and range (:mod:`tailguard.cli_args`); a value outside it is a
usage error before anything starts. ``firmware`` also probes ``--link-latency`` at start-up.
Both loops sleep in bounded slices, so ``--duration-s`` and SIGTERM/SIGINT end them on time
at any rate.

Exit codes: 0 done (also after SIGTERM/SIGINT); 1 input refused (unknown env, address in
use, unusable policy or envelope, no firmware answering); 2 usage error (a flag's value).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from tailguard import cli_args as ca
from tailguard.errors import TailguardError
from tailguard.firmware_sim.firmware_config import (
    MAX_COMMAND_TIMEOUT_NS,
    MAX_PHYSICS_RATE_HZ,
    MAX_SPIN_NS,
    MIN_PHYSICS_RATE_HZ,
)
from tailguard.firmware_sim.run_client import CONNECT_TIMEOUT_S, DEADLINE_MS, DURATION_S, SPIN_US
from tailguard.runtime.pacer import MAX_RATE_HZ, MIN_RATE_HZ

__all__ = ["main", "register"]

_MAX_SPIN_US = MAX_SPIN_NS / 1e3


def _link_latency(text: str) -> str:
    """``--link-latency``: a profile spec whose samples fit the link (probed now)."""
    from tailguard.firmware_sim.link_faults import LinkFaults

    try:
        LinkFaults(text, 0.0, 0)
    except TailguardError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--link-latency")) from None
    return text


def register(subparsers: Any) -> None:
    """Add the ``firmware`` and ``run`` subcommands (skipping names already present)."""
    if "firmware" not in subparsers.choices:
        _add_firmware(subparsers)
    if "run" not in subparsers.choices:
        _add_run(subparsers)


def _add_firmware(sub: Any) -> None:
    p = sub.add_parser(
        "firmware",
        help="run a wall-clock MuJoCo firmware process over ZMQ (watchdog, fault injection)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--env", default="Hopper-v5", help="gymnasium MuJoCo env id (default Hopper-v5)")
    p.add_argument(
        "--bind",
        type=ca.endpoint(bind=True),
        default="tcp://127.0.0.1:5555",
        help="ZMQ endpoint to bind",
    )
    p.add_argument(
        "--allow-remote", action="store_true", help="permit binding a non-loopback address"
    )
    p.add_argument("--seed", type=ca.seed(), default=0, help="env reset seed and fault seed")
    p.add_argument(
        "--physics-rate-hz",
        type=ca.rate_hz(MAX_PHYSICS_RATE_HZ, MIN_PHYSICS_RATE_HZ),
        default=None,
        help="physics steps per second (default: the model's own timestep; another value "
        f"sets the timestep to 1/rate), [{MIN_PHYSICS_RATE_HZ:g}, {MAX_PHYSICS_RATE_HZ:g}]",
    )
    p.add_argument(
        "--publish-every",
        type=ca.Integer(1, 1_000_000, "physics steps"),
        default=1,
        help="publish every N physics steps (default 1)",
    )
    p.add_argument(
        "--command-timeout-ms",
        type=ca.duration("ms", maximum=MAX_COMMAND_TIMEOUT_NS / 1e6),
        default=100.0,
        help="watchdog: damp if no valid command for this long, ms (default 100, at most one hour)",
    )
    p.add_argument(
        "--link-latency",
        type=_link_latency,
        default="nominal",
        help="latency profile spec applied to delivered commands, e.g. "
        "'lognormal:median_ms=2,sigma=0.8' (default nominal = none; delays up to 1 h)",
    )
    p.add_argument(
        "--drop-prob", type=ca.probability(), default=0.0, help="drop each command with prob P"
    )
    p.add_argument(
        "--cpu-burn", type=ca.Integer(0, 64, "threads"), default=0, help="start N CPU burners"
    )
    p.add_argument(
        "--cpu-burn-gil",
        action="store_true",
        help="burn in pure Python holding the GIL (default: GIL-free hashing)",
    )
    p.add_argument(
        "--spin-us",
        type=SPIN_US,
        default=100.0,
        help=f"busy-spin before each deadline, us in [0, {_MAX_SPIN_US:g}]",
    )
    p.add_argument(
        "--report-every-s",
        type=ca.Number("s", minimum=0.0, maximum=86_400.0),
        default=5.0,
        help="stats event period, s (0 = off)",
    )
    p.add_argument(
        "--duration-s",
        type=DURATION_S,
        default=None,
        help="stop after S seconds",
    )
    p.add_argument(
        "--summary", type=ca.output_file, default=None, help="write the JSON summary here"
    )
    p.add_argument(
        "--ready-file",
        type=ca.output_file,
        default=None,
        help="write {endpoint, pid} here once running",
    )
    p.add_argument("--quiet", action="store_true", help="print only watchdog events")
    p.set_defaults(func=cmd_firmware)


def _add_run(sub: Any) -> None:
    p = sub.add_parser(
        "run",
        help="drive the firmware with a guarded ONNX policy in wall-clock time",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--policy", type=Path, required=True, help="ONNX policy file")
    p.add_argument(
        "--connect",
        type=ca.endpoint(bind=False),
        default="tcp://127.0.0.1:5555",
        help="the firmware's endpoint",
    )
    p.add_argument(
        "--rate-hz",
        type=ca.rate_hz(MAX_RATE_HZ, MIN_RATE_HZ),
        default=50.0,
        help=f"control rate, Hz in [{MIN_RATE_HZ:g}, {MAX_RATE_HZ:g}] (default 50); an "
        "--envelope must be written for this period",
    )
    p.add_argument("--envelope", type=Path, default=None, help="envelope JSON (default: starter)")
    p.add_argument("--fallback", choices=["hold", "zero"], default="hold", help="guard fallback")
    p.add_argument(
        "--deadline-ms",
        type=DEADLINE_MS,
        default=None,
        help="guard inference deadline, ms in (0, 60000]",
    )
    p.add_argument(
        "--duration-s",
        type=DURATION_S,
        default=None,
        help="stop after S seconds",
    )
    p.add_argument(
        "--spin-us",
        type=SPIN_US,
        default=150.0,
        help=f"busy-spin before each deadline, us in [0, {_MAX_SPIN_US:g}]",
    )
    p.add_argument(
        "--connect-timeout-s",
        type=CONNECT_TIMEOUT_S,
        default=10.0,
        help="wait this long for the firmware, s in (0, 3600]",
    )
    p.add_argument(
        "--json", dest="json_out", type=ca.output_file, default=None, help="write the summary"
    )
    p.set_defaults(func=cmd_run)


class _StopFlag:
    """Set by SIGTERM/SIGINT; polled by the loops once per tick."""

    def __init__(self) -> None:
        self.stop = False
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handler)

    def _handler(self, signum: int, frame: object) -> None:
        self.stop = True

    def __call__(self) -> bool:
        return self.stop


def _err(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _ns(value_s: float | None) -> int | None:
    return None if value_s is None else round(value_s * 1e9)


def cmd_firmware(args: argparse.Namespace) -> int:
    """Handler of ``tailguard firmware``."""
    from tailguard.firmware_sim.firmware import Firmware, FirmwareConfig

    config = FirmwareConfig(
        env_id=args.env,
        bind=args.bind,
        allow_remote=args.allow_remote,
        seed=args.seed,
        physics_rate_hz=args.physics_rate_hz,
        publish_every=args.publish_every,
        command_timeout_ns=round(args.command_timeout_ms * 1e6),
        link_latency=args.link_latency,
        drop_prob=args.drop_prob,
        cpu_burn_threads=args.cpu_burn,
        cpu_burn_gil=args.cpu_burn_gil,
        spin_ns=round(args.spin_us * 1e3),
        report_every_ns=round(args.report_every_s * 1e9),
    )
    duration_ns = _ns(args.duration_s)
    quiet = args.quiet

    def on_event(event: str, detail: dict[str, Any]) -> None:
        if quiet and event in ("stats", "shutdown"):
            return
        _err(f"firmware: {event} {json.dumps(detail, sort_keys=True)}")

    stop = _StopFlag()
    with Firmware(config, on_event=on_event) as fw:

        def ready() -> None:
            _err(
                f"firmware: {config.env_id} at {fw.physics_rate_hz:g} Hz physics on "
                f"{fw.endpoint} (obs {fw.obs_size}, actions {fw.action_size}, command timeout "
                f"{config.command_timeout_ns / 1e6:g} ms)"
            )
            if args.ready_file is not None:
                tmp = args.ready_file.with_name(args.ready_file.name + ".tmp")
                tmp.write_text(json.dumps({"endpoint": fw.endpoint, "pid": os.getpid()}))
                tmp.replace(args.ready_file)  # atomic: readers never see half a file

        summary = fw.run(should_stop=stop, duration_ns=duration_ns, on_ready=ready)
    text = json.dumps(summary, indent=2, sort_keys=True)
    if args.summary is not None:
        args.summary.write_text(text + "\n")
    lat = summary["lateness_us"]
    if lat:
        _err(
            f"firmware: {summary['steps']} steps, missed {summary['missed_cycles']}; lateness "
            f"p50 {lat['p50']:.1f} us  p99 {lat['p99']:.1f} us  max {lat['max']:.1f} us; "
            f"watchdog trips {summary['watchdog']['trips']}, rejected messages "
            f"{summary['commands']['rejected_total']}"
        )
    sys.stdout.write(text + "\n")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Handler of ``tailguard run``."""
    from tailguard.firmware_sim.run_client import run_policy

    stop = _StopFlag()
    try:
        summary = run_policy(
            args.policy,
            args.connect,
            rate_hz=args.rate_hz,
            envelope_path=args.envelope,
            duration_s=args.duration_s,
            fallback=args.fallback,
            deadline_ms=args.deadline_ms,
            spin_us=args.spin_us,
            should_stop=stop,
            connect_timeout_s=args.connect_timeout_s,
            on_ready=lambda line: _err(f"run: {line}"),
        )
    except TailguardError as exc:
        if not stop():
            raise
        # A signal is run's normal way to stop, also while it still waits for the firmware.
        _err(f"run: stopped by a signal before the loop started ({exc})")
        return ca.EXIT_OK
    text = json.dumps(summary, indent=2, sort_keys=True)
    if args.json_out is not None:
        args.json_out.write_text(text + "\n")
    g = summary["guard"]
    lat = summary["pacer_lateness_ns"]
    _err(
        f"run: {summary['ticks']} ticks at {args.rate_hz:g} Hz, missed {summary['missed_cycles']}, "
        f"pacer lateness p99 {lat.get('p99', 0) / 1e3:.1f} us; guard state {g['state']}, "
        f"interventions {g['interventions']}; firmware events {summary['firmware_events']}"
    )
    sys.stdout.write(text + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (``python -m tailguard.firmware_sim.firmware_cli firmware|run
    ...``)."""
    parser = argparse.ArgumentParser(prog="tailguard")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    return ca.run_cli(parser, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())

"""A guarded control loop publishing telemetry, for the monitor's process tests and bench.

Usage: python tg_monitor_guard.py ENDPOINT --rate-hz R --seconds S --out STATS.json
       [--send-hwm N] [--send-buffer-bytes B] [--command-endpoint EP --keys-dir DIR]
       [--status STATUS.json]

Runs ``Guard`` with a CallablePolicy (every 500th action out of bounds, so there are
violation events) paced by ``Pacer``; writes the guard's stats and the publisher's counters
as JSON at the end. Exits by itself after ``--seconds`` so a forgotten child cannot linger.
With ``--status``, the publisher's counters and ``t_ns`` (``time.monotonic_ns()``, the
publisher's clock) are also written about ten times a second, replaced atomically, so a
test can wait for a condition (a subscriber seen, sends dropped) instead of sleeping.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from tailguard import CallablePolicy, Guard, Pacer, starter_envelope
from tailguard.protocol.command import server_key_paths
from tailguard.sinks.telemetry import TelemetryPublisher


def write_status(path: str, counters: dict[str, object]) -> None:
    """Replace ``path`` with the counters and the current monotonic time, atomically."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump({"t_ns": time.monotonic_ns(), **counters}, f)
    os.replace(tmp, path)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("endpoint")
    p.add_argument("--rate-hz", type=float, default=1000.0)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--out", required=True)
    p.add_argument("--send-hwm", type=int, default=None)
    p.add_argument("--send-buffer-bytes", type=int, default=None)
    p.add_argument("--command-endpoint", default=None)
    p.add_argument("--keys-dir", default=None)
    p.add_argument("--status", default=None, help="write the counters here ~10 times a second")
    args = p.parse_args(argv)
    pacer = Pacer(args.rate_hz, spin_ns=50_000)
    env = starter_envelope(
        obs_size=4,
        action_size=2,
        period_ns=pacer.period_ns,
        action_low=[-1.0, -1.0],
        action_high=[1.0, 1.0],
    )
    count = [0]

    def policy(obs: np.ndarray) -> list[float]:
        count[0] += 1
        return [2.0, 0.0] if count[0] % 500 == 0 else [0.1, -0.1]

    telemetry: object = args.endpoint
    if args.send_hwm is not None or args.send_buffer_bytes is not None or args.keys_dir:
        command: dict[str, object] = {}
        if args.keys_dir:
            secret, authorized = server_key_paths(args.keys_dir)
            command = {
                "command_endpoint": args.command_endpoint,
                "server_secret_key_file": secret,
                "authorized_keys_dir": authorized,
            }
        telemetry = TelemetryPublisher(
            args.endpoint,
            hello={"policy": "callable", "period_ns": pacer.period_ns},
            send_hwm=args.send_hwm or 1000,
            send_buffer_bytes=args.send_buffer_bytes,
            **command,  # type: ignore[arg-type]
        )
    guard = Guard(CallablePolicy(policy, 4, 2), env, telemetry=telemetry)
    obs = np.zeros(4, np.float32)
    ticks = int(args.seconds * args.rate_hz)
    status_every = max(1, round(args.rate_hz / 10))
    pub = guard._telemetry
    pacer.start()
    for tick in range(ticks):
        pacer.wait()
        guard.step(obs)
        if args.status is not None and tick % status_every == 0:
            write_status(args.status, pub.counters())
    counters = pub.counters()
    stats = guard.stats()
    guard.close()
    out = {
        "ticks": stats["ticks"],
        "state": stats["state"],
        "state_ticks": stats["state_ticks"],
        "dt_ns": stats["dt_ns"],
        "violations": stats["violations"],
        "missed_cycles": pacer.missed_cycles,
        "publisher": counters,
    }
    with open(args.out, "w") as f:
        json.dump(out, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Physics-loop lateness of the wall-clock firmware (cyclictest-style), Hopper-v5 at 1 kHz.

The firmware runs in this process for a few seconds at 1 kHz physics (model timestep set to
1 ms) with one subscribed peer, so every step also encodes and sends an observation. Every
wake-up's lateness against its absolute deadline goes into a LogLinearHistogram; the tails
land in ``benchmark.extra_info["lateness"]`` in us. ``idle`` has no controller;
``controlled`` has a 50 Hz controller thread sending commands (it shares the GIL, as a
monitoring thread in the same process would).

    python -m pytest bench/bench_firmware.py --benchmark-enable -s
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest

pytest.importorskip("mujoco")
pytest.importorskip("gymnasium")

from tailguard.firmware_sim import messages as wire
from tailguard.firmware_sim.firmware import Firmware, FirmwareConfig

FULL_RUN_S = 4.0
SMOKE_RUN_S = 0.2
RATE_HZ = 1000.0


def _controller(endpoint: str, stop: threading.Event, rate_hz: float) -> None:
    from tailguard.firmware_sim.run_client import FirmwareLink

    link = FirmwareLink(endpoint, role="controller")
    try:
        link.hello()
        action = np.zeros(3, np.float32)
        while not stop.wait(1.0 / rate_hz):
            obs = link.drain()
            link.command(action, -1 if obs is None else obs.seq)
    finally:
        link.close()


def _run(mode: str, duration_s: float) -> dict[str, Any]:
    import zmq

    cfg = FirmwareConfig(
        env_id="Hopper-v5", bind="tcp://127.0.0.1:*", physics_rate_hz=RATE_HZ, report_every_ns=0
    )
    with Firmware(cfg) as fw:
        ctx = zmq.Context()
        peer = ctx.socket(zmq.DEALER)  # a passive subscriber: obs are encoded and sent
        peer.setsockopt(zmq.LINGER, 0)
        peer.setsockopt(zmq.RCVHWM, 16)
        peer.connect(fw.endpoint)
        peer.send(wire.encode(wire.Hello(1, time.monotonic_ns(), "monitor")))
        stop = threading.Event()
        thread = None
        if mode == "controlled":
            thread = threading.Thread(target=_controller, args=(fw.endpoint, stop, 50.0))
            thread.start()
        try:
            summary = fw.run(duration_ns=round(duration_s * 1e9))
        finally:
            stop.set()
            if thread is not None:
                thread.join(timeout=5)
            peer.close(0)
            ctx.term()
    return summary


@pytest.mark.parametrize("mode", ["idle", "controlled"])
def bench_firmware_lateness(benchmark: Any, request: pytest.FixtureRequest, mode: str) -> None:
    """Physics-loop wake-up lateness at 1 kHz: p50/p90/p99/p99.9/max in us."""
    options = request.config.getoption
    disabled = bool(options("benchmark_disable")) and not options("benchmark_enable")
    duration_s = SMOKE_RUN_S if disabled else FULL_RUN_S
    summary = benchmark.pedantic(_run, args=(mode, duration_s), rounds=1, iterations=1)
    lat = summary["lateness_ns"]
    tails = {k: lat[k] / 1e3 for k in ("p50", "p90", "p99", "p999", "max")}
    work = {k: summary["work_ns"][k] / 1e3 for k in ("p50", "p99", "max")}
    benchmark.extra_info.update(
        {
            "mode": mode,
            "rate_hz": RATE_HZ,
            "steps": summary["steps"],
            "missed_cycles": summary["missed_cycles"],
            "lateness": tails,
            "work_us": work,
            "applied_commands": summary["commands"]["applied"],
        }
    )
    print(
        f"\nfirmware {mode:>10} @ {RATE_HZ:.0f} Hz, {summary['steps']} steps, missed "
        f"{summary['missed_cycles']}: lateness p50 {tails['p50']:.2f} us  p99 {tails['p99']:.1f} "
        f"us  p99.9 {tails['p999']:.1f} us  max {tails['max']:.1f} us; step work p50 "
        f"{work['p50']:.1f} us"
    )
    assert summary["steps"] > 0

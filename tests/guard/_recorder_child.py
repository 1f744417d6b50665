"""Child process for the flight-recorder crash test: appends records until it is killed.

Usage: python _recorder_child.py PATH

Appends ``("state", tick, t_ns, {"tick": tick, ...})`` with ticks 0, 1, 2, ... as fast as a
modest CPU budget allows. It exits by itself after 30 s so a forgotten child cannot linger.
"""

from __future__ import annotations

import sys
import time

from tailguard.sinks.flight_recorder import FlightRecorder

_LIFETIME_S = 30.0


def main(path: str) -> None:
    recorder = FlightRecorder(path, flush_interval_s=0.002)
    give_up_s = time.monotonic() + _LIFETIME_S
    tick = 0
    while time.monotonic() < give_up_s:
        # Varying payload sizes so a kill can land anywhere inside a frame.
        recorder.append(
            ("state", tick, time.monotonic_ns(), {"tick": tick, "pad": "x" * (tick % 97)})
        )
        tick += 1
        if tick % 20 == 0:
            time.sleep(0.0005)  # keep the CPU use modest on a shared machine
    recorder.close()


if __name__ == "__main__":
    main(sys.argv[1])

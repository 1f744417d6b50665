"""Settings of the wall-clock firmware process, validated on construction.

Every duration is bounded here, at start-up, so that nothing in the firmware's hot loop can
overflow the int64 nanoseconds it counts in (``LIMITS`` states each bound).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tailguard.errors import ConfigError
from tailguard.protocol.endpoints import require_local_endpoint

__all__ = [
    "LIMITS",
    "MAX_COMMAND_TIMEOUT_NS",
    "MAX_PHYSICS_RATE_HZ",
    "MAX_SPIN_NS",
    "MIN_PHYSICS_RATE_HZ",
    "FirmwareConfig",
    "check_endpoint",
]

_NS_PER_S = 1_000_000_000
#: Highest physics rate, Hz (a Python loop stepping MuJoCo cannot go faster).
MAX_PHYSICS_RATE_HZ = 20_000.0
#: Lowest physics rate, Hz (one step per ~11.6 days; the pacer's lower bound).
MIN_PHYSICS_RATE_HZ = 1e-6
#: Longest watchdog timeout, ns (one hour).
MAX_COMMAND_TIMEOUT_NS = 3600 * _NS_PER_S
#: Longest busy-spin before a deadline, ns (100 ms).
MAX_SPIN_NS = 100_000_000

#: Integer settings -> (lowest, highest) accepted.
LIMITS: dict[str, tuple[int, int]] = {
    "publish_every": (1, 1_000_000),
    "command_timeout_ns": (1, MAX_COMMAND_TIMEOUT_NS),
    "cpu_burn_threads": (0, 64),
    "spin_ns": (0, MAX_SPIN_NS),
    "report_every_ns": (0, 86_400 * _NS_PER_S),
    "peer_timeout_ns": (1, 3600 * _NS_PER_S),
    "max_messages_per_tick": (1, 100_000),
}


@dataclass(frozen=True)
class FirmwareConfig:
    """Settings of a firmware process (validated on construction).

    Attributes:
        env_id: gymnasium MuJoCo env id, e.g. ``Hopper-v5``.
        bind: ZMQ endpoint to bind, e.g. ``tcp://127.0.0.1:5555`` (port ``*`` = any free).
        allow_remote: permit binding a non-loopback address.
        seed: reset seed of the env and seed of the injected faults.
        physics_rate_hz: physics steps per second; None keeps the model's own timestep.
            Another value changes ``model.opt.timestep`` to ``1 / physics_rate_hz``.
        publish_every: publish an observation every N physics steps (>= 1).
        command_timeout_ns: watchdog timeout, ns (> 0).
        link_latency: latency profile spec applied to every delivered command.
        drop_prob: probability of dropping a valid command, in [0, 1].
        cpu_burn_threads: CPU-burning threads to start (>= 0).
        cpu_burn_gil: burn in pure Python (holding the GIL) instead of GIL-free hashing.
        spin_ns: pacer busy-spin before each deadline, ns.
        report_every_ns: period of ``stats`` status events, ns; 0 disables them.
        peer_timeout_ns: a silent peer is dropped after this long, ns.
        max_messages_per_tick: incoming messages handled per physics step at most.
    """

    env_id: str = "Hopper-v5"
    bind: str = "tcp://127.0.0.1:5555"
    allow_remote: bool = False
    seed: int = 0
    physics_rate_hz: float | None = None
    publish_every: int = 1
    command_timeout_ns: int = 100_000_000
    link_latency: str = "nominal"
    drop_prob: float = 0.0
    cpu_burn_threads: int = 0
    cpu_burn_gil: bool = False
    spin_ns: int = 100_000
    report_every_ns: int = 5 * _NS_PER_S
    peer_timeout_ns: int = 3 * _NS_PER_S
    max_messages_per_tick: int = 64

    def __post_init__(self) -> None:
        problems = []
        rate = self.physics_rate_hz
        if rate is not None and not (
            isinstance(rate, int | float)
            and not isinstance(rate, bool)
            and math.isfinite(rate)
            and MIN_PHYSICS_RATE_HZ <= rate <= MAX_PHYSICS_RATE_HZ
        ):
            problems.append(
                f"physics_rate_hz must be in [{MIN_PHYSICS_RATE_HZ:g}, {MAX_PHYSICS_RATE_HZ:g}] "
                f"Hz, got {rate!r}"
            )
        for name, (low, high) in LIMITS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                problems.append(f"{name} must be an integer in {low}..{high}, got {value!r}")
        if not (
            isinstance(self.drop_prob, int | float)
            and not isinstance(self.drop_prob, bool)
            and 0.0 <= self.drop_prob <= 1.0
        ):
            problems.append(f"drop_prob must be a probability in [0, 1], got {self.drop_prob!r}")
        if not isinstance(self.seed, int) or not 0 <= self.seed < 1 << 32:
            problems.append(f"seed must be an integer in 0..{(1 << 32) - 1}, got {self.seed!r}")
        if problems:
            raise ConfigError("invalid firmware settings: " + "; ".join(problems))
        check_endpoint(self.bind, self.allow_remote)


def check_endpoint(endpoint: str, allow_remote: bool) -> None:
    """Refuse a non-loopback TCP endpoint unless ``allow_remote``.

    Delegates to :func:`tailguard.protocol.endpoints.require_local_endpoint` (one rule for
    every socket tailguard binds). ``ipc://`` and ``inproc://`` are local by nature;
    ``tcp://*:PORT`` binds every interface and counts as remote.

    Raises:
        TailguardError: malformed endpoint, or a remote one without ``allow_remote``.
    """
    require_local_endpoint(endpoint, allow_remote, "firmware endpoint", "--allow-remote")

"""Faults the firmware injects on purpose: a lossy, late command link and a busy CPU.

:class:`LinkFaults` drops commands at random and delays the rest by a sampled latency. The
latency profile is probed at start-up: a spec whose samples do not fit in
``[0, MAX_LINK_LATENCY_NS]`` (e.g. ``fixed:s=1e10``, which overflows int64 ns) is refused
there, with the flag named, instead of failing in the firmware's hot loop on the first
command. A heavy tail that only rarely exceeds the bound is clamped at run time and the
clamps are counted (``clamped``).

:func:`burn_cpu` is the body of a CPU-burning thread (``--cpu-burn``).
"""

from __future__ import annotations

import hashlib
import threading

import numpy as np

from tailguard.errors import ConfigError, TailguardError

__all__ = ["MAX_LINK_LATENCY_NS", "PROBE_SAMPLES", "LinkFaults", "burn_cpu"]

#: Longest delivery latency the link may add, ns (one hour).
MAX_LINK_LATENCY_NS = 3600 * 1_000_000_000
#: Samples drawn (from a separately seeded copy of the profile) to check it at start-up.
PROBE_SAMPLES = 4096


class LinkFaults:
    """Injected link faults for commands: random drops, then a sampled delivery latency.

    Args:
        latency_spec: latency profile spec (``nominal`` = none).
        drop_prob: probability of dropping a command.
        seed: seed of both samplers.

    Attributes:
        clamped: latencies clamped into ``[0, MAX_LINK_LATENCY_NS]`` at run time.

    Raises:
        ProfileError: the spec cannot be parsed.
        ConfigError: its samples do not fit the bound (or overflow).
    """

    def __init__(self, latency_spec: str, drop_prob: float, seed: int) -> None:
        from tailguard.firmware_sim.profile_spec import parse_profile

        self._nominal = latency_spec.strip() == "nominal"
        try:
            self.profile = parse_profile(latency_spec, nominal_ns=0, seed=seed)
            if not self._nominal:
                _probe(parse_profile(latency_spec, nominal_ns=0, seed=seed + 7919), latency_spec)
        except TailguardError:  # the profile parser's own message (e.g. "did you mean")
            raise
        except (OverflowError, ValueError) as exc:
            raise ConfigError(
                f"--link-latency {latency_spec!r}: cannot sample it ({exc})"
            ) from None
        self.drop_prob = float(drop_prob)
        self._rng = np.random.default_rng(seed + 1)
        self.clamped = 0

    def delivery_ns(self, now_ns: int) -> int | None:
        """When a command received at ``now_ns`` takes effect, ns; None if dropped."""
        if self.drop_prob > 0.0 and self._rng.random() < self.drop_prob:
            return None
        if self._nominal:
            return now_ns
        try:
            latency_ns = int(self.profile.next_ns())
        except (OverflowError, ValueError):  # a tail the probe did not meet: never crash here
            latency_ns = MAX_LINK_LATENCY_NS + 1
        if not 0 <= latency_ns <= MAX_LINK_LATENCY_NS:
            self.clamped += 1
            latency_ns = MAX_LINK_LATENCY_NS if latency_ns > 0 else 0
        return now_ns + latency_ns


def _probe(profile: object, spec: str) -> None:
    """Refuse a profile whose samples fall outside ``[0, MAX_LINK_LATENCY_NS]``."""
    samples = [int(profile.next_ns()) for _ in range(PROBE_SAMPLES)]  # type: ignore[attr-defined]
    low, high = min(samples), max(samples)
    if low < 0 or high > MAX_LINK_LATENCY_NS:
        raise ConfigError(
            f"--link-latency {spec!r} gives delays from {low / 1e9:g} s to {high / 1e9:g} s; "
            f"the link accepts 0..{MAX_LINK_LATENCY_NS / 1e9:g} s (lower it, or add cap_ms=...)"
        )


def burn_cpu(stop: threading.Event, hold_gil: bool) -> None:
    """Burn CPU until ``stop`` is set: in pure Python holding the GIL, or hashing without it."""
    if hold_gil:
        x = 0
        while not stop.is_set():
            for _ in range(10_000):
                x += 1
        return
    block = bytes(256 * 1024)
    while not stop.is_set():
        hashlib.sha256(block).digest()  # releases the GIL while hashing

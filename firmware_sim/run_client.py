"""``tailguard run``: a guarded ONNX policy driving the wall-clock firmware over ZMQ.

The loop is the one a robot runs: :class:`guard.Pacer` wakes it on an absolute-deadline
grid, it takes the freshest observation the firmware published (older ones queued on the
socket are discarded unread), :meth:`guard.Guard.step` computes the action with the
observation's firmware timestamp (so the guard sees observation age), and the action goes
back as a ``cmd`` message. Both processes timestamp with ``time.monotonic_ns`` on the same
host.

:class:`FirmwareLink` is the client side of the protocol on its own (handshake, freshest
observation, commands, status events); tests and examples use it directly.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tailguard.cli_args import Number, duration, require
from tailguard.envelope.period import require_period
from tailguard.errors import TailguardError
from tailguard.firmware_sim import messages as wire
from tailguard.firmware_sim.firmware import histogram_summary
from tailguard.firmware_sim.firmware_config import MAX_SPIN_NS
from tailguard.runtime.pacer import STOPPED
from tailguard.stats.histogram import LogLinearHistogram

__all__ = [
    "CONNECT_TIMEOUT_S",
    "DEADLINE_MS",
    "DURATION_S",
    "SPIN_US",
    "FirmwareLink",
    "run_policy",
]

_NS_PER_S = 1_000_000_000

# The ranges of run_policy's arguments; the `tailguard run` flags parse with the same ones.
#: Run length, s (at most about 116 days).
DURATION_S = duration("s", maximum=1e7)
#: The guard's inference deadline, ms.
DEADLINE_MS = duration("ms", maximum=60_000.0)
#: Pacer busy-spin before each deadline, us.
SPIN_US = Number("us", minimum=0.0, maximum=MAX_SPIN_NS / 1e3)
#: How long to wait for the firmware's first answer, s.
CONNECT_TIMEOUT_S = duration("s", maximum=3600.0)


class FirmwareLink:
    """Client side of the firmware protocol over one DEALER socket.

    Args:
        endpoint: the firmware's endpoint, e.g. ``tcp://127.0.0.1:5555``.
        role: ``controller`` or ``monitor`` (informational).
        clock: monotonic clock, integer ns.

    Attributes:
        info: the firmware's :class:`~tailguard.firmware_sim.messages.Info` after :meth:`handshake`.
        events: status events received, oldest first, as (event, detail) (bounded).
        rejected: incoming messages dropped, per reason.
        observations: observations received (including skipped stale ones).
    """

    def __init__(
        self,
        endpoint: str,
        *,
        role: str = "controller",
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        import zmq

        self._zmq = zmq
        self._clock = clock
        self._ctx = zmq.Context()
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 16)
        sock.setsockopt(zmq.RCVHWM, 1024)
        sock.setsockopt(zmq.MAXMSGSIZE, 1 << 20)
        sock.connect(endpoint)
        self._sock = sock
        self.endpoint = endpoint
        self.role = role
        self._seq = 0
        self.info: wire.Info | None = None
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.rejected: Counter[str] = Counter()
        self.observations = 0
        self.last_obs: wire.Observation | None = None

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _send(self, msg: wire.Message) -> None:
        try:
            self._sock.send(wire.encode(msg), flags=self._zmq.NOBLOCK)
        except self._zmq.Again:
            self.rejected["send_queue_full"] += 1

    def hello(self) -> None:
        """Announce (or keep alive) this client; the firmware answers with ``info``."""
        self._send(wire.Hello(self._next_seq(), self._clock(), self.role))

    def _handle(self, raw: bytes) -> None:
        """Handle one non-observation message (status, info)."""
        msg = wire.parse(raw)
        if isinstance(msg, wire.Reject):
            self.rejected[msg.value] += 1
        elif isinstance(msg, wire.Status):
            if len(self.events) < 10_000:
                self.events.append((msg.event, msg.detail))
        elif isinstance(msg, wire.Info):
            self.info = msg
        else:
            self.rejected[wire.Reject.WRONG_DIRECTION.value] += 1

    def drain(self) -> wire.Observation | None:
        """Read everything queued; handle events; return the newest new observation.

        Observations are recognized without unpacking (their ``type`` key), so only the
        newest one is parsed.
        """
        zmq = self._zmq
        latest: bytes | None = None
        while True:
            try:
                raw = self._sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            if b"\xa4type\xa3obs" in raw[:32]:
                latest = raw
                self.observations += 1
            else:
                self._handle(raw)
        if latest is None:
            return None
        msg = wire.parse(latest)
        if isinstance(msg, wire.Observation):
            return msg
        self.rejected[msg.value if isinstance(msg, wire.Reject) else "wrong_direction"] += 1
        return None

    def wait(self, until: Callable[[], bool], timeout_ns: int) -> bool:
        """Drain and poll until ``until()`` holds or ``timeout_ns`` elapses (hello each 0.5 s)."""
        end = self._clock() + timeout_ns
        next_hello = 0
        while not until():
            now = self._clock()
            if now >= end:
                return False
            if now >= next_hello:
                self.hello()
                next_hello = now + _NS_PER_S // 2
            if self._sock.poll(50):
                obs = self.drain()
                if obs is not None:
                    self.last_obs = obs
        return True

    def handshake(
        self,
        timeout_ns: int = 10 * _NS_PER_S,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> wire.Info:
        """Say hello until the firmware answers with ``info`` and an observation arrives.

        Args:
            timeout_ns: how long to wait, ns.
            should_stop: polled every 50 ms; a stop request ends the wait early.

        Raises:
            TailguardError: no answer within ``timeout_ns``, or stopped before one.
        """
        self.wait(
            lambda: (self.info is not None and self.last_obs is not None) or should_stop(),
            timeout_ns,
        )
        if self.info is None or self.last_obs is None:
            if should_stop():
                raise TailguardError(
                    f"stopped before the firmware at {self.endpoint} answered (signal)"
                )
            raise TailguardError(
                f"no firmware answered at {self.endpoint} within {timeout_ns / 1e9:g} s; "
                "start it with `tailguard firmware --bind ...` and check the address"
            )
        return self.info

    def command(self, action: np.ndarray, obs_seq: int) -> None:
        """Send one action (float32-converted) answering observation ``obs_seq``."""
        self._send(wire.Command(self._next_seq(), self._clock(), action, obs_seq))

    def close(self) -> None:
        """Close the socket and its context."""
        self._sock.close(0)
        self._ctx.term()


def run_policy(
    policy_path: str | Path,
    endpoint: str,
    *,
    rate_hz: float,
    envelope_path: str | Path | None = None,
    duration_s: float | None = None,
    fallback: str = "hold",
    deadline_ms: float | None = None,
    spin_us: float = 150.0,
    should_stop: Callable[[], bool] = lambda: False,
    connect_timeout_s: float = 10.0,
    on_ready: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run a guarded policy against a firmware process in wall-clock time.

    Args:
        policy_path: ONNX policy (obs -> actions) matching the firmware's sizes.
        endpoint: the firmware's endpoint.
        rate_hz: control rate, Hz.
        envelope_path: envelope JSON, written for this rate's period (the same rule as
            ``replay``: :func:`tailguard.envelope.period.require_period`); None uses
            ``starter_envelope`` for this rate (and the firmware's action range) --
            placeholder thresholds, not audited.
        duration_s: stop after this many seconds; None runs until ``should_stop()``.
        fallback: the guard's fallback, ``hold`` or ``zero``.
        deadline_ms: the guard's inference deadline, ms; None disables deadline mode.
        spin_us: pacer busy-spin before each deadline, us.
        should_stop: polled once per tick, and between the pacer's sleep slices.
        connect_timeout_s: how long to wait for the firmware's answer, s.
        on_ready: called with a one-line description once the firmware answered and the
            guard is built, just before the loop starts.

    Returns:
        A JSON-ready summary: ticks, pacer lateness, observation age, guard stats, the
        firmware events seen.

    Raises:
        TailguardError: policy or envelope unusable (or made for another period), sizes
            differ from the firmware's, or no firmware answered.
    """
    from tailguard.envelope.model import load_envelope, starter_envelope
    from tailguard.runtime.guard import Guard
    from tailguard.runtime.pacer import Pacer
    from tailguard.runtime.policy import OnnxPolicy

    # The same ranges as the `tailguard run` flags, for callers that skip the CLI.
    if duration_s is not None:
        require(DURATION_S, duration_s, "duration_s")
    if deadline_ms is not None:
        require(DEADLINE_MS, deadline_ms, "deadline_ms")
    require(SPIN_US, spin_us, "spin_us")
    require(CONNECT_TIMEOUT_S, connect_timeout_s, "connect_timeout_s")
    clock = time.monotonic_ns
    policy = OnnxPolicy(policy_path)
    pacer = Pacer(rate_hz, spin_ns=round(spin_us * 1e3), clock=clock, should_stop=should_stop)
    loaded = None
    if envelope_path is not None:  # refuse a wrong envelope before talking to the firmware
        loaded = load_envelope(envelope_path)
        require_period(loaded, pacer.period_ns, where=f"--rate-hz {rate_hz:g}", path=envelope_path)
    link = FirmwareLink(endpoint, role="controller", clock=clock)
    guard = None
    try:
        info = link.handshake(round(connect_timeout_s * _NS_PER_S), should_stop)
        if (policy.obs_size, policy.action_size) != (info.obs_size, info.action_size):
            raise TailguardError(
                f"policy {Path(policy_path).name} maps {policy.obs_size} observations to "
                f"{policy.action_size} actions, but firmware {info.env} has "
                f"{info.obs_size} -> {info.action_size}"
            )
        if loaded is not None:
            envelope = loaded
        else:
            envelope = starter_envelope(
                obs_size=info.obs_size,
                action_size=info.action_size,
                period_ns=pacer.period_ns,
                sha256=policy.sha256,
                action_low=[float(x) for x in info.action_low],
                action_high=[float(x) for x in info.action_high],
            )
        deadline_ns = None if deadline_ms is None else round(deadline_ms * 1e6)
        guard = Guard(policy, envelope, fallback=fallback, clock=clock, deadline_ns=deadline_ns)
        obs = link.last_obs
        if obs is None:  # handshake() waited for one; keeps the type checker honest
            raise TailguardError(f"firmware at {endpoint} sent no observation")
        guard.warm_up(obs.obs)
        lateness = LogLinearHistogram(2, 10 * _NS_PER_S)
        obs_age = LogLinearHistogram(2, 10 * _NS_PER_S)
        stale_ticks = 0
        t_start = clock()
        end_ns = None if duration_s is None else t_start + round(duration_s * _NS_PER_S)
        if on_ready is not None:
            on_ready(
                f"connected to {info.env} at {endpoint}; {rate_hz:g} Hz, obs {info.obs_size}, "
                f"actions {info.action_size}"
            )
        pacer.start()
        pacer.stop_at_ns = end_ns  # a slow rate still ends on time
        exit_reason = "signal"
        while not should_stop():
            lateness_ns = pacer.wait()
            if lateness_ns == STOPPED:  # a stop request or the end, seen mid-wait
                if not should_stop():
                    exit_reason = "duration"
                break
            lateness.record(lateness_ns)
            fresh = link.drain()
            if fresh is None:
                stale_ticks += 1
            else:
                obs = fresh
            action = guard.step(obs.obs, obs_timestamp_ns=obs.t_ns)
            link.command(action, obs.seq)
            obs_age.record(max(0, clock() - obs.t_ns))
            if end_ns is not None and clock() >= end_ns:
                exit_reason = "duration"
                break
        duration_ns = clock() - t_start
        return {
            "schema": "tailguard.run/1",
            "endpoint": endpoint,
            "env": info.env,
            "policy": str(policy_path),
            "rate_hz": rate_hz,
            "exit_reason": exit_reason,
            "duration_ns": duration_ns,
            "ticks": pacer.ticks,
            "missed_cycles": pacer.missed_cycles,
            "ticks_without_new_obs": stale_ticks,
            "pacer_lateness_ns": histogram_summary(lateness),
            "obs_age_ns": histogram_summary(obs_age),
            "observations_received": link.observations,
            "messages_rejected": dict(link.rejected),
            "firmware_events": dict(Counter(e for e, _ in link.events)),
            "guard": guard.stats(),
        }
    finally:
        if guard is not None:
            guard.close()
        link.close()

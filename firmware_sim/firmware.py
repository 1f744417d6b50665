"""A wall-clock "firmware" process: MuJoCo stepped in real time, commanded over ZMQ.

The firmware owns the robot (a gymnasium MuJoCo env's model and data), steps physics at
the physics rate on an absolute-deadline grid (:class:`guard.Pacer`), publishes timestamped
observations and applies the actions controllers send. It is what a policy process talks
to on a real robot, with the faults a real link has injected on purpose.

Transport: one ZMQ ROUTER socket bound at ``bind`` (loopback only unless
``allow_remote``). Clients use DEALER sockets. ROUTER/DEALER was chosen over PUB/SUB + PUSH
because it needs one endpoint, carries both directions, tells the firmware who is talking
(so observations go to the peers that asked, and a restarted controller is a new peer), and
never blocks the sender: ROUTER drops a message for a peer whose queue is full or who is
gone. PAIR was rejected because it does not reconnect reliably over TCP.

Protocol (schema in :mod:`tailguard.firmware_sim.messages`): a client sends ``hello`` and gets
``info``; from then on it receives every ``publish_every``-th observation and all status
events. A peer that sends nothing for ``peer_timeout_ns`` is forgotten (``hello`` again to
stay subscribed; commands count too). Commands (``cmd``) carry one action.

Watchdog: if no valid command has been applied for ``command_timeout_ns``, the firmware
switches to damping (zero torque for motors, hold-current-position for position servos)
and broadcasts ``watchdog_trip``; the next valid command restores control and broadcasts
``watchdog_recover`` with the length of the gap. It starts in damping.

Faults: ``link_latency`` (a :func:`tailguard.firmware_sim.profile_spec.parse_profile` spec) delays
every delivered command, ``drop_prob`` drops commands at random, ``cpu_burn_threads``
threads compete for the CPU (``cpu_burn_gil``: spinning in Python and holding the GIL, like
a busy thread of the same process; otherwise hashing, which releases the GIL, like another
process).

Modules: the settings are :mod:`~tailguard.firmware_sim.firmware_config`, the watchdog
:mod:`~tailguard.firmware_sim.watchdog`, the injected faults
:mod:`~tailguard.firmware_sim.link_faults`; this module is the process around them (their
names stay importable from here).

HOT PATH: :meth:`Firmware.run`'s loop. It never raises on input: malformed, oversized or
unexpected messages are dropped and counted by :class:`~tailguard.firmware_sim.messages.Reject`
reason.
"""

from __future__ import annotations

import gc
import heapq
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from tailguard.errors import ConfigError, TailguardError
from tailguard.firmware_sim import messages as wire
from tailguard.firmware_sim.firmware_config import FirmwareConfig, check_endpoint
from tailguard.firmware_sim.link_faults import LinkFaults, burn_cpu
from tailguard.firmware_sim.watchdog import CommandWatchdog
from tailguard.runtime.pacer import STOPPED, Pacer
from tailguard.stats.histogram import LogLinearHistogram

__all__ = [
    "SUMMARY_SCHEMA",
    "CommandWatchdog",
    "Firmware",
    "FirmwareConfig",
    "LinkFaults",
    "check_endpoint",
    "histogram_summary",
]

SUMMARY_SCHEMA = "tailguard.firmware/1"
_NS_PER_S = 1_000_000_000
_MAX_PEERS = 16
_MAX_GAPS = 100
_MAX_EVENTS = 256
_ZMQ_MAX_FRAME_BYTES = 1 << 20  # larger frames make ZMQ drop the connection outright


def histogram_summary(hist: LogLinearHistogram) -> dict[str, int]:
    """count, p50, p90, p99, p999 and max of a histogram of ns values (all 0 when empty: the
    same keys whatever the run, with ``count`` saying whether there was anything)."""
    n = hist.total_count
    out = {"count": n}
    if n == 0:
        return {**out, "p50": 0, "p90": 0, "p99": 0, "p999": 0, "max": 0}
    for key, q in (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p999", 99.9)):
        out[key] = hist.value_at_percentile(q)
    out["max"] = hist.max_value
    return out


class Firmware:
    """The firmware loop around one MuJoCo model (see the module docstring).

    Args:
        config: validated settings.
        clock: monotonic clock, integer ns (timestamps on the wire use it).
        on_event: called with (event, detail) for every status event (from the loop
            thread; keep it short).

    Attributes:
        endpoint: the bound endpoint (a ``*`` port resolved).
        period_ns: physics period, ns.

    Raises:
        TailguardError: unknown env, bad settings, address in use.
        MissingExtraError: mujoco/gymnasium not installed.
    """

    def __init__(
        self,
        config: FirmwareConfig,
        *,
        clock: Callable[[], int] = time.monotonic_ns,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        import zmq

        from tailguard.firmware_sim.tasks import import_mujoco

        mujoco, gymnasium = import_mujoco()
        self.config = config
        self._clock = clock
        self._on_event = on_event
        try:
            env = gymnasium.make(config.env_id)
        except Exception as exc:  # gymnasium raises several types for unknown ids
            raise TailguardError(f"cannot make environment {config.env_id!r}: {exc}") from None
        u = env.unwrapped
        if not all(hasattr(u, a) for a in ("model", "data", "_get_obs")):
            raise TailguardError(
                f"{config.env_id} is not a gymnasium MuJoCo env (no model/data/_get_obs)"
            )
        env.reset(seed=config.seed)
        self._env = env
        self._mj_step = mujoco.mj_step
        self.model, self.data, self._get_obs = u.model, u.data, u._get_obs
        if config.physics_rate_hz is not None:
            self.model.opt.timestep = 1.0 / config.physics_rate_hz
        self.physics_rate_hz = 1.0 / float(self.model.opt.timestep)
        self.period_ns = round(float(self.model.opt.timestep) * _NS_PER_S)
        nu = int(self.model.nu)
        self.action_size = nu
        self.obs_size = int(np.asarray(self._get_obs()).size)
        rng = np.asarray(self.model.actuator_ctrlrange, dtype=np.float64).reshape(nu, 2)
        limited = np.asarray(self.model.actuator_ctrllimited, dtype=bool).reshape(nu)
        self._low = np.where(limited, rng[:, 0], -np.inf)
        self._high = np.where(limited, rng[:, 1], np.inf)
        # Position servos hold where they are when damping; motors go to zero torque.
        self._servo = np.asarray(self.model.actuator_biastype).reshape(nu) == int(
            mujoco.mjtBias.mjBIAS_AFFINE
        )
        self._faults = LinkFaults(config.link_latency, config.drop_prob, config.seed)

        self._ctx = zmq.Context()
        sock = self._ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 64)
        sock.setsockopt(zmq.RCVHWM, 4096)
        sock.setsockopt(zmq.MAXMSGSIZE, _ZMQ_MAX_FRAME_BYTES)
        try:
            sock.bind(config.bind)
        except zmq.ZMQError as exc:
            sock.close(0)
            self._ctx.term()
            raise TailguardError(f"cannot bind {config.bind}: {exc}") from None
        self._sock = sock
        self._zmq = zmq
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)

        # -- counters and state --
        self._peers: dict[bytes, int] = {}
        self._pending: list[tuple[int, int, bytes, wire.Command]] = []
        self._pending_n = 0
        self._last_applied: tuple[bytes, int] = (b"", -1)
        self._seq = 0
        self.hist_lateness = LogLinearHistogram(2, 10 * _NS_PER_S)
        self.hist_work = LogLinearHistogram(2, 10 * _NS_PER_S)
        self.rejected = dict.fromkeys(wire.Reject, 0)
        self.counts = {
            "received": 0,
            "applied": 0,
            "dropped_injected": 0,
            "stale": 0,
            "hellos": 0,
            "observations_published": 0,
            "send_failed": 0,
            "callback_failed": 0,
        }
        self.gaps_ns: deque[int] = deque(maxlen=_MAX_GAPS)
        self.events: deque[tuple[str, dict[str, Any]]] = deque(maxlen=_MAX_EVENTS)
        self.watchdog = CommandWatchdog(config.command_timeout_ns, clock())
        self.steps = 0
        self._damp()

    # ------------------------------------------------------------------------ actions --
    def _damp(self) -> None:
        ctrl = self.data.ctrl
        ctrl[:] = 0.0
        if self._servo.any():
            ctrl[self._servo] = self.data.actuator_length[self._servo]

    def _apply(self, cmd: wire.Command) -> None:
        np.clip(cmd.action, self._low, self._high, out=self.data.ctrl)

    # -------------------------------------------------------------------------- wire --
    def _send(self, peer: bytes, payload: bytes) -> None:
        try:
            self._sock.send_multipart((peer, payload), flags=self._zmq.NOBLOCK)
        except self._zmq.ZMQError:
            self.counts["send_failed"] += 1

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _emit(self, event: str, detail: dict[str, Any]) -> None:
        now = self._clock()
        self.events.append((event, detail))
        payload = wire.encode(wire.Status(self._next_seq(), now, event, detail))
        for peer in self._peers:
            self._send(peer, payload)
        if self._on_event is not None:
            try:
                self._on_event(event, detail)
            except Exception:  # e.g. a closed stderr: the loop must keep running
                self.counts["callback_failed"] += 1

    def _info(self) -> bytes:
        c = self.config
        return wire.encode(
            wire.Info(
                self._next_seq(),
                self._clock(),
                c.env_id,
                self.obs_size,
                self.action_size,
                np.maximum(self._low, np.finfo(np.float32).min),
                np.minimum(self._high, np.finfo(np.float32).max),
                self.physics_rate_hz,
                c.command_timeout_ns,
            )
        )

    def _add_peer(self, peer: bytes, now_ns: int) -> None:
        if peer not in self._peers and len(self._peers) >= _MAX_PEERS:
            oldest = min(self._peers, key=self._peers.__getitem__)
            del self._peers[oldest]
        self._peers[peer] = now_ns

    def _receive(self, now_ns: int) -> None:
        """Drain up to max_messages_per_tick messages; never raises on their content."""
        zmq = self._zmq
        sock, rejected, counts = self._sock, self.rejected, self.counts
        events, pollin = zmq.EVENTS, zmq.POLLIN
        for _ in range(self.config.max_messages_per_tick):
            if not sock.getsockopt(events) & pollin:
                return  # cheaper than a NOBLOCK recv raising Again on every idle tick
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            except zmq.ZMQError:
                rejected[wire.Reject.BAD_FRAMES] += 1
                continue
            if len(frames) != 2:
                rejected[wire.Reject.BAD_FRAMES] += 1
                continue
            peer, payload = frames
            msg = wire.parse(payload)
            if isinstance(msg, wire.Reject):
                rejected[msg] += 1
            elif isinstance(msg, wire.Command):
                if msg.action.size != self.action_size:
                    rejected[wire.Reject.ACTION_SIZE] += 1
                elif not np.isfinite(msg.action).all():
                    rejected[wire.Reject.NONFINITE] += 1
                else:
                    counts["received"] += 1
                    self._add_peer(peer, now_ns)
                    due_ns = self._faults.delivery_ns(now_ns)
                    if due_ns is None:
                        counts["dropped_injected"] += 1
                    else:
                        self._pending_n += 1
                        heapq.heappush(self._pending, (due_ns, self._pending_n, peer, msg))
            elif isinstance(msg, wire.Hello):
                counts["hellos"] += 1
                self._add_peer(peer, now_ns)
                self._send(peer, self._info())
            else:
                rejected[wire.Reject.WRONG_DIRECTION] += 1

    def _deliver(self, now_ns: int) -> None:
        pending = self._pending
        while pending and pending[0][0] <= now_ns:
            _, _, peer, cmd = heapq.heappop(pending)
            last_peer, last_seq = self._last_applied
            if peer == last_peer and cmd.seq <= last_seq:
                self.counts["stale"] += 1  # overtaken on the link by a newer command
                continue
            self._last_applied = (peer, cmd.seq)
            self._apply(cmd)
            self.counts["applied"] += 1
            gap_ns = self.watchdog.command(now_ns)
            if gap_ns is not None:
                self.gaps_ns.append(gap_ns)
                self._emit("watchdog_recover", {"gap_ns": gap_ns, "cmd_seq": cmd.seq})

    def _publish(self, now_ns: int) -> None:
        if not self._peers:
            return
        obs = wire.Observation(
            self._next_seq(),
            now_ns,
            np.asarray(self._get_obs(), dtype=np.float32),
            self.steps * self.period_ns,
            "damping" if self.watchdog.tripped else "active",
            self._last_applied[1],
        )
        payload = wire.encode(obs)
        for peer in self._peers:
            self._send(peer, payload)
        self.counts["observations_published"] += 1

    def _expire_peers(self, now_ns: int) -> None:
        limit = now_ns - self.config.peer_timeout_ns
        for peer in [p for p, seen in self._peers.items() if seen < limit]:
            del self._peers[peer]

    # --------------------------------------------------------------------------- run --
    def run(
        self,
        *,
        should_stop: Callable[[], bool] = lambda: False,
        duration_ns: int | None = None,
        on_ready: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        """Run the real-time loop until ``should_stop()`` or ``duration_ns`` elapses.

        Args:
            should_stop: polled once per physics step, and between the pacer's sleep
                slices when a step is far away (e.g. set by a signal handler).
            duration_ns: stop after this long, ns; None runs until stopped.
            on_ready: called once the loop is about to take its first step.

        Returns:
            The summary (see :meth:`summary`).

        Raises:
            ConfigError: ``duration_ns`` is not a positive integer within int64.
        """
        if duration_ns is not None and (
            isinstance(duration_ns, bool)
            or not isinstance(duration_ns, int)
            or not 0 < duration_ns < 1 << 63
        ):
            raise ConfigError(
                f"duration_ns must be a positive int64 number of ns, got {duration_ns!r}"
            )
        cfg = self.config
        clock = self._clock
        stop_burn = threading.Event()
        burners = [
            threading.Thread(target=burn_cpu, args=(stop_burn, cfg.cpu_burn_gil), daemon=True)
            for _ in range(cfg.cpu_burn_threads)
        ]
        for t in burners:
            t.start()
        pacer = Pacer(
            self.physics_rate_hz, spin_ns=cfg.spin_ns, clock=clock, should_stop=should_stop
        )
        rec_late, rec_work = self.hist_lateness.record, self.hist_work.record
        mj_step, model, data = self._mj_step, self.model, self.data
        publish_every = cfg.publish_every
        report_ns = cfg.report_every_ns
        # A full collection of a loaded process costs milliseconds (a large one, seconds):
        # start with nothing old, and before the run's clock starts, so it eats no run time.
        gc.collect()
        gc.freeze()
        t_start = clock()
        self.watchdog = CommandWatchdog(cfg.command_timeout_ns, t_start)
        end_ns = None if duration_ns is None else t_start + duration_ns
        pacer.stop_at_ns = end_ns  # a slow physics rate still ends on time
        next_report = t_start + report_ns if report_ns else None
        next_expire = t_start + _NS_PER_S
        reason = "stopped"
        if on_ready is not None:
            on_ready()
        pacer.start()
        try:
            while True:
                lateness_ns = pacer.wait()
                if lateness_ns == STOPPED:  # a stop request or the end, seen mid-wait
                    reason = "signal" if should_stop() else "duration"
                    break
                rec_late(lateness_ns)
                now = clock()
                self._receive(now)
                if self._pending:
                    self._deliver(now)
                silence = self.watchdog.check(now)
                if silence is not None:
                    self._damp()
                    self._emit(
                        "watchdog_trip",
                        {"silence_ns": silence, "timeout_ns": cfg.command_timeout_ns},
                    )
                mj_step(model, data)
                self.steps += 1
                if self.steps % publish_every == 0:
                    self._publish(clock())
                if next_report is not None and now >= next_report:
                    next_report = now + report_ns
                    self._emit("stats", self._stats_detail())
                if now >= next_expire:
                    next_expire = now + _NS_PER_S
                    self._expire_peers(now)
                rec_work(clock() - now)
                if should_stop():
                    reason = "signal"
                    break
                if end_ns is not None and now >= end_ns:
                    reason = "duration"
                    break
        finally:
            stop_burn.set()
            for t in burners:
                t.join(timeout=1.0)
            gc.unfreeze()
        self._missed = pacer.missed_cycles
        self._duration_ns = clock() - t_start
        summary = self.summary(reason)
        self._emit("shutdown", self._stats_detail())
        return summary

    def _stats_detail(self) -> dict[str, Any]:
        lat = histogram_summary(self.hist_lateness)
        return {
            "steps": self.steps,
            "lateness_p50_us": lat.get("p50", 0) / 1e3,
            "lateness_p99_us": lat.get("p99", 0) / 1e3,
            "lateness_max_us": lat.get("max", 0) / 1e3,
            "applied": self.counts["applied"],
            "rejected": sum(self.rejected.values()),
            "mode": "damping" if self.watchdog.tripped else "active",
        }

    def summary(self, exit_reason: str = "stopped") -> dict[str, Any]:
        """Everything measured so far, JSON-ready (times in ns, tails also in us)."""
        cfg = self.config
        lat = histogram_summary(self.hist_lateness)
        return {
            "schema": SUMMARY_SCHEMA,
            "env": cfg.env_id,
            "endpoint": self.endpoint,
            "physics_rate_hz": self.physics_rate_hz,
            "period_ns": self.period_ns,
            "exit_reason": exit_reason,
            "duration_ns": getattr(self, "_duration_ns", 0),
            "steps": self.steps,
            "sim_time_ns": self.steps * self.period_ns,
            "missed_cycles": getattr(self, "_missed", 0),
            "lateness_ns": lat,
            "lateness_us": {k: v / 1e3 for k, v in lat.items() if k != "count"},
            "work_ns": histogram_summary(self.hist_work),
            "commands": {
                **{k: self.counts[k] for k in ("received", "applied", "dropped_injected")},
                "stale": self.counts["stale"],
                "pending": len(self._pending),
                "rejected": {r.value: n for r, n in self.rejected.items() if n},
                "rejected_total": sum(self.rejected.values()),
            },
            "watchdog": {
                "timeout_ns": cfg.command_timeout_ns,
                "mode": "damping" if self.watchdog.tripped else "active",
                "trips": self.watchdog.trips,
                "recoveries": self.watchdog.recoveries,
                "gaps_ns": list(self.gaps_ns),
            },
            "link": {
                "hellos": self.counts["hellos"],
                "peers": len(self._peers),
                "observations_published": self.counts["observations_published"],
                "send_failed": self.counts["send_failed"],
                "event_callback_failed": self.counts["callback_failed"],
            },
            "faults": {
                "link_latency": cfg.link_latency,
                "drop_prob": cfg.drop_prob,
                "cpu_burn_threads": cfg.cpu_burn_threads,
                "cpu_burn_gil": cfg.cpu_burn_gil,
                "link_latency_clamped": self._faults.clamped,
            },
        }

    def close(self) -> None:
        """Close the socket, the ZMQ context and the env."""
        self._sock.close(0)
        self._ctx.term()
        self._env.close()

    def __enter__(self) -> Firmware:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""`tailguard demo`: a guarded loop on a small built-in plant with injected latency spikes.

The plant is an inverted pendulum (unstable: it falls in about half a second without
control) balanced at 50 Hz by a linear state-feedback controller exported to ONNX, which
stands in for a trained policy here (the MuJoCo demo with trained policies replaces it once
firmware_sim lands). Everything runs in simulated time on an injected clock, so the run is
deterministic for a seed and takes well under a second.

Inference latency follows a long-tail profile: lognormal around 2 ms, plus GC-pause-like
bursts (every ~4 s, 3 consecutive inferences of 60-90 ms). The control loop is a single
thread, as on most robots: a slow inference delays the action *and* the next tick, and the
actuator keeps the previous command meanwhile.

The same scenario runs three times with the same seed (same disturbance torques):

* nominal timing -- no bursts, unguarded: shows the controller itself is adequate;
* spikes, unguarded -- the policy's actions are applied whenever they arrive (a Guard with every
  response set to "log" still measures, so both columns come from the same code);
* spikes, guarded -- deadline mode (5 ms): a late inference is abandoned at the deadline, the
  fallback answers (a PD law evaluated in-process, no inference latency), and the loop
  keeps its period. While an abandoned inference is still running, later ticks miss too.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from guard.core import Guard
from guard.envelope import Envelope, PolicyBinding, Recovery, Thresholds, Timing, Window
from guard.onnx_build import linear_bytes
from guard.policy import OnnxPolicy
from guard.state import DEFAULT_RESPONSES, Response, Violation

__all__ = ["run_demo", "DemoResult"]

MS = 1_000_000
PERIOD_NS = 20 * MS
PHYSICS_NS = 1 * MS
G_OVER_L = 98.0  # g / l with l = 0.1 m: open-loop e-folding time ~100 ms
DAMPING = 0.5
TORQUE_LIMIT = 150.0
FALL_RAD = 0.6
DISTURBANCE_STD = 40.0  # rad/s^2 of process noise
# u = -K [theta, theta_dot]: poles well inside the stable region at 50 Hz
GAIN = np.array([[-200.0], [-25.0]], dtype=np.float32)
FALLBACK_GAIN = np.array([160.0, 20.0])


@dataclasses.dataclass
class DemoResult:
    """One scenario's outcome: guard statistics plus what happened to the plant."""

    label: str
    stats: dict[str, Any]
    fell_at_s: float | None
    max_angle_rad: float
    rms_angle_rad: float


class _LatencyModel:
    """Seeded long-tail inference latency with GC-pause-like bursts (ns)."""

    def __init__(self, seed: int, bursts: bool = True) -> None:
        self.rng = np.random.default_rng(seed)
        self.bursts = bursts
        self.burst_left = 0
        self.next_burst_tick = int(self.rng.integers(150, 250))
        self.tick = 0

    def sample(self) -> int:
        self.tick += 1
        if self.bursts and self.tick >= self.next_burst_tick:
            self.burst_left = 3
            self.next_burst_tick = self.tick + int(self.rng.integers(150, 250))
        if self.burst_left:
            self.burst_left -= 1
            return int(self.rng.uniform(60, 90) * MS)
        return int(self.rng.lognormal(math.log(2.0), 0.35) * MS)


class _SimClock:
    def __init__(self) -> None:
        self.now_ns = 0

    def __call__(self) -> int:
        return self.now_ns


def _envelope(sha256: str | None, monitor_only: bool) -> Envelope:
    responses = dict(DEFAULT_RESPONSES)
    if monitor_only:
        responses = {
            v: (Response.LOG if Response.LOG in _allowed(v) else r) for v, r in responses.items()
        }
    return Envelope(
        policy=PolicyBinding(
            sha256=sha256,
            obs_size=2,
            action_size=1,
            action_low=(-TORQUE_LIMIT,),
            action_high=(TORQUE_LIMIT,),
        ),
        timing=Timing(
            period_ns=PERIOD_NS,
            dt=Thresholds(p99_ns=25 * MS, max_ns=30 * MS),
            latency=Thresholds(p50_ns=5 * MS, max_ns=10 * MS),
            max_consecutive_overruns=1,
        ),
        window=Window(ticks=250, check_every_ticks=10),
        recovery=Recovery(recovery_ticks=10, dwell_ns=200 * MS, max_hold_ticks=2),
        responses=responses,
    )


def _allowed(v: Violation) -> frozenset[Response]:
    from guard.state import ALLOWED_RESPONSES

    return ALLOWED_RESPONSES[v]


def _run(
    policy_path: Path, seconds: float, seed: int, guarded: bool, bursts: bool, label: str
) -> DemoResult:
    clock = _SimClock()
    latency = _LatencyModel(seed, bursts)
    policy = OnnxPolicy(policy_path)
    deadline_ns = 5 * MS
    busy_until = [0]
    pending = [0]
    missed = [False]

    def timed(run: Any) -> Any:
        def call(arg: Any) -> None:
            start = clock.now_ns
            if guarded and start < busy_until[0]:  # the abandoned inference still runs
                clock.now_ns = busy_until[0] + 1
                missed[0] = True
                return
            clock.now_ns = start + pending[0]
            if guarded and pending[0] > deadline_ns:
                missed[0] = True
                busy_until[0] = start + pending[0]
            run(arg)

        return call

    policy._run_fn = timed(policy._run_fn)

    def fallback(obs: np.ndarray) -> np.ndarray:
        return -FALLBACK_GAIN @ obs.astype(np.float64)

    guard = Guard(
        policy,
        _envelope(policy.sha256, monitor_only=not guarded),
        fallback=fallback if guarded else "hold",
        clock=clock,
        deadline_ns=deadline_ns if guarded else None,
        deadline_mode="inline",
    )
    push = _Disturbance(seed, DISTURBANCE_STD)
    theta, omega = 0.05, 0.0
    command = 0.0
    t_plant = 0
    t_next = 0
    end = int(seconds * 1e9)
    angles: list[float] = []
    fell_at = None
    while t_next < end:
        t0 = t_next
        # integrate the plant up to tick start with the command currently applied
        theta, omega, t_plant = _integrate(theta, omega, command, t_plant, t0, angles, push)
        pending[0] = latency.sample()
        clock.now_ns = t0
        missed[0] = False
        action = float(guard.step(np.array([theta, omega], dtype=np.float32))[0])
        if missed[0]:
            t_apply = t0 + deadline_ns
            t_next = t0 + PERIOD_NS
        else:
            t_apply = clock.now_ns
            t_next = max(t0 + PERIOD_NS, t_apply)
        theta, omega, t_plant = _integrate(theta, omega, command, t_plant, t_apply, angles, push)
        command = action
        if abs(theta) > FALL_RAD:
            fell_at = t_plant / 1e9
            break
    arr = np.abs(np.array(angles or [theta]))
    return DemoResult(
        label=label,
        stats=guard.stats(),
        fell_at_s=fell_at,
        max_angle_rad=float(arr.max()),
        rms_angle_rad=float(np.sqrt(np.mean(arr**2))),
    )


class _Disturbance:
    """Seeded process noise: a torque redrawn every 10 ms (contacts, cable drag, wind)."""

    def __init__(self, seed: int, std: float) -> None:
        self.values = np.random.default_rng(seed + 10_000).normal(0.0, std, 100_000)

    def at(self, t_ns: int) -> float:
        return float(self.values[(t_ns // (10 * MS)) % len(self.values)])


def _integrate(
    theta: float,
    omega: float,
    torque: float,
    t: int,
    until: int,
    trace: list[float],
    push: _Disturbance,
) -> tuple[float, float, int]:
    h = PHYSICS_NS / 1e9
    while t + PHYSICS_NS <= until:
        omega += h * (G_OVER_L * math.sin(theta) - DAMPING * omega + torque + push.at(t))
        theta += h * omega
        t += PHYSICS_NS
        trace.append(theta)
        if abs(theta) > FALL_RAD:
            break
    return theta, omega, t


def run_demo(seconds: float = 30.0, seed: int = 0) -> list[DemoResult]:
    """Run nominal timing, then latency spikes unguarded and guarded, with the same seed."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pendulum_policy.onnx"
        path.write_bytes(linear_bytes(GAIN))
        return [
            _run(path, seconds, seed, guarded=False, bursts=False, label="nominal timing"),
            _run(path, seconds, seed, guarded=False, bursts=True, label="spikes, unguarded"),
            _run(path, seconds, seed, guarded=True, bursts=True, label="spikes, guarded"),
        ]


def format_results(results: list[DemoResult]) -> str:
    """The before/after table printed by `tailguard demo`."""
    from guard.cli_table import render_table

    rows: list[list[str]] = []

    def row(name: str, fn: Any) -> None:
        rows.append([name, *[fn(r) for r in results]])

    row("ticks", lambda r: str(r.stats["ticks"]))
    row("outcome", lambda r: f"FELL at {r.fell_at_s:.2f} s" if r.fell_at_s else "balanced")
    row("max |angle| (deg)", lambda r: f"{math.degrees(r.max_angle_rad):.1f}")
    row("rms angle (deg)", lambda r: f"{math.degrees(r.rms_angle_rad):.2f}")
    kinds = sorted({k for r in results for k, n in r.stats["violations"].items() if n})
    for k in kinds:
        row(f"violations: {k}", lambda r, k=k: str(r.stats["violations"][k]))
    for s in ("nominal", "hold", "fallback", "latched"):
        row(
            f"time in {s} (s)",
            lambda r, s=s: f"{r.stats['state_time_ns'][s] / 1e9:.2f}",
        )
    for metric in ("dt_ns", "latency_ns"):
        for p in ("p50", "p99", "max"):
            row(
                f"{metric[:-3]} {p} (ms)",
                lambda r, m=metric, p=p: f"{r.stats[m]['lifetime'].get(p, 0) / 1e6:.2f}",
            )
    return render_table(["", *[r.label for r in results]], rows)

"""`tailguard demo`: a shipped Hopper-v5 policy replayed in MuJoCo under a latency long tail.

With the ``sim`` extra (mujoco, gymnasium) and the policies shipped in ``tailguard/policies``
(package data)
(``hopper_nominal.onnx``, trained with plain timing, and ``hopper_robust.onnx``, trained with
randomized timing; see that folder's README), the demo replays Hopper-v5 in simulated time
with ``firmware_sim`` (2 ms physics substeps, 8 ms control period, the previous command held
until a late one arrives) and the runtime ``Guard`` on the simulated clock. Paired episodes
(reset seeds ``seed, seed + 1, ...``; one episode per 8 s of ``seconds``) in four scenarios:

* nominal timing -- the nominal policy, zero latency (a monitor-only guard measures: it
  records violations but never acts, so every column comes from the same code);
* long tail, unguarded -- the same policy, inference latency lognormal (median 4.8 ms,
  sigma 1.0, cap 40 ms), monitor-only guard;
* long tail, guarded -- the same latency; the guard (starter envelope: placeholder
  thresholds from the 8 ms period, not audited) holds on a late tick and switches to the
  timing-robust policy as fallback when the latency window degrades;
* long tail, robust only -- the timing-robust policy alone under the same latency, so the
  table shows honestly whether the guard adds anything over always running the robust policy.

Actions are clipped to [-1, 1] after the guard (as in training). The fallback's own inference
time is not simulated (only the main policy's is). Angles are the torso pitch (rad). Without
the extra or the policy files, the demo falls back to the built-in inverted pendulum below
(its output says which one ran).

The pendulum demo: an inverted pendulum (unstable: it falls in about half a second without
control) balanced at 50 Hz by a linear state-feedback controller exported to ONNX, with a
long-tail inference latency (lognormal around 2 ms plus GC-pause-like bursts of 3
inferences of 60-90 ms every ~4 s); nominal / spikes unguarded / spikes guarded (deadline
mode, 5 ms, fallback = an in-process PD law). Everything runs in simulated time on an
injected clock, so every run is deterministic for a seed.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from tailguard.envelope.model import Envelope, PolicyBinding, Recovery, Thresholds, Timing, Window
from tailguard.runtime.guard import Guard
from tailguard.runtime.onnx_build import linear_bytes
from tailguard.runtime.policy import OnnxPolicy
from tailguard.runtime.state import DEFAULT_RESPONSES, Response, Violation

__all__ = ["run_demo", "DemoResult", "format_results", "POLICY_DIR"]

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


#: where the shipped policies live: package data of ``tailguard.policies``, in a wheel too
POLICY_DIR = Path(__file__).resolve().parents[1] / "policies"
HOPPER_LONG_TAIL = "lognormal:median_ms=4.8,sigma=1.0,cap_ms=40"
HOPPER_EPISODE_S = 8.0  # 1000 ticks of 8 ms


@dataclasses.dataclass
class DemoResult:
    """One scenario's outcome: guard statistics plus what happened to the robot.

    Attributes:
        label: the scenario.
        stats: guard statistics (summed over the episodes): ``ticks``, ``violations``,
            ``state_time_ns``, ``interventions``, ``dt_ns`` / ``latency_ns``
            ``{"lifetime": percentiles}``.
        fell_at_s: simulated time of the fall, s (pendulum); mean time to fall over the
            episodes that fell (Hopper); None if nothing fell.
        max_angle_rad, rms_angle_rad: max and RMS |angle| (pendulum angle, Hopper torso
            pitch), rad.
        plant: "hopper" or "pendulum".
        episodes, falls: episodes run and how many ended in a fall (1 for the pendulum).
        returns: per-episode return (Hopper; empty for the pendulum).
    """

    label: str
    stats: dict[str, Any]
    fell_at_s: float | None
    max_angle_rad: float
    rms_angle_rad: float
    plant: str = "pendulum"
    episodes: int = 1
    falls: int = 0
    returns: list[float] = dataclasses.field(default_factory=list)

    @property
    def return_mean(self) -> float | None:
        """Mean episode return, or None without returns."""
        return float(np.mean(self.returns)) if self.returns else None


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
    from tailguard.runtime.state import ALLOWED_RESPONSES

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

    policy.set_inference_wrapper(timed)

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
        falls=int(fell_at is not None),
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
    """Run the Hopper scenarios (or the pendulum ones without the sim extra or the shipped
    policies) with the same seed.

    Args:
        seconds: simulated time per scenario (Hopper: one episode per 8 s, at least one).
        seed: the first reset seed (Hopper) / latency and disturbance seed (pendulum).
    """
    if hopper_available():
        return run_hopper_demo(seconds, seed)
    return run_pendulum_demo(seconds, seed)


def run_pendulum_demo(seconds: float = 30.0, seed: int = 0) -> list[DemoResult]:
    """Run nominal timing, then latency spikes unguarded and guarded, with the same seed."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pendulum_policy.onnx"
        path.write_bytes(linear_bytes(GAIN))
        return [
            _run(path, seconds, seed, guarded=False, bursts=False, label="nominal timing"),
            _run(path, seconds, seed, guarded=False, bursts=True, label="spikes, unguarded"),
            _run(path, seconds, seed, guarded=True, bursts=True, label="spikes, guarded"),
        ]


def hopper_available() -> bool:
    """True when mujoco, gymnasium and the shipped Hopper policies are all present."""
    files = ("hopper_nominal.onnx", "hopper_robust.onnx")
    if not all((POLICY_DIR / f).is_file() for f in files):
        return False
    return all(importlib.util.find_spec(m) is not None for m in ("mujoco", "gymnasium"))


def run_hopper_demo(seconds: float = 30.0, seed: int = 0) -> list[DemoResult]:
    """The four Hopper scenarios (see the module docstring), paired by reset seed."""
    episodes = max(1, math.ceil(seconds / HOPPER_EPISODE_S))
    tail = HOPPER_LONG_TAIL
    return [
        _run_hopper("nominal timing", "nominal", None, False, None, episodes, seed),
        _run_hopper("long tail, unguarded", "nominal", tail, False, None, episodes, seed),
        _run_hopper("long tail, guarded", "nominal", tail, True, "robust", episodes, seed),
        _run_hopper("long tail, robust only", "robust", tail, False, None, episodes, seed),
    ]


class _ClippedProbe:
    """Controller around a GuardedController: records the torso pitch, clips the action."""

    def __init__(self, inner: Any, angle_index: int) -> None:
        self.inner = inner
        self.inference = inner.inference
        self.angle_index = angle_index
        self.angles: list[float] = []

    def __call__(self, obs: np.ndarray, obs_time_ns: int) -> np.ndarray:
        self.angles.append(float(obs[self.angle_index]))
        return np.clip(self.inner.guard.step(obs, obs_time_ns), -1.0, 1.0)

    def reset(self) -> None:
        self.inner.reset()

    def stats(self) -> dict[str, Any]:
        return self.inner.stats()  # type: ignore[no-any-return]


def _run_hopper(
    label: str,
    policy_name: str,
    profile: str | None,
    guarded: bool,
    fallback_name: str | None,
    episodes: int,
    seed: int,
) -> DemoResult:
    # Heavy and offline-only: imported here so `import tailguard.tools.demo` stays light.
    from tailguard.envelope.model import starter_envelope
    from tailguard.firmware_sim.guarded import GuardedController
    from tailguard.firmware_sim.loop import SimLoop
    from tailguard.firmware_sim.profile_spec import parse_profile
    from tailguard.firmware_sim.replay import make_task

    task = make_task("Hopper-v5")
    policy = OnnxPolicy(POLICY_DIR / f"hopper_{policy_name}.onnx")
    envelope = starter_envelope(
        obs_size=policy.obs_size,
        action_size=policy.action_size,
        period_ns=task.period_ns,
        sha256=policy.sha256,
    )
    if not guarded:
        envelope = dataclasses.replace(envelope, responses=_monitor_only())
    fallback: Any = "hold"
    if fallback_name is not None:
        fallback = OnnxPolicy(POLICY_DIR / f"hopper_{fallback_name}.onnx")
    probe = _ClippedProbe(GuardedController(policy, envelope, fallback=fallback), 1)
    loop = SimLoop(task, probe, latency=None if profile is None else parse_profile(profile))
    totals: dict[str, Any] = {
        "ticks": 0,
        "violations": {v.value: 0 for v in Violation},
        "state_time_ns": {"nominal": 0, "hold": 0, "fallback": 0, "latched": 0},
        "interventions": 0,
    }
    hists: dict[str, Any] = {}
    returns, fall_times = [], []
    for i in range(episodes):
        r = loop.run_episode(seed + i)
        returns.append(r.ret)
        if r.terminated:
            fall_times.append(r.sim_time_ns / 1e9)
        g = r.guard or {}
        totals["ticks"] += g.get("ticks", 0)
        totals["interventions"] += g.get("interventions", 0)
        for kind, n in g.get("violations", {}).items():
            totals["violations"][kind] += n
        for state, ns in g.get("state_time_ns", {}).items():
            totals["state_time_ns"][state] += ns
        for name, h in probe.inner.guard.histograms().items():
            if name in hists:
                hists[name].merge(h)
            else:
                hists[name] = h
    for name, h in hists.items():
        totals[name] = {"lifetime": _percentiles(h)}
    angles = np.abs(np.asarray(probe.angles or [0.0]))
    return DemoResult(
        label=label,
        stats=totals,
        fell_at_s=float(np.mean(fall_times)) if fall_times else None,
        max_angle_rad=float(angles.max()),
        rms_angle_rad=float(np.sqrt(np.mean(angles**2))),
        plant="hopper",
        episodes=episodes,
        falls=len(fall_times),
        returns=[float(x) for x in returns],
    )


def _monitor_only() -> dict[Violation, Response]:
    """Every response LOG where the state table allows it: the guard measures, never acts."""
    return {
        v: (Response.LOG if Response.LOG in _allowed(v) else r)
        for v, r in DEFAULT_RESPONSES.items()
    }


def _percentiles(h: Any) -> dict[str, int]:
    n = h.total_count
    if n == 0:
        return {"count": 0}
    return {
        "count": n,
        "p50": h.value_at_percentile(50.0),
        "p99": h.value_at_percentile(99.0),
        "max": h.max_value,
    }


def describe(results: list[DemoResult]) -> str:
    """One paragraph saying what ran (printed above the table)."""
    if results and results[0].plant == "hopper":
        return (
            f"tailguard demo: shipped Hopper-v5 policies (tailguard.policies) replayed in MuJoCo "
            f"in simulated time, {results[0].episodes} paired episode(s) per column.\n"
            f"Long tail: inference latency {HOPPER_LONG_TAIL} (8 ms control period). Guarded:"
            " starter envelope (placeholder thresholds, not audited), hold on a late tick,\n"
            "fallback = the timing-robust policy (its own inference time not simulated). "
            "Actions clipped to [-1, 1]."
        )
    return (
        "tailguard demo: (the sim extra or the shipped Hopper policies are missing) an inverted "
        "pendulum balanced at 50 Hz by a linear ONNX controller, latency bursts, deadline 5 ms."
    )


def format_results(results: list[DemoResult]) -> str:
    """The before/after table printed by `tailguard demo` (with a line saying what ran)."""
    from tailguard.tools.cli_table import render_table

    rows: list[list[str]] = []
    hopper = bool(results) and results[0].plant == "hopper"

    def row(name: str, fn: Any) -> None:
        rows.append([name, *[fn(r) for r in results]])

    row("ticks", lambda r: str(r.stats["ticks"]))
    if hopper:
        base = results[0].return_mean or 0.0
        row("episodes / falls", lambda r: f"{r.episodes} / {r.falls}")
        row("mean return", lambda r: f"{r.return_mean:.1f}")
        row("return vs nominal", lambda r: f"{(r.return_mean or 0.0) / base:.2f}" if base else "-")
        row("mean time to fall (s)", lambda r: f"{r.fell_at_s:.2f}" if r.fell_at_s else "-")
        angle = "torso pitch"
    else:
        row("outcome", lambda r: f"FELL at {r.fell_at_s:.2f} s" if r.fell_at_s else "balanced")
        angle = "angle"
    row(f"max |{angle}| (deg)", lambda r: f"{math.degrees(r.max_angle_rad):.1f}")
    row(f"rms {angle} (deg)", lambda r: f"{math.degrees(r.rms_angle_rad):.2f}")
    kinds = sorted({k for r in results for k, n in r.stats["violations"].items() if n})
    for k in kinds:
        row(f"violations: {k}", lambda r, k=k: str(r.stats["violations"][k]))
    row("interventions", lambda r: str(r.stats["interventions"]))
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
    table = render_table(["", *[r.label for r in results]], rows)
    return describe(results) + "\n\n" + table

"""`tailguard demo`: the shipped Hopper-v5 policy pair under the audited envelope, or the
pendulum fallback.

With the ``sim`` extra (mujoco, gymnasium) and the files shipped in ``tailguard/policies``
(package data: ``hopper_nominal.onnx``, ``hopper_robust.onnx`` -- its timing-robust sibling
-- and ``hopper_nominal.envelope.json``, the nominal policy's audited envelope), the demo
runs :mod:`tailguard.tools.demo_hopper`: paired episodes under nominal timing, a long-tail
latency and GC-pause-like bursts, nominal only / robust only / guarded, with paired
intervals, the goals judged from the numbers, and a self-contained HTML report.

Without the extra or the files, it runs the built-in inverted pendulum below and says why.

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


def run_demo(seconds: float = 30.0, seed: int = 1000, episodes: int = 40, workers: int = 2) -> Any:
    """Run the Hopper demo (a :class:`~tailguard.tools.demo_hopper.HopperDemo`), or the
    pendulum one (a list of :class:`DemoResult`) without the sim extra or the shipped files.

    Args:
        seconds: simulated time per pendulum scenario (the Hopper episodes run to the env's
            1000-step limit unless they fall).
        seed: the first reset seed (Hopper) / latency and disturbance seed (pendulum).
        episodes: paired episodes per Hopper column.
        workers: local worker processes for the Hopper episodes.
    """
    if hopper_missing() is None:
        from tailguard.tools.demo_hopper import run_hopper_demo

        return run_hopper_demo(episodes=episodes, seed=seed, workers=workers)
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


def hopper_missing() -> str | None:
    """Why the Hopper demo cannot run here (None when it can): a missing package of the
    ``sim`` extra or a missing shipped file."""
    from tailguard.tools.demo_hopper import ENVELOPE_FILE, NOMINAL_POLICY, ROBUST_POLICY

    missing = [m for m in ("mujoco", "gymnasium") if importlib.util.find_spec(m) is None]
    if missing:
        return (
            f"{' and '.join(missing)} not installed (the sim extra: pip install 'tailguard[sim]')"
        )
    if importlib.util.find_spec("scipy") is None:
        return "scipy not installed (the paired statistics need it: pip install scipy)"
    files = [
        f for f in (NOMINAL_POLICY, ROBUST_POLICY, ENVELOPE_FILE) if not (POLICY_DIR / f).is_file()
    ]
    if files:
        return f"shipped file(s) missing from {POLICY_DIR}: {', '.join(files)}"
    return None


def hopper_available() -> bool:
    """True when mujoco, gymnasium, the shipped Hopper policies and their envelope are all
    present."""
    return hopper_missing() is None


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
    """One paragraph saying what ran and why (printed above the pendulum table)."""
    why = hopper_missing() or "requested"
    return (
        f"tailguard demo: the pendulum fallback (the Hopper demo cannot run: {why}): an "
        "inverted pendulum balanced at 50 Hz by a linear ONNX controller, latency bursts, "
        "deadline 5 ms."
    )


def format_results(results: list[DemoResult]) -> str:
    """The pendulum's before/after table (with a line saying what ran and why)."""
    from tailguard.tools.cli_table import render_table

    rows: list[list[str]] = []

    def row(name: str, fn: Any) -> None:
        rows.append([name, *[fn(r) for r in results]])

    row("ticks", lambda r: str(r.stats["ticks"]))
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


def format_demo(result: Any) -> str:
    """The text `tailguard demo` prints for either demo (deterministic for a seed)."""
    if isinstance(result, list):
        return format_results(result)
    from tailguard.tools.demo_hopper import format_hopper

    return format_hopper(result)


def demo_json(result: Any) -> Any:
    """The JSON-ready results of either demo."""
    if isinstance(result, list):
        return [
            {
                "label": r.label,
                "plant": r.plant,
                "fell_at_s": r.fell_at_s,
                "max_angle_rad": r.max_angle_rad,
                "rms_angle_rad": r.rms_angle_rad,
                "stats": r.stats,
            }
            for r in result
        ]
    return result.to_dict()


def write_report(result: Any, text: str, out: Path) -> Path:
    """Write the self-contained ``report.html`` (and ``demo.json``) into ``out``; return the
    report's path.

    Raises:
        ConfigError: the folder cannot be created or written.
    """
    import json

    from tailguard.audit.outputs import dump_json
    from tailguard.audit.report import _page
    from tailguard.errors import ConfigError

    if isinstance(result, list):
        import html

        page = _page(
            "tailguard demo",
            [
                "<h1>tailguard demo — inverted pendulum (fallback demo)</h1>",
                "<pre>" + html.escape(text) + "</pre>",
                "<h2>Data</h2><pre>"
                + html.escape(json.dumps(demo_json(result), indent=1))
                + "</pre>",
            ],
        )
    else:
        from tailguard.tools.demo_hopper import hopper_html

        page = hopper_html(result, text)
    report = out / "report.html"
    try:
        out.mkdir(parents=True, exist_ok=True)
        report.write_text(page, encoding="utf-8")
        (out / "demo.json").write_text(dump_json(demo_json(result)), encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write the demo report: {exc.strerror or exc}", out) from None
    return report

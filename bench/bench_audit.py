"""A same-size audit as the peer tool's: 6 conditions x 20 paired episodes on Hopper-v5 with
the same SB3 model, end to end, side by side with the peer when it is installed.

The peer (deltatau-audit 0.6.2, ``audit-sb3 --episodes 20``) audits an SB3 ``.zip`` on raw
observations (it has no VecNormalize option): nominal plus six conditions of 20 episodes. The
same model for us is ``guard/policies/hopper_nominal.zip`` without ``--vecnormalize``: exported
on the fly without torch (``tailguard.adapters.sb3_native``: a restricted reader of
``policy.pth``, a numpy-built ONNX graph, parity against a float64 numpy reference), then the
same short-lived policy (on raw observations it falls within ~100 steps). Our six: nominal plus
one level of each of the peer's axes, in time rather than action repeats: a sustained rate
change (x2, the peer's "speed"), period jitter (+-0.4 P), one period of latency (the peer's
"delay"), latency spike bursts (4 P) and observation age (1 P). Both wall times include the
process start, imports (torch for the peer only: our zip path never imports it), the sweep, the
statistics and every output file (our report.html with its plots), like a CLI run. ``--policy
exported`` first exports the same zip once with ``tailguard export sb3`` (torch's exporter;
timed apart: a one-time step per checkpoint) and audits that ONNX file. ``--policy onnx`` audits
the shipped ONNX (normalization folded in, so 1000-step episodes: several times the simulated
work).

    python bench/bench_audit.py [--workers 2] [--repeat 3] [--peer PATH/deltatau-audit]
    python -m pytest bench/bench_audit.py --benchmark-enable
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("gymnasium")
pytest.importorskip("mujoco")
pytest.importorskip("scipy")

from tg_timing import is_smoke

from tailguard.audit.audit import run_audit
from tailguard.audit.sweep import build_sweep

POLICIES = Path(__file__).resolve().parents[1] / "guard" / "policies"
POLICY = POLICIES / "hopper_nominal.onnx"
POLICY_ZIP = POLICIES / "hopper_nominal.zip"
ENV = "Hopper-v5"
EPISODES = 20
PEER_WALL_S = 13.7
SWEEP = """\
dimensions = ["rate_change", "dt_jitter", "latency_fixed", "latency_spikes", "obs_age"]
[levels]
rate_change = [2.0]
dt_jitter = [0.4]
latency_fixed = [1.0]
latency_spikes = [4.0]
obs_age = [1.0]
"""


def _conditions() -> list[Any]:
    from tailguard.audit.sweep import DIMENSIONS

    levels = {
        "rate_change": [2.0],
        "dt_jitter": [0.4],
        "latency_fixed": [1.0],
        "latency_spikes": [4.0],
        "obs_age": [1.0],
    }
    assert set(levels) <= set(DIMENSIONS)
    return build_sweep(8_000_000, dimensions=list(levels), levels=levels)


def bench_audit_same_size(benchmark: Any, request: pytest.FixtureRequest) -> None:
    """run_audit of 6 conditions x 20 episodes (in-process, 2 workers), outputs excluded."""
    episodes = 4 if is_smoke(request.config) else EPISODES
    conds = _conditions()
    assert len(conds) == 6

    def run() -> object:
        return run_audit(POLICY, ENV, episodes=episodes, conditions=conds, workers=2)

    result = benchmark.pedantic(run, rounds=1, iterations=1)
    assert len(result.conditions) == 6
    benchmark.extra_info["episodes_per_condition"] = episodes
    benchmark.extra_info["peer_wall_s"] = PEER_WALL_S


def wall_time_cli(workers: str, policy: Path = POLICY_ZIP) -> tuple[float, float]:
    """(wall, CPU) time of one `tailguard audit` process tree (imports and outputs included),
    s. CPU time (user + system of the process and its workers) does not count the time the
    machine gave to other processes."""
    import resource

    with tempfile.TemporaryDirectory() as tmp:
        sweep = Path(tmp) / "sweep.toml"
        sweep.write_text(SWEEP)
        cmd = [
            sys.executable,
            "-m",
            "tailguard",
            "audit",
            "--policy",
            str(policy),
            "--env",
            ENV,
            "--sweep",
            str(sweep),
            "--episodes",
            str(EPISODES),
            "--workers",
            workers,
            "--out",
            str(Path(tmp) / "out"),
            "--quiet",
        ]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, timeout=600)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        return wall, cpu


def wall_time_peer(peer: str, workers: str) -> tuple[float, float]:
    """(wall, CPU) time of one ``deltatau-audit audit-sb3`` run on the same model, s."""
    import resource

    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            *(peer, "audit-sb3", "--model", str(POLICY_ZIP), "--algo", "ppo"),
            *("--env", ENV, "--episodes", str(EPISODES), "--seed", "0"),
            *("--workers", workers, "--out", str(Path(tmp) / "out"), "--quiet"),
        ]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, timeout=600, capture_output=True)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _byte_compile() -> None:
    """Byte-compile our sources first, as ``pip install`` does for an installed package (the
    peer's): an editable checkout run with ``PYTHONDONTWRITEBYTECODE=1`` would otherwise
    compile every module again in every process (~0.2 s on this machine)."""
    import compileall

    root = Path(__file__).resolve().parents[1]
    for folder in ("guard", "adapters", "firmware_sim"):
        compileall.compile_dir(root / folder, quiet=1)


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", default="2")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--policy", choices=("zip", "exported", "onnx"), default="zip")
    parser.add_argument(
        "--peer", help="the peer's deltatau-audit executable: runs interleaved with ours"
    )
    args = parser.parse_args()
    _byte_compile()
    policy = POLICY_ZIP if args.policy == "zip" else POLICY
    tmp = tempfile.TemporaryDirectory()
    if args.policy == "exported":
        policy = Path(tmp.name) / "hopper_nominal_raw.onnx"
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "tailguard", "export", "sb3", str(POLICY_ZIP)]
        subprocess.run([*cmd, "--out", str(policy)], check=True, timeout=600, capture_output=True)
        print(f"one-time export of {POLICY_ZIP.name} (parity checked): "
              f"{time.perf_counter() - t0:.2f} s")  # fmt: skip
    ours: list[tuple[float, float]] = []
    peer: list[tuple[float, float]] = []
    for _ in range(args.repeat):  # interleaved, so both see the same machine
        ours.append(wall_time_cli(args.workers, policy))
        if args.peer:
            peer.append(wall_time_peer(args.peer, args.workers))
    fmt = ", ".join
    m = _median([w for w, _ in ours])
    print(
        f"tailguard audit ({policy.name}), 6 conditions x {EPISODES} episodes, {ENV}, "
        f"workers {args.workers}: wall {fmt(f'{w:.2f}' for w, _ in ours)} s (median {m:.2f}); "
        f"CPU {fmt(f'{c:.2f}' for _, c in ours)} s"
    )
    if peer:
        pm = _median([w for w, _ in peer])
        print(
            f"deltatau-audit audit-sb3, same model, 20 episodes, workers {args.workers}: wall "
            f"{fmt(f'{w:.2f}' for w, _ in peer)} s (median {pm:.2f}); CPU "
            f"{fmt(f'{c:.2f}' for _, c in peer)} s -> ours is {pm / m:.2f}x faster (medians); "
            f"median of the per-pair ratios "
            f"{_median([p / o for (p, _), (o, _) in zip(peer, ours, strict=True)]):.2f}x"
        )
    else:
        print(f"peer not run (--peer); its figure from the issue: {PEER_WALL_S} s")
    print(f"load average (1, 5, 15 min): {os.getloadavg()}")
    tmp.cleanup()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()

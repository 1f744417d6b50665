"""`tailguard bench --compare-cyclictest`: run rt-tests' cyclictest at the same rate.

cyclictest is the reference for wake-up latency on Linux; running it next to the guarded
loop, with the same CPU and scheduling, shows how much of the loop's lateness is the
machine's.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["run_cyclictest"]


def _nearest_rank_us(hist: dict[int, int], total: int, percentile: float) -> int:
    rank = max(1, math.ceil(percentile * total / 100.0))
    seen = 0
    for value in sorted(hist):
        seen += hist[value]
        if seen >= rank:
            return value
    return -1  # in the overflow bucket


def run_cyclictest(
    rate_hz: float, duration_s: float, *, cpu: int | None, fifo_priority: int | None
) -> dict[str, Any]:
    """Run cyclictest (rt-tests) at the same rate, duration and scheduling; its tails.

    Runs one measurement thread (``-t 1``), SCHED_OTHER or SCHED_FIFO like the guarded
    loop, pinned to the same CPU, with ``--default-system`` (no cpu_dma_latency tuning, so
    both measurements see the same system settings).

    Returns:
        ``{"available": False, "note": how to install}`` when cyclictest is not on PATH;
        else ``{"available": True, "command", "ticks", "p50_ns", "p99_ns", "p999_ns",
        "max_ns", "min_ns", "mean_ns"}`` (cyclictest measures in whole us), or with an
        ``"error"`` when it failed.
    """
    exe = shutil.which("cyclictest")
    if exe is None:
        return {
            "available": False,
            "note": "cyclictest is not installed; on Debian/Ubuntu: sudo apt-get install "
            "rt-tests (then rerun with --compare-cyclictest)",
        }
    interval_us = max(1, round(1e6 / rate_hz))
    loops = max(1, round(duration_s * rate_hz))
    hist_max_us = max(10_000, 20 * interval_us)
    with tempfile.TemporaryDirectory(prefix="tailguard-ct-") as tmp:
        out_json = Path(tmp) / "cyclictest.json"
        cmd = [
            exe,
            "-q",
            "-t",
            "1",
            "-i",
            str(interval_us),
            "-l",
            str(loops),
            "-h",
            str(hist_max_us),
            "--default-system",
            f"--json={out_json}",
        ]
        cmd += ["--policy=fifo", "-p", str(fifo_priority)] if fifo_priority else ["--policy=other"]
        if cpu is not None:
            cmd += ["-a", str(cpu)]
        shown = " ".join(["cyclictest", *cmd[1:]]).replace(str(out_json), "OUT.json")
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=duration_s * 2 + 30, check=False
            )
            data = json.loads(out_json.read_text())
            thread = data["thread"]["0"]
        except (OSError, subprocess.SubprocessError, ValueError, KeyError) as exc:
            return {"available": True, "command": shown, "error": f"cyclictest failed: {exc}"}
    if proc.returncode != 0:
        return {"available": True, "command": shown, "error": proc.stderr.strip()[-500:]}
    hist = {int(k): int(v) for k, v in thread["histogram"].items()}
    total = int(thread["cycles"])
    max_us = int(thread["max"])

    def pct(p: float) -> int:
        v = _nearest_rank_us(hist, total, p)
        return (max_us if v < 0 else v) * 1000

    return {
        "available": True,
        "command": shown,
        "ticks": total,
        "p50_ns": pct(50.0),
        "p99_ns": pct(99.0),
        "p999_ns": pct(99.9),
        "max_ns": max_us * 1000,
        "min_ns": int(thread["min"]) * 1000,
        "mean_ns": round(float(thread["avg"]) * 1000.0),
    }

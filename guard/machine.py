"""Facts about this machine and process that timing figures depend on, in one place.

Used by the loop benchmark, the benchmark suite's summary and the audit's provenance.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

__all__ = ["machine_info"]

_SCHED_NAMES = {
    getattr(os, name): name
    for name in ("SCHED_OTHER", "SCHED_FIFO", "SCHED_RR", "SCHED_BATCH", "SCHED_IDLE")
    if hasattr(os, name)
}


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _cpu_model() -> str:
    text = _read("/proc/cpuinfo") or ""
    for line in text.splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_info(intra_op_threads: int, inter_op_threads: int = 1) -> dict[str, Any]:
    """CPU, scheduling and runtime facts of this process (read from /proc and /sys).

    Args:
        intra_op_threads: onnxruntime intra-op threads of the policy session.
        inter_op_threads: onnxruntime inter-op threads (the guard uses 1).

    Returns:
        dict with ``cpu``, ``cores``, ``affinity`` (CPU ids this process may run on),
        ``sched_policy`` (e.g. ``"SCHED_OTHER"``), ``sched_priority``, ``governor``
        (``{cpu: name}`` for the affinity CPUs, or None if /sys has no cpufreq),
        ``kernel``, ``preempt_rt``, ``python``, ``numpy``, ``onnxruntime`` and
        ``onnxruntime_threads``.
    """
    import numpy as np
    import onnxruntime

    affinity = sorted(os.sched_getaffinity(0))
    governors = {
        cpu: g
        for cpu in affinity
        if (g := _read(f"/sys/devices/system/cpu/cpu{cpu}/cpufreq/scaling_governor"))
    }
    policy = os.sched_getscheduler(0)
    version = platform.version()
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "affinity": affinity,
        "sched_policy": _SCHED_NAMES.get(policy, str(policy)),
        "sched_priority": os.sched_getparam(0).sched_priority,
        "governor": governors or None,
        "kernel": f"{platform.system()} {platform.release()} {version}",
        "preempt_rt": _read("/sys/kernel/realtime") == "1" or "PREEMPT_RT" in version,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnxruntime_threads": {"intra_op": intra_op_threads, "inter_op": inter_op_threads},
    }

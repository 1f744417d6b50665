"""``run_audit``: the sweep as paired episodes, the statistics, the derived envelope.

The returned :class:`AuditResult` holds everything the outputs are written from; its
:meth:`AuditResult.summary` is byte-identical for the same inputs and seed whatever the number
of workers (wall-clock facts live only in ``run``).
"""

from __future__ import annotations

import math
import platform
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tailguard.audit.conditions import Condition
from tailguard.audit.executor import Executor, select_executor
from tailguard.audit.ratings import RATING_THRESHOLDS, Rating, required_threshold
from tailguard.audit.results import ConditionResult, timing_summary
from tailguard.audit.statistics import (
    BootstrapSettings,
    paired_ratio,
    rate_conditions,
)
from tailguard.audit.units import Target, UnitResult, WorkUnit
from tailguard.errors import ConfigError

__all__ = ["SUMMARY_SCHEMA_ID", "AuditResult", "TaskInfo", "run_audit", "task_info"]

SUMMARY_SCHEMA_ID = "tailguard.audit.summary/1"
DEFAULT_EPISODES = 20
DEFAULT_BLOCK = 5


@dataclass(frozen=True)
class TaskInfo:
    """What the audit needs to know of the env (read once in the parent process)."""

    env: str
    period_ns: int
    substep_ns: int
    obs_size: int
    action_size: int
    action_low: tuple[float, ...] | None
    action_high: tuple[float, ...] | None
    resolution: str
    max_episode_steps: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "env": self.env,
            "period_ns": self.period_ns,
            "substep_ns": self.substep_ns,
            "obs_size": self.obs_size,
            "action_size": self.action_size,
            "resolution": self.resolution,
            "resolution_note": (
                "timing resolved inside the control period"
                if self.resolution == "substep"
                else "WHOLE-STEP resolution: commands change only between env steps, so any "
                "latency or jitter is rounded up to whole control periods"
            ),
            "max_episode_steps": self.max_episode_steps,
        }


def task_info(env: str) -> TaskInfo:
    """Build the env once and read its timing and sizes."""
    from tailguard.audit.tasks import task_resolution
    from tailguard.audit.units import task_for

    task = task_for(env)

    def bounds(v: Any) -> tuple[float, ...] | None:
        arr = np.asarray(v, np.float64).reshape(-1)
        return tuple(float(x) for x in arr) if np.all(np.isfinite(arr)) else None

    return TaskInfo(
        env=env,
        period_ns=int(task.period_ns),
        substep_ns=int(task.substep_ns),
        obs_size=int(task.obs_size),
        action_size=int(task.nu),
        action_low=bounds(task.action_low),
        action_high=bounds(task.action_high),
        resolution=task_resolution(task),
        max_episode_steps=int(task.max_episode_steps),
    )


def check_sizes(policy_path: str | Path, info: TaskInfo) -> tuple[int, int, str]:
    """The policy's (obs_size, action_size, sha256), refusing a mismatch with the env.

    Raises:
        ConfigError: sizes differ (both named).
    """
    from tailguard.runtime.policy import OnnxPolicy

    pol = OnnxPolicy(policy_path)
    if pol.obs_size != info.obs_size or pol.action_size != info.action_size:
        raise ConfigError(
            f"the policy and the env disagree: policy {Path(policy_path).name} takes "
            f"{pol.obs_size} observations and gives {pol.action_size} actions; env {info.env} "
            f"gives {info.obs_size} observations and takes {info.action_size} actions"
        )
    return pol.obs_size, pol.action_size, str(pol.sha256)


def condition_stream(name: str) -> int:
    """The bootstrap stream of a condition: from its name, so results do not depend on the
    order or number of conditions."""
    return zlib.crc32(name.encode())


def make_units(
    target: Target, conditions: Sequence[Condition], episodes: int, block: int, **kw: Any
) -> list[WorkUnit]:
    """Condition x episode-block units (the block size never depends on the workers)."""
    units = []
    for ci, cond in enumerate(conditions):
        for start in range(0, episodes, block):
            units.append(WorkUnit(target, cond, ci, start, min(start + block, episodes), **kw))
    return units


def collect(
    conditions: Sequence[Condition], results: Sequence[UnitResult], period_ns: int, d_cap: int
) -> list[ConditionResult]:
    """Per-condition results from unit results, in condition order, episodes in index order."""
    by_cond: dict[int, list[Any]] = {i: [] for i in range(len(conditions))}
    for res in results:
        by_cond[res.unit.index].extend(res.episodes)
    out = []
    for i, cond in enumerate(conditions):
        eps = sorted(by_cond[i], key=lambda e: e.episode)
        out.append(ConditionResult(cond, eps, timing_summary(eps, period_ns, d_cap)))
    return out


def apply_statistics(
    results: list[ConditionResult], settings: BootstrapSettings, required: float
) -> None:
    """Paired ratios, companions and Holm-corrected ratings of every non-nominal condition."""
    nominal = results[0]
    nom = nominal.returns
    others = results[1:]
    ratios = []
    for r in others:
        ratio = paired_ratio(nom, r.returns, settings, stream=condition_stream(r.condition.name))
        r.ratio = ratio
        r.companions(nom, settings.return_offset)
        ratios.append(ratio)
    faults = [r.faults for r in others]
    for r, rating in zip(
        others, rate_conditions(ratios, required, settings.alpha, faults), strict=True
    ):
        r.rating = rating


@dataclass
class AuditResult:
    """Everything an audit produced.

    Attributes:
        task: the env's timing and sizes.
        policy: where the policy came from (format, paths, hashes, parity).
        conditions: per-condition results, nominal first.
        settings: bootstrap settings.
        require: the required rating.
        episodes, seed: episodes per condition and the base seed.
        envelope: the derived envelope (None when derivation was skipped).
        derivation: how each threshold was obtained.
        run: wall-clock facts (workers, duration, host): the only non-deterministic part.
    """

    task: TaskInfo
    policy: dict[str, Any]
    conditions: list[ConditionResult]
    settings: BootstrapSettings
    require: str
    episodes: int
    seed: int
    d_cap: int
    envelope: Any = None
    derivation: dict[str, Any] = field(default_factory=dict)
    run: dict[str, Any] = field(default_factory=dict)

    @property
    def nominal(self) -> ConditionResult:
        """The nominal condition."""
        return self.conditions[0]

    def verdict(self) -> Rating:
        """The worst rating over the conditions (INCONCLUSIVE ranks between MILD and
        DEGRADED: it is not a failure, but not a pass either)."""
        order = [Rating.PASS, Rating.MILD, Rating.INCONCLUSIVE, Rating.DEGRADED, Rating.FAIL]
        worst = Rating.PASS
        for r in self.conditions[1:]:
            if r.rating is not None and order.index(r.rating.rating) > order.index(worst):
                worst = r.rating.rating
        return worst

    def summary(self) -> dict[str, Any]:
        """The summary.json document (``run`` last; everything else deterministic)."""
        from tailguard import __version__

        return {
            "schema": SUMMARY_SCHEMA_ID,
            "kind": "audit",
            "tool_version": __version__,
            "task": self.task.to_dict(),
            "policy": self.policy,
            "seed": self.seed,
            "episodes": self.episodes,
            "pairing": "episode i uses reset seed seed+i and the same timing streams under "
            "every condition (common random numbers)",
            "require": self.require,
            "rating_thresholds": {k.value: v for k, v in RATING_THRESHOLDS.items()},
            "bootstrap": self.settings.to_dict(),
            "verdict": self.verdict().value,
            "conditions": [c.to_dict() for c in self.conditions],
            "envelope": None if self.envelope is None else self.envelope.to_dict()["timing"],
            "derivation": self.derivation,
            "run": self.run,
        }


ProgressFn = Callable[[int, int], None]


def run_audit(
    policy: str | Path,
    env: str,
    *,
    episodes: int = DEFAULT_EPISODES,
    seed: int = 0,
    workers: int = 1,
    executor: Executor | str | None = None,
    address: str | None = None,
    quick: bool = False,
    dimensions: Sequence[str] | None = None,
    sweep_file: str | Path | None = None,
    profiles: Sequence[str] = (),
    conditions: Sequence[Condition] | None = None,
    require: str = "MILD",
    n_resamples: int = 9999,
    alpha: float = 0.05,
    return_offset: float = 0.0,
    d_cap: int = 1,
    block: int = DEFAULT_BLOCK,
    workdir: str | Path | None = None,
    vecnormalize: str | Path | None = None,
    derive: bool = True,
    frontier: bool = False,
    fallback: str | Path | None = None,
    progress: ProgressFn | None = None,
    while_waiting: Callable[[], None] | None = None,
) -> AuditResult:
    """Run the timing audit of a policy.

    Args:
        policy: ONNX file, RSL-RL ``.pt`` or SB3 ``.zip`` (exported with a parity check).
        env: gymnasium id, ``mjcf:NAME`` or ``py:MODULE:FUNCTION``.
        episodes: paired episodes per condition (>= 2).
        seed: base seed; episode ``i`` uses ``seed + i`` under every condition.
        workers: local processes (1 = in this process); ignored with ``executor``.
        executor: ``"local"`` (default), ``"ray"`` or an executor object to run the
            units on (see ``tailguard.audit.executor.select_executor``).
        address: the Ray cluster for ``executor="ray"`` (None: a Ray started here).
        quick: the smoke-test sweep.
        dimensions: restrict the default ladders to these dimensions.
        sweep_file: a JSON/TOML sweep file (see ``tailguard.audit.sweep``).
        profiles: measured latency profile files added as conditions.
        conditions: an explicit list of conditions (nominal first) instead of a sweep.
        require: rating a condition must reach to be tolerated (``PASS`` or ``MILD``).
        n_resamples, alpha, return_offset: statistics (see ``BootstrapSettings``).
        d_cap: ``p_violate`` is the fraction of ticks with delay in steps d > d_cap.
        block: episodes per work unit.
        workdir: where an exported checkpoint's ONNX file goes (default: a temp dir).
        vecnormalize: SB3 VecNormalize statistics.
        derive: derive the envelope.
        frontier: add the constant latency x jitter grid (the tolerated (L, J) frontier).
        fallback: the fallback the envelope is derived for: ``"hold"`` / ``"zero"`` / None,
            or a fallback policy's file (then a deadline miss answers with the fallback;
            see :func:`tailguard.audit.derive.derive_envelope`). Recorded in the derivation.
        progress: called with (episodes done, episodes total).
        while_waiting: work for this process while a process pool runs the units.

    Raises:
        ConfigError, TailguardError: bad inputs, before any episode runs.
    """
    from tailguard import __version__
    from tailguard.adapters.resolve import resolve_policy
    from tailguard.audit.sweep import (
        build_sweep,
        frontier_conditions,
        load_sweep_file,
        measured,
    )

    started = time.perf_counter()
    if episodes < 2:
        raise ConfigError(f"--episodes must be >= 2 (a paired bootstrap needs 2), got {episodes}")
    if block < 1:
        raise ConfigError(f"block must be >= 1, got {block}")
    threshold = required_threshold(require)
    if require.upper() not in ("PASS", "MILD"):
        raise ConfigError(f"--require must be PASS or MILD, got {require!r}")
    settings = BootstrapSettings(
        n_resamples=n_resamples, alpha=alpha, seed=seed, return_offset=return_offset
    )
    if workdir is None:
        import tempfile

        workdir = tempfile.mkdtemp(prefix="tailguard-audit-")
    resolved = resolve_policy(policy, workdir, vecnormalize=vecnormalize)
    info = task_info(env)
    obs_size, action_size, sha = check_sizes(resolved.onnx_path, info)
    if conditions is None:
        file_cfg: dict[str, Any] = {"dimensions": None, "levels": {}, "extra": []}
        if sweep_file is not None:
            file_cfg = load_sweep_file(sweep_file, info.period_ns)
        extra = list(file_cfg["extra"]) + [measured(p, i) for i, p in enumerate(profiles)]
        if frontier:
            extra += frontier_conditions(info.period_ns)
        conds = build_sweep(
            info.period_ns,
            quick=quick,
            dimensions=dimensions if dimensions is not None else file_cfg["dimensions"],
            levels=file_cfg["levels"],
            extra=extra,
        )
    else:
        conds = list(conditions)
        if not conds or not conds[0].is_nominal:
            raise ConfigError("an explicit condition list must start with the nominal condition")
    target = Target(env=env, policy=str(resolved.onnx_path), seed=seed)
    units = make_units(target, conds, episodes, block)
    runner, close = select_executor(
        executor, workers=workers, address=address, while_waiting=while_waiting
    )
    total = len(conds) * episodes
    done = [0]

    def on_result(res: UnitResult) -> None:
        done[0] += len(res.episodes)
        if progress is not None:
            progress(done[0], total)

    try:
        unit_results = runner.run(units, on_result)
    finally:
        close()
    results = collect(conds, unit_results, info.period_ns, d_cap)
    apply_statistics(results, settings, threshold)
    policy_doc = {
        **resolved.source,
        "onnx_sha256": sha,
        "obs_size": obs_size,
        "action_size": action_size,
    }
    policy_doc["path"] = Path(str(policy_doc.get("path", policy))).name
    policy_doc.pop("exported_onnx", None)
    result = AuditResult(
        task=info,
        policy=policy_doc,
        conditions=results,
        settings=settings,
        require=require.upper(),
        episodes=episodes,
        seed=seed,
        d_cap=d_cap,
    )
    if derive:
        from tailguard.audit.derive import derive_envelope

        provenance = {
            "policy_sha256": sha,
            "policy_source": policy_doc,
            "env": env,
            "resolution": info.resolution,
            "seed": seed,
            "episodes_per_condition": episodes,
            "require": result.require,
            "bootstrap": settings.to_dict(),
            "conditions": [_condition_brief(r) for r in results],
        }
        result.envelope, result.derivation = derive_envelope(
            results,
            period_ns=info.period_ns,
            obs_size=obs_size,
            action_size=action_size,
            action_low=info.action_low,
            action_high=info.action_high,
            provenance=provenance,
            tool_version=__version__,
            fallback=None if fallback is None else str(fallback),
        )
    result.run = {
        "duration_s": round(time.perf_counter() - started, 3),
        "workers": getattr(runner, "workers", None),
        "executor": type(runner).__name__,
        "host": platform.node(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "units": len(units),
    }
    return result


def _condition_brief(r: ConditionResult) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": r.condition.name,
        "dimension": r.condition.dimension,
        "spec": r.condition.to_dict(),
        "return_mean": float(r.returns.mean()),
    }
    if r.ratio is not None and r.rating is not None:
        est = r.ratio.ratio
        out.update(
            ratio=None if math.isnan(est) else est,
            lower_bound=None if math.isnan(r.rating.lower_bound) else r.rating.lower_bound,
            rating=r.rating.rating.value,
            tolerated=r.rating.tolerated,
        )
    return out

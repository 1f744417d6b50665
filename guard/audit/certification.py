"""``certify``: the guard in the loop on the simulated clock, against the envelope it enforces.

Checks (each named in the verdict, with its condition and numbers):

- ``in_envelope``: profiles inside the envelope — the audited tolerated conditions recorded in
  the envelope's provenance (frontier cells excepted: they do not set thresholds) and
  stresses just below every threshold (latency tail values capped at the period, so that
  independent draws do not make the runs of late ticks the overrun limit forbids) — run
  guarded must keep
  the required rating (paired ratio against the unguarded nominal episodes) and cause guard
  interventions on fewer than 0.1 % of ticks. Nominal timing must cause none beyond that
  (false alarms). Episodes whose unguarded twin fails on its own (falls) are left out of
  both intervention counts and listed: what the guard does there (e.g. ``obs_range`` as
  the robot leaves the audited states before the fall) is no false alarm.
- ``out_of_envelope``: profiles well outside (above each threshold, spikes, bursts) must be
  detected (episodes with a violation; detection delay in ticks from the first tick beyond a
  threshold to the first tick the guard leaves NOMINAL), and the guarded loop must do at
  least as well as the unguarded one (paired interval on mean(guarded - unguarded)).
- ``measured``: each ``--profile FILE`` is placed inside or outside the envelope from its
  measured samples and judged as above.
- ``distribution_shift``: the nominal episodes' observations, offset and scaled beyond the
  envelope's observation range, replayed through the guard must trip ``obs_range``
  (``tailguard.audit.shift``).
- ``parity``: ONNX-vs-source parity when a checkpoint was exported.
- ``determinism``: a subset re-run in this process must reproduce the same episodes.

Verdict: ``fail`` (exit 2) if any check fails; ``warn`` (exit 1) if any is inconclusive or a
non-critical check warns; else ``pass`` (exit 0).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tailguard.audit.audit import (
    DEFAULT_BLOCK,
    ProgressFn,
    TaskInfo,
    apply_statistics,
    check_sizes,
    collect,
    condition_stream,
    make_units,
    task_info,
)
from tailguard.audit.conditions import NOMINAL, Condition
from tailguard.audit.executor import Executor, select_executor
from tailguard.audit.ratings import Rating, required_threshold
from tailguard.audit.results import ConditionResult
from tailguard.audit.statistics import BootstrapSettings, paired_difference
from tailguard.audit.statistics import preload_difference as preload_statistics
from tailguard.audit.units import GuardSettings, Target, run_unit
from tailguard.errors import EnvelopeError, HashMismatchError

__all__ = ["MAX_INTERVENTION_FRACTION", "Check", "CertifyResult", "certify", "in_envelope"]

#: In-envelope profiles may cause guard interventions on at most this fraction of ticks.
MAX_INTERVENTION_FRACTION = 0.001
_EXIT = {"pass": 0, "warn": 1, "fail": 2}
#: Violations that say the loop's timing left the envelope (what "detected" counts).
TIMING_VIOLATIONS = frozenset(
    {
        "latency_max",
        "dt_max",
        "overrun_streak",
        "obs_age",
        "deadline_miss",
        "dt_p50",
        "dt_p95",
        "dt_p99",
        "latency_p50",
        "latency_p95",
        "latency_p99",
    }
)


@dataclass(frozen=True)
class Check:
    """One named certification check.

    Attributes:
        name: ``in_envelope``, ``false_alarms``, ``out_of_envelope``, ``measured``,
            ``distribution_shift``, ``parity`` or ``determinism``.
        status: ``pass``, ``warn`` or ``fail``.
        condition: the condition it is about ("" for global checks).
        message: what was measured against what.
        numbers: the numbers behind it.
    """

    name: str
    status: str
    condition: str
    message: str
    numbers: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "name": self.name,
            "status": self.status,
            "condition": self.condition,
            "message": self.message,
            "numbers": self.numbers,
        }


@dataclass
class CertifyResult:
    """The certification of a policy against an envelope.

    Attributes:
        task, policy: the env and the policy (format, hashes).
        envelope_path, envelope: the envelope certified.
        checks: every check.
        unguarded, guarded: per-condition results (same conditions, paired episodes).
        placement: condition name -> ``"inside"`` / ``"outside"``.
        worst: the worst guarded out-of-envelope episode (timeline for the report).
        run: wall-clock facts.
    """

    task: TaskInfo
    policy: dict[str, Any]
    envelope_path: str
    envelope: Any
    checks: list[Check]
    unguarded: list[ConditionResult]
    guarded: list[ConditionResult]
    placement: dict[str, str]
    settings: BootstrapSettings
    require: str
    episodes: int
    seed: int
    worst: dict[str, Any] | None = None
    run: dict[str, Any] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        """``pass``, ``warn`` or ``fail``."""
        statuses = {c.status for c in self.checks}
        return "fail" if "fail" in statuses else "warn" if "warn" in statuses else "pass"

    @property
    def exit_code(self) -> int:
        """0 pass, 1 warn, 2 fail."""
        return _EXIT[self.verdict]

    def failing(self) -> list[Check]:
        """Checks that did not pass."""
        return [c for c in self.checks if c.status != "pass"]

    def summary(self) -> dict[str, Any]:
        """The certify summary.json document (``run`` last)."""
        from tailguard import __version__
        from tailguard.audit.audit import SUMMARY_SCHEMA_ID

        conds = []
        for u, g in zip(self.unguarded, self.guarded, strict=True):
            conds.append(
                {
                    "condition": u.condition.to_dict(),
                    "placement": self.placement.get(u.condition.name, "nominal"),
                    "unguarded": u.to_dict(),
                    "guarded": {**g.to_dict(), "guard": _guard_totals(g)},
                }
            )
        return {
            "schema": SUMMARY_SCHEMA_ID,
            "kind": "certify",
            "tool_version": __version__,
            "task": self.task.to_dict(),
            "policy": self.policy,
            "envelope": {
                "path": Path(self.envelope_path).name,
                "digest": self.envelope.digest(),
                "timing": self.envelope.to_dict()["timing"],
            },
            "seed": self.seed,
            "episodes": self.episodes,
            "require": self.require,
            "bootstrap": self.settings.to_dict(),
            "verdict": self.verdict,
            "exit_code": self.exit_code,
            "checks": [c.to_dict() for c in self.checks],
            "conditions": conds,
            "worst_episode": None
            if self.worst is None
            else {k: v for k, v in self.worst.items() if k != "latency_ns"},
            "run": self.run,
        }


def _guard_totals(r: ConditionResult, exclude: frozenset[int] = frozenset()) -> dict[str, Any]:
    """Guard totals over ``r``'s episodes, leaving out the episode indices in ``exclude``
    (their violations are listed apart)."""
    left_out = [e for e in r.episodes if e.episode in exclude]
    episodes = [e for e in r.episodes if e.episode not in exclude]
    ticks = sum(e.length for e in episodes)
    interventions = sum((e.guard or {}).get("interventions", 0) for e in episodes)
    violations: dict[str, int] = {}
    for e in episodes:
        for k, v in (e.guard or {}).get("violations", {}).items():
            violations[k] = violations.get(k, 0) + int(v)
    return {
        "ticks": ticks,
        "interventions": int(interventions),
        "intervention_fraction": interventions / ticks if ticks else 0.0,
        "violations": dict(sorted(violations.items())),
        "episodes_with_timing_violation": sum(
            1
            for e in episodes
            if any(k in TIMING_VIOLATIONS for k in (e.guard or {}).get("violations", {}))
        ),
        **(
            {
                "left_out_episodes": sorted(e.episode for e in left_out),
                "left_out_violations": [(e.guard or {}).get("violations", {}) for e in left_out],
            }
            if left_out
            else {}
        ),
    }


def _ns(x: float) -> int:
    return max(1, round(x))


def _stress_conditions(
    env: Any, audited: Sequence[dict[str, Any]]
) -> tuple[list[Condition], list[Condition]]:
    """(inside, outside) profiles for an envelope."""
    t = env.timing
    period = t.period_ns
    inside: list[Condition] = []
    seen = set()
    for brief in audited:
        spec = brief.get("spec")
        if (
            not spec
            or spec.get("dimension") in ("nominal", "measured", "frontier")
            or not brief.get("tolerated")
        ):
            continue
        cond = Condition.from_dict({**spec, "name": "audited/" + spec["name"]})
        if cond.name not in seen:
            seen.add(cond.name)
            inside.append(cond)
    outside: list[Condition] = []
    lat = t.latency
    if lat.p50_ns is not None and lat.p95_ns is not None and lat.p99_ns is not None:
        # Just below each threshold, but never past the period: drawn independently per
        # tick, late ticks would come in runs the overrun limit forbids (isolated misses
        # are certified through the audited miss patterns themselves).
        a, b, c = (
            min(_ns(0.95 * v), max(v if v <= period else period, 1))
            for v in (lat.p50_ns, lat.p95_ns, lat.p99_ns)
        )
        inside.append(
            Condition(
                name="near/latency",
                dimension="near",
                latency=(f"mix:0.94*fixed:ns={a}+0.04*fixed:ns={b}+0.02*fixed:ns={c}"),
                label="latency just below the p50/p95/p99 thresholds",
            )
        )
        outside.append(
            Condition(
                name="out/latency_p50",
                dimension="out",
                latency=f"fixed:ns={_ns(max(1.5 * lat.p50_ns, lat.p50_ns + 0.25 * period))}",
                label="constant latency well above the p50 threshold",
            )
        )
    if lat.max_ns is not None:
        outside.append(
            Condition(
                name="out/latency_spikes",
                dimension="out",
                latency=f"spikes:p=0.01,len=5,ns={_ns(2 * lat.max_ns + period)}",
                label="bursts of latency spikes above the tail cap",
            )
        )
    dt = t.dt
    if dt.p50_ns is not None and dt.p99_ns is not None:

        def near(v: int) -> int:
            return _ns(period + 0.95 * (v - period)) if v > period else v

        lo = max(1, 2 * period - near(dt.p99_ns))
        inside.append(
            Condition(
                name="near/dt",
                dimension="near",
                dt=f"uniform:lo_ns={lo},hi_ns={near(dt.p99_ns)}",
                label="period jitter just below the dt p99 threshold",
            )
        )
        outside.append(
            Condition(
                name="out/rate",
                dimension="out",
                dt=f"fixed:ns={_ns(max(1.25 * dt.p50_ns, dt.p50_ns + 0.25 * period))}",
                label="sustained rate change well above the dt p50 threshold",
            )
        )
    if t.obs_age_max_ns is not None and t.obs_age_max_ns > 1:
        inside.append(
            Condition(
                name="near/obs_age",
                dimension="near",
                obs_delay=f"fixed:ns={_ns(0.95 * t.obs_age_max_ns)}",
                label="observation age just below its cap",
            )
        )
    if t.obs_age_max_ns is not None:
        outside.append(
            Condition(
                name="out/obs_age",
                dimension="out",
                obs_delay=f"fixed:ns={_ns(2 * t.obs_age_max_ns + period)}",
                label="observation age well above its cap",
            )
        )
    return inside, outside


def in_envelope(result: ConditionResult, env: Any) -> bool:
    """Whether a condition's measured samples fall inside the envelope's thresholds
    (pooled nearest-rank percentiles and the largest tick)."""
    t = env.timing
    tim = result.timing
    for key, thr in (("latency", t.latency), ("dt", t.dt)):
        got = tim[key]
        for q in ("p50_ns", "p95_ns", "p99_ns", "max_ns"):
            limit = getattr(thr, q)
            if limit is not None and got[q] > limit:
                return False
    if t.obs_age_max_ns is not None and tim["obs_age"]["max_ns"] > t.obs_age_max_ns:
        return False
    limit = t.max_consecutive_overruns
    return limit is None or tim["max_overrun_streak"] <= limit


def _onset_and_detection(e: Any, env: Any) -> tuple[int | None, int | None]:
    t = env.timing
    n = e.length
    beyond = np.zeros(n, bool)
    if t.latency.p50_ns is not None:
        beyond |= e.latency_ns[:n] > t.latency.p50_ns
    if t.dt.p50_ns is not None and e.dt_ns.size:
        beyond[1 : e.dt_ns.size + 1] |= e.dt_ns[: n - 1] > t.dt.p50_ns
    if t.obs_age_max_ns is not None:
        beyond |= e.obs_age_ns[:n] > t.obs_age_max_ns
    onset = int(np.argmax(beyond)) if beyond.any() else None
    detect = None
    if e.guard_states:
        for i, s in enumerate(e.guard_states):
            if s != "nominal":
                detect = i
                break
    return onset, detect


def certify(
    policy: str | Path,
    envelope: str | Path,
    env: str,
    *,
    fallback: str | None = None,
    profiles: Sequence[str] = (),
    episodes: int = 20,
    seed: int = 1000,
    workers: int = 1,
    executor: Executor | str | None = None,
    address: str | None = None,
    require: str | None = None,
    n_resamples: int = 9999,
    alpha: float = 0.05,
    block: int = DEFAULT_BLOCK,
    workdir: str | Path | None = None,
    vecnormalize: str | Path | None = None,
    progress: ProgressFn | None = None,
) -> CertifyResult:
    """Certify a policy against an envelope (see the module docstring).

    Args:
        policy: ONNX file, RSL-RL ``.pt`` or SB3 ``.zip``.
        envelope: the envelope JSON (normally ``audit/envelope.json``).
        env: the env id the envelope was audited on.
        fallback: the guard's fallback: ``"hold"`` (default), ``"zero"`` or an ONNX file.
        profiles: measured latency profile files to place and judge.
        episodes, seed: paired episodes per condition and their base seed (default 1000:
            other episodes than the audit's default seed 0, so certification is not judged
            on the episodes the envelope was derived from).
        require: required rating (default: the one the envelope was audited with, or MILD).
        workers, executor, address, n_resamples, alpha, block, workdir, vecnormalize,
            progress: as in
            :func:`tailguard.audit.run_audit`.

    Raises:
        HashMismatchError: the envelope was written for another policy.
        EnvelopeError: unreadable envelope, or written for another control period.
        ConfigError: bad inputs.
    """
    from tailguard.adapters.resolve import resolve_policy
    from tailguard.audit.sweep import measured
    from tailguard.envelope.model import load_envelope

    started = time.perf_counter()
    env_obj = load_envelope(envelope)
    if workdir is None:
        import tempfile

        workdir = tempfile.mkdtemp(prefix="tailguard-certify-")
    resolved = resolve_policy(policy, workdir, vecnormalize=vecnormalize)
    info = task_info(env)
    obs_size, action_size, sha = check_sizes(resolved.onnx_path, info)
    bound = env_obj.policy.sha256
    if bound is not None and bound != sha:
        raise HashMismatchError(
            f"the envelope {Path(envelope).name} was written for the policy with sha256 "
            f"{bound[:16]}..., not for {Path(str(policy)).name} (sha256 {sha[:16]}...); audit "
            "this policy to get its own envelope"
        )
    if env_obj.timing.period_ns != info.period_ns:
        raise EnvelopeError(
            f"the envelope's period_ns {env_obj.timing.period_ns} differs from the control "
            f"period of {env} ({info.period_ns} ns); use an envelope audited on this env",
            str(envelope),
        )
    if env_obj.policy.obs_size != obs_size or env_obj.policy.action_size != action_size:
        raise EnvelopeError(
            f"the envelope is for {env_obj.policy.obs_size} observations / "
            f"{env_obj.policy.action_size} actions; the policy has {obs_size} / {action_size}",
            str(envelope),
        )
    results_doc = dict(env_obj.provenance.results)
    req = (require or str(results_doc.get("require", "MILD"))).upper()
    threshold = required_threshold(req)
    settings = BootstrapSettings(n_resamples=n_resamples, alpha=alpha, seed=seed)
    audited = [dict(c) for c in results_doc.get("conditions", ())]
    for brief in audited:
        if "spec" in brief:
            spec = dict(brief["spec"])
            mp = spec.get("miss_pattern")
            spec["miss_pattern"] = list(mp) if mp else None
            brief["spec"] = spec
    inside, outside = _stress_conditions(env_obj, audited)
    meas = [measured(p, i) for i, p in enumerate(profiles)]
    conds = [NOMINAL, *inside, *outside, *meas]
    target = Target(env=env, policy=str(resolved.onnx_path), seed=seed)
    gs = GuardSettings(envelope=env_obj.to_dict(), fallback=fallback or "hold", keep_ticks=True)
    units = make_units(target, conds, episodes, block, tag="unguarded")
    units += make_units(target, conds, episodes, block, guard=gs, tag="guarded")
    runner, close = select_executor(
        executor, workers=workers, address=address, while_waiting=preload_statistics
    )
    total = 2 * len(conds) * episodes
    done = [0]

    def on_result(res: Any) -> None:
        done[0] += len(res.episodes)
        if progress is not None:
            progress(done[0], total)

    try:
        unit_results = runner.run(units, on_result)
    finally:
        close()
    half = len(units) // 2
    ung = collect(conds, unit_results[:half], info.period_ns, 1)
    gua = collect(conds, unit_results[half:], info.period_ns, 1)
    apply_statistics(ung, settings, threshold)
    placement: dict[str, str] = {}
    for c, u in zip(conds[1:], ung[1:], strict=True):
        if c.dimension in ("near",) or c.name.startswith("audited/"):
            placement[c.name] = "inside"
        elif c.dimension == "out":
            placement[c.name] = "outside"
        else:
            placement[c.name] = "inside" if in_envelope(u, env_obj) else "outside"
    # Guarded ratios of the inside profiles (one Holm family) are against the UNGUARDED
    # nominal episodes: the guard must not cost what the bare policy tolerates.
    inside_guarded = [
        g for c, g in zip(conds[1:], gua[1:], strict=True) if placement[c.name] == "inside"
    ]
    if inside_guarded:
        apply_statistics([ung[0], *inside_guarded], settings, threshold)
    gua[0].companions(ung[0].returns, 0.0)

    checks: list[Check] = []
    # An episode the unguarded policy fails on its own under nominal timing (it falls) is
    # no place for a false alarm: what the guard does there (e.g. obs_range as the robot
    # leaves the audited states before the fall) is left out of the count and listed.
    own_failures = frozenset(e.episode for e in ung[0].episodes if e.fell)
    totals = _guard_totals(gua[0], own_failures)
    frac = totals["intervention_fraction"]
    left_out = (
        f"; {len(own_failures)} episode(s) the unguarded policy fails on its own left out"
        if own_failures
        else ""
    )
    checks.append(
        Check(
            "false_alarms",
            "pass" if frac < MAX_INTERVENTION_FRACTION else "fail",
            "nominal",
            f"guard interventions on {frac:.4%} of nominal ticks (limit "
            f"{MAX_INTERVENTION_FRACTION:.1%}){left_out}",
            totals,
        )
    )
    from tailguard.audit.shift import distribution_shift

    shift_status, shift_detail, shift_numbers = distribution_shift(
        env_obj, str(resolved.onnx_path), ung[0].episodes
    )
    checks.append(Check("distribution_shift", shift_status, "nominal", shift_detail, shift_numbers))
    worst: dict[str, Any] | None = None
    for c, u, g in zip(conds[1:], ung[1:], gua[1:], strict=True):
        where = placement[c.name]
        kind = (
            "measured"
            if c.dimension == "measured"
            else ("in_envelope" if where == "inside" else "out_of_envelope")
        )
        if where == "inside":
            own = frozenset(e.episode for e in u.episodes if e.fell)  # as for nominal
            checks.extend(_judge_inside(kind, c, g, threshold, req, own))
        else:
            checks.extend(_judge_outside(kind, c, u, g, env_obj, settings))
            for e in g.episodes:
                score = (e.guard or {}).get("interventions", 0)
                if worst is None or score > worst["interventions"]:
                    worst = {
                        "condition": c.name,
                        "episode": e.episode,
                        "return": e.ret,
                        "interventions": int(score),
                        "states": e.guard_states or [],
                        "latency_ns": e.latency_ns,
                    }
    checks.append(_parity_check(resolved.source))
    checks.append(_determinism_check(units, unit_results))
    result = CertifyResult(
        task=info,
        policy={**resolved.source, "path": Path(str(policy)).name, "onnx_sha256": sha},
        envelope_path=str(envelope),
        envelope=env_obj,
        checks=checks,
        unguarded=ung,
        guarded=gua,
        placement=placement,
        settings=settings,
        require=req,
        episodes=episodes,
        seed=seed,
        worst=worst,
    )
    result.policy.pop("exported_onnx", None)
    result.run = {
        "duration_s": round(time.perf_counter() - started, 3),
        "workers": getattr(runner, "workers", None),
        "executor": type(runner).__name__,
        "units": len(units),
    }
    return result


def _judge_inside(
    kind: str,
    c: Condition,
    g: ConditionResult,
    threshold: float,
    req: str,
    own_failures: frozenset[int] = frozenset(),
) -> list[Check]:
    out = []
    r = g.rating
    if r is not None:
        status = "pass" if r.tolerated else ("warn" if r.rating is Rating.INCONCLUSIVE else "fail")
        out.append(
            Check(
                kind,
                status,
                c.name,
                f"guarded return ratio {g.ratio.ratio if g.ratio else float('nan'):.3f}, lower "
                f"bound {r.lower_bound:.3f} vs required {req} ({threshold}): {r.rating.value}",
                {
                    "ratio": g.ratio.ratio if g.ratio else None,
                    "lower_bound": r.lower_bound,
                    "upper_bound": r.upper_bound,
                    "rating": r.rating.value,
                    "episodes_to_settle": r.episodes_to_settle,
                },
            )
        )
    totals = _guard_totals(g, own_failures)
    frac = totals["intervention_fraction"]
    left_out = f"; {len(own_failures)} episode(s) failed unguarded left out" if own_failures else ""
    out.append(
        Check(
            kind,
            "pass" if frac < MAX_INTERVENTION_FRACTION else "fail",
            c.name,
            f"guard interventions on {frac:.4%} of ticks (limit "
            f"{MAX_INTERVENTION_FRACTION:.1%}){left_out}",
            totals,
        )
    )
    return out


def _judge_outside(
    kind: str,
    c: Condition,
    u: ConditionResult,
    g: ConditionResult,
    env: Any,
    settings: BootstrapSettings,
) -> list[Check]:
    out = []
    totals = _guard_totals(g)
    delays = []
    exposed = 0
    for e in g.episodes:
        onset, detect = _onset_and_detection(e, env)
        if onset is not None:
            exposed += 1
            if detect is not None:
                delays.append(max(0, detect - onset))
    detected = totals["episodes_with_timing_violation"]
    med = float(np.median(delays)) if delays else float("nan")
    worst_delay = max(delays) if delays else "n/a"
    n = len(g.episodes)
    status = "pass" if detected >= max(exposed, 1) else ("warn" if detected else "fail")
    out.append(
        Check(
            kind,
            status,
            c.name,
            f"timing violations detected in {detected}/{n} episodes ({exposed} exposed); "
            f"detection delay median {med:.0f} ticks, max {worst_delay}",
            {
                "detected_episodes": detected,
                "exposed_episodes": exposed,
                "episodes": n,
                "detection_delay_ticks": delays,
                "violations": totals["violations"],
            },
        )
    )
    diff = paired_difference(
        g.returns, u.returns, settings, stream=condition_stream("diff/" + c.name)
    )
    if diff.high < 0:
        status = "fail"
    elif diff.low < 0 and diff.estimate < 0:
        status = "warn"
    else:
        status = "pass"
    out.append(
        Check(
            kind,
            status,
            c.name,
            f"guarded - unguarded mean return {diff.estimate:.2f} "
            f"[{diff.low:.2f}, {diff.high:.2f}] ({diff.method})",
            {
                "difference": diff.to_dict(),
                "guarded_mean": float(g.returns.mean()),
                "unguarded_mean": float(u.returns.mean()),
            },
        )
    )
    return out


def _parity_check(source: dict[str, Any]) -> Check:
    parity = source.get("parity")
    if not parity:
        return Check(
            "parity",
            "pass",
            "",
            "ONNX given directly: no source checkpoint to compare",
            {"applicable": False},
        )
    ok = bool(parity.get("passed"))
    return Check(
        "parity",
        "pass" if ok else "fail",
        "",
        f"ONNX vs {source.get('format')} source: max |diff| "
        f"{parity.get('max_abs_diff'):.3g}, scaled {_scaled(parity):.3g} "
        f"(tolerance {parity.get('tolerance')} on the scaled figure)",
        dict(parity),
    )


def _scaled(parity: Mapping[str, Any]) -> float:
    """The scaled parity figure; records written before it existed carry only the absolute."""
    return float(parity.get("max_scaled_diff", parity.get("max_abs_diff")))


def _determinism_check(units: Sequence[Any], results: Sequence[Any]) -> Check:
    """Re-run the first guarded unit and the first unguarded non-nominal one in this process."""
    picks = [i for i, u in enumerate(units) if u.tag == "guarded"][:1]
    picks += [i for i, u in enumerate(units) if u.tag == "unguarded" and u.index > 0][:1]
    mismatches = []
    for i in picks:
        again = run_unit(units[i])
        first = results[i]
        for a, b in zip(first.episodes, again.episodes, strict=True):
            same = (
                a.ret == b.ret
                and a.length == b.length
                and np.array_equal(a.latency_ns, b.latency_ns)
                and a.guard == b.guard
            )
            if not same:
                mismatches.append(f"{units[i].condition.name} episode {a.episode}")
    return Check(
        "determinism",
        "fail" if mismatches else "pass",
        "",
        "re-run reproduced every episode" if not mismatches else f"re-run differs: {mismatches}",
        {"units_rerun": len(picks), "mismatches": mismatches},
    )

"""The Hopper half of `tailguard demo`: the shipped policy pair under the audited envelope.

Columns (paired episodes: column ``c``'s episode ``i`` resets Hopper-v5 with ``seed + i``
and seeds every timing stream from the same number, in every column):

* nominal timing -- the nominal policy alone (the base every ratio is taken against) and
  guarded (nominal in charge, the audited envelope, the robust policy as fallback): the
  guard must stay out of the way (interventions < 0.1 % of ticks);
* a long-tail inference latency and GC-pause-like latency bursts -- nominal only, robust
  only, guarded.

The guarded columns run the runtime ``Guard`` on the simulated clock with the shipped
audited envelope (``hopper_nominal.envelope.json``) and its audited responses, in deadline
mode with the envelope's latency cap as the deadline (the control period if that is
shorter: a later answer would delay the next tick): the policy's inference runs on a
worker, and a tick it has not answered by the deadline is answered by the guard's thread
with the robust fallback on the current observation (``deadline_miss``: fallback, as the
audit derives it for a fallback policy). The fallback's own inference takes simulated time
too: its latency on this machine as ``tailguard bench`` measured it
(``hopper_robust.latency.json``, :data:`BENCH_COMMAND`). The long tail is the policy
worker's (its inference, not the guard's thread); a GC burst pauses the whole process, the
guard's thread included, so a miss there is answered only when the pause ends
(``process_wide``). Episodes run on a local process pool; results never depend on the
worker count.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "AUDIT_COMMAND",
    "BENCH_COMMAND",
    "COLUMNS",
    "ENVELOPE_FILE",
    "PROFILES",
    "Column",
    "ColumnResult",
    "Goal",
    "HopperDemo",
    "run_hopper_demo",
]

POLICY_DIR = Path(__file__).resolve().parents[1] / "policies"
NOMINAL_POLICY = "hopper_nominal.onnx"
ROBUST_POLICY = "hopper_robust.onnx"
#: the audited envelope of the nominal policy, shipped beside it (package data)
ENVELOPE_FILE = "hopper_nominal.envelope.json"
#: the command that produced ``ENVELOPE_FILE`` (run from the repository root)
AUDIT_COMMAND = (
    "tailguard audit --policy guard/policies/hopper_nominal.onnx --env Hopper-v5 "
    "--fallback guard/policies/hopper_robust.onnx --episodes 40 --seed 100 "
    "--dimensions latency_fixed,latency_lognormal_capped,latency_spikes,dt_jitter,obs_age "
    "--workers 2 --out audit-hopper && cp audit-hopper/envelope.json "
    "guard/policies/hopper_nominal.envelope.json"
)
ENV_ID = "Hopper-v5"
#: the robust fallback's inference latency on this machine (``tailguard bench``'s empirical
#: profile), the time the guard's thread takes to answer with it
FALLBACK_LATENCY_FILE = "hopper_robust.latency.json"
#: the command that measured ``FALLBACK_LATENCY_FILE`` (from the repository root)
BENCH_COMMAND = (
    "tailguard bench --policy guard/policies/hopper_robust.onnx --rate-hz 125 "
    "--duration-s 20 --out bench-robust && cp bench-robust/empirical_profile.json "
    "guard/policies/hopper_robust.latency.json"
)

#: profile key -> (title, latency spec in firmware_sim.profile_spec's language, whether it
#: pauses the whole process -- the guard's thread too -- or only the policy's inference)
PROFILES: dict[str, tuple[str, str, bool]] = {
    "nominal": ("nominal timing", "nominal", False),
    "long_tail": ("long tail", "lognormal:median_ms=2.5,sigma=0.9,cap_ms=40", False),
    "gc_bursts": ("GC bursts", "spikes:p=0.01,len=4,ms=20", True),
}
FAULT_PROFILES = ("long_tail", "gc_bursts")
#: goal: guarded >= max(nominal only, robust only) - this fraction of the nominal return
RETURN_MARGIN = 0.05
#: goal: guarded falls <= (1 - this) x unguarded falls
FALL_CUT = 0.8
#: goal: interventions under nominal timing below this fraction of ticks
MAX_NOMINAL_INTERVENTIONS = 0.001
#: episodes per work unit (never depends on the worker count)
BLOCK = 4
RESAMPLES = 4999


@dataclass(frozen=True)
class Column:
    """One column of the table: a timing profile and who is in charge.

    Attributes:
        profile: key of :data:`PROFILES`.
        mode: ``"nominal"`` (nominal policy alone), ``"robust"`` (robust policy alone) or
            ``"guarded"``.
    """

    profile: str
    mode: str

    @property
    def label(self) -> str:
        """The column header."""
        what = {"nominal": "nominal only", "robust": "robust only", "guarded": "guarded"}
        return f"{PROFILES[self.profile][0]}, {what[self.mode]}"


COLUMNS: tuple[Column, ...] = (
    Column("nominal", "nominal"),
    Column("nominal", "guarded"),
    *(Column(p, m) for p in FAULT_PROFILES for m in ("nominal", "robust", "guarded")),
)


@dataclass(frozen=True)
class _Block:
    column: int
    start: int
    stop: int
    seed: int
    envelope: dict[str, Any]


@dataclass
class Episode:
    """What the demo keeps of one episode."""

    ret: float
    fell: bool
    ticks: int
    interventions: int = 0
    fallback_ns: int = 0
    hold_ns: int = 0
    sim_ns: int = 0
    violations: dict[str, int] = field(default_factory=dict)
    deadline_misses: int = 0


def _run_block(block: _Block) -> tuple[int, int, list[Episode]]:
    """Run one block of episodes of one column in this process (pool worker)."""
    from tailguard.firmware_sim.controllers import OnnxController
    from tailguard.firmware_sim.replay import TimingSpec, build_loop

    col = COLUMNS[block.column]
    task = _task()
    spec = PROFILES[col.profile][1]
    controller: Any
    if col.mode == "guarded":
        from tailguard.envelope.model import envelope_from_dict
        from tailguard.firmware_sim.guarded import GuardedController
        from tailguard.firmware_sim.profile_spec import parse_profile
        from tailguard.runtime.policy import OnnxPolicy

        envelope = envelope_from_dict(block.envelope)
        controller = GuardedController(
            OnnxPolicy(POLICY_DIR / NOMINAL_POLICY),
            envelope,
            fallback=OnnxPolicy(POLICY_DIR / ROBUST_POLICY),
            deadline_ns=deadline_ns(envelope),
            fallback_latency=parse_profile(f"empirical:{POLICY_DIR / FALLBACK_LATENCY_FILE}"),
            process_wide=PROFILES[col.profile][2],
        )
    else:
        name = NOMINAL_POLICY if col.mode == "nominal" else ROBUST_POLICY
        controller = OnnxController(POLICY_DIR / name)
    loop = build_loop(task, controller, TimingSpec(latency=spec))
    out = []
    for i in range(block.start, block.stop):
        r = loop.run_episode(block.seed + i)
        g = r.guard or {}
        st = g.get("state_time_ns", {})
        out.append(
            Episode(
                ret=float(r.ret),
                fell=bool(r.terminated),
                ticks=int(r.length),
                interventions=int(g.get("interventions", 0)),
                fallback_ns=int(st.get("fallback", 0)),
                hold_ns=int(st.get("hold", 0)),
                sim_ns=int(r.sim_time_ns),
                violations=dict(g.get("violations", {})),
                deadline_misses=int(g.get("deadline_misses", 0)),
            )
        )
    return block.column, block.start, out


_TASK: list[Any] = []


def _task() -> Any:
    """One Hopper task per process (building one takes a while; forked workers inherit it)."""
    if not _TASK:
        from tailguard.firmware_sim.replay import make_task

        _TASK.append(make_task(ENV_ID))
    return _TASK[0]


@dataclass
class ColumnResult:
    """One column's episodes and statistics.

    Attributes:
        column: profile and mode.
        episodes: per episode, in seed order.
        ratio, ratio_low, ratio_high: mean return / the nominal-timing nominal-only mean, with
            its paired bootstrap interval (``1 - 2 alpha``; None for the base column).
        falls_ci: Clopper-Pearson 95 % interval of the fall rate.
    """

    column: Column
    episodes: list[Episode]
    ratio: float | None = None
    ratio_low: float | None = None
    ratio_high: float | None = None
    falls_ci: tuple[float, float] = (0.0, 1.0)

    @property
    def label(self) -> str:
        """The column header."""
        return self.column.label

    @property
    def returns(self) -> np.ndarray:
        """Per-episode returns."""
        return np.asarray([e.ret for e in self.episodes], np.float64)

    @property
    def return_mean(self) -> float:
        """Mean episode return."""
        return float(self.returns.mean())

    @property
    def falls(self) -> int:
        """Episodes that ended in a fall."""
        return sum(e.fell for e in self.episodes)

    @property
    def ticks(self) -> int:
        """Ticks over every episode."""
        return sum(e.ticks for e in self.episodes)

    @property
    def interventions(self) -> int:
        """Ticks whose action was not the nominal policy's own (guarded columns)."""
        return sum(e.interventions for e in self.episodes)

    @property
    def fallback_fraction(self) -> float:
        """Fraction of simulated time the guard spent in FALLBACK."""
        sim = sum(e.sim_ns for e in self.episodes)
        return sum(e.fallback_ns for e in self.episodes) / sim if sim else 0.0

    def violations(self) -> dict[str, int]:
        """Violation counts per kind over the episodes."""
        out: dict[str, int] = {}
        for e in self.episodes:
            for k, n in e.violations.items():
                out[k] = out.get(k, 0) + n
        return dict(sorted(out.items()))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "label": self.label,
            "profile": self.column.profile,
            "latency": PROFILES[self.column.profile][1],
            "mode": self.column.mode,
            "returns": [float(x) for x in self.returns],
            "return_mean": self.return_mean,
            "ratio_to_nominal": self.ratio,
            "ratio_interval": None if self.ratio is None else [self.ratio_low, self.ratio_high],
            "falls": self.falls,
            "falls_ci95": list(self.falls_ci),
            "ticks": self.ticks,
            "interventions": self.interventions,
            "fallback_fraction": self.fallback_fraction,
            "violations": self.violations(),
            "deadline_misses": sum(e.deadline_misses for e in self.episodes),
        }


@dataclass(frozen=True)
class Goal:
    """One of the demo's goals, judged from the numbers.

    Attributes:
        name: what is claimed.
        met: whether the numbers meet it (point estimates).
        text: the sentence printed, with the numbers.
    """

    name: str
    met: bool
    text: str


@dataclass
class HopperDemo:
    """Everything the Hopper demo measured."""

    columns: list[ColumnResult]
    goals: list[Goal]
    seed: int
    episodes: int
    envelope_path: str
    envelope_summary: dict[str, Any]
    margin: dict[str, dict[str, Any]]

    def column(self, profile: str, mode: str) -> ColumnResult:
        """The column of ``profile`` x ``mode``."""
        for c in self.columns:
            if c.column == Column(profile, mode):
                return c
        raise KeyError((profile, mode))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (deterministic for a seed)."""
        return {
            "plant": "hopper",
            "env": ENV_ID,
            "seed": self.seed,
            "episodes": self.episodes,
            "pairing": "episode i of every column resets with seed+i and the same timing streams",
            "envelope": self.envelope_path,
            "envelope_summary": self.envelope_summary,
            "audit_command": AUDIT_COMMAND,
            "columns": [c.to_dict() for c in self.columns],
            "goal_margin": self.margin,
            "goals": [{"name": g.name, "met": g.met, "text": g.text} for g in self.goals],
        }


def hopper_files_present() -> bool:
    """True when both shipped policies and the audited envelope are package data here."""
    files = (NOMINAL_POLICY, ROBUST_POLICY, ENVELOPE_FILE)
    return all((POLICY_DIR / f).is_file() for f in files)


def run_hopper_demo(
    episodes: int = 40, seed: int = 1000, workers: int = 2, while_waiting: Any = None
) -> HopperDemo:
    """Run every column as paired episodes and judge the goals.

    Args:
        episodes: paired episodes per column (>= 2).
        seed: episode ``i`` resets with ``seed + i`` in every column.
        workers: local worker processes (1 = in this process); results do not depend on it.
        while_waiting: called in this process once the work is submitted (e.g. import the
            plotting library).

    Raises:
        ConfigError: fewer than 2 episodes, or the envelope does not load.
    """
    from tailguard.envelope.model import load_envelope
    from tailguard.errors import ConfigError

    if episodes < 2:
        raise ConfigError(f"the paired statistics need at least 2 episodes, got {episodes}")
    env_path = POLICY_DIR / ENVELOPE_FILE
    envelope = load_envelope(env_path)
    _task()  # built before forking: the workers inherit it
    blocks = [
        _Block(ci, s, min(s + BLOCK, episodes), seed, envelope.to_dict())
        for ci in range(len(COLUMNS))
        for s in range(0, episodes, BLOCK)
    ]
    done = _execute(blocks, workers, while_waiting)
    columns = []
    for ci, col in enumerate(COLUMNS):
        eps: list[Episode] = []
        for start in sorted(s for c, s in done if c == ci):
            eps.extend(done[(ci, start)])
        columns.append(ColumnResult(col, eps))
    margin = _statistics(columns, seed)
    demo = HopperDemo(
        columns=columns,
        goals=[],
        seed=seed,
        episodes=episodes,
        envelope_path=f"tailguard/policies/{ENVELOPE_FILE}",
        envelope_summary=_envelope_summary(envelope),
        margin=margin,
    )
    demo.goals = judge_goals(demo)
    return demo


def _execute(
    blocks: Sequence[_Block], workers: int, while_waiting: Any
) -> dict[tuple[int, int], list[Episode]]:
    if workers <= 1:
        return {(c, s): eps for c, s, eps in map(_run_block, blocks)}
    import multiprocessing
    import sys

    ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures = [pool.submit(_run_block, b) for b in blocks]
        if while_waiting is not None:
            while_waiting()
        return {(c, s): eps for c, s, eps in (f.result() for f in futures)}


def _statistics(columns: list[ColumnResult], seed: int) -> dict[str, dict[str, Any]]:
    """Ratios to the base column with paired intervals, fall intervals, and the margin of
    guarded over the better unguarded column (as a fraction of the nominal return)."""
    from tailguard.audit.statistics import BootstrapSettings, clopper_pearson, paired_ratio

    settings = BootstrapSettings(n_resamples=RESAMPLES, seed=seed)
    base = columns[0].returns
    for c in columns:
        c.falls_ci = clopper_pearson(c.falls, len(c.episodes))
        if c is columns[0]:
            continue
        r = paired_ratio(base, c.returns, settings, stream=zlib.crc32(c.label.encode()))
        c.ratio = r.ratio
        c.ratio_low = r.low if r.defined else None
        c.ratio_high = r.high if r.defined else None
    margin: dict[str, dict[str, Any]] = {}
    by = {(c.column.profile, c.column.mode): c for c in columns}
    for p in FAULT_PROFILES:
        g, n, rb = by[(p, "guarded")], by[(p, "nominal")], by[(p, "robust")]
        best = n if n.return_mean >= rb.return_mean else rb
        # mean(guarded - best) / mean(nominal base): the paired ratio of the differences
        r = paired_ratio(base, g.returns - best.returns, settings, stream=zlib.crc32(p.encode()))
        margin[p] = {
            "best": best.column.mode,
            "estimate": r.ratio,
            "low": r.low,
            "high": r.high,
        }
    return margin


def judge_goals(demo: HopperDemo) -> list[Goal]:
    """The goals, each judged from the measured numbers (never assumed)."""
    goals = []
    g = demo.column("nominal", "guarded")
    frac = g.interventions / g.ticks if g.ticks else 0.0
    ok = frac < MAX_NOMINAL_INTERVENTIONS
    goals.append(
        Goal(
            "nominal: guard out of the way",
            ok,
            f"nominal timing: interventions {g.interventions} of {g.ticks} ticks "
            f"({100 * frac:.3f} %, goal < {100 * MAX_NOMINAL_INTERVENTIONS:.1f} %): "
            + ("MET" if ok else "MISSED"),
        )
    )
    base = demo.columns[0].return_mean
    for p in FAULT_PROFILES:
        title = PROFILES[p][0]
        gu, nom, rob = (demo.column(p, m) for m in ("guarded", "nominal", "robust"))
        best = max(nom.return_mean, rob.return_mean)
        need = best - RETURN_MARGIN * base
        m = demo.margin[p]
        ok = gu.return_mean >= need
        goals.append(
            Goal(
                f"{p}: return",
                ok,
                f"{title}: guarded return {gu.return_mean:.0f} vs max(nominal only "
                f"{nom.return_mean:.0f}, robust only {rob.return_mean:.0f}) - "
                f"{100 * RETURN_MARGIN:g} % of nominal {base:.0f} = {need:.0f}: "
                + ("MET" if ok else "MISSED")
                + f" (guarded - best = {100 * m['estimate']:+.1f} % of nominal, paired 90 % "
                f"interval [{100 * m['low']:+.1f}, {100 * m['high']:+.1f}] %)",
            )
        )
        if nom.falls == 0:
            ok = gu.falls == 0
            verdict = "MET (no unguarded falls to cut)" if ok else "MISSED"
            cut_text = "unguarded never fell"
        else:
            cut = 1.0 - gu.falls / nom.falls
            ok = cut >= FALL_CUT
            verdict = "MET" if ok else "MISSED"
            cut_text = f"cut {100 * cut:.0f} %"
        goals.append(
            Goal(
                f"{p}: falls",
                ok,
                f"{title}: falls guarded {gu.falls}/{len(gu.episodes)} vs unguarded "
                f"{nom.falls}/{len(nom.episodes)} ({cut_text}, goal >= {100 * FALL_CUT:.0f} %): "
                + verdict,
            )
        )
    return goals


def deadline_ns(envelope: Any) -> int:
    """The guarded columns' deadline: the envelope's latency cap, or the control period if
    that is shorter (an answer later than the period would delay the next tick)."""
    t = envelope.timing
    return min(t.latency.max_ns, t.period_ns)


def _envelope_summary(envelope: Any) -> dict[str, Any]:
    t = envelope.timing
    prov = envelope.provenance
    results = (prov.results or {}) if prov is not None else {}
    return {
        "audited": bool(prov is not None and prov.audited),
        "period_ns": t.period_ns,
        "responses": {v.value: r.value for v, r in envelope.responses.items()},
        "latency_p99_ns": t.latency.p99_ns,
        "latency_max_ns": t.latency.max_ns,
        "deadline_ns": deadline_ns(envelope),
        "dt_max_ns": t.dt.max_ns,
        "max_consecutive_overruns": t.max_consecutive_overruns,
        "policy_sha256": envelope.policy.sha256,
        "audit_episodes": results.get("episodes_per_condition"),
        "audit_seed": results.get("seed"),
    }


def format_hopper(demo: HopperDemo) -> str:
    """The text `tailguard demo` prints for the Hopper demo (deterministic for a seed)."""
    from tailguard.tools.cli_table import render_table

    cols = demo.columns
    base = cols[0].return_mean

    def guarded_only(c: ColumnResult, text: str) -> str:
        return text if c.column.mode == "guarded" else "-"

    rows = []
    for c in cols:
        ratio = (
            "1 (base)"
            if c.ratio is None
            else f"{c.ratio:.2f} [{c.ratio_low:.2f}, {c.ratio_high:.2f}]"
        )
        frac = 100 * c.interventions / c.ticks if c.ticks else 0.0
        rows.append(
            [
                c.label,
                f"{c.return_mean:.0f}",
                ratio,
                f"{c.falls}/{len(c.episodes)} [{c.falls_ci[0]:.2f}, {c.falls_ci[1]:.2f}]",
                guarded_only(c, f"{c.interventions} ({frac:.2f} %)"),
                guarded_only(c, f"{100 * c.fallback_fraction:.1f} %"),
                guarded_only(c, _top_violations(c.violations())),
            ]
        )
    table = render_table(
        [
            "column",
            "return",
            "ratio [90 %]",
            "falls [95 % CP]",
            "interventions (ticks)",
            "in fallback",
            "violations",
        ],
        rows,
    )
    e = demo.envelope_summary
    lines = [
        f"tailguard demo: the shipped Hopper-v5 pair (tailguard.policies: {NOMINAL_POLICY} in "
        f"charge, {ROBUST_POLICY} as fallback) replayed in MuJoCo in simulated time;",
        f"{demo.episodes} paired episodes per column (reset seeds {demo.seed}.."
        f"{demo.seed + demo.episodes - 1}, same timing streams in every column), "
        f"{_ms(e['period_ns'])} ms control period.",
        f"Long tail: the policy worker's inference latency {PROFILES['long_tail'][1]}; GC "
        f"bursts: {PROFILES['gc_bursts'][1]} (pauses of the whole process, the guard's thread "
        "too).",
        f"Guarded: AUDITED envelope {demo.envelope_path} (latency p99 "
        f"{_ms(e['latency_p99_ns'])} ms, max {_ms(e['latency_max_ns'])} ms; audit of "
        f"{e['audit_episodes']} paired episodes per condition, seed {e['audit_seed']}), "
        f"deadline mode at {_ms(e['deadline_ns'])} ms (its latency cap, at most the period): "
        "a tick the "
        f"policy has not answered by then is answered by the guard's thread",
        f"(deadline miss: {e['responses']['deadline_miss']}; a window violation: "
        f"{e['responses']['latency_p99']}) with the robust policy, whose inference takes its "
        f"latency measured on this machine ({FALLBACK_LATENCY_FILE}).",
        "Reproduce the envelope: " + AUDIT_COMMAND,
        "Reproduce the fallback's latency: " + BENCH_COMMAND,
        "",
        table,
        "",
        f"Ratios: mean return / nominal-timing nominal-only mean ({base:.0f}), paired BCa "
        f"bootstrap ({RESAMPLES} resamples, seed {demo.seed}).",
        "Goals:",
        *[f"  - {g.text}" for g in demo.goals],
    ]
    met = sum(g.met for g in demo.goals)
    lines.append(f"{met} of {len(demo.goals)} goals met.")
    for p in FAULT_PROFILES:
        missed = [g for g in demo.goals if g.name.startswith(f"{p}:") and not g.met]
        if missed and PROFILES[p][2]:
            rob = demo.column(p, "robust")
            lines.append(
                f"Why {PROFILES[p][0]} miss: a pause of the whole process stops the guard's "
                "thread too, so no deadline is kept during it and the fallback takes over only "
                f"after the first pause; the robust policy alone falls in {rob.falls} of "
                f"{len(rob.episodes)} episodes under them. Process pauses are fixed in the "
                "process (gc.freeze(), no allocation in the loop; `tailguard bench` freezes "
                "the GC by default), not by a guard inside it."
            )
    return "\n".join(lines)


def _top_violations(counts: dict[str, int], top: int = 3) -> str:
    """The ``top`` most frequent violation kinds, "+N more" for the rest ("0" for none)."""
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    text = ", ".join(f"{k} {n}" for k, n in ranked[:top])
    rest = len(ranked) - top
    return (text + (f", +{rest} more" if rest > 0 else "")) or "0"


def _ms(ns: int | None) -> str:
    return "n/a" if ns is None else f"{ns / 1e6:.3g}"


def _plots(demo: HopperDemo) -> tuple[str, str]:
    """The ratio bars and the return ECDFs, as embedded SVG ``<img>`` tags."""
    from tailguard.audit.svg_plot import Axes, ecdf_points, figure, img

    cols = demo.columns
    est = [1.0 if c.ratio is None else c.ratio for c in cols]
    lo = [e if c.ratio_low is None else c.ratio_low for c, e in zip(cols, est, strict=True)]
    hi = [e if c.ratio_high is None else c.ratio_high for c, e in zip(cols, est, strict=True)]
    color = {"nominal": "#888", "robust": "#59c", "guarded": "#2a2"}
    ax = Axes(
        categories=[c.label for c in cols],
        xlabel="mean return / nominal-timing nominal-only mean (paired 90 % interval)",
    )
    ax.hbar(est, colors=[color[c.column.mode] for c in cols], lo=lo, hi=hi)
    ratio_plot = img(figure([ax], panel_width=1000))
    panels = []
    for p in PROFILES:
        ax = Axes(title=PROFILES[p][0], xlabel="episode return", ylim=(0.0, 1.0))
        for c in cols:
            if c.column.profile == p:
                ax.line(*ecdf_points(c.returns), step=True, label=c.column.mode)
        panels.append(ax)
    ecdf_plot = img(
        figure(
            panels,
            cols=len(panels),
            panel_width=1000 / max(len(panels), 1),
            title="episode return ECDFs (paired episodes)",
        )
    )
    return ratio_plot, ecdf_plot


def hopper_html(demo: HopperDemo, text: str) -> str:
    """The self-contained HTML report of the Hopper demo (plots embedded as SVG images)."""
    import html

    from tailguard.audit.report import _page, _table

    cols = demo.columns
    ratio_plot, ecdf_plot = _plots(demo)
    rows = [
        [
            html.escape(c.label),
            f"{c.return_mean:.0f}",
            "base" if c.ratio is None else f"{c.ratio:.3f} [{c.ratio_low:.3f}, {c.ratio_high:.3f}]",
            f"{c.falls}/{len(c.episodes)} [{c.falls_ci[0]:.2f}, {c.falls_ci[1]:.2f}]",
            str(c.interventions) if c.column.mode == "guarded" else "-",
            f"{100 * c.fallback_fraction:.1f} %" if c.column.mode == "guarded" else "-",
        ]
        for c in cols
    ]
    goals = "".join(
        f"<li class='{'pass' if g.met else 'fail'}'>{html.escape(g.text)}</li>" for g in demo.goals
    )
    import json

    parts = [
        "<h1>tailguard demo — Hopper-v5, guarded by the audited envelope</h1>",
        f"<ul>{goals}</ul>",
        "<h2>Return ratio per column</h2>",
        ratio_plot,
        _table(
            rows,
            [
                "column",
                "mean return",
                "ratio [90 %]",
                "falls [95 % CP]",
                "interventions",
                "time in fallback",
            ],
        ),
        "<h2>Return distributions</h2>",
        ecdf_plot,
        "<h2>Console output</h2><pre>" + html.escape(text) + "</pre>",
        "<h2>Data</h2><pre>" + html.escape(json.dumps(demo.to_dict(), indent=1)) + "</pre>",
    ]
    return _page("tailguard demo", parts)

"""``tailguard sweep``: audit or certify many checkpoints from one manifest into one results
tree with an index page.

The manifest (``.toml`` or ``.json``; paths relative to it)::

    mode = "audit"              # or "certify"
    envs = ["Hopper-v5"]        # env ids (every checkpoint on every env)
    sweeps = ["timing.toml"]    # audit: sweep files (default: the default sweep, or --quick's)
    episodes = 20               # optional: paired episodes per condition
    seed = 0                    # optional: base seed (certify: 1000)
    quick = false               # audit: the smoke sweep
    require = "MILD"            # optional: PASS or MILD
    resamples = 9999            # optional: bootstrap resamples
    fallback = "hold"           # certify: hold, zero or an ONNX file

    [[checkpoints]]
    policy = "ckpt/step_1000.onnx"   # ONNX, RSL-RL .pt or SB3 .zip
    name = "step_1000"               # optional (default: the file's stem); unique
    vecnormalize = "..."             # optional (SB3)
    envelope = "envelopes/step_1000.json"   # certify: a file, or a table {ENV = FILE}

Entries are checkpoints x envs x sweep files, run in that order; each writes the usual
audit or certify outputs into ``OUT/entries/ID/`` and then a done-marker (``done.json``,
written atomically after the outputs). ``OUT/index.json`` and ``OUT/index.html`` give every
entry's status: ``ok`` (with its verdict), ``failed`` (with the error: a broken checkpoint
fails its own entries, not the sweep) or ``pending``; the tree is ``complete``, or
``partial`` while running and after Ctrl-C. ``--resume`` skips the entries marked ok and,
inside the others (failed or pending), the work units already finished (kept under
``ID/units/`` until the entry is ok).
"""

from __future__ import annotations

import difflib
import hashlib
import html
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tailguard.errors import ConfigError

__all__ = [
    "INDEX_SCHEMA_ID",
    "Entry",
    "Manifest",
    "SweepOutcome",
    "load_manifest",
    "run_sweep",
]

INDEX_SCHEMA_ID = "tailguard.sweep.index/1"
_MAX_MANIFEST_BYTES = 1 << 20
_MAX_ENTRIES = 100_000
_TOP_KEYS = (
    "mode",
    "envs",
    "sweeps",
    "episodes",
    "seed",
    "quick",
    "require",
    "resamples",
    "fallback",
    "checkpoints",
)
_CKPT_KEYS = ("policy", "name", "vecnormalize", "envelope")
_POLICY_SUFFIXES = (".onnx", ".pt", ".zip")


@dataclass(frozen=True)
class Entry:
    """One checkpoint on one env with one sweep file.

    Attributes:
        id: unique, filesystem-safe: ``NAME__ENV[__SWEEP]``.
        checkpoint, policy, vecnormalize: the checkpoint's name and files.
        env: the env id.
        sweep: the sweep file (audit; None for the default sweep).
        envelope: the envelope file (certify).
    """

    id: str
    checkpoint: str
    policy: str
    env: str
    sweep: str | None = None
    vecnormalize: str | None = None
    envelope: str | None = None


@dataclass
class Manifest:
    """A validated manifest (see the module docstring)."""

    path: Path
    digest: str
    mode: str
    entries: list[Entry]
    episodes: int | None = None
    seed: int | None = None
    quick: bool = False
    require: str | None = None
    resamples: int = 9999
    fallback: str | None = None


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "_"


def _unknown(keys: Any, known: tuple[str, ...], where: str, problems: list[str]) -> None:
    for k in keys:
        if k not in known:
            close = difflib.get_close_matches(str(k), known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            problems.append(f"{where}: unknown key '{k}'{hint}; known keys: {list(known)}")


def _int(data: dict[str, Any], key: str, lo: int, hi: int, problems: list[str]) -> int | None:
    v = data.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        problems.append(f"{key}: expected an integer in [{lo}, {hi}], got {v!r}")
        return None
    return v


def _read(path: Path) -> Any:
    from tailguard.audit.config_file import read_config

    data, raw = read_config(path, "manifest", _MAX_MANIFEST_BYTES)
    return data, hashlib.sha256(raw).hexdigest()


def load_manifest(path: str | Path, *, check_envs: bool = True) -> Manifest:
    """Read and validate a manifest, reporting every problem at once.

    Args:
        path: the ``.toml`` or ``.json`` manifest.
        check_envs: also build each env once (an unknown env id is a problem) and validate
            each sweep file against each env's control period.

    Raises:
        ConfigError: unreadable, or every problem found (missing files, unknown keys, bad
            values, duplicate names, unknown envs, invalid sweep files).
    """
    p = Path(path)
    data, digest = _read(p)
    base = p.resolve().parent
    problems: list[str] = []
    if not isinstance(data, dict):
        raise ConfigError("the manifest must be a table/object at the top level", p)
    _unknown(data, _TOP_KEYS, "manifest", problems)
    mode = data.get("mode", "audit")
    if mode not in ("audit", "certify"):
        problems.append(f"mode: expected 'audit' or 'certify', got {mode!r}")

    def file(value: Any, where: str, suffixes: tuple[str, ...] | None = None) -> str | None:
        if not isinstance(value, str) or not value.strip():
            problems.append(f"{where}: expected a file path, got {value!r}")
            return None
        f = (base / value).resolve() if not Path(value).is_absolute() else Path(value)
        if not f.is_file():
            problems.append(f"{where}: file not found: {f}")
            return None
        if suffixes and f.suffix.lower() not in suffixes:
            problems.append(f"{where}: expected one of {list(suffixes)}, got '{f.name}'")
            return None
        return str(f)

    envs = data.get("envs")
    if not isinstance(envs, list) or not envs or not all(isinstance(e, str) and e for e in envs):
        problems.append(f"envs: expected a non-empty list of env ids, got {envs!r}")
        envs = []
    elif len(set(envs)) != len(envs):
        problems.append(f"envs: listed twice: {sorted({e for e in envs if envs.count(e) > 1})}")
    sweeps_raw = data.get("sweeps")
    sweeps: list[str | None] = [None]
    if sweeps_raw is not None:
        if mode == "certify":
            problems.append("sweeps: certify takes its conditions from the envelope; drop sweeps")
        elif not isinstance(sweeps_raw, list) or not sweeps_raw:
            problems.append(f"sweeps: expected a non-empty list of sweep files, got {sweeps_raw!r}")
        else:
            sweeps = [file(s, f"sweeps[{i}]", (".toml", ".json")) for i, s in enumerate(sweeps_raw)]
    episodes = _int(data, "episodes", 2, 100_000, problems)
    seed = _int(data, "seed", 0, 2**31 - 1, problems)
    resamples = _int(data, "resamples", 100, 1_000_000, problems)
    quick = data.get("quick", False)
    if not isinstance(quick, bool):
        problems.append(f"quick: expected true or false, got {quick!r}")
    elif quick and mode == "certify":
        problems.append("quick: certify takes its conditions from the envelope; drop quick")
    require = data.get("require")
    if require is not None and require not in ("PASS", "MILD"):
        problems.append(f"require: expected 'PASS' or 'MILD', got {require!r}")
    fallback = data.get("fallback")
    if fallback is not None:
        if mode != "certify":
            problems.append("fallback: only certify runs the guard; drop it or set mode")
        elif fallback not in ("hold", "zero"):
            fallback = file(fallback, "fallback", (".onnx",))
    ckpts = data.get("checkpoints")
    if not isinstance(ckpts, list) or not ckpts:
        problems.append("checkpoints: expected a non-empty list of [[checkpoints]] tables")
        ckpts = []
    entries: list[Entry] = []
    names: dict[str, int] = {}
    for i, c in enumerate(ckpts):
        where = f"checkpoints[{i}]"
        if not isinstance(c, dict):
            problems.append(f"{where}: expected a table with 'policy', got {c!r}")
            continue
        _unknown(c, _CKPT_KEYS, where, problems)
        policy = file(c.get("policy"), f"{where}.policy", _POLICY_SUFFIXES)
        name = c.get("name", Path(str(c.get("policy", ""))).stem)
        if not isinstance(name, str) or not name:
            problems.append(f"{where}.name: expected a non-empty string, got {name!r}")
            continue
        if _slug(name) in names:
            problems.append(
                f"{where}.name: '{name}' is also checkpoints[{names[_slug(name)]}]'s name; "
                "give each checkpoint its own name"
            )
            continue
        names[_slug(name)] = i
        vn = c.get("vecnormalize")
        vn = file(vn, f"{where}.vecnormalize") if vn is not None else None
        env_file: dict[str, str | None] = {}
        envelope = c.get("envelope")
        if mode == "certify":
            if isinstance(envelope, dict):
                _unknown(envelope, tuple(envs), f"{where}.envelope", problems)
                for e in envs:
                    if e not in envelope:
                        problems.append(f"{where}.envelope: no envelope for env '{e}'")
                    else:
                        env_file[e] = file(envelope[e], f"{where}.envelope.{e}", (".json",))
            elif envelope is None:
                problems.append(f"{where}.envelope: certify needs the checkpoint's envelope")
            else:
                one = file(envelope, f"{where}.envelope", (".json",))
                env_file = dict.fromkeys(envs, one)
        elif envelope is not None:
            problems.append(f"{where}.envelope: only certify uses an envelope; drop it")
        if policy is None:
            continue
        for e in envs:
            for s in sweeps:
                if sweeps_raw is not None and s is None:
                    continue  # that sweep file was refused above
                sid = "" if sweeps_raw is None else "__" + _slug(Path(str(s)).stem)
                entries.append(
                    Entry(
                        id=f"{_slug(name)}__{_slug(e)}{sid}",
                        checkpoint=name,
                        policy=policy,
                        env=e,
                        sweep=s,
                        vecnormalize=vn,
                        envelope=env_file.get(e),
                    )
                )
    ids = [e.id for e in entries]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        problems.append(f"entries {dup} share a folder name; rename the checkpoints or files")
    if len(entries) > _MAX_ENTRIES:
        problems.append(f"{len(entries)} entries; at most {_MAX_ENTRIES}")
    if check_envs and not problems:
        _check_envs(envs, [s for s in sweeps if s is not None], problems)
    if problems:
        lines = "\n".join(f"  - {m}" for m in problems)
        raise ConfigError(f"invalid manifest ({len(problems)} problem(s)):\n{lines}", p)
    return Manifest(
        path=p,
        digest=digest,
        mode=mode,
        entries=entries,
        episodes=episodes,
        seed=seed,
        quick=quick,
        require=require,
        resamples=resamples or 9999,
        fallback=fallback,
    )


def _check_envs(envs: list[str], sweeps: list[str], problems: list[str]) -> None:
    from tailguard.audit.audit import task_info
    from tailguard.audit.sweep import load_sweep_file
    from tailguard.errors import TailguardError

    for e in envs:
        try:
            info = task_info(e)
        except (TailguardError, ImportError) as exc:
            problems.append(f"envs: '{e}': {exc}")
            continue
        for s in sweeps:
            try:
                load_sweep_file(s, info.period_ns)
            except TailguardError as exc:
                problems.append(f"sweeps: {Path(s).name} on {e}: {exc}")


@dataclass
class SweepOutcome:
    """What a sweep did.

    Attributes:
        out: the results tree.
        statuses: entry id -> ``ok`` / ``failed`` / ``pending``.
        errors: entry id -> error text (failed entries).
        skipped: entries already finished (``--resume``).
        reused_units: work units read back instead of run (``--resume``).
        interrupted: stopped by Ctrl-C.
    """

    out: Path
    statuses: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    reused_units: int = 0
    interrupted: bool = False

    @property
    def exit_code(self) -> int:
        """0 every entry ok, 1 any failed."""
        return 1 if any(s != "ok" for s in self.statuses.values()) else 0


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".part-")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def _read_marker(path: Path) -> dict[str, Any] | None:
    try:
        if path.stat().st_size > _MAX_MANIFEST_BYTES:
            return None
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("status") in ("ok", "failed") else None


ProgressFn = Callable[[str, int, int], None]


def run_sweep(
    manifest: str | Path | Manifest,
    out: str | Path,
    *,
    executor: Any = None,
    workers: int = 1,
    address: str | None = None,
    resume: bool = False,
    html_report: bool = True,
    progress: ProgressFn | None = None,
) -> SweepOutcome:
    """Run every entry of a manifest into ``out`` (see the module docstring).

    Args:
        manifest: the manifest file, or one already loaded.
        out: the results tree.
        executor, workers, address: where the units run (as in :func:`run_audit`); one
            connection serves every entry.
        resume: complete an earlier run of the same manifest into ``out``.
        html_report: write each entry's report.html.
        progress: ``progress(entry_id, done, total)`` episodes of the running entry.

    Raises:
        ConfigError: an invalid manifest; ``out`` holds another sweep, or this one without
            ``resume``; the executor cannot start. Before any entry runs.
        KeyboardInterrupt: after marking the tree partial (every unfinished entry pending).
    """
    from tailguard.audit.executor import select_executor

    m = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
    root = Path(out)
    index_path = root / "index.json"
    if index_path.exists():
        try:
            old = json.loads(index_path.read_bytes())
        except (OSError, ValueError):
            old = {}
        if old.get("manifest_sha256") != m.digest:
            raise ConfigError(
                f"{root} holds the results of another manifest; choose a new --out folder",
                root,
            )
        if not resume:
            raise ConfigError(
                f"{root} already holds this sweep ({old.get('state', '?')}); pass --resume to "
                "complete it, or choose a new --out folder",
                root,
            )
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the output folder: {exc.strerror or exc}", root) from None
    outcome = SweepOutcome(out=root)
    for e in m.entries:
        outcome.statuses[e.id] = "pending"
    verdicts: dict[str, str] = {}
    runner, close = select_executor(executor, workers=workers, address=address)
    started = time.time()
    try:
        for e in m.entries:
            marker = _read_marker(root / "entries" / e.id / "done.json")
            if resume and marker is not None and marker["status"] == "ok":
                outcome.statuses[e.id] = "ok"
                verdicts[e.id] = str(marker.get("verdict", ""))
                outcome.skipped.append(e.id)
                continue
            _write_index(root, m, outcome, verdicts, state="partial", running=e.id)
            status, verdict, error, reused = _run_entry(m, e, root, runner, html_report, progress)
            outcome.statuses[e.id] = status
            outcome.reused_units += reused
            verdicts[e.id] = verdict
            if error:
                outcome.errors[e.id] = error
    except KeyboardInterrupt:
        outcome.interrupted = True
        _write_index(root, m, outcome, verdicts, state="partial", interrupted=True)
        raise
    finally:
        close()
    _write_index(root, m, outcome, verdicts, state="complete", duration_s=time.time() - started)
    return outcome


def _run_entry(
    m: Manifest,
    e: Entry,
    root: Path,
    runner: Any,
    html_report: bool,
    progress: ProgressFn | None,
) -> tuple[str, str, str, int]:
    """(status, verdict, error, units reused) of one entry; its outputs, then its marker."""
    from tailguard.audit.outputs import write_audit, write_certify
    from tailguard.audit.unit_cache import CachingExecutor

    folder = root / "entries" / e.id
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / "done.json"
    marker.unlink(missing_ok=True)
    cached = CachingExecutor(runner, folder / "units")

    def step(done: int, total: int) -> None:
        if progress is not None:
            progress(e.id, done, total)

    try:
        if m.mode == "audit":
            from tailguard.audit.audit import run_audit

            quick = m.quick
            result: Any = run_audit(
                e.policy,
                e.env,
                episodes=m.episodes or (5 if quick else 20),
                seed=m.seed or 0,
                executor=cached,
                quick=quick,
                sweep_file=e.sweep,
                require=m.require or "MILD",
                n_resamples=m.resamples,
                workdir=folder,
                vecnormalize=e.vecnormalize,
                progress=step,
            )
            write_audit(result, folder, html=html_report)
            verdict = result.verdict().value
        else:
            from tailguard.audit.certification import certify

            assert e.envelope is not None  # the manifest requires it in certify mode
            result = certify(
                e.policy,
                e.envelope,
                e.env,
                fallback=m.fallback,
                episodes=m.episodes or 20,
                seed=1000 if m.seed is None else m.seed,
                executor=cached,
                require=m.require,
                n_resamples=m.resamples,
                workdir=folder,
                vecnormalize=e.vecnormalize,
                progress=step,
            )
            write_certify(result, folder, html=html_report)
            verdict = result.verdict
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # a broken checkpoint fails its entry, not the sweep
        error = f"{type(exc).__name__}: {exc}"
        doc = {"status": "failed", "error": error, "entry": e.id}
        _write_atomic(marker, json.dumps(doc, indent=2) + "\n")
        return "failed", "", error, cached.reused
    doc = {"status": "ok", "verdict": verdict, "entry": e.id, "units_reused": cached.reused}
    _write_atomic(marker, json.dumps(doc, indent=2) + "\n")
    shutil.rmtree(folder / "units", ignore_errors=True)  # finished: only resume needs them
    return "ok", verdict, "", cached.reused


def _write_index(
    root: Path,
    m: Manifest,
    outcome: SweepOutcome,
    verdicts: dict[str, str],
    *,
    state: str,
    running: str | None = None,
    interrupted: bool = False,
    duration_s: float | None = None,
) -> None:
    rows = []
    for e in m.entries:
        status = outcome.statuses[e.id]
        folder = Path("entries") / e.id
        row: dict[str, Any] = {
            "id": e.id,
            "checkpoint": e.checkpoint,
            "policy": Path(e.policy).name,
            "env": e.env,
            "sweep": None if e.sweep is None else Path(e.sweep).name,
            "status": status,
            "running": e.id == running,
            "folder": str(folder),
        }
        if status == "ok":
            row["verdict"] = verdicts.get(e.id, "")
            row["summary"] = str(folder / "summary.json")
            if (root / folder / "report.html").exists():
                row["report"] = str(folder / "report.html")
        if status == "failed":
            row["error"] = outcome.errors.get(e.id, "")
        rows.append(row)
    counts = {s: sum(1 for r in rows if r["status"] == s) for s in ("ok", "failed", "pending")}
    doc = {
        "schema": INDEX_SCHEMA_ID,
        "manifest": m.path.name,
        "manifest_sha256": m.digest,
        "mode": m.mode,
        "state": state,
        "interrupted": interrupted,
        "counts": counts,
        "entries": rows,
    }
    if duration_s is not None:
        doc["duration_s"] = round(duration_s, 3)
    _write_atomic(root / "index.html", _index_html(doc))
    _write_atomic(root / "index.json", json.dumps(doc, indent=2) + "\n")


_CSS = (
    "body{font-family:system-ui,sans-serif;margin:2em}table{border-collapse:collapse}"
    "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}"
    ".ok{background:#e6f4e6}.failed{background:#fbe3e3}.pending{background:#f3f3f3}"
    ".partial{background:#fff3cd;padding:8px;border:1px solid #e0c060}"
    "pre{white-space:pre-wrap;margin:0;max-width:60em}"
)


def _index_html(doc: dict[str, Any]) -> str:
    esc = html.escape
    c = doc["counts"]
    head = (
        f"<h1>tailguard sweep: {esc(doc['manifest'])} ({esc(doc['mode'])})</h1>"
        f"<p>{c['ok']} ok, {c['failed']} failed, {c['pending']} pending</p>"
    )
    if doc["state"] != "complete":
        why = "interrupted" if doc["interrupted"] else "still running or stopped"
        head += (
            f"<p class='partial'><b>PARTIAL</b> results ({why}): pending entries have not run; "
            "complete them with <code>tailguard sweep MANIFEST --out DIR --resume</code>.</p>"
        )
    rows = []
    for r in doc["entries"]:
        links = ""
        if "report" in r:
            links += f"<a href='{esc(r['report'])}'>report</a> "
        if "summary" in r:
            links += f"<a href='{esc(r['summary'])}'>summary.json</a>"
        detail = esc(r.get("verdict", "")) if r["status"] == "ok" else ""
        if r["status"] == "failed":
            detail = f"<pre>{esc(r.get('error', ''))}</pre>"
        if r["running"]:
            detail = "running"
        rows.append(
            f"<tr class='{esc(r['status'])}'><td>{esc(r['checkpoint'])}</td>"
            f"<td>{esc(r['env'])}</td><td>{esc(r['sweep'] or 'default')}</td>"
            f"<td>{esc(r['status'])}</td><td>{detail}</td><td>{links}</td></tr>"
        )
    table = (
        "<table><tr><th>checkpoint</th><th>env</th><th>sweep</th><th>status</th>"
        "<th>verdict / error</th><th>files</th></tr>" + "".join(rows) + "</table>"
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>tailguard sweep</title>"
        f"<style>{_CSS}</style></head><body>{head}{table}</body></html>\n"
    )

"""Run the whole benchmark suite and write a JSON + Markdown summary.

    python bench/run.py [--out bench/results] [--update-readme] [-k EXPR]

This is the one command behind every performance figure in the README: it runs
``pytest bench --benchmark-enable`` (pytest-benchmark), then condenses each benchmark's
median and our own per-call tail figures (extra_info) into ``summary.json`` and
``summary.md``, with machine facts. ``--update-readme`` replaces the README's block
between the ``<!-- bench:start -->`` and ``<!-- bench:end -->`` markers with summary.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from tailguard.machine import machine_info

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def summarize(raw: dict) -> dict:
    rows = []
    for b in raw.get("benchmarks", []):
        rows.append(
            {
                "name": b["name"],
                "group": b.get("group"),
                "median_s": b["stats"]["median"],
                "rounds": b["stats"]["rounds"],
                "extra": b.get("extra_info", {}),
            }
        )
    return {
        "machine": machine_info(intra_op_threads=1),
        "created_utc": datetime.now(UTC).isoformat(),
        "rows": rows,
    }


def to_markdown(summary: dict, command: str) -> str:
    m = summary["machine"]
    lines = [
        f"Measured with `{command}` on {m['cpu']} ({m['cores']} cores), Python {m['python']}, "
        f"onnxruntime {m['onnxruntime']}, {summary['created_utc'][:16]} UTC. Per-call figures "
        "in microseconds from our own histograms (each call timed with perf_counter_ns; the "
        "variants of one row group ran interleaved, in the same process).",
        "",
        "| benchmark | variant | p50 | p90 | p99 | p99.9 | max | notes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["rows"]:
        extra = r["extra"]
        variants = {k: v for k, v in extra.items() if isinstance(v, dict) and "p50" in v}
        notes = ", ".join(
            f"{k} {_fmt(v)}" for k, v in extra.items() if not isinstance(v, dict | list)
        )
        if not variants:
            lines.append(
                f"| {r['name']} | | | | | | | median round {r['median_s'] * 1e3:.3g} ms; {notes} |"
            )
            continue
        for i, (name, s) in enumerate(variants.items()):
            cells = [_fmt(s.get(k, "")) for k in ("p50", "p90", "p99", "p999", "max")]
            lines.append(
                f"| {r['name'] if i == 0 else ''} | {name} | {' | '.join(cells)} | "
                f"{notes if i == 0 else ''} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--update-readme", action="store_true")
    ap.add_argument("-k", default=None, help="pytest -k expression to select benchmarks")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    raw_path = args.out / "raw.json"
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        str(ROOT / "bench"),
        "--benchmark-enable",
        f"--benchmark-json={raw_path}",
        "-q",
        "-p",
        "no:cacheprovider",
    ]
    if args.k:
        cmd += ["-k", args.k]
    rc = subprocess.call(cmd, cwd=ROOT)
    if rc != 0 or not raw_path.exists():
        print(f"benchmarks failed (exit {rc})", file=sys.stderr)
        return rc or 1
    summary = summarize(json.loads(raw_path.read_text()))
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    command = "python bench/run.py" + (f" -k '{args.k}'" if args.k else "")
    md = to_markdown(summary, command)
    (args.out / "summary.md").write_text(md)
    print(md)
    if args.update_readme:
        readme = ROOT / "README.md"
        text = readme.read_text()
        if START in text and END in text:
            head, rest = text.split(START, 1)
            _, tail = rest.split(END, 1)
            readme.write_text(f"{head}{START}\n{md}{END}{tail}")
        else:
            print("README has no bench markers; not updated", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Alert rules: a condition on a metric, judged over consecutive or rolling evaluations.

A rules file is TOML (``tomllib``, no extra dependency)::

    [[rule]]
    name = "latency_tail"
    metric = "latency_p99_period"   # any key of MonitorState.metrics()
    op = ">"                        # > >= < <= == !=
    threshold = 0.75
    mode = "rolling"                # "consecutive": `count` evaluations in a row;
    count = 3                       # "rolling": `count` of the last `of` evaluations
    of = 5
    grace_s = 5.0                   # not judged during the first grace_s after (re)connecting
    cooldown_s = 30.0               # fire again at most once per cooldown
    severity = "warn"               # "warn" or "fail" (decides the --once exit code)
    actions = ["log", "alert"]      # log, alert (JSONL), exec, trip (command channel only)
    exec = ["notify-send", "tailguard"]   # the command of the exec action

Presets ``default`` and ``strict`` are built in (:data:`PRESETS`; the README's table lists
them). A rules file is checked whole: every problem (unknown keys and metrics with a "did you
mean", wrong types, bad ops or actions) is reported at once.
"""

from __future__ import annotations

import difflib
import operator
import tomllib
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tailguard.errors import TailguardError

__all__ = ["Rule", "RuleEngine", "PRESETS", "load_rules", "parse_rules"]

_OPS: dict[str, Callable[[Any, Any], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}
_ACTIONS = ("log", "alert", "exec", "trip")
_MODES = ("consecutive", "rolling")
_SEVERITIES = ("warn", "fail")
_NS_PER_S = 1_000_000_000


@dataclass(frozen=True)
class Rule:
    """One alert rule (see the module docstring for the meaning of each field)."""

    name: str
    metric: str
    op: str
    threshold: float
    mode: str = "consecutive"
    count: int = 1
    of: int = 1
    grace_s: float = 0.0
    cooldown_s: float = 60.0
    severity: str = "warn"
    actions: tuple[str, ...] = ("log", "alert")
    exec: tuple[str, ...] = field(default=())

    def window_text(self) -> str:
        """Human description of the window, e.g. ``"3 of 5 evaluations"``."""
        if self.mode == "rolling":
            return f"{self.count} of {self.of} evaluations"
        return f"{self.count} consecutive evaluations"


_FIELDS = tuple(Rule.__dataclass_fields__)


def _r(name: str, metric: str, op: str, threshold: float, **kw: Any) -> Rule:
    return Rule(name=name, metric=metric, op=op, threshold=threshold, **kw)


def _detector_rules(severity_range: str, severity_frozen: str, cooldown: float) -> tuple[Rule, ...]:
    """The failure detectors (envelope schema 2) as rules: any in the rolling window."""
    return (
        _r("obs_out_of_range", "obs_range_window", ">", 0, severity=severity_range,
           cooldown_s=cooldown),
        _r("action_frozen", "action_frozen_window", ">", 0, severity=severity_frozen,
           cooldown_s=cooldown),
        _r("action_saturation", "action_saturation_window", ">", 0, cooldown_s=cooldown),
        _r("action_chatter", "action_chatter_window", ">", 0, cooldown_s=cooldown),
    )  # fmt: skip


#: Built-in rule sets. Latencies are in units of the guard's nominal period, or of the
#: envelope's own latency p99 (``latency_p99_envelope``, from the guard's hello).
PRESETS: dict[str, tuple[Rule, ...]] = {
    "default": (
        _r("latched", "latched", "==", 1, severity="fail", cooldown_s=60.0),
        _r(
            "latency_p99_envelope",
            "latency_p99_envelope",
            ">",
            1.0,
            mode="rolling",
            count=3,
            of=5,
            grace_s=2.0,
        ),
        _r("heartbeat", "silence_s", ">", 2.0, severity="fail", cooldown_s=30.0),
        _r("events_dropped", "events_dropped_total", ">", 0, cooldown_s=300.0),
        *_detector_rules("warn", "fail", 30.0),
        _r(
            "latency_p99",
            "latency_p99_period",
            ">",
            0.75,
            mode="rolling",
            count=3,
            of=5,
            grace_s=2.0,
        ),
        _r("dt_p99", "dt_p99_period", ">", 1.5, mode="rolling", count=3, of=5, grace_s=2.0),
        _r("violations", "violations_window", ">", 0, cooldown_s=30.0),
        _r("message_loss", "msg_lost_total", ">", 0, cooldown_s=300.0),
        _r("ring_overflow", "ring_overflow_total", ">", 0, cooldown_s=300.0),
    ),
    "strict": (
        _r("latched", "latched", "==", 1, severity="fail", cooldown_s=10.0),
        _r("fallback", "fallback", "==", 1, severity="fail", cooldown_s=10.0),
        _r("latency_p99", "latency_p99_period", ">", 0.5, severity="fail"),
        _r("latency_p999", "latency_p999_period", ">", 0.9, severity="fail"),
        _r("dt_p99", "dt_p99_period", ">", 1.2, severity="fail"),
        _r("violations", "violations_window", ">", 0, severity="fail", cooldown_s=10.0),
        _r("message_loss", "msg_lost_total", ">", 0, cooldown_s=60.0),
        _r("ring_overflow", "ring_overflow_total", ">", 0, severity="fail", cooldown_s=60.0),
        _r("send_dropped", "send_dropped_total", ">", 0, cooldown_s=60.0),
        _r("latency_p99_envelope", "latency_p99_envelope", ">", 1.0, severity="fail"),
        _r("heartbeat", "silence_s", ">", 1.0, severity="fail", cooldown_s=10.0),
        _r("events_dropped", "events_dropped_total", ">", 0, severity="fail", cooldown_s=60.0),
        *_detector_rules("fail", "fail", 10.0),
    ),
}


def metric_names() -> tuple[str, ...]:
    """Every metric a rule may name (the keys of ``MonitorState.metrics()``)."""
    from tailguard.monitor.stats import MonitorState

    return tuple(MonitorState().metrics(0))


def parse_rules(
    data: Mapping[str, Any], command_enabled: bool = False, check_metrics: bool = False
) -> tuple[Rule, ...]:
    """Validate a parsed rules document; every problem is collected.

    ``check_metrics``: a metric must be one ``MonitorState.metrics()`` has (rules files are
    checked so; the engine itself judges whatever metrics it is given).

    Raises:
        TailguardError: unknown keys (with a hint), wrong types, unknown ops/actions, or a
            ``trip`` action while the command channel is off.
    """
    problems: list[str] = []
    unknown = [k for k in data if k != "rule"]
    problems += [f"unknown top-level key '{k}'; expected [[rule]] tables" for k in unknown]
    raw = data.get("rule", [])
    if not isinstance(raw, list):
        raise TailguardError("'rule' must be an array of tables ([[rule]])")
    rules = []
    for i, item in enumerate(raw):
        where = f"rule[{i}]"
        if not isinstance(item, dict):
            problems.append(f"{where}: expected a table")
            continue
        for k in item:
            if k not in _FIELDS:
                close = difflib.get_close_matches(k, _FIELDS, n=1)
                problems.append(
                    f"{where}: unknown key '{k}'"
                    + (f"; did you mean '{close[0]}'?" if close else "")
                )
        missing = [k for k in ("name", "metric", "op", "threshold") if k not in item]
        problems += [f"{where}: missing key '{k}'" for k in missing]
        if missing or any(k not in _FIELDS for k in item):
            continue
        kw = dict(item)
        kw["actions"] = tuple(kw.get("actions", ("log", "alert")))
        kw["exec"] = tuple(kw.get("exec", ()))
        try:
            rule = Rule(**kw)
        except TypeError as exc:
            problems.append(f"{where}: {exc}")
            continue
        problems += [f"{where}: {p}" for p in _check(rule, command_enabled, check_metrics)]
        rules.append(rule)
    if problems:
        raise TailguardError("invalid rules:\n" + "\n".join(f"  - {p}" for p in problems))
    return tuple(rules)


def _check(rule: Rule, command_enabled: bool, check_metrics: bool) -> list[str]:
    p = []
    if not isinstance(rule.name, str) or not rule.name:
        p.append("'name' must be a non-empty string")
    if not isinstance(rule.metric, str):
        p.append("'metric' must be a string")
    elif check_metrics and rule.metric not in (known := metric_names()):
        close = difflib.get_close_matches(rule.metric, known, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else "; see `tailguard monitor --help`"
        p.append(f"unknown metric {rule.metric!r}{hint}")
    if rule.op not in _OPS:
        p.append(f"unknown op {rule.op!r}; valid choices are {list(_OPS)}")
    if isinstance(rule.threshold, bool) or not isinstance(rule.threshold, int | float):
        p.append(f"'threshold' must be a number, got {rule.threshold!r}")
    if rule.mode not in _MODES:
        p.append(f"unknown mode {rule.mode!r}; valid choices are {list(_MODES)}")
    for name in ("count", "of"):
        v = getattr(rule, name)
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 10_000:
            p.append(f"'{name}' must be an int in 1..10000, got {v!r}")
    if (
        rule.mode == "rolling"
        and isinstance(rule.of, int)
        and isinstance(rule.count, int)
        and (rule.count > rule.of)
    ):
        p.append(f"'count' ({rule.count}) cannot exceed 'of' ({rule.of})")
    for name in ("grace_s", "cooldown_s"):
        v = getattr(rule, name)
        if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
            p.append(f"'{name}' must be a number >= 0, got {v!r}")
    if rule.severity not in _SEVERITIES:
        p.append(f"unknown severity {rule.severity!r}; valid choices are {list(_SEVERITIES)}")
    for a in rule.actions:
        if a not in _ACTIONS:
            p.append(f"unknown action {a!r}; valid choices are {list(_ACTIONS)}")
    if "trip" in rule.actions and not command_enabled:
        p.append("action 'trip' needs the command channel (--command-connect and --keys-dir)")
    if "exec" in rule.actions and (not rule.exec or not all(isinstance(x, str) for x in rule.exec)):
        p.append("action 'exec' needs 'exec' = [\"program\", \"arg\", ...]")
    return p


#: Largest rules file read, bytes (a rules file is a few hundred bytes).
MAX_RULES_BYTES = 1 << 20
#: Deepest nesting of arrays and inline tables accepted in a rules file (tomllib recurses
#: per level: 5000 levels end in a RecursionError).
MAX_RULES_NESTING = 32


def toml_nesting_depth(text: str) -> int:
    """Deepest nesting of ``[``/``{`` in TOML text, outside strings and comments.

    A conservative scan (table headers count one or two levels), cheap and without
    recursion, run before the parser so that a deeply nested file is refused with a clear
    message instead of exhausting the parser's stack.
    """
    depth = deepest = 0
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "#":
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif c in "\"'":
            quote = c * 3 if text.startswith(c * 3, i) else c
            j = i + len(quote)
            while j < n and not text.startswith(quote, j):
                j += 2 if c == '"' and text[j] == "\\" else 1
            i = j + len(quote)
            continue
        elif c in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif c in "]}":
            depth = max(0, depth - 1)
        i += 1
    return deepest


def load_rules(source: str | Path, command_enabled: bool = False) -> tuple[Rule, ...]:
    """Rules from a preset name (``default``, ``strict``) or a TOML file.

    The file is bounded before it is parsed: at most ``MAX_RULES_BYTES`` and
    ``MAX_RULES_NESTING`` levels of arrays/inline tables.

    Raises:
        TailguardError: unknown preset, unreadable, too large or too deeply nested file,
            invalid TOML or rules.
    """
    if str(source) in PRESETS:
        return PRESETS[str(source)]
    path = Path(source)
    if not path.exists():
        raise TailguardError(
            f"no rules file '{source}' and no such preset; presets are {sorted(PRESETS)}"
        )
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_RULES_BYTES + 1)
        if len(raw) > MAX_RULES_BYTES:
            raise TailguardError(
                f"rules file is larger than {MAX_RULES_BYTES} bytes; a rules file holds a few "
                "[[rule]] tables",
                path,
            )
        text = raw.decode("utf-8")
        depth = toml_nesting_depth(text)
        if depth > MAX_RULES_NESTING:
            raise TailguardError(
                f"rules file nests arrays/tables {depth} levels deep; at most "
                f"{MAX_RULES_NESTING} are accepted (rules need 2)",
                path,
            )
        data = tomllib.loads(text)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError) as exc:
        raise TailguardError(f"cannot read rules ({exc})", path) from exc
    try:
        return parse_rules(data, command_enabled, check_metrics=True)
    except TailguardError as exc:
        raise TailguardError(exc.message, path) from None


class RuleEngine:
    """Judges rules on successive metric snapshots; returns the alerts that fire.

    Args:
        rules: the rules to judge.
    """

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = tuple(rules)
        self._hist: dict[str, deque[bool]] = {
            r.name: deque(maxlen=r.of if r.mode == "rolling" else r.count) for r in self.rules
        }
        self._last_fired: dict[str, int] = {}
        self._since_ns: int | None = None
        self.fired: dict[str, int] = {}

    def restart(self, now_ns: int) -> None:
        """A (re)connection: grace periods start again and windows are cleared."""
        self._since_ns = now_ns
        for h in self._hist.values():
            h.clear()

    def evaluate(self, metrics: Mapping[str, Any], now_ns: int) -> list[dict[str, Any]]:
        """One evaluation of every rule.

        Returns:
            alerts: dicts with ``rule``, ``severity``, ``metric``, ``value``, ``threshold``,
            ``op``, ``window``, ``actions``, ``exec``.
        """
        if self._since_ns is None:
            self._since_ns = now_ns
        out = []
        for r in self.rules:
            if now_ns - self._since_ns < r.grace_s * _NS_PER_S:
                continue
            value = metrics.get(r.metric)
            try:
                hit = value is not None and bool(_OPS[r.op](value, r.threshold))
            except TypeError:
                hit = False
            h = self._hist[r.name]
            h.append(hit)
            fires = sum(h) >= r.count if r.mode == "rolling" else (len(h) == r.count and all(h))
            if not fires:
                continue
            last = self._last_fired.get(r.name)
            if last is not None and now_ns - last < r.cooldown_s * _NS_PER_S:
                continue
            self._last_fired[r.name] = now_ns
            self.fired[r.name] = self.fired.get(r.name, 0) + 1
            out.append(
                {
                    "rule": r.name,
                    "severity": r.severity,
                    "metric": r.metric,
                    "value": value,
                    "threshold": r.threshold,
                    "op": r.op,
                    "window": r.window_text(),
                    "actions": list(r.actions),
                    "exec": list(r.exec),
                }
            )
        return out

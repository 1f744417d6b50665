"""The sweep: default severity ladders per timing dimension, ``--quick``, a user sweep file
(JSON or TOML) and measured profiles.

Each dimension maps a ladder of values (mildest first) to conditions on a control period
``P``. Values are in the dimension's unit (``DIMENSIONS[name].unit``); times are given as
fractions of the period so that one sweep fits every env.

Sweep file (JSON or TOML; every problem is reported at once)::

    dimensions = ["latency_fixed", "dt_jitter"]     # which ladders (default: all)
    [levels]
    latency_fixed = [0.1, 0.2, 0.3, 0.4]            # replace a ladder's values
    [[conditions]]                                   # extra conditions, any specs
    name = "lognormal_wide"
    latency = "lognormal:median_ms=2,sigma=1.2"
    severity = 1.0                                  # dimension defaults to "custom"
"""

from __future__ import annotations

import difflib
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tailguard.audit.conditions import NOMINAL, Condition
from tailguard.errors import ConfigError

__all__ = [
    "DIMENSIONS",
    "FRONTIER",
    "QUICK",
    "Dimension",
    "build_sweep",
    "frontier_conditions",
    "load_sweep_file",
    "measured",
]

_MAX_SWEEP_BYTES = 1 << 20
_MAX_CONDITIONS = 500


@dataclass(frozen=True)
class Dimension:
    """A timing dimension and its default ladder.

    Attributes:
        name: the dimension's name.
        unit: the unit of the ladder values.
        levels: default ladder, mildest first.
        build: ``build(value, period_ns) -> dict`` of Condition fields (specs, label).
        envelope: which envelope quantity the dimension informs.
    """

    name: str
    unit: str
    levels: tuple[float, ...]
    build: Callable[[float, int], dict[str, Any]]
    envelope: str


def _ns(fraction: float, period_ns: int) -> int:
    return max(1, round(fraction * period_ns))


def _lat_fixed(v: float, p: int) -> dict[str, Any]:
    return {"latency": f"fixed:ns={_ns(v, p)}", "label": f"constant latency {v:g} P"}


def _lat_lognormal(v: float, p: int) -> dict[str, Any]:
    return {
        "latency": f"lognormal:median_ns={_ns(v, p)},sigma=1.0",
        "label": f"lognormal latency, median {v:g} P, sigma 1 (long tail, uncapped)",
    }


def _lat_lognormal_capped(v: float, p: int) -> dict[str, Any]:
    return {
        "latency": f"lognormal:median_ns={_ns(v, p)},sigma=1.0,cap_ns={p}",
        "label": f"lognormal latency, median {v:g} P, sigma 1, tail capped at 1 P",
    }


def _lat_spikes(v: float, p: int) -> dict[str, Any]:
    return {
        "latency": f"spikes:p=0.01,len=3,ns={_ns(v, p)}",
        "label": f"GC-pause-like bursts: 3 ticks at {v:g} P, starting with p=0.01 per tick",
    }


def _dt_jitter(v: float, p: int) -> dict[str, Any]:
    return {"dt": f"uniform:jitter_ns={_ns(v, p)}", "label": f"period jitter +-{v:g} P"}


def _rate_change(v: float, p: int) -> dict[str, Any]:
    return {
        "dt": f"fixed:ns={_ns(v, p)}",
        "label": f"sustained rate change: period x{v:g} ({1e9 / p:.4g} Hz -> "
        f"{1e9 / (v * p):.4g} Hz)",
    }


def _obs_age(v: float, p: int) -> dict[str, Any]:
    return {"obs_delay": f"fixed:ns={_ns(v, p)}", "label": f"observation age {v:g} P"}


def _drops(v: float, p: int) -> dict[str, Any]:
    return {"drop_prob": float(v), "drop_burst": 1, "label": f"command drops p={v:g}"}


def _drop_bursts(v: float, p: int) -> dict[str, Any]:
    n = int(v)
    return {"drop_prob": 0.02, "drop_burst": n, "label": f"drop bursts of {n} ticks, p=0.02"}


def _misses(v: float, p: int) -> dict[str, Any]:
    m, k = _miss_pattern(v)
    return {
        # The first burst half a pattern in: a miss on the very first tick (the command held
        # before it is the initial zero) is a start-up transient, not the pattern.
        "latency": f"spikes:every={k},len={m},ns={_ns(1.5, p)},phase={k // 2}",
        "miss_pattern": (m, k),
        "label": f"deadline misses: {m} in a row every {k} ticks (1.5 P latency)",
    }


def _miss_pattern(fraction: float) -> tuple[int, int]:
    """(m, K) for a missed fraction of ticks: one miss every 1/f ticks up to 5 %, then
    round(20 f) misses in a row every 20 ticks."""
    if fraction <= 0.05:
        return 1, max(1, round(1.0 / fraction))
    return max(1, round(20 * fraction)), 20


DIMENSIONS: dict[str, Dimension] = {
    d.name: d
    for d in (
        Dimension(
            "latency_fixed", "fraction of P", (0.125, 0.25, 0.5, 0.75, 1.0), _lat_fixed, "latency"
        ),
        Dimension(
            "latency_lognormal",
            "median, fraction of P",
            (0.05, 0.1, 0.2, 0.4),
            _lat_lognormal,
            "latency",
        ),
        Dimension(
            "latency_lognormal_capped",
            "median, fraction of P",
            (0.05, 0.1, 0.2, 0.4),
            _lat_lognormal_capped,
            "latency",
        ),
        Dimension(
            "latency_spikes", "spike, fraction of P", (0.5, 1.0, 2.0, 4.0), _lat_spikes, "latency"
        ),
        Dimension("dt_jitter", "jitter, fraction of P", (0.05, 0.1, 0.2, 0.4), _dt_jitter, "dt"),
        Dimension("rate_change", "period factor", (1.25, 1.5, 5 / 3, 2.0), _rate_change, "dt"),
        Dimension("obs_age", "fraction of P", (0.25, 0.5, 1.0, 2.0), _obs_age, "obs_age"),
        Dimension("drops", "drop probability", (0.01, 0.05, 0.1, 0.2), _drops, "drops"),
        Dimension("drop_bursts", "burst length, ticks", (2, 4, 8), _drop_bursts, "drops"),
        Dimension(
            "deadline_misses",
            "fraction of ticks missed (m in a row every K)",
            (0.01, 0.05, 0.1, 0.2),
            _misses,
            "overruns",
        ),
    )
}

#: ``--quick``: a smoke run (dimension -> values).
QUICK: dict[str, tuple[float, ...]] = {
    "latency_fixed": (0.25, 0.75),
    "latency_spikes": (2.0,),
    "dt_jitter": (0.2,),
    "obs_age": (0.5,),
    "drops": (0.05,),
}


#: ``--frontier``: constant latency L x extra time-varying latency J, fractions of P.
FRONTIER = {"L": (0.0, 0.25, 0.5, 0.75), "J": (0.125, 0.25, 0.5, 1.0)}


def frontier_conditions(
    period_ns: int,
    latencies: Sequence[float] = FRONTIER["L"],
    jitters: Sequence[float] = FRONTIER["J"],
) -> list[Condition]:
    """The (L, J) grid of the jitter margin: latency uniform on [L, L + J] (fractions of P).

    Dimension ``frontier``: reported as the tolerated frontier, not used for thresholds.
    """
    out = []
    for i, lat in enumerate(latencies):
        for j, jit in enumerate(jitters):
            lo, hi = round(lat * period_ns), round((lat + jit) * period_ns)
            out.append(
                Condition(
                    name=f"frontier/L{lat:g}_J{jit:g}",
                    dimension="frontier",
                    level=i * len(jitters) + j,
                    severity=float(lat + jit),
                    latency=f"uniform:lo_ns={lo},hi_ns={hi}",
                    label=f"latency uniform on [{lat:g}, {lat + jit:g}] P",
                )
            )
    return out


def _level_name(dim: str, value: float) -> str:
    if dim == "deadline_misses":
        m, k = _miss_pattern(value)
        return f"{dim}/{m}in{k}"
    return f"{dim}/{value:g}"


def build_sweep(
    period_ns: int,
    *,
    quick: bool = False,
    dimensions: Sequence[str] | None = None,
    levels: Mapping[str, Sequence[float]] | None = None,
    extra: Sequence[Condition] = (),
) -> list[Condition]:
    """The conditions of a sweep, nominal first, then each dimension mildest first.

    Args:
        period_ns: the env's control period, ns.
        quick: the ``--quick`` smoke ladders.
        dimensions: which dimensions (default all, or the quick ones).
        levels: ladder values replacing the defaults, per dimension.
        extra: further conditions (sweep file, measured profiles), appended.

    Raises:
        ConfigError: an unknown dimension, or duplicate condition names.
    """
    chosen = list(dimensions) if dimensions is not None else list(QUICK if quick else DIMENSIONS)
    problems = [_unknown_dimension(d) for d in chosen if d not in DIMENSIONS]
    if problems:
        raise ConfigError("; ".join(problems))
    out = [NOMINAL]
    for dim in chosen:
        values = (levels or {}).get(dim) or (QUICK.get(dim) if quick else None)
        values = tuple(values) if values else DIMENSIONS[dim].levels
        for i, v in enumerate(values):
            fields = DIMENSIONS[dim].build(float(v), period_ns)
            out.append(
                Condition(
                    name=_level_name(dim, v), dimension=dim, level=i, severity=float(v), **fields
                )
            )
    out.extend(extra)
    names = [c.name for c in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"condition names must be unique; repeated: {dup}")
    return out


def _unknown_dimension(name: str) -> str:
    close = difflib.get_close_matches(name, list(DIMENSIONS), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"unknown dimension '{name}'{hint}; valid choices are {sorted(DIMENSIONS)}"


def measured(path: str, index: int = 0) -> Condition:
    """A condition replaying a measured latency profile file (``tailguard bench`` or flight
    recorder output) as the inference latency.

    Raises:
        ProfileError: the file is missing, truncated, too large or not a timing profile.
    """
    from tailguard.firmware_sim.profile_spec import parse_profile

    spec = f"empirical:{path}"
    parse_profile(spec, nominal_ns=0)  # bounded load; refuses bad files before any episode
    return Condition(
        name=f"measured/{Path(path).name}" + (f"#{index}" if index else ""),
        dimension="measured",
        level=index,
        severity=float(index),
        latency=spec,
        label=f"measured latency profile {Path(path).name}",
    )


_FILE_KEYS = ("dimensions", "levels", "conditions")
_CONDITION_KEYS = (
    "name",
    "dimension",
    "severity",
    "latency",
    "dt",
    "obs_delay",
    "drop_prob",
    "drop_burst",
    "label",
)


def load_sweep_file(path: str | Path, period_ns: int) -> dict[str, Any]:
    """Read and validate a sweep file (``.json`` or ``.toml``), reporting every problem.

    Returns:
        ``{"dimensions": [...] | None, "levels": {...}, "extra": [Condition, ...]}``, ready
        for :func:`build_sweep`.

    Raises:
        ConfigError: the file cannot be read or parsed, or has problems (all listed).
    """
    from tailguard.audit.config_file import read_config

    p = Path(path)
    data, _ = read_config(p, "sweep file", _MAX_SWEEP_BYTES)
    problems: list[str] = []
    result = _validate(data, period_ns, problems)
    if problems:
        lines = "\n".join(f"  - {m}" for m in problems)
        raise ConfigError(f"invalid sweep file ({len(problems)} problem(s)):\n{lines}", p)
    return result


def _validate(data: Any, period_ns: int, problems: list[str]) -> dict[str, Any]:
    from tailguard.errors import ProfileError
    from tailguard.firmware_sim.profile_spec import parse_profile

    out: dict[str, Any] = {"dimensions": None, "levels": {}, "extra": []}
    if not isinstance(data, Mapping):
        problems.append(f"<root>: expected an object/table, found {type(data).__name__}")
        return out
    for key in data:
        if key not in _FILE_KEYS:
            close = difflib.get_close_matches(str(key), _FILE_KEYS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            problems.append(f"{key}: unknown key{hint}; valid keys: {list(_FILE_KEYS)}")
    dims = data.get("dimensions")
    if dims is not None:
        if not isinstance(dims, list) or not all(isinstance(d, str) for d in dims):
            problems.append("dimensions: expected a list of dimension names")
        else:
            problems.extend(
                f"dimensions: {_unknown_dimension(d)}" for d in dims if d not in DIMENSIONS
            )
            out["dimensions"] = dims
    levels = data.get("levels", {})
    if not isinstance(levels, Mapping):
        problems.append("levels: expected an object mapping dimension -> list of numbers")
        levels = {}
    for dim, values in levels.items():
        where = f"levels.{dim}"
        if dim not in DIMENSIONS:
            problems.append(f"{where}: {_unknown_dimension(str(dim))}")
            continue
        ok = (
            isinstance(values, list)
            and values
            and all(
                isinstance(v, int | float)
                and not isinstance(v, bool)
                and math.isfinite(v)
                and v > 0
                for v in values
            )
        )
        if not ok:
            problems.append(
                f"{where}: expected a non-empty list of positive numbers, found {values!r}"
            )
        elif any(b <= a for a, b in itertools.pairwise(values)):
            problems.append(f"{where}: values must increase (mildest first), found {values}")
        else:
            out["levels"][dim] = [float(v) for v in values]
    conds = data.get("conditions", [])
    if not isinstance(conds, list):
        problems.append("conditions: expected a list of condition objects")
        conds = []
    if len(conds) > _MAX_CONDITIONS:
        problems.append(f"conditions: at most {_MAX_CONDITIONS}, found {len(conds)}")
        conds = []
    for i, c in enumerate(conds):
        where = f"conditions[{i}]"
        if not isinstance(c, Mapping):
            problems.append(f"{where}: expected an object")
            continue
        for key in c:
            if key not in _CONDITION_KEYS:
                close = difflib.get_close_matches(str(key), _CONDITION_KEYS, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                problems.append(f"{where}.{key}: unknown key{hint}")
        name = c.get("name")
        if not isinstance(name, str) or not name:
            problems.append(f"{where}.name: expected a non-empty string")
            continue
        fields: dict[str, Any] = {"name": name, "dimension": str(c.get("dimension", "custom"))}
        for key, nominal in (("latency", 0), ("dt", period_ns), ("obs_delay", 0)):
            spec = c.get(key, "nominal")
            if not isinstance(spec, str):
                problems.append(f"{where}.{key}: expected a profile spec string")
                continue
            try:
                parse_profile(spec, nominal_ns=nominal)
            except ProfileError as exc:
                problems.append(f"{where}.{key}: {exc}")
                continue
            fields[key] = spec
        prob = c.get("drop_prob", 0.0)
        if isinstance(prob, bool) or not isinstance(prob, int | float) or not 0 <= prob <= 1:
            problems.append(f"{where}.drop_prob: expected a number in [0, 1], found {prob!r}")
        else:
            fields["drop_prob"] = float(prob)
        burst = c.get("drop_burst", 1)
        if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
            problems.append(f"{where}.drop_burst: expected an integer >= 1, found {burst!r}")
        else:
            fields["drop_burst"] = burst
        sev = c.get("severity", float(i))
        if isinstance(sev, bool) or not isinstance(sev, int | float):
            problems.append(f"{where}.severity: expected a number, found {sev!r}")
        else:
            fields["severity"] = float(sev)
        fields["label"] = str(c.get("label", ""))
        fields["level"] = i
        out["extra"].append(Condition(**fields))
    return out

"""Text and JSON specs for timing profiles.

Text grammar (``KIND`` or ``KIND:key=value,key=value``)::

    nominal                                   the nominal value (0 latency, or the period)
    fixed:ms=8                                always 8 ms (units: s, ms, us, ns)
    uniform:lo_ms=1,hi_ms=3 | uniform:jitter_ms=1   [lo, hi], or nominal +- jitter
    gaussian:std_ms=0.5[,mean_ms=8]           mean defaults to the nominal value
    lognormal:median_ms=2,sigma=0.8
    pareto:scale_ms=5,alpha=1.5               P(X > x) = (scale / x) ** alpha, X >= scale
    spikes:every=500,len=3,ms=40[,phase=0]    periodic bursts over the nominal value
    spikes:p=0.002,len=3,ms=40                random bursts
    mix:0.97*nominal+0.03*pareto:scale_ms=5,alpha=1.5
    empirical:PATH                            recorded histogram or trace (see empirical.py)

Every kind accepts ``cap_ms=...`` (a tail cap; in a mix term it caps that term; put the
mix first-level cap in JSON). Empirical traces accept ``empirical:PATH`` only (replayed from
index 0); JSON adds ``offset`` (``null`` = seeded random start).

JSON: an object with ``kind`` plus the same keys, e.g. ``{"kind": "lognormal",
"median_ms": 2, "sigma": 0.8, "cap_ms": 15}``; a mix is ``{"kind": "mix", "components":
[{"weight": 0.97, "profile": "nominal"}, {"weight": 0.03, "profile": {...}}]}``; an empirical
profile takes ``path`` or inline ``hdr`` / ``counts`` / ``trace_ns``. A text spec starting with
``{`` is read as JSON.

How the CLI uses specs: ``--profile`` is the inference latency (nominal = 0), ``--dt-profile``
the control period (nominal = the env's period), ``--obs-delay-profile`` the observation age
(nominal = 0); frame drops are ``--drop-prob P`` with ``--drop-burst N`` ticks per drop.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping
from typing import Any

from tailguard.errors import ProfileError
from tailguard.firmware_sim.empirical import RecordedTiming, load_recorded_timing, timing_from_json
from tailguard.firmware_sim.profiles import (
    EmpiricalProfile,
    FixedProfile,
    GaussianProfile,
    LognormalProfile,
    MixtureProfile,
    ParetoProfile,
    Profile,
    SpikeProfile,
    TraceProfile,
    UniformProfile,
    check_duration_ns,
    require_bounded_tail,
)

__all__ = ["KINDS", "parse_profile"]

_UNITS = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}

# kind -> (time keys, number keys); "cap" is accepted everywhere.
KINDS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "nominal": (frozenset(), frozenset()),
    "fixed": (frozenset({"value"}), frozenset()),
    "uniform": (frozenset({"lo", "hi", "jitter"}), frozenset()),
    "gaussian": (frozenset({"mean", "std"}), frozenset()),
    "lognormal": (frozenset({"median"}), frozenset({"sigma"})),
    "pareto": (frozenset({"scale"}), frozenset({"alpha"})),
    "spikes": (frozenset({"value"}), frozenset({"every", "p", "len", "phase"})),
    "mix": (frozenset(), frozenset()),
    "empirical": (frozenset(), frozenset()),
}
_EMPIRICAL_JSON_KEYS = frozenset({"path", "hdr", "counts", "trace_ns", "offset"})
_MIX_TERM = re.compile(r"\+(?=\s*(?:\d+\.?\d*|\.\d+)(?:[eE]-?\d+)?\s*\*)")


def _hint(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


def _known_keys(kind: str) -> list[str]:
    time_keys, num_keys = KINDS[kind]
    keys = [f"{k}_ms" if k != "value" else "ms" for k in sorted(time_keys | {"cap"})]
    return keys + sorted(num_keys)


def _split_key(kind: str, key: str) -> tuple[str, int | None]:
    """Return (base name, ns per unit or None for a plain number)."""
    time_keys, num_keys = KINDS[kind]
    time_keys = time_keys | {"cap"}
    if key in _UNITS and "value" in time_keys:
        return "value", _UNITS[key]
    base, _, unit = key.rpartition("_")
    if base in time_keys and unit in _UNITS:
        return base, _UNITS[unit]
    if key in num_keys:
        return key, None
    if key in time_keys:
        raise ProfileError(
            f"'{kind}' key '{key}' needs a unit suffix: {key}_ms, {key}_us, {key}_ns or {key}_s"
        )
    known = _known_keys(kind)
    raise ProfileError(
        f"unknown key '{key}' for profile kind '{kind}'; known keys: {known}{_hint(key, known)}"
    )


def _number(kind: str, key: str, raw: Any) -> float:
    if isinstance(raw, bool):
        raise ProfileError(f"'{kind}' key '{key}' must be a number, got {raw!r}")
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ProfileError(f"'{kind}' key '{key}' must be a number, got {raw!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ProfileError(f"'{kind}' key '{key}' must be finite, got {raw!r}")
    return value


def _params(kind: str, items: Mapping[str, Any]) -> dict[str, float]:
    """Normalize keys: times to ns (floats, rounded later), plain numbers as given."""
    out: dict[str, float] = {}
    for key, raw in items.items():
        base, scale = _split_key(kind, key)
        if base in out:
            raise ProfileError(f"'{kind}' key '{base}' given twice (e.g. in two units)")
        value = _number(kind, key, raw)
        if scale is not None:
            if value < 0:
                raise ProfileError(f"'{kind}' time '{key}' must be >= 0, got {raw!r}")
            value = check_duration_ns(f"'{kind}' time '{key}'", round(value * scale, 0))
        out[base] = value
    return out


def _require(kind: str, p: Mapping[str, float], *keys: str) -> None:
    missing = [k for k in keys if k not in p]
    if missing:
        raise ProfileError(
            f"profile kind '{kind}' needs {missing}; known keys: {_known_keys(kind)}"
        )


def _integer(kind: str, key: str, value: float) -> int:
    if value != int(value):
        raise ProfileError(f"'{kind}' key '{key}' must be an integer, got {value}")
    return int(value)


def _build(kind: str, p: dict[str, float], nominal_ns: int) -> Profile:
    cap = None if "cap" not in p else int(p.pop("cap"))
    if kind == "nominal":
        return FixedProfile(nominal_ns, cap)
    if kind == "fixed":
        _require(kind, p, "value")
        return FixedProfile(int(p["value"]), cap)
    if kind == "uniform":
        if "jitter" in p:
            if "lo" in p or "hi" in p:
                raise ProfileError("uniform takes either jitter_* or lo_*/hi_*, not both")
            j = int(p["jitter"])
            return UniformProfile(max(nominal_ns - j, 0), nominal_ns + j, cap)
        _require(kind, p, "lo", "hi")
        return UniformProfile(int(p["lo"]), int(p["hi"]), cap)
    if kind == "gaussian":
        _require(kind, p, "std")
        return GaussianProfile(int(p.get("mean", nominal_ns)), int(p["std"]), cap)
    if kind == "lognormal":
        _require(kind, p, "median", "sigma")
        return LognormalProfile(int(p["median"]), p["sigma"], cap)
    if kind == "pareto":
        _require(kind, p, "scale", "alpha")
        return ParetoProfile(int(p["scale"]), p["alpha"], cap)
    if kind == "spikes":
        _require(kind, p, "value")
        every = None if "every" not in p else _integer(kind, "every", p["every"])
        if every is not None and every < 1:
            raise ProfileError(f"spikes 'every' must be >= 1, got {every}")
        return SpikeProfile(
            nominal_ns,
            int(p["value"]),
            _integer(kind, "len", p.get("len", 1)),
            every=every,
            prob=p.get("p"),
            phase=_integer(kind, "phase", p.get("phase", 0)),
            cap_ns=cap,
        )
    raise ProfileError(f"profile kind '{kind}' cannot be built from key=value pairs")


def _from_recorded(rec: RecordedTiming, offset: int | None = 0) -> Profile:
    if rec.weights is None:
        return TraceProfile(rec.values_ns, offset)
    return EmpiricalProfile(rec.values_ns, rec.weights)


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        known = sorted(KINDS)
        raise ProfileError(
            f"unknown profile kind '{kind}'; known kinds: {known}{_hint(kind, known)}"
        )


def _parse_text(spec: str, nominal_ns: int) -> Profile:
    profile = _parse_text_kind(spec, nominal_ns)
    profile.spec = spec.strip()  # components of a mix keep their own text for messages
    return profile


def _parse_text_kind(spec: str, nominal_ns: int) -> Profile:
    text = spec.strip()
    if not text:
        raise ProfileError(f"empty profile spec; known kinds: {sorted(KINDS)}")
    kind, _, rest = text.partition(":")
    kind = kind.strip().lower()
    _check_kind(kind)
    if kind == "empirical":
        if not rest.strip():
            raise ProfileError("empirical profile needs a file: empirical:PATH")
        return _from_recorded(load_recorded_timing(rest.strip()))
    if kind == "mix":
        return _parse_mix_text(rest, nominal_ns)
    items: dict[str, str] = {}
    if rest.strip():
        for part in rest.split(","):
            key, eq, value = part.partition("=")
            if not eq or not key.strip():
                raise ProfileError(f"expected key=value in profile '{spec}', got '{part}'")
            if key.strip() in items:
                raise ProfileError(f"key '{key.strip()}' given twice in profile '{spec}'")
            items[key.strip()] = value.strip()
    return _build(kind, _params(kind, items), nominal_ns)


def _parse_mix_text(rest: str, nominal_ns: int) -> Profile:
    weights: list[float] = []
    comps: list[Profile] = []
    for term in _MIX_TERM.split(rest):
        w, star, sub = term.partition("*")
        if not star:
            raise ProfileError(f"mix term '{term}' must look like WEIGHT*SPEC, e.g. 0.97*nominal")
        if sub.strip().lower().startswith("mix"):
            raise ProfileError("a mix cannot contain another mix")
        weights.append(_number("mix", "weight", w.strip()))
        comps.append(_parse_text(sub, nominal_ns))
    return MixtureProfile(weights, comps)


def _parse_json(obj: Any, nominal_ns: int) -> Profile:
    if isinstance(obj, str):
        return _parse_text(obj, nominal_ns)
    if not isinstance(obj, Mapping):
        raise ProfileError(
            f"a JSON profile must be an object or a string, got {type(obj).__name__}"
        )
    if "kind" not in obj:
        raise ProfileError(f"JSON profile needs a 'kind'; known kinds: {sorted(KINDS)}")
    kind = str(obj["kind"]).lower()
    _check_kind(kind)
    rest = {k: v for k, v in obj.items() if k != "kind"}
    cap = None
    if "cap_ms" in rest or "cap_ns" in rest or "cap_us" in rest or "cap_s" in rest:
        caps = {k: rest.pop(k) for k in list(rest) if k.startswith("cap_")}
        cap = _params("nominal", caps).get("cap")
    if kind == "mix":
        unknown = set(rest) - {"components"}
        if unknown or not isinstance(rest.get("components"), list) or not rest["components"]:
            raise ProfileError(
                'JSON mix needs only \'components\': [{"weight": W, "profile": SPEC}, ...]'
                + (f"; unknown keys {sorted(unknown)}" if unknown else "")
            )
        weights, comps = [], []
        for c in rest["components"]:
            if not isinstance(c, Mapping) or set(c) != {"weight", "profile"}:
                raise ProfileError(f"mix component must be {{weight, profile}}, got {c!r}")
            weights.append(_number("mix", "weight", c["weight"]))
            comps.append(_parse_json(c["profile"], nominal_ns))
            if isinstance(c["profile"], Mapping):
                comps[-1].spec = json.dumps(c["profile"], sort_keys=True)
        return _with_cap(MixtureProfile(weights, comps), cap)
    if kind == "empirical":
        unknown = set(rest) - _EMPIRICAL_JSON_KEYS
        if unknown:
            known = sorted(_EMPIRICAL_JSON_KEYS)
            first = sorted(unknown)[0]
            raise ProfileError(
                f"unknown key '{first}' for profile kind 'empirical'; known keys: {known}"
                f"{_hint(first, known)}"
            )
        offset = rest.pop("offset", 0)
        if offset is not None and (isinstance(offset, bool) or not isinstance(offset, int)):
            raise ProfileError(f"empirical 'offset' must be an integer or null, got {offset!r}")
        if "path" in rest:
            if len(rest) > 1:
                raise ProfileError("empirical takes either 'path' or inline data, not both")
            rec = load_recorded_timing(str(rest["path"]))
        else:
            rec = timing_from_json(rest) if rest else _missing_empirical()
        return _with_cap(_from_recorded(rec, offset), cap)
    prof = _build(kind, _params(kind, rest), nominal_ns)
    return _with_cap(prof, cap)


def _missing_empirical() -> RecordedTiming:
    raise ProfileError("empirical profile needs 'path', 'hdr', 'counts' or 'trace_ns'")


def _with_cap(profile: Profile, cap_ns: float | None) -> Profile:
    if cap_ns is not None:
        profile.set_cap(int(cap_ns))
    return profile


def parse_profile(spec: str | Mapping[str, Any], *, nominal_ns: int = 0, seed: int = 0) -> Profile:
    """Build a profile from a text or JSON spec (see the module docstring).

    Args:
        spec: text spec, JSON text starting with ``{``, or an already decoded JSON object.
        nominal_ns: the value ``nominal`` stands for, and the centre of jitter kinds (0 for a
            latency profile, the control period for a dt profile), ns.
        seed: initial seed of the sampler (reseed per episode with ``profile.reseed``).

    Every accepted profile returns integers in ``[0, MAX_SAMPLE_NS]``, and an uncapped heavy
    tail beyond one hour at p99.99 is refused (see :mod:`tailguard.firmware_sim.profiles`).

    Raises:
        ProfileError: unknown kind or key (with the known ones and a did-you-mean hint),
            missing or out-of-range values (every time must lie in [0, 2**62 - 1] ns), an
            uncapped heavy tail, unreadable or oversized empirical data.
    """
    check_duration_ns("nominal", nominal_ns)
    try:
        if isinstance(spec, str) and spec.lstrip().startswith("{"):
            try:
                obj: Any = json.loads(spec)
            except json.JSONDecodeError as exc:
                raise ProfileError(f"profile spec is not valid JSON: {exc}") from None
        else:
            obj = spec
        profile = _parse_json(obj, nominal_ns)
        text = spec if isinstance(spec, str) else json.dumps(spec, sort_keys=True)
    except RecursionError:
        raise ProfileError("profile spec nests too deep") from None
    profile.spec = text
    require_bounded_tail(profile)
    profile.reseed(seed)
    return profile

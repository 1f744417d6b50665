"""Seeded timing profiles: samplers of latency or control period, in integer nanoseconds.

A profile is a small stateful sampler. ``sample(n)`` returns the next ``n`` values as an
int64 array (vectorized); ``next_ns()`` returns the next single value (O(1): it serves a
buffer refilled in blocks). Both draw from the same stream, so any interleaving of the two
yields the same sequence for the same seed: every random stream draws exactly one value per
tick from its own generator (children of one ``numpy.random.SeedSequence``).

Range: every sample is an integer in ``[0, MAX_SAMPLE_NS]`` (``2**62 - 1`` ns, about 146
years; tailguard's "never"). Every time parameter and cap must lie in that range (a
:class:`~tailguard.errors.ProfileError` says so), and samples of a continuous distribution are
clamped to it before the conversion to int64, so a heavy tail can never wrap around to a
negative duration. That clamp is the last line of defence, not a model: a distribution with
an unbounded tail (``gaussian``, ``lognormal``, ``pareto``) and no cap is *refused* by
:func:`require_bounded_tail` (which ``parse_profile`` calls) when its 99.99th percentile lies
beyond :data:`UNCAPPED_TAIL_LIMIT_NS` (one hour): ``pareto:scale_ms=5,alpha=0.001`` is an
error that asks for ``cap_ms=...`` rather than a stream of 146-year latencies. A cap on the
profile, or on the mixture that holds it, lifts the rule.

Every profile also knows its own (stationary) distribution exactly: ``cdf(x_ns)``,
``quantile_ns(q)``, ``p_violate(cap_ns)`` and ``stats(period_ns)`` with the delay in control
steps d = ceil(latency / period) at p50/p95/p99. Continuous distributions are rounded to the
nearest ns and clipped at 0; an optional tail cap (``cap_ns``) clips large values.

Build profiles from a text or JSON spec with
:func:`tailguard.firmware_sim.profile_spec.parse_profile`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tailguard.errors import ProfileError
from tailguard.stats import NEVER_NS

__all__ = [
    "MAX_SAMPLE_NS",
    "UNCAPPED_TAIL_LIMIT_NS",
    "DropSampler",
    "EmpiricalProfile",
    "FixedProfile",
    "GaussianProfile",
    "LognormalProfile",
    "MixtureProfile",
    "ParetoProfile",
    "Profile",
    "ProfileStats",
    "SpikeProfile",
    "TraceProfile",
    "UniformProfile",
    "check_duration_ns",
    "require_bounded_tail",
]

SeedLike = int | np.random.SeedSequence
_BLOCK = 256  # values generated per refill of the next_ns() buffer

#: Largest sample any profile returns, ns (2**62 - 1, about 146 years).
MAX_SAMPLE_NS = NEVER_NS
#: An uncapped unbounded-tail profile must have its 99.99th percentile at or below this, ns.
UNCAPPED_TAIL_LIMIT_NS = 3600 * 1_000_000_000
_TAIL_QUANTILE = 0.9999
_MAX_TICKS = 1_000_000_000  # tick counts (burst length, spike period): 11 days at 1 kHz
_FLOAT_LIMIT = 2.0**62  # float(MAX_SAMPLE_NS) rounds to this; clamp floats here, then to int


def check_duration_ns(name: str, value_ns: float) -> int:
    """``value_ns`` as an int if it lies in ``[0, MAX_SAMPLE_NS]``.

    Raises:
        ProfileError: ``value_ns`` is negative, not finite or above ``MAX_SAMPLE_NS``.
    """
    if not 0 <= value_ns < _FLOAT_LIMIT or int(value_ns) > MAX_SAMPLE_NS:
        raise ProfileError(
            f"{name} must be a duration in [0, {MAX_SAMPLE_NS}] ns (2**62 - 1 ns, about 146 "
            f"years), got {value_ns:g} ns"
        )
    return int(value_ns)


def _seed_sequence(seed: SeedLike) -> np.random.SeedSequence:
    return seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)


@dataclass(frozen=True)
class ProfileStats:
    """Summary of a profile's distribution relative to a control period.

    Attributes:
        p50_ns, p95_ns, p99_ns: quantiles of the sampled value, ns.
        d_p50, d_p95, d_p99: delay in control steps, ceil(quantile / period).
        p_violate: probability that one sample exceeds ``cap_ns`` (None without a cap).
        cap_ns: the cap ``p_violate`` refers to, ns.
    """

    p50_ns: int
    p95_ns: int
    p99_ns: int
    d_p50: int
    d_p95: int
    d_p99: int
    p_violate: float | None = None
    cap_ns: int | None = None


def _burst_mask(starts: np.ndarray, length: int, remaining: int) -> tuple[np.ndarray, int]:
    """Ticks covered by bursts of ``length`` ticks beginning at ``starts``.

    Args:
        starts: bool, shape (n,): a burst begins at this tick.
        length: burst length in ticks, >= 1.
        remaining: ticks of a burst begun before this chunk still to cover.

    Returns:
        (mask, remaining after the chunk).
    """
    n = starts.size
    csum = np.concatenate(([0], np.cumsum(starts, dtype=np.int64)))
    lo = np.maximum(np.arange(n) + 1 - length, 0)
    mask = (csum[1:] - csum[lo]) > 0
    if remaining > 0:
        mask[: min(remaining, n)] = True
    idx = np.flatnonzero(starts)
    new_remaining = max(remaining - n, 0)
    if idx.size:
        new_remaining = max(new_remaining, int(idx[-1]) + length - n)
    return mask, new_remaining


class Profile(ABC):
    """Base class: a seeded sampler of non-negative durations in integer ns.

    Args:
        cap_ns: optional tail cap; samples above it are clipped to it.
    """

    #: True for distributions whose support has no upper end (see require_bounded_tail).
    unbounded_tail = False

    def __init__(self, cap_ns: int | None = None) -> None:
        self.cap_ns = None if cap_ns is None else check_duration_ns("cap", cap_ns)
        self.spec = type(self).__name__  # replaced by the parser with the canonical spec text
        self._buf = np.empty(0, np.int64)
        self._pos = 0
        self.reseed(0)

    # -- subclass interface -------------------------------------------------------------
    @abstractmethod
    def _seed(self, seq: np.random.SeedSequence) -> None:
        """Create this profile's generators (and reset any per-tick state)."""

    @abstractmethod
    def _generate(self, n: int) -> np.ndarray:
        """Next ``n`` raw values (int64, before the cap)."""

    @abstractmethod
    def _cdf_raw(self, value_ns: float) -> float:
        """P(raw sample <= value_ns) for the stationary distribution."""

    # -- public API ---------------------------------------------------------------------
    def reseed(self, seed: SeedLike) -> None:
        """Restart the stream from ``seed`` (an int or a ``SeedSequence``)."""
        self._buf = np.empty(0, np.int64)
        self._pos = 0
        self._seed(_seed_sequence(seed))

    def sample(self, n: int) -> np.ndarray:
        """Return the next ``n`` values, int64 ns, shape (n,)."""
        if n < 0:
            raise ProfileError(f"sample count must be >= 0, got {n}")
        left = self._buf[self._pos :]
        if left.size >= n:
            self._pos += n
            return left[:n].copy()
        out = np.concatenate((left, self._capped(n - left.size)))
        self._buf = np.empty(0, np.int64)
        self._pos = 0
        return out

    def next_ns(self) -> int:
        """Return the next single value, ns (amortized O(1))."""
        if self._pos >= self._buf.size:
            self._buf = self._capped(_BLOCK)
            self._pos = 0
        value = self._buf[self._pos]
        self._pos += 1
        return int(value)

    def cdf(self, value_ns: float) -> float:
        """P(sample <= value_ns) of the stationary distribution (cap included)."""
        if self.cap_ns is not None and value_ns >= self.cap_ns:
            return 1.0
        return self._cdf_raw(value_ns)

    def quantile_ns(self, q: float) -> int:
        """Smallest integer ns x with cdf(x) >= q, for 0 < q <= 1."""
        if not 0.0 < q <= 1.0:
            raise ProfileError(f"quantile must be in (0, 1], got {q}")
        hi = 1
        while self.cdf(hi) < q:
            hi *= 2
            if hi > 1 << 62:
                raise ProfileError(f"quantile {q} is beyond 2**62 ns")
        lo = -1  # cdf(lo) < q always (values are >= 0)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.cdf(mid) >= q:
                hi = mid
            else:
                lo = mid
        return hi

    def p_violate(self, cap_ns: int) -> float:
        """Probability that one sample exceeds ``cap_ns``."""
        return max(0.0, 1.0 - self.cdf(cap_ns))

    def delay_steps(self, q: float, period_ns: int) -> int:
        """Delay in control steps at quantile ``q``: ceil(quantile_ns(q) / period_ns)."""
        if period_ns <= 0:
            raise ProfileError(f"period must be > 0 ns, got {period_ns}")
        return -(-self.quantile_ns(q) // period_ns)

    def stats(self, period_ns: int, cap_ns: int | None = None) -> ProfileStats:
        """Quantiles, delays in control steps and (with ``cap_ns``) the violation rate."""
        if period_ns <= 0:
            raise ProfileError(f"period must be > 0 ns, got {period_ns}")
        p50, p95, p99 = (self.quantile_ns(q) for q in (0.5, 0.95, 0.99))
        return ProfileStats(
            p50_ns=p50,
            p95_ns=p95,
            p99_ns=p99,
            d_p50=-(-p50 // period_ns),
            d_p95=-(-p95 // period_ns),
            d_p99=-(-p99 // period_ns),
            p_violate=None if cap_ns is None else self.p_violate(cap_ns),
            cap_ns=cap_ns,
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.spec!r}>"

    # -- helpers ------------------------------------------------------------------------
    def set_cap(self, cap_ns: int | None) -> None:
        """Replace the tail cap (``None`` removes it) and restart the stream from seed 0."""
        self.cap_ns = None if cap_ns is None else check_duration_ns("cap", cap_ns)
        self.reseed(0)

    def _capped(self, n: int) -> np.ndarray:
        with np.errstate(over="ignore"):  # a heavy tail overflows to inf; _to_ns clamps it
            values = self._generate(n)
        np.minimum(values, MAX_SAMPLE_NS if self.cap_ns is None else self.cap_ns, out=values)
        return values


def _to_ns(x: np.ndarray) -> np.ndarray:
    """Round float samples to int64 ns, clamped to [0, MAX_SAMPLE_NS] before the cast
    (a cast of a float beyond int64 is undefined: it gives -2**63 on x86)."""
    clipped = np.clip(np.nan_to_num(x, nan=_FLOAT_LIMIT), 0.0, _FLOAT_LIMIT)
    return np.minimum(np.rint(clipped).astype(np.int64), MAX_SAMPLE_NS)


def require_bounded_tail(profile: Profile) -> None:
    """Refuse an uncapped unbounded-tail distribution whose p99.99 is beyond one hour.

    Checks ``profile`` and, when it is an uncapped mixture, each of its components; a cap
    on a profile (or on the mixture holding it) satisfies the rule for it.

    Raises:
        ProfileError: naming the distribution, its 99.99th percentile and the cap to add.
    """
    if profile.cap_ns is not None:
        return
    if isinstance(profile, MixtureProfile):
        for component in profile.components:
            require_bounded_tail(component)
        return
    if not profile.unbounded_tail:
        return
    try:
        tail_ns: int | None = profile.quantile_ns(_TAIL_QUANTILE)
    except ProfileError:  # beyond 2**62 ns
        tail_ns = None
    if tail_ns is None or tail_ns > UNCAPPED_TAIL_LIMIT_NS:
        where = "beyond 2**62 ns" if tail_ns is None else f"{tail_ns / 1e9:.4g} s"
        spec = profile.spec if len(profile.spec) <= 200 else profile.spec[:200] + "..."
        raise ProfileError(
            f"{spec}: a heavy tail without a cap; its 99.99th percentile is {where}, "
            f"above the {UNCAPPED_TAIL_LIMIT_NS // 1_000_000_000} s allowed for an uncapped "
            "profile. Add a tail cap (e.g. cap_ms=100) or choose a lighter tail"
        )


class _Continuous(Profile):
    """A continuous distribution, rounded to ns and clipped at 0. One generator."""

    def _seed(self, seq: np.random.SeedSequence) -> None:
        self._rng = np.random.default_rng(seq)

    def _cdf_raw(self, value_ns: float) -> float:
        if value_ns < 0:
            return 0.0
        return self._cdf_continuous(math.floor(value_ns) + 0.5)

    @abstractmethod
    def _cdf_continuous(self, x: float) -> float:
        """P(X < x) of the unrounded distribution."""


class FixedProfile(Profile):
    """Always the same value.

    Args:
        value_ns: the value, ns, >= 0.
    """

    def __init__(self, value_ns: int, cap_ns: int | None = None) -> None:
        self.value_ns = check_duration_ns("fixed value", value_ns)
        super().__init__(cap_ns)

    def _seed(self, seq: np.random.SeedSequence) -> None:
        pass

    def _generate(self, n: int) -> np.ndarray:
        return np.full(n, self.value_ns, np.int64)

    def _cdf_raw(self, value_ns: float) -> float:
        return 1.0 if value_ns >= self.value_ns else 0.0


class UniformProfile(_Continuous):
    """Uniform on [low_ns, high_ns]."""

    def __init__(self, low_ns: int, high_ns: int, cap_ns: int | None = None) -> None:
        low_ns, high_ns = (
            check_duration_ns("uniform lo", low_ns),
            check_duration_ns("uniform hi", high_ns),
        )
        if not low_ns <= high_ns:
            raise ProfileError(f"uniform needs 0 <= low <= high, got [{low_ns}, {high_ns}] ns")
        self.low_ns, self.high_ns = low_ns, high_ns
        super().__init__(cap_ns)

    def _generate(self, n: int) -> np.ndarray:
        return _to_ns(self._rng.uniform(self.low_ns, self.high_ns, n))

    def _cdf_continuous(self, x: float) -> float:
        if self.high_ns == self.low_ns:
            return 1.0 if x > self.low_ns else 0.0
        return min(max((x - self.low_ns) / (self.high_ns - self.low_ns), 0.0), 1.0)


class GaussianProfile(_Continuous):
    """Normal with mean ``mean_ns`` and standard deviation ``std_ns`` (clipped at 0)."""

    unbounded_tail = True

    def __init__(self, mean_ns: int, std_ns: int, cap_ns: int | None = None) -> None:
        mean_ns = check_duration_ns("gaussian mean", mean_ns)
        std_ns = check_duration_ns("gaussian std", std_ns)
        if std_ns <= 0:
            raise ProfileError(f"gaussian needs mean >= 0 and std > 0 ns, got {mean_ns}, {std_ns}")
        self.mean_ns, self.std_ns = mean_ns, std_ns
        super().__init__(cap_ns)

    def _generate(self, n: int) -> np.ndarray:
        return _to_ns(self._rng.normal(self.mean_ns, self.std_ns, n))

    def _cdf_continuous(self, x: float) -> float:
        return 0.5 * (1.0 + math.erf((x - self.mean_ns) / (self.std_ns * math.sqrt(2.0))))


class LognormalProfile(_Continuous):
    """Lognormal long tail: median ``median_ns``, log-space standard deviation ``sigma``."""

    unbounded_tail = True

    def __init__(self, median_ns: int, sigma: float, cap_ns: int | None = None) -> None:
        median_ns = check_duration_ns("lognormal median", median_ns)
        if median_ns <= 0 or not 0 < sigma < math.inf:
            raise ProfileError(
                f"lognormal needs median > 0 ns and a finite sigma > 0, got {median_ns}, {sigma}"
            )
        self.median_ns, self.sigma = median_ns, float(sigma)
        super().__init__(cap_ns)

    def _generate(self, n: int) -> np.ndarray:
        return _to_ns(self._rng.lognormal(math.log(self.median_ns), self.sigma, n))

    def _cdf_continuous(self, x: float) -> float:
        if x <= 0:
            return 0.0
        z = (math.log(x) - math.log(self.median_ns)) / (self.sigma * math.sqrt(2.0))
        return 0.5 * (1.0 + math.erf(z))


class ParetoProfile(_Continuous):
    """Pareto (type I) long tail: values >= ``scale_ns``, P(X > x) = (scale / x) ** alpha."""

    unbounded_tail = True

    def __init__(self, scale_ns: int, alpha: float, cap_ns: int | None = None) -> None:
        scale_ns = check_duration_ns("pareto scale", scale_ns)
        if scale_ns <= 0 or not 0 < alpha < math.inf:
            raise ProfileError(
                f"pareto needs scale > 0 ns and a finite alpha > 0, got {scale_ns}, {alpha}"
            )
        self.scale_ns, self.alpha = scale_ns, float(alpha)
        super().__init__(cap_ns)

    def _generate(self, n: int) -> np.ndarray:
        return _to_ns(self.scale_ns * (1.0 + self._rng.pareto(self.alpha, n)))

    def _cdf_continuous(self, x: float) -> float:
        if x <= self.scale_ns:
            return 0.0
        return 1.0 - (self.scale_ns / x) ** self.alpha


class MixtureProfile(Profile):
    """Each tick draws from component i with probability ``weights[i]``.

    Every component advances by one value per tick whether chosen or not, so the stream
    does not depend on how calls are chunked.
    """

    def __init__(
        self, weights: Sequence[float], components: Sequence[Profile], cap_ns: int | None = None
    ) -> None:
        w = np.asarray(weights, np.float64)
        if w.ndim != 1 or w.size == 0 or w.size != len(components):
            raise ProfileError("a mixture needs one weight per component and at least one")
        if np.any(w < 0) or not math.isclose(float(w.sum()), 1.0, abs_tol=1e-9):
            raise ProfileError(f"mixture weights must be >= 0 and sum to 1, got {list(weights)}")
        self.weights = w
        self.components = list(components)
        self._edges = np.cumsum(w)[:-1]
        super().__init__(cap_ns)

    def _seed(self, seq: np.random.SeedSequence) -> None:
        children = seq.spawn(len(self.components) + 1)
        self._rng = np.random.default_rng(children[0])
        for comp, child in zip(self.components, children[1:], strict=True):
            comp.reseed(child)

    def _generate(self, n: int) -> np.ndarray:
        which = np.searchsorted(self._edges, self._rng.random(n), side="right")
        draws = np.stack([c.sample(n) for c in self.components])
        return draws[which, np.arange(n)]

    def _cdf_raw(self, value_ns: float) -> float:
        return float(
            sum(w * c.cdf(value_ns) for w, c in zip(self.weights, self.components, strict=True))
        )


class SpikeProfile(Profile):
    """Bursts of ``length`` ticks at ``spike_ns`` over a base value (GC-pause-like).

    Periodic (``every``: a burst starts every ``every`` ticks, at tick ``phase`` mod
    ``every``) or random (``prob``: a burst starts at each tick with this probability;
    overlapping bursts merge).
    """

    def __init__(
        self,
        base_ns: int,
        spike_ns: int,
        length: int = 1,
        every: int | None = None,
        prob: float | None = None,
        phase: int = 0,
        cap_ns: int | None = None,
    ) -> None:
        if (every is None) == (prob is None):
            raise ProfileError("spikes need exactly one of every (periodic) or p (random)")
        base_ns = check_duration_ns("spikes base", base_ns)
        spike_ns = check_duration_ns("spikes value", spike_ns)
        for name, ticks in (("len", length), ("every", every), ("phase", phase)):
            if ticks is not None and not abs(ticks) <= _MAX_TICKS:
                raise ProfileError(
                    f"spikes '{name}' must be at most {_MAX_TICKS} ticks, got {ticks}"
                )
        if length < 1:
            raise ProfileError(f"spikes need len >= 1, got len={length}")
        if every is not None and not length <= every:
            raise ProfileError(
                f"periodic spikes need 1 <= len <= every, got len={length}, every={every}"
            )
        if prob is not None and not 0.0 <= prob <= 1.0:
            raise ProfileError(f"spike probability must be in [0, 1], got {prob}")
        self.base_ns, self.spike_ns, self.length = int(base_ns), int(spike_ns), int(length)
        self.every, self.prob, self.phase = every, prob, int(phase)
        super().__init__(cap_ns)

    def _seed(self, seq: np.random.SeedSequence) -> None:
        self._rng = np.random.default_rng(seq)
        self._tick = 0
        self._remaining = 0

    def _generate(self, n: int) -> np.ndarray:
        if self.every is not None:
            ticks = np.arange(self._tick, self._tick + n) - self.phase
            mask = (ticks % self.every) < self.length
        else:
            mask, self._remaining = _burst_mask(
                self._rng.random(n) < float(self.prob or 0.0), self.length, self._remaining
            )
        self._tick += n
        return np.where(mask, self.spike_ns, self.base_ns).astype(np.int64)

    @property
    def burst_fraction(self) -> float:
        """Stationary fraction of ticks inside a burst."""
        if self.every is not None:
            return self.length / self.every
        return 1.0 - (1.0 - float(self.prob or 0.0)) ** self.length

    def _cdf_raw(self, value_ns: float) -> float:
        f = self.burst_fraction
        return (1.0 - f) * (value_ns >= self.base_ns) + f * (value_ns >= self.spike_ns)


class EmpiricalProfile(Profile):
    """Independent draws from a recorded histogram (values with counts)."""

    def __init__(
        self, values_ns: np.ndarray, weights: np.ndarray, cap_ns: int | None = None
    ) -> None:
        order = np.argsort(values_ns, kind="stable")
        self.values_ns = np.asarray(values_ns, np.int64)[order]
        w = np.asarray(weights, np.float64)[order]
        if (
            self.values_ns.size == 0
            or w.shape != self.values_ns.shape
            or not np.all(np.isfinite(w) & (w >= 0))
            or not w.max() > 0
        ):
            raise ProfileError(
                "an empirical histogram needs values with finite, non-negative counts and a "
                "positive total"
            )
        if self.values_ns[0] < 0 or self.values_ns[-1] > MAX_SAMPLE_NS:
            raise ProfileError(f"empirical values must lie in [0, {MAX_SAMPLE_NS}] ns")
        with np.errstate(over="ignore"):
            finite_total = bool(np.isfinite(w.sum()))
        if not finite_total:  # counts near float max: scale down (integers stay exact)
            w = w / w.max()
        self._cum = np.cumsum(w) / w.sum()
        self._cum[-1] = 1.0
        super().__init__(cap_ns)

    def _seed(self, seq: np.random.SeedSequence) -> None:
        self._rng = np.random.default_rng(seq)

    def _generate(self, n: int) -> np.ndarray:
        return self.values_ns[np.searchsorted(self._cum, self._rng.random(n), side="right")]

    def _cdf_raw(self, value_ns: float) -> float:
        i = int(np.searchsorted(self.values_ns, value_ns, side="right"))
        return 0.0 if i == 0 else float(self._cum[i - 1])


class TraceProfile(Profile):
    """Replays a recorded per-tick trace in order, wrapping around at its end.

    Args:
        values_ns: the trace, int ns, shape (n,).
        offset: index to start from; ``None`` picks a seeded random start at each reseed.
    """

    def __init__(
        self, values_ns: np.ndarray, offset: int | None = 0, cap_ns: int | None = None
    ) -> None:
        self.values_ns = np.asarray(values_ns, np.int64)
        if self.values_ns.ndim != 1 or self.values_ns.size == 0:
            raise ProfileError("a trace needs at least one value")
        if np.any(self.values_ns < 0) or np.any(self.values_ns > MAX_SAMPLE_NS):
            raise ProfileError(f"trace values must lie in [0, {MAX_SAMPLE_NS}] ns")
        self.offset = offset
        self._sorted = np.sort(self.values_ns)
        super().__init__(cap_ns)

    def _seed(self, seq: np.random.SeedSequence) -> None:
        size = self.values_ns.size
        if self.offset is None:
            self._index = int(np.random.default_rng(seq).integers(size))
        else:
            self._index = self.offset % size

    def _generate(self, n: int) -> np.ndarray:
        idx = (self._index + np.arange(n)) % self.values_ns.size
        self._index = (self._index + n) % self.values_ns.size
        return self.values_ns[idx]

    def _cdf_raw(self, value_ns: float) -> float:
        return float(np.searchsorted(self._sorted, value_ns, side="right")) / self._sorted.size


class DropSampler:
    """Seeded frame-drop sampler: bursts of ``burst_len`` dropped ticks.

    A burst starts at each tick with probability ``prob``; ``prob=0`` never drops (and
    costs nothing per tick).

    Args:
        prob: per-tick probability that a drop burst starts, in [0, 1].
        burst_len: ticks dropped per burst, >= 1.
    """

    def __init__(self, prob: float = 0.0, burst_len: int = 1) -> None:
        if not 0.0 <= prob <= 1.0:
            raise ProfileError(f"drop probability must be in [0, 1], got {prob}")
        if burst_len < 1:
            raise ProfileError(f"drop burst length must be >= 1, got {burst_len}")
        self.prob, self.burst_len = float(prob), int(burst_len)
        self.reseed(0)

    @property
    def enabled(self) -> bool:
        """False when the sampler never drops."""
        return self.prob > 0.0

    def reseed(self, seed: SeedLike) -> None:
        """Restart the stream from ``seed``."""
        self._rng = np.random.default_rng(_seed_sequence(seed))
        self._remaining = 0
        self._buf = np.empty(0, bool)
        self._pos = 0

    def _generate(self, n: int) -> np.ndarray:
        mask, self._remaining = _burst_mask(
            self._rng.random(n) < self.prob, self.burst_len, self._remaining
        )
        return mask

    def sample(self, n: int) -> np.ndarray:
        """Next ``n`` drop flags, bool, shape (n,)."""
        left = self._buf[self._pos :]
        if left.size >= n:
            self._pos += n
            return left[:n].copy()
        out = np.concatenate((left, self._generate(n - left.size)))
        self._buf = np.empty(0, bool)
        self._pos = 0
        return out

    def next_drop(self) -> bool:
        """Whether the next tick is dropped (amortized O(1))."""
        if not self.enabled:
            return False
        if self._pos >= self._buf.size:
            self._buf = self._generate(_BLOCK)
            self._pos = 0
        value = self._buf[self._pos]
        self._pos += 1
        return bool(value)

    @property
    def drop_fraction(self) -> float:
        """Stationary fraction of dropped ticks."""
        return 1.0 - (1.0 - self.prob) ** self.burst_len

"""Conditions: a named timing situation the audit runs paired episodes under.

A condition is a set of profile specs in the simulator's spec language
(``tailguard.firmware_sim.profile_spec``): inference latency, control period, observation age,
command drops. A deadline-miss pattern "m misses in any K ticks" is a latency pattern
(``spikes:every=K,len=m`` with spikes above the period), recorded as ``miss_pattern``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tailguard.firmware_sim.replay import TimingSpec

__all__ = ["NOMINAL", "Condition"]


@dataclass(frozen=True)
class Condition:
    """One timing condition of a sweep.

    Attributes:
        name: unique name, ``DIMENSION/LEVEL`` for ladder levels (``nominal`` for nominal).
        dimension: the timing dimension (``latency_fixed``, ``dt_jitter``, ... ``measured``).
        level: position in its dimension's ladder, 0 = mildest.
        severity: the ladder value (its unit is the dimension's, see ``sweep.DIMENSIONS``).
        latency, dt, obs_delay: profile specs (``nominal`` = 0 / the period / fresh).
        drop_prob, drop_burst: command drops (bursts of ``drop_burst`` ticks).
        miss_pattern: (m, K) for deadline-miss patterns: m consecutive misses every K ticks.
        label: a human description.
    """

    name: str
    dimension: str
    level: int = 0
    severity: float = 0.0
    latency: str = "nominal"
    dt: str = "nominal"
    obs_delay: str = "nominal"
    drop_prob: float = 0.0
    drop_burst: int = 1
    miss_pattern: tuple[int, int] | None = None
    label: str = ""

    @property
    def is_nominal(self) -> bool:
        """True for the nominal-timing condition."""
        return self.dimension == "nominal"

    def timing(self) -> TimingSpec:
        """The simulator's :class:`TimingSpec` of this condition."""
        from tailguard.firmware_sim.replay import TimingSpec

        return TimingSpec(
            latency=self.latency,
            dt=self.dt,
            obs_delay=self.obs_delay,
            drop_prob=self.drop_prob,
            drop_burst=self.drop_burst,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "name": self.name,
            "dimension": self.dimension,
            "level": self.level,
            "severity": self.severity,
            "latency": self.latency,
            "dt": self.dt,
            "obs_delay": self.obs_delay,
            "drop_prob": self.drop_prob,
            "drop_burst": self.drop_burst,
            "miss_pattern": list(self.miss_pattern) if self.miss_pattern else None,
            "label": self.label,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Condition:
        """Inverse of :meth:`to_dict`."""
        values = dict(data)
        mp = values.get("miss_pattern")
        values["miss_pattern"] = tuple(mp) if mp else None
        return cls(**values)


NOMINAL = Condition(name="nominal", dimension="nominal", label="nominal timing")

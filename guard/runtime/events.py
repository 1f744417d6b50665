"""The records a guard hands to its sinks (flight recorder, telemetry), as typed tuples.

Each record is a ``NamedTuple`` ``(kind, tick, t_ns, fields)``: a sink that unpacks a plain
4-tuple keeps working, and code that builds or reads records gets names and types. ``kind``
is one of ``tailguard.protocol.flight_record.RECORD_KINDS``; ``tick`` is the guard's tick
counter; ``t_ns`` is the start of that tick on the guard's clock; ``fields`` holds plain
msgpack-able values only (enum values as their strings).

Records are built off the hot path only (a violation or a state change is already off it).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

from tailguard.runtime.state import GuardState, Violation

__all__ = ["ViolationRecord", "StateChangeRecord", "FaultRecord", "NoteRecord", "GuardRecord"]


class ViolationRecord(NamedTuple):
    """One counted violation: ``fields = {"kind", "dt_ns", "latency_ns"}``."""

    kind: str
    tick: int
    t_ns: int
    fields: dict[str, Any]

    @classmethod
    def of(
        cls, tick: int, t_ns: int, violation: Violation, dt_ns: int, latency_ns: int
    ) -> ViolationRecord:
        """The record of ``violation`` on ``tick`` with that tick's period and latency, ns."""
        return cls(
            "violation",
            tick,
            t_ns,
            {"kind": violation.value, "dt_ns": dt_ns, "latency_ns": latency_ns},
        )

    @property
    def violation(self) -> Violation:
        return Violation(self.fields["kind"])


class StateChangeRecord(NamedTuple):
    """A state change: ``fields = {"from", "to", "cause"}`` (cause: violation values, or a
    fault name such as ``"internal_error"``)."""

    kind: str
    tick: int
    t_ns: int
    fields: dict[str, Any]

    @classmethod
    def of(
        cls,
        tick: int,
        t_ns: int,
        old: GuardState,
        new: GuardState,
        cause: Iterable[Violation | str],
    ) -> StateChangeRecord:
        """The record of ``old -> new`` on ``tick`` because of ``cause``."""
        return cls(
            "state",
            tick,
            t_ns,
            {
                "from": old.value,
                "to": new.value,
                "cause": [c.value if isinstance(c, Violation) else str(c) for c in cause],
            },
        )

    @property
    def old(self) -> GuardState:
        return GuardState(self.fields["from"])

    @property
    def new(self) -> GuardState:
        return GuardState(self.fields["to"])


class FaultRecord(NamedTuple):
    """A fault of the guard's own machinery: ``fields = {name: detail}``."""

    kind: str
    tick: int
    t_ns: int
    fields: dict[str, Any]

    @classmethod
    def of(cls, tick: int, t_ns: int, name: str, detail: Any) -> FaultRecord:
        """The record of fault ``name`` (e.g. ``"fallback_error"``) with ``detail``."""
        return cls("fault", tick, t_ns, {name: detail})


class NoteRecord(NamedTuple):
    """Something worth keeping that is not a fault, e.g. a trip/reset command applied."""

    kind: str
    tick: int
    t_ns: int
    fields: dict[str, Any]

    @classmethod
    def command(cls, tick: int, t_ns: int, command: str, reason: str) -> NoteRecord:
        """The record of a ``"trip"`` / ``"reset"`` command applied at ``tick``."""
        return cls("note", tick, t_ns, {"command": command, "reason": reason})


GuardRecord = ViolationRecord | StateChangeRecord | FaultRecord | NoteRecord

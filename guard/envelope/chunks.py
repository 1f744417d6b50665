"""The envelope's optional ``chunks`` section: what an action-chunk policy's delay may be.

An envelope without it is an envelope for a per-tick policy and loads as before. With it
(JSON)::

    "chunks": {"horizon": 8, "execute_horizon": 5, "max_delay_ticks": 2,
               "on_exhausted": "fallback", "on_late": "log",
               "delay_window": 64, "warmup_chunks": 1}

* ``horizon`` (H) and ``execute_horizon`` (s): the chunking the envelope was audited for;
  null = whatever the policy declares (a ``ChunkGuard`` refuses a policy that differs).
* ``max_delay_ticks``: the tail cap on the inference delay d (in control ticks) the audit
  derived; a chunk still in flight after more ticks is ``chunk_late``. null: no cap.
* ``on_exhausted``: the response when the executing chunk runs out before the next one
  arrives (d > H - s): ``hold``, ``fallback`` or ``latch``.
* ``on_late``: the response to ``chunk_late``: ``log``, ``hold``, ``fallback`` or ``latch``.
* ``delay_window``: chunks in the guard's windowed delay estimate (oldest evicted);
  ``warmup_chunks``: first chunks of an episode left out of it.

Like every section it is a frozen dataclass validated on construction (every problem at
once, as an :class:`~tailguard.errors.EnvelopeError`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tailguard.envelope.checks import check_int, is_int
from tailguard.envelope.problems import Problems, did_you_mean, show
from tailguard.errors import EnvelopeError
from tailguard.runtime.state import Response

__all__ = ["ChunkLimits", "EXHAUSTED_RESPONSES", "LATE_RESPONSES", "check_chunks"]

#: Responses allowed for ``chunk_exhausted``: there is no action of the policy to log or clip.
EXHAUSTED_RESPONSES = (Response.HOLD, Response.FALLBACK, Response.LATCH)
#: Responses allowed for ``chunk_late`` (the executing chunk may still have actions left).
LATE_RESPONSES = (Response.LOG, Response.HOLD, Response.FALLBACK, Response.LATCH)
_TICKS = "an integer number of ticks"
_MAX_HORIZON = 1024


def _response(p: Problems, name: str, value: Any, allowed: tuple[Response, ...]) -> None:
    names = [r.value for r in allowed]
    given = value.value if isinstance(value, Response) else value
    if given in names:
        return
    hint = did_you_mean(given, names) if isinstance(given, str) else ""
    p.add(name, "one of " + ", ".join(f"'{n}'" for n in names), show(given), hint)


def check_chunks(p: Problems, v: Mapping[str, Any]) -> None:
    """``ChunkLimits``: 1 <= s <= H where given, a cap >= 0, known responses, window >= 1."""
    h_ok = check_int(p, "horizon", v["horizon"], minimum=1, maximum=_MAX_HORIZON, nullable=True)
    s_ok = check_int(
        p, "execute_horizon", v["execute_horizon"], minimum=1, maximum=_MAX_HORIZON, nullable=True
    )
    h, s = v["horizon"], v["execute_horizon"]
    if h_ok and s_ok and h is not None and s is not None and s > h:
        p.add(
            "execute_horizon",
            f"at most horizon ({h})",
            show(s),
            "a chunk cannot execute more actions than it holds",
        )
    check_int(p, "max_delay_ticks", v["max_delay_ticks"], minimum=0, nullable=True, what=_TICKS)
    _response(p, "on_exhausted", v["on_exhausted"], EXHAUSTED_RESPONSES)
    _response(p, "on_late", v["on_late"], LATE_RESPONSES)
    check_int(p, "delay_window", v["delay_window"], minimum=1, maximum=1 << 20, what="chunks")
    check_int(p, "warmup_chunks", v["warmup_chunks"], minimum=0, maximum=1 << 20, what="chunks")


@dataclass(frozen=True)
class ChunkLimits:
    """The ``chunks`` section (see the module docstring for every field).

    Raises:
        EnvelopeError: every problem found.
    """

    horizon: int | None = None
    execute_horizon: int | None = None
    max_delay_ticks: int | None = None
    on_exhausted: Response = Response.HOLD
    on_late: Response = Response.LOG
    delay_window: int = 64
    warmup_chunks: int = 1

    def __post_init__(self) -> None:
        p = Problems()
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        check_chunks(p, values)
        if p.items:
            raise EnvelopeError(p.items)
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if is_int(value) and type(value) is not int:
                object.__setattr__(self, f.name, int(value))
        for name in ("on_exhausted", "on_late"):
            value = getattr(self, name)
            if not isinstance(value, Response):
                object.__setattr__(self, name, Response(value))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (responses as their strings)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.value if isinstance(value, Response) else value
        return out

"""The envelope API in one import, kept for existing code: ``from tailguard.envelope.model``.

The envelope lives in small modules of this package: ``rules`` (every rule, one function
per section), ``schema`` (the frozen dataclasses), ``json_io`` (bounded reading, one parse,
atomic writing; its docstring shows the JSON layout of an envelope file), ``starter``
(placeholder envelopes) and ``period`` (does an envelope fit the loop's period). New code
imports from ``tailguard.envelope``.
"""

from __future__ import annotations

from tailguard.envelope.json_io import (
    MAX_ENVELOPE_BYTES,
    MAX_NESTING_DEPTH,
    check_envelope_file,
    envelope_from_dict,
    load_envelope,
    read_envelope_file,
    save_envelope,
)
from tailguard.envelope.period import PERIOD_TOLERANCE_PPM, period_matches, require_period
from tailguard.envelope.rules import (
    MAX_WINDOW_TICKS,
    PROVENANCE_SOURCES,
    SAFE_ACTIONS,
    SCHEMA_VERSION,
)
from tailguard.envelope.schema import (
    ActionLimits,
    Envelope,
    PolicyBinding,
    Provenance,
    Recovery,
    Thresholds,
    Timing,
    Window,
)
from tailguard.envelope.starter import starter_envelope

__all__ = [
    "MAX_ENVELOPE_BYTES",
    "MAX_NESTING_DEPTH",
    "MAX_WINDOW_TICKS",
    "PERIOD_TOLERANCE_PPM",
    "PROVENANCE_SOURCES",
    "SAFE_ACTIONS",
    "SCHEMA_VERSION",
    "ActionLimits",
    "Envelope",
    "PolicyBinding",
    "Provenance",
    "Recovery",
    "Thresholds",
    "Timing",
    "Window",
    "check_envelope_file",
    "envelope_from_dict",
    "load_envelope",
    "period_matches",
    "read_envelope_file",
    "require_period",
    "save_envelope",
    "starter_envelope",
]

"""The envelope: the versioned, validated timing and action conditions a policy tolerates.

The offline audit writes an envelope; the runtime guard enforces it. The package's
modules, each small and named for what it holds:

- ``rules``: every rule, one function per section (and the schema's constants);
- ``schema``: the frozen dataclasses, validated on construction;
- ``json_io``: envelope files (bounded reading, one parse, every problem at once, atomic
  writing);
- ``starter``: placeholder envelopes derived from the control period;
- ``period``: the one rule for "does this envelope fit the loop's period";
- ``problems`` and ``checks``: the vocabulary the rules are written in.

``tailguard.envelope.model`` re-exports the same names for code written before the split.
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

"""The envelope API in one import, kept for existing code: ``from tailguard.envelope.model``.

The envelope lives in small modules of this package: ``rules`` (every rule, one function
per section), ``schema`` (the frozen dataclasses), ``json_io`` (bounded reading, one parse,
atomic writing; its docstring shows the JSON layout of an envelope file), ``starter``
(placeholder envelopes) and ``period`` (does an envelope fit the loop's period). New code
imports from ``tailguard.envelope``.
"""

from __future__ import annotations

from tailguard.envelope import *  # noqa: F403 (the package's public names, one list)
from tailguard.envelope import __all__ as __all__

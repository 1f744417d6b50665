"""Every exception tailguard raises, in one hierarchy.

Load-time problems raise one of these (before any control loop starts). Run-time faults
inside ``Guard.step`` never raise: they become events and a safe action.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "TailguardError",
    "ConfigError",
    "PolicyLoadError",
    "EnvelopeError",
    "EnvelopeProblem",
    "EnvelopeMismatchError",
    "HashMismatchError",
    "MissingExtraError",
    "IllegalTransitionError",
    "RecorderError",
    "CheckpointError",
    "ExportError",
    "ParityError",
    "ProfileError",
    "MonitorConfigError",
    "UnsupportedEnvError",
]


class TailguardError(Exception):
    """Base class of every tailguard error.

    Args:
        message: what was expected, what was found, and how to fix it.
        path: the file the error is about, if any; it is prefixed to the message.
    """

    def __init__(self, message: str, path: str | os.PathLike[str] | None = None) -> None:
        self.path = None if path is None else os.fspath(path)
        self.message = message
        super().__init__(f"{self.path}: {message}" if self.path else message)


class ConfigError(TailguardError, ValueError):
    """A value given to tailguard (an argument, a flag, a field) is outside what it accepts.

    Also a ``ValueError``, so callers that caught ``ValueError`` keep working.
    """


class PolicyLoadError(TailguardError):
    """An ONNX policy could not be loaded or does not have the expected interface."""


@dataclass(frozen=True)
class EnvelopeProblem:
    """One problem found while validating an envelope file.

    Attributes:
        key_path: dotted path of the offending key, e.g. ``timing.latency_ns.p99``.
        expected: what the schema wants there.
        actual: what the file holds (repr, shortened).
        hint: how to fix it (may be empty).
    """

    key_path: str
    expected: str
    actual: str
    hint: str = ""

    def __str__(self) -> str:
        text = f"{self.key_path or '<root>'}: expected {self.expected}, found {self.actual}"
        return f"{text} ({self.hint})" if self.hint else text


class EnvelopeError(TailguardError):
    """An envelope failed validation; ``problems`` lists every problem found at once."""

    def __init__(
        self,
        problems: Sequence[EnvelopeProblem] | str,
        path: str | os.PathLike[str] | None = None,
    ) -> None:
        if isinstance(problems, str):
            self.problems: tuple[EnvelopeProblem, ...] = ()
            super().__init__(problems, path)
            return
        self.problems = tuple(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        n = len(self.problems)
        super().__init__(f"invalid envelope ({n} problem{'s' if n != 1 else ''}):\n{lines}", path)


class EnvelopeMismatchError(EnvelopeError):
    """A valid envelope does not fit what it is paired with (e.g. the loop's period).

    ``problems`` holds the one mismatch, with the expected and found values and a hint.
    """

    def __init__(
        self, problem: EnvelopeProblem, path: str | os.PathLike[str] | None = None
    ) -> None:
        TailguardError.__init__(self, f"the envelope does not fit: {problem}", path)
        self.problems = (problem,)


class HashMismatchError(TailguardError):
    """The policy file is not the one the envelope was written for."""


class MissingExtraError(TailguardError, ImportError):
    """An optional dependency (an install extra) is needed for this feature."""

    def __init__(self, package: str, extra: str, feature: str) -> None:
        super().__init__(
            f"{feature} needs the '{package}' package, which is not installed. "
            f"Install it with: pip install 'tailguard[{extra}]'"
        )
        self.package = package
        self.extra = extra


class IllegalTransitionError(TailguardError):
    """An event arrived that the guard's state machine does not accept in its state."""


class RecorderError(TailguardError):
    """A flight-recorder file could not be opened, written or read."""


class CheckpointError(TailguardError):
    """A training checkpoint has an unknown layout or could not be read safely."""


class ExportError(TailguardError):
    """Exporting a model to ONNX failed."""


class ParityError(ExportError):
    """The exported ONNX model does not reproduce the source model within tolerance."""


class ProfileError(TailguardError):
    """A timing-profile specification could not be parsed or is out of range."""


class MonitorConfigError(TailguardError):
    """The telemetry/monitor command channel is misconfigured (keys, endpoints, options)."""


class UnsupportedEnvError(TailguardError):
    """An environment the substep simulator cannot step (its reward or rules differ); the
    audit runs such an env at whole-step resolution instead."""

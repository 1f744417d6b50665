"""Command-line values every tailguard subcommand parses the same way, and the exit codes.

One validation layer for all CLIs (``tailguard``'s own subcommands, ``export``, ``replay``,
``firmware``, ``run``, ``monitor``, ``bench``): each flag gets an ``argparse`` ``type`` from
here that states its unit and range, so a bad value is a usage error naming the flag
(``argument --deadline-ms: expected a finite number of ms in (0, 60000], got 'inf'``)
before any work starts. Durations are also checked against the int64-nanosecond range the
runtime counts in; path flags are checked for "file vs directory, parent exists, writable"
at parse time, so a result is never lost after a long run because its file cannot be written.

Checks that need two flags at once raise :class:`UsageError` from the handler;
:func:`run_cli` turns it into exit code 2, a :class:`~tailguard.errors.TailguardError` into 1.

It lives at the package root (it imports only ``tailguard.errors``) so that the tools, the
monitor, the adapters and the firmware simulator may all use it.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tailguard.errors import ConfigError, TailguardError

__all__ = [
    "EXIT_CODES",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "INT64_MAX",
    "Integer",
    "Number",
    "UsageError",
    "duration",
    "endpoint",
    "input_file",
    "output_dir",
    "output_file",
    "port",
    "probability",
    "rate_hz",
    "require",
    "run_cli",
    "seed",
]

# ------------------------------------------------------------------------ exit codes

#: Finished; every check passed.
EXIT_OK = 0
#: A check failed (envelope verdict, parity, binding) or an input was refused: a file that
#: cannot be read or does not fit, an unreachable peer. The message says which and why.
EXIT_FAILED = 1
#: The command line is wrong: unknown flag, a value outside its range, contradictory flags.
#: Nothing ran.
EXIT_USAGE = 2
#: Interrupted by SIGINT (Ctrl-C) before finishing (128 + SIGINT). ``firmware`` and ``run``
#: treat SIGINT/SIGTERM as their normal way to stop and exit 0.
EXIT_INTERRUPTED = 130

#: The one table (the README's exit-code table is written from it). ``monitor`` and
#: ``certify`` report a verdict in 0/1/2 instead: 0 ok (pass), 1 warn, 2 fail (for
#: ``monitor`` also an input it cannot analyse).
EXIT_CODES: dict[int, str] = {
    EXIT_OK: "ok: finished, every check passed",
    EXIT_FAILED: "a check failed or an input was refused (the message says which and why)",
    EXIT_USAGE: "usage error: bad flag, value out of range, contradictory flags; nothing ran",
    EXIT_INTERRUPTED: "interrupted by SIGINT before finishing",
}

#: Largest integer the runtime's nanosecond counters hold.
INT64_MAX = (1 << 63) - 1

_NS_PER_UNIT = {"ns": 1.0, "us": 1e3, "ms": 1e6, "s": 1e9}


class UsageError(ConfigError):
    """The command line is wrong in a way one flag's parser cannot see (exit code 2).

    Args:
        message: what is wrong and how to fix it; name the flag(s).
    """


def _fmt(x: float) -> str:
    return f"{x:g}"


# --------------------------------------------------------------------------- numbers


class Number:
    """An ``argparse`` type for a finite real number with a unit and a range.

    Args:
        unit: the unit shown in messages (``ms``, ``Hz``, ``us``, ``MB``, ...). For the
            time units ``ns``/``us``/``ms``/``s`` the value must also fit in int64 ns.
        minimum: smallest accepted value (None: no bound).
        maximum: largest accepted value (None: no bound beyond the int64-ns range).
        min_open: ``minimum`` itself is refused (``> minimum`` instead of ``>=``).
        max_open: ``maximum`` itself is refused.
    """

    def __init__(
        self,
        unit: str,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
        min_open: bool = False,
        max_open: bool = False,
    ) -> None:
        ns = _NS_PER_UNIT.get(unit)
        # A positive duration must be at least 1 ns, or it rounds to a zero the runtime refuses.
        self._min_ns = 1.0 if ns is not None and min_open and minimum == 0.0 else None
        self._ns = ns or 1.0
        if ns is not None:
            cap = INT64_MAX / ns
            maximum = cap if maximum is None else min(maximum, cap)
        self.unit = unit
        self.minimum = minimum
        self.maximum = maximum
        self.min_open = min_open
        self.max_open = max_open
        self.__name__ = f"number of {unit}"  # argparse names the type in some messages

    def describe(self) -> str:
        """The accepted range in words, e.g. ``a finite number of ms in (0, 60000]``."""
        lo, hi = self.minimum, self.maximum
        unit = f" of {self.unit}" if self.unit else ""
        if lo is None and hi is None:
            return f"a finite number{unit}"
        if hi is None:
            return f"a finite number{unit} {'>' if self.min_open else '>='} {_fmt(lo or 0.0)}"
        left = "(" if self.min_open or lo is None else "["
        right = ")" if self.max_open else "]"
        low = "-inf" if lo is None else _fmt(lo)
        text = f"a finite number{unit} in {left}{low}, {_fmt(hi)}{right}"
        return text if self._min_ns is None else f"{text}, at least 1 ns"

    def check(self, value: float) -> bool:
        """Whether ``value`` is finite and in range."""
        if not math.isfinite(value):
            return False
        lo, hi = self.minimum, self.maximum
        if lo is not None and (value <= lo if self.min_open else value < lo):
            return False
        if self._min_ns is not None and value * self._ns < self._min_ns:
            return False
        if self.unit in _NS_PER_UNIT:
            scaled = value * self._ns  # a huge finite value overflows to inf here
            if not math.isfinite(scaled) or abs(round(scaled)) > INT64_MAX:
                return False  # the float cap can round up to 2**63
        return not (hi is not None and (value >= hi if self.max_open else value > hi))

    def __call__(self, text: str) -> float:
        try:
            value = float(text)
        except (TypeError, ValueError):
            value = math.nan
        if not self.check(value):
            raise argparse.ArgumentTypeError(f"expected {self.describe()}, got {text!r}")
        return value

    def __repr__(self) -> str:
        return f"Number({self.describe()!r})"


class Integer:
    """An ``argparse`` type for an integer in ``[minimum, maximum]`` (decimal digits only).

    Args:
        minimum: smallest accepted value.
        maximum: largest accepted value.
        unit: shown in messages (e.g. ``ticks``), may be empty.
    """

    def __init__(self, minimum: int, maximum: int, unit: str = "") -> None:
        self.minimum = minimum
        self.maximum = maximum
        self.unit = unit
        self.__name__ = "integer"

    def describe(self) -> str:
        """The accepted range in words."""
        unit = f" of {self.unit}" if self.unit else ""
        return f"an integer{unit} in {self.minimum}..{self.maximum}"

    def __call__(self, text: str) -> int:
        stripped = str(text).strip()
        digits = stripped[1:] if stripped[:1] in "+-" else stripped
        # int() would also take "1_000" and, for huge strings, spend seconds: refuse both.
        if not digits.isdigit() or not digits.isascii() or len(digits) > 20:
            raise argparse.ArgumentTypeError(f"expected {self.describe()}, got {text!r}")
        value = int(stripped)
        if not self.minimum <= value <= self.maximum:
            raise argparse.ArgumentTypeError(f"expected {self.describe()}, got {text!r}")
        return value

    def __repr__(self) -> str:
        return f"Integer({self.describe()!r})"


def duration(unit: str, *, maximum: float | None = None, allow_zero: bool = False) -> Number:
    """A duration flag in ``unit`` (``ns``/``us``/``ms``/``s``): positive (or >= 0), finite,
    at most ``maximum`` and within the int64-ns range."""
    return Number(unit, minimum=0.0, maximum=maximum, min_open=not allow_zero)


def rate_hz(maximum: float, minimum: float = 1e-6) -> Number:
    """A rate flag in Hz: finite, in ``[minimum, maximum]``."""
    return Number("Hz", minimum=minimum, maximum=maximum)


def probability() -> Number:
    """A probability flag: finite, in ``[0, 1]``."""
    return Number("", minimum=0.0, maximum=1.0)


def seed() -> Integer:
    """A seed flag: an integer in ``0..2**32 - 1`` (what every generator accepts)."""
    return Integer(0, (1 << 32) - 1)


def port() -> Integer:
    """A TCP port flag: ``1..65535``."""
    return Integer(1, 65535)


def require(kind: Number | Integer, value: object, name: str) -> None:
    """The library-side twin of a flag parser: the same range, checked on a Python value.

    Args:
        kind: the parser whose range applies (e.g. ``duration("s", maximum=3600)``).
        value: the value a caller passed.
        name: the argument's name, for the message.

    Raises:
        ConfigError: ``value`` is not a number (an integer for :class:`Integer`) in range.
    """
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if isinstance(kind, Integer):
        ok = ok and isinstance(value, int) and kind.minimum <= value <= kind.maximum
    else:
        ok = ok and kind.check(float(value))  # type: ignore[arg-type]
    if not ok:
        raise ConfigError(f"{name} must be {kind.describe()}, got {value!r}")


# ------------------------------------------------------------------------- endpoints


def endpoint(*, bind: bool) -> Callable[[str], str]:
    """An ``argparse`` type for a ZMQ endpoint: ``tcp://HOST:PORT``, ``ipc://PATH`` or
    ``inproc://NAME``.

    Only the form is checked here; whether a bind address must be loopback is the binding
    code's rule (:func:`tailguard.protocol.endpoints.require_local_endpoint`).

    Args:
        bind: the endpoint is bound (port ``*`` = any free port, host ``*`` allowed), not
            connected to.
    """
    example = "tcp://127.0.0.1:5555"

    def parse(text: str) -> str:
        expected = (
            f"expected tcp://HOST:PORT, ipc://PATH or inproc://NAME (e.g. {example}), got {text!r}"
        )
        if not isinstance(text, str) or len(text) > 1024 or not text.isprintable():
            raise argparse.ArgumentTypeError(expected)
        for scheme in ("ipc://", "inproc://"):
            if text.startswith(scheme):
                if len(text) == len(scheme):
                    raise argparse.ArgumentTypeError(expected)
                return text
        if not text.startswith("tcp://"):
            raise argparse.ArgumentTypeError(expected)
        host, sep, port_text = text[len("tcp://") :].rpartition(":")
        if not sep or not host or any(c in host for c in "/ ?#@"):
            raise argparse.ArgumentTypeError(expected)
        if host == "*" and not bind:
            raise argparse.ArgumentTypeError(f"cannot connect to host '*'; {expected}")
        if port_text == "*" and bind:
            return text
        if (
            not (port_text.isascii() and port_text.isdigit())
            or not 1 <= int(port_text[:6]) <= 65535
        ):
            raise argparse.ArgumentTypeError(
                f"port {port_text!r} is not a TCP port (1..65535{', or *' if bind else ''}); "
                f"{expected}"
            )
        return text

    parse.__name__ = "endpoint"
    return parse


# ----------------------------------------------------------------------------- paths


def output_file(text: str) -> Path:
    """An ``argparse`` type for a file to write: not a directory, its directory exists and
    is writable, and the file (if present) is writable."""
    path = Path(text)
    if not str(text):
        raise argparse.ArgumentTypeError("expected a file path, got ''")
    if path.is_dir():
        raise argparse.ArgumentTypeError(
            f"{text} is a directory; expected a file path (e.g. {path / 'out.json'})"
        )
    parent = path.parent
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(
            f"cannot write {text}: directory {parent} does not exist (create it first)"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"cannot write {text}: directory {parent} is read-only")
    if path.exists() and not os.access(path, os.W_OK):
        raise argparse.ArgumentTypeError(f"cannot write {text}: the file is read-only")
    return path


def output_dir(text: str) -> Path:
    """An ``argparse`` type for a directory to write into (created later if missing): not a
    file, and it (or its nearest existing parent) is a writable directory."""
    path = Path(text)
    if not str(text):
        raise argparse.ArgumentTypeError("expected a directory path, got ''")
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file; expected a directory")
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise argparse.ArgumentTypeError(
            f"cannot create directory {text}: {probe} is a file, not a directory"
        )
    if not os.access(probe, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"cannot write in {text}: {probe} is read-only")
    return path


def input_file(text: str) -> Path:
    """An ``argparse`` type for a file to read: it exists and is a regular file."""
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text} is not a regular file")
    return path


# -------------------------------------------------------------------------- dispatch


def run_cli(
    parser: argparse.ArgumentParser,
    argv: Sequence[str],
    handler_attr: str = "func",
    stderr: Any = None,
) -> int:
    """Parse ``argv`` and run the chosen handler; returns the exit code (never raises it).

    ``argparse`` errors (and ``--help``) return their code instead of raising
    ``SystemExit``; :class:`UsageError` gives :data:`EXIT_USAGE`, any other
    :class:`~tailguard.errors.TailguardError` or an ``OSError`` gives :data:`EXIT_FAILED`,
    ``KeyboardInterrupt`` :data:`EXIT_INTERRUPTED`, each with a one-line message.

    Args:
        parser: the program's parser.
        argv: the arguments (without the program name).
        handler_attr: the namespace attribute that holds ``handler(args) -> int``.
        stderr: where messages go (default ``sys.stderr``).
    """
    err = sys.stderr if stderr is None else stderr
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    func = getattr(args, handler_attr, None)
    if func is None:
        command = getattr(args, "command", "?")
        err.write(f"{parser.prog}: error: '{command}' is not available in this installation\n")
        return EXIT_USAGE
    try:
        return int(func(args))
    except UsageError as exc:
        err.write(f"{parser.prog}: error: {exc}\n")
        return EXIT_USAGE
    except TailguardError as exc:
        err.write(f"error: {exc}\n")
        return EXIT_FAILED
    except OSError as exc:  # a disk full or a peer gone while writing results
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        err.write(f"error: {exc.strerror or exc}{where}\n")
        return EXIT_FAILED
    except KeyboardInterrupt:
        err.write(f"{parser.prog}: interrupted\n")
        return EXIT_INTERRUPTED

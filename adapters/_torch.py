"""Lazy torch import (one clear message when the ``export`` extra is missing) and the one safe
``torch.load`` every checkpoint reader goes through."""

from __future__ import annotations

import io
import os
import pickle
import re
from pathlib import Path
from typing import Any

from tailguard.errors import CheckpointError, MissingExtraError

__all__ = ["load_weights_only", "require_onnx", "require_torch"]


def require_torch(feature: str) -> Any:
    """Return the ``torch`` module, or raise ``MissingExtraError`` naming ``feature``."""
    try:
        import torch
    except ImportError as exc:
        raise MissingExtraError("torch", "export", feature) from exc
    return torch


def require_onnx(feature: str) -> Any:
    """Return the ``onnx`` module, or raise ``MissingExtraError`` naming ``feature``."""
    try:
        import onnx
    except ImportError as exc:
        raise MissingExtraError("onnx", "export", feature) from exc
    return onnx


# torch's refusal text names the offending global in one of these forms (2.4 → 2.13).
_GLOBAL_PATTERNS = (
    re.compile(r"Unsupported global: GLOBAL (\S+?)\.? was not an allowed global"),
    re.compile(r"Unsupported global: GLOBAL (\S+)"),
    re.compile(r"unsupported GLOBAL (\S+) whose module"),
    re.compile(r"GLOBAL (\S+)"),
)


def load_weights_only(source: str | os.PathLike[str] | io.BytesIO, path: Path, what: str) -> Any:
    """``torch.load(weights_only=True)`` on CPU, every failure a ``CheckpointError``.

    torch's own refusal message advises re-running with ``weights_only=False``, which would
    execute the file's code; that advice is never passed on. Only the name of the refused
    global is.

    Args:
        source: a path or an in-memory file.
        path: the file to name in errors.
        what: what is being read, e.g. ``"the checkpoint"`` or ``"policy.pth"``.

    Raises:
        CheckpointError: unreadable, truncated, not a torch file, or holding pickled objects
            other than tensors and plain containers (refused, never executed).
    """
    torch = require_torch("Reading torch checkpoints")
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        found = next((m.group(1) for p in _GLOBAL_PATTERNS if (m := p.search(text))), None)
        if found is None:
            reason = re.search(r"WeightsUnpickler error: ([^\n]*)", text)
            first = reason.group(1) if reason else (text.splitlines() or [type(exc).__name__])[0]
            raise CheckpointError(
                f"cannot read {what} (truncated, corrupt or not a torch file): {first}", path
            ) from None
        raise CheckpointError(
            f"refused to load {what}: it contains pickled Python objects beyond tensors and "
            f"plain containers (found {found.rstrip('.')}), which could execute code when "
            "loaded; tailguard never runs them. Re-save only the state dicts (tensors, dicts, "
            "numbers, strings)",
            path,
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(
            f"cannot read {what} (truncated, corrupt or not a torch file): {first}", path
        ) from None

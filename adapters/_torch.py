"""Lazy torch import with the one clear message when the ``export`` extra is missing."""

from __future__ import annotations

from typing import Any

from guard.errors import MissingExtraError

__all__ = ["require_onnx", "require_torch"]


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

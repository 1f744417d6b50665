"""``tailguard export rsl-rl``: an RSL-RL checkpoint of any format to a self-contained ONNX file."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tailguard.adapters.export import (
    DEFAULT_TOLERANCE,
    METADATA_PREFIX,
    ExportResult,
    RecurrentSpec,
    export_module,
)
from tailguard.adapters.rsl_rl_checkpoint import build_actor_module, load_rsl_rl_checkpoint

__all__ = ["export_rsl_rl"]


def export_rsl_rl(
    checkpoint: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    activation: str = "elu",
    hidden_sizes: Sequence[int] | None = None,
    observations: np.ndarray | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    exporter: str = "auto",
) -> ExportResult:
    """Export the deterministic actor (mean action, normalizer folded in) of a checkpoint.

    Args:
        checkpoint: the RSL-RL ``.pt`` file (format 1.x to 5.x, detected).
        output: the ``.onnx`` file to write.
        activation: MLP activation (not stored in checkpoints; rsl-rl's default is ELU).
        hidden_sizes: hidden sizes the checkpoint must have (checked, not needed).
        observations: recorded observations ``[n, obs_dim]`` for the parity check.
        tolerance: parity tolerance (largest scaled difference, see ``DEFAULT_TOLERANCE``).
        exporter: ``"auto"``, ``"dynamo"`` or ``"legacy"`` (see ``export_module``).

    Returns:
        The export result; metadata records ``tailguard.source_format`` (``rsl-rl``),
        ``source_version``, sizes, activation, hidden sizes, normalizer, source sha256 and
        the parity result.

    Raises:
        CheckpointError: unreadable or unrecognised checkpoint.
        ExportError: the export failed.
        ParityError: the ONNX model does not reproduce the checkpoint's actor.
    """
    actor = load_rsl_rl_checkpoint(checkpoint, activation=activation, hidden_sizes=hidden_sizes)
    spec = actor.spec
    module = build_actor_module(actor)
    recurrent = None
    if spec.recurrent != "none":
        recurrent = RecurrentSpec(spec.recurrent, spec.rnn_num_layers, spec.rnn_hidden_size)
    p = METADATA_PREFIX
    metadata = {
        f"{p}source_format": "rsl-rl",
        f"{p}source_version": spec.format_version,
        f"{p}source_file": Path(checkpoint).name,
        f"{p}source_sha256": spec.sha256,
        f"{p}obs_dim": str(spec.obs_dim),
        f"{p}action_dim": str(spec.action_dim),
        f"{p}activation": spec.activation,
        f"{p}hidden_sizes": ",".join(str(h) for h in spec.hidden_sizes),
        f"{p}obs_normalizer": "folded" if spec.normalizer else "none",
        f"{p}noise_parameter": spec.std_key,
    }
    center = None if actor.obs_mean is None else actor.obs_mean.detach().cpu().numpy()
    scale = None if actor.obs_std is None else actor.obs_std.detach().cpu().numpy()
    return export_module(
        module,
        spec.obs_dim,
        output,
        recurrent=recurrent,
        metadata=metadata,
        observations=observations,
        tolerance=tolerance,
        obs_center=center,
        obs_scale=scale,
        exporter=exporter,
    )

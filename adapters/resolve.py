"""Turn what a user passes as ``--policy`` into an ONNX file: THE one resolution.

- ``.onnx``: used as is;
- ``.pt``: an RSL-RL checkpoint (every supported format), exported with
  ``tailguard.adapters`` and its parity check;
- ``.zip``: a Stable-Baselines3 model (PPO, A2C, SAC, TD3), optionally with its
  ``VecNormalize`` statistics folded in, exported without torch
  (``tailguard.adapters.sb3_native``, parity against a float64 numpy reference); only a model
  that exporter cannot represent (an activation with no one-op ONNX form: gelu, swish, mish)
  goes through torch's exporter, and the source block says so (``exporter``,
  ``exporter_fallback``).

Anything else is refused (never silently loads nothing). ``replay``, ``audit`` and ``certify``
all take their ``--policy`` through this function.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tailguard.errors import CheckpointError, ConfigError

__all__ = ["ResolvedPolicy", "resolve_policy"]


@dataclass(frozen=True)
class ResolvedPolicy:
    """An ONNX policy ready for the audit, and where it came from.

    Attributes:
        onnx_path: the ONNX file the audit runs.
        sha256: sha256 of the ONNX file (what an envelope binds to).
        source: ``{"format": "onnx" | "rsl-rl" | "sb3", "path", "sha256", "parity": {...}}``.
    """

    onnx_path: Path
    sha256: str
    source: dict[str, Any] = field(default_factory=dict)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def resolve_policy(
    policy: str | os.PathLike[str],
    workdir: str | os.PathLike[str],
    *,
    vecnormalize: str | os.PathLike[str] | None = None,
    activation: str | None = None,
) -> ResolvedPolicy:
    """Resolve ``policy`` to an ONNX file, exporting a checkpoint into ``workdir``.

    Args:
        policy: ``.onnx``, RSL-RL ``.pt`` or SB3 ``.zip``.
        workdir: where an exported ``policy.onnx`` is written.
        vecnormalize: SB3 ``VecNormalize`` file (only with a ``.zip``).
        activation: MLP activation override for checkpoints (RSL-RL default ``elu``).

    Raises:
        ConfigError: missing file, unknown suffix, --vecnormalize without an SB3 model.
        CheckpointError, ExportError, ParityError: the export failed or parity did not hold.
    """
    src = Path(policy)
    if not src.is_file():
        raise ConfigError("policy file not found; pass an .onnx, RSL-RL .pt or SB3 .zip", src)
    suffix = src.suffix.lower()
    if vecnormalize is not None and suffix != ".zip":
        raise ConfigError("--vecnormalize goes with an SB3 .zip model only", src)
    if suffix == ".onnx":
        sha = _sha256(src)
        return ResolvedPolicy(src, sha, {"format": "onnx", "path": str(src), "sha256": sha})
    if suffix not in (".pt", ".zip"):
        raise CheckpointError(
            f"unrecognised policy format '{suffix or '(no suffix)'}'; valid choices are .onnx, "
            "an RSL-RL .pt checkpoint or an SB3 .zip model",
            src,
        )
    out = Path(workdir) / "policy.onnx"
    out.parent.mkdir(parents=True, exist_ok=True)
    exporter, fallback = "torch", ""
    if suffix == ".pt":
        from tailguard.adapters.rsl_rl_export import export_rsl_rl

        result = export_rsl_rl(src, out, activation=activation or "elu")
        fmt = "rsl-rl"
    else:
        from tailguard.adapters.sb3_native import NativeExportUnsupported, export_sb3_native

        fmt = "sb3"
        try:
            result = export_sb3_native(src, out, vecnormalize=vecnormalize, activation=activation)
            exporter = "native"
        except NativeExportUnsupported as exc:
            from tailguard.adapters.sb3 import export_sb3

            result = export_sb3(src, out, vecnormalize=vecnormalize, activation=activation)
            exporter = "torch"
            fallback = f"the torch-free exporter cannot represent this model: {exc.message}"
    parity = result.parity
    sha = _sha256(result.path)
    source: dict[str, Any] = {
        "format": fmt,
        "path": str(src),
        "sha256": _sha256(src),
        "vecnormalize": None if vecnormalize is None else str(vecnormalize),
        "exported_onnx": str(result.path),
        "parity": parity.record(),
    }
    if fmt == "sb3":
        source["exporter"] = exporter
        if exporter == "torch":
            source["exporter_fallback"] = fallback
    return ResolvedPolicy(result.path, sha, source)

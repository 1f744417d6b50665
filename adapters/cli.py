"""``tailguard export``: checkpoints → a self-contained, parity-checked ONNX file.

Subcommands::

    tailguard export rsl-rl CKPT.pt -o policy.onnx [--activation elu] [--hidden-sizes 64 64]
    tailguard export sb3 MODEL.zip -o policy.onnx [--vecnormalize vecnormalize.pkl]

Exit codes (as the ``tailguard`` script): 0 exported and parity passed; 1 input refused
(unknown or unreadable checkpoint, export failure) or parity failed (nothing is written);
2 usage error. Also runnable as ``python -m tailguard.adapters.cli export ...``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tailguard import cli_args as ca

__all__ = ["main", "register"]

_HIDDEN_SIZE = ca.Integer(1, 1 << 16, "units")


def _common(parser: argparse.ArgumentParser, native: bool = False) -> None:
    parser.add_argument(
        "-o", "--output", type=ca.output_file, required=True, help="the .onnx to write"
    )
    parser.add_argument(
        "--observations",
        type=Path,
        default=None,
        help="recorded observations (.npy, [n, obs_dim]) added to the parity check",
    )
    parser.add_argument(
        "--tolerance",
        type=ca.Number("", minimum=0.0, maximum=1.0, min_open=True),
        default=None,
        help=(
            "largest |torch - onnxruntime| / max(1, |torch|) accepted by the parity check "
            "(absolute up to magnitude 1, relative above), (0, 1] (default 1e-5)"
        ),
    )
    parser.add_argument(
        "--exporter",
        choices=["auto", "dynamo", "legacy", *(["native"] if native else [])],
        default="auto",
        help="torch exporter (default auto: dynamo if onnxscript is installed, else legacy); "
        "both give one self-contained file"
        + (
            "; native: no torch, the graph written directly, parity against a float64 numpy "
            "forward pass (what audit/certify/replay use for a .zip)"
            if native
            else ""
        ),
    )


def register(subparsers: Any) -> None:
    """Add the ``export`` command (with ``rsl-rl`` and ``sb3``) to an argparse subparsers."""
    export = subparsers.add_parser(
        "export",
        help="export a checkpoint (RSL-RL, SB3) to a checked, self-contained ONNX file",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    kinds = export.add_subparsers(dest="export_kind", required=True, metavar="SOURCE")
    rsl = kinds.add_parser(
        "rsl-rl",
        help="an RSL-RL checkpoint (formats 1.x to 5.x, detected)",
        description="Export the deterministic actor of an RSL-RL checkpoint.",
    )
    rsl.add_argument("checkpoint", type=Path, help="the .pt checkpoint")
    _common(rsl)
    rsl.add_argument(
        "--activation",
        default="elu",
        help="MLP activation (not stored in checkpoints; default elu, rsl-rl's default)",
    )
    rsl.add_argument(
        "--hidden-sizes",
        type=_HIDDEN_SIZE,
        nargs="+",
        default=None,
        help="expected MLP hidden sizes (inferred from the weights; checked if given)",
    )
    rsl.set_defaults(func=_run_rsl_rl)
    sb3 = kinds.add_parser(
        "sb3",
        help="a Stable-Baselines3 PPO/A2C/SAC/TD3 model zip",
        description="Export the deterministic policy of a Stable-Baselines3 model.",
    )
    sb3.add_argument("model", type=Path, help="the .zip written by model.save")
    _common(sb3, native=True)
    sb3.add_argument("--vecnormalize", type=Path, default=None, help="VecNormalize .pkl to fold in")
    sb3.add_argument(
        "--activation", default=None, help="override the actor activation (default: from the zip)"
    )
    sb3.add_argument(
        "--hidden-sizes",
        type=_HIDDEN_SIZE,
        nargs="+",
        default=None,
        help="expected hidden sizes (checked)",
    )
    sb3.set_defaults(func=_run_sb3)


def _load_observations(path: Path | None) -> Any:
    if path is None:
        return None
    import numpy as np

    from tailguard.errors import ExportError

    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ExportError(f"cannot read recorded observations: {exc}", path) from None


def _report(result: Any) -> int:
    meta = result.metadata
    print(
        f"exported {meta.get('tailguard.source_format')} {meta.get('tailguard.source_version')} "
        f"-> {result.path} ({result.size_bytes} bytes, single file)"
    )
    print(
        f"  obs_dim {meta.get('tailguard.obs_dim')}, action_dim "
        f"{meta.get('tailguard.action_dim')}, hidden sizes {meta.get('tailguard.hidden_sizes')}, "
        f"activation {meta.get('tailguard.activation')}, recurrent "
        f"{meta.get('tailguard.recurrent')}, normalizer {meta.get('tailguard.obs_normalizer')}"
    )
    print(f"  {result.parity.summary()}")
    return 0


def _shared_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments every exporter takes, from the shared flags."""
    kwargs = {
        "activation": args.activation,
        "hidden_sizes": args.hidden_sizes,
        "observations": _load_observations(args.observations),
        "exporter": args.exporter,
    }
    if args.tolerance is not None:  # else each exporter's DEFAULT_TOLERANCE
        kwargs["tolerance"] = args.tolerance
    return kwargs


def _run_rsl_rl(args: argparse.Namespace) -> int:
    from tailguard.adapters.rsl_rl_export import export_rsl_rl

    return _report(export_rsl_rl(args.checkpoint, args.output, **_shared_kwargs(args)))


def _run_sb3(args: argparse.Namespace) -> int:
    kwargs = _shared_kwargs(args)
    if kwargs["exporter"] == "native":
        from tailguard.adapters.sb3_native import export_sb3_native

        del kwargs["exporter"]
        return _report(
            export_sb3_native(args.model, args.output, vecnormalize=args.vecnormalize, **kwargs)
        )
    from tailguard.adapters.sb3 import export_sb3

    return _report(export_sb3(args.model, args.output, vecnormalize=args.vecnormalize, **kwargs))


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry point (``python -m tailguard.adapters.cli export ...``); returns the exit
    code."""
    parser = argparse.ArgumentParser(prog="python -m tailguard.adapters.cli")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    register(sub)
    return ca.run_cli(parser, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())

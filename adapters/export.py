"""Export a torch policy to one self-contained ONNX file and check parity with onnxruntime.

The exported model has RSL-RL tensor names (``obs`` → ``actions``; recurrent state
``h_in``/``c_in`` → ``h_out``/``c_out`` shaped ``[num_layers, batch, hidden]``), a dynamic
batch axis and float32 tensors. torch's default exporter may write weights to a side
``.onnx.data`` file; this module always folds them into the single ``.onnx`` file and checks
that no tensor refers to external data.

After export, a parity check runs the torch module and the ONNX model (through onnxruntime) on
random observations and on recorded ones when given (recurrent policies: sequences of at least
10 steps with the state carried) and fails when some element differs by more than
``tolerance`` times ``max(1, |reference|)``: an absolute bound for outputs of magnitude up to 1
and a relative one above, since float32 rounding grows with the magnitude of the output. Its
result is stored in the metadata (``tailguard.parity_*``). The file is written atomically and
only when parity passes.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tailguard.adapters._torch import require_onnx, require_torch
from tailguard.errors import ExportError, MissingExtraError, ParityError

__all__ = [
    "DEFAULT_TOLERANCE",
    "MAX_IR_VERSION",
    "METADATA_PREFIX",
    "ExportResult",
    "ParityReport",
    "RecurrentSpec",
    "check_parity",
    "export_module",
    "exporter_candidates",
    "parity_batches",
    "parity_difference",
    "resolve_exporter",
    "write_atomic",
]

DEFAULT_TOLERANCE = 1e-5
"""Largest accepted difference between reference and onnxruntime outputs, scaled per element.

An element's difference is divided by ``max(1, |reference|)``: absolute for outputs of magnitude
up to 1, relative above. float32 keeps about 7 significant digits, so a correct export of a
policy whose outputs reach 30 (an unsquashed linear controller with large gains) already differs
by ~1e-5 in absolute terms; a wrong export (a missing normalizer, a transposed weight) differs by
orders of magnitude more on either scale.
"""

MAX_IR_VERSION = 10
"""IR version written (older onnxruntime builds reject newer IR versions)."""

METADATA_PREFIX = "tailguard."


@dataclass(frozen=True)
class RecurrentSpec:
    """Recurrent state of an RSL-RL style policy.

    Attributes:
        rnn_type: ``"lstm"`` (inputs ``obs, h_in, c_in``) or ``"gru"`` (``obs, h_in``).
        num_layers: RNN layers.
        hidden_size: RNN hidden size.
    """

    rnn_type: str
    num_layers: int
    hidden_size: int

    def __post_init__(self) -> None:
        if self.rnn_type not in ("lstm", "gru"):
            raise ExportError(
                f"unknown recurrent type '{self.rnn_type}'; valid choices are ['gru', 'lstm']"
            )
        if self.num_layers < 1 or self.hidden_size < 1:
            raise ExportError(
                f"recurrent state needs num_layers >= 1 and hidden_size >= 1, got "
                f"{self.num_layers}, {self.hidden_size}"
            )

    @property
    def state_names(self) -> tuple[tuple[str, str], ...]:
        """(input, output) names of the state tensors."""
        return (
            (("h_in", "h_out"), ("c_in", "c_out"))
            if self.rnn_type == "lstm"
            else (("h_in", "h_out"),)
        )


@dataclass(frozen=True)
class ParityReport:
    """Result of running the source module and the ONNX model on the same inputs.

    Attributes:
        max_abs_diff: largest absolute difference over every action (and state) element.
        max_scaled_diff: largest difference divided by ``max(1, |reference element|)``, the
            figure parity is judged on (see :data:`DEFAULT_TOLERANCE`).
        tolerance: the threshold ``max_scaled_diff`` was compared against.
        num_observations: observations evaluated (sum over batches and steps).
        sequence_steps: steps per sequence for recurrent policies (0 if feed-forward).
        recorded_observations: how many of them came from a recording.
        passed: ``max_scaled_diff <= tolerance``.
        reference: what the ONNX model was compared against: ``"torch"`` (the source
            module) or ``"numpy-float64"`` (an independent float64 forward pass of the same
            weights, for models exported without torch).
    """

    max_abs_diff: float
    max_scaled_diff: float
    tolerance: float
    num_observations: int
    sequence_steps: int
    recorded_observations: int
    passed: bool
    reference: str = "torch"

    def summary(self) -> str:
        """One line for humans, e.g. ``parity ok: max |torch - onnx| = 2.4e-07 …``."""
        verdict = "ok" if self.passed else "FAILED"
        seq = f", sequences of {self.sequence_steps} steps" if self.sequence_steps else ""
        return (
            f"parity {verdict}: max |{self.reference} - onnxruntime| = {self.max_abs_diff:.3g}, "
            f"scaled by max(1, |{self.reference}|) {self.max_scaled_diff:.3g} "
            f"(tolerance {self.tolerance:g}) over {self.num_observations} observations "
            f"({self.recorded_observations} recorded{seq})"
        )

    def record(self) -> dict[str, Any]:
        """The JSON record provenance files keep (a resolved checkpoint, a hardened export)."""
        return {
            "passed": self.passed,
            "max_abs_diff": self.max_abs_diff,
            "max_scaled_diff": self.max_scaled_diff,
            "tolerance": self.tolerance,
            "observations": self.num_observations,
            "reference": self.reference,
        }

    def metadata(self) -> dict[str, str]:
        """The ``tailguard.parity_*`` metadata entries."""
        return {
            f"{METADATA_PREFIX}parity_max_abs_diff": repr(self.max_abs_diff),
            f"{METADATA_PREFIX}parity_max_scaled_diff": repr(self.max_scaled_diff),
            f"{METADATA_PREFIX}parity_tolerance": repr(self.tolerance),
            f"{METADATA_PREFIX}parity_observations": str(self.num_observations),
            f"{METADATA_PREFIX}parity_passed": "true" if self.passed else "false",
            f"{METADATA_PREFIX}parity_reference": self.reference,
        }


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_module` wrote.

    Attributes:
        path: the self-contained ``.onnx`` file.
        parity: the parity check result.
        metadata: every metadata property written to the file.
        size_bytes: size of the file in bytes.
    """

    path: Path
    parity: ParityReport
    metadata: Mapping[str, str]
    size_bytes: int


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _ort_session(model_bytes: bytes) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises several unrelated types
        raise ExportError(f"onnxruntime cannot load the exported model: {exc}") from None


def resolve_exporter(exporter: str) -> str:
    """The first exporter :func:`export_module` tries for ``exporter``; validates the name.

    Raises:
        ExportError: an unknown exporter name.
        MissingExtraError: ``dynamo`` requested without onnxscript installed.
    """
    return exporter_candidates(exporter)[0]


def exporter_candidates(exporter: str) -> tuple[str, ...]:
    """The exporters :func:`export_module` tries, in order, for ``exporter``.

    ``auto`` tries the TorchScript (``legacy``) exporter first and torch's dynamo exporter
    (with onnxscript installed) when that one fails: for the small MLP and recurrent
    policies this project exports, legacy takes ~0.02 s against ~4 s for dynamo (plus ~3 s
    of imports), which is most of an on-the-fly ``audit --policy model.zip``; the parity
    check judges the result whichever exporter wrote it.

    Raises:
        ExportError: an unknown exporter name.
        MissingExtraError: ``dynamo`` requested without onnxscript installed.
    """
    import importlib.util

    if exporter not in ("auto", "dynamo", "legacy"):
        raise ExportError(
            f"unknown exporter '{exporter}'; valid choices are ['auto', 'dynamo', 'legacy']"
        )
    has_onnxscript = importlib.util.find_spec("onnxscript") is not None
    if exporter == "auto":
        return ("legacy", "dynamo") if has_onnxscript else ("legacy",)
    if exporter == "dynamo" and not has_onnxscript:
        raise MissingExtraError("onnxscript", "export", "torch's dynamo ONNX exporter")
    return (exporter,)


def _torch_export(
    module: Any,
    obs_dim: int,
    recurrent: RecurrentSpec | None,
    target: Path,
    exporter: str,
    opset: int,
) -> None:
    torch = require_torch("ONNX export")
    inputs: list[Any] = [torch.zeros(2, obs_dim)]
    input_names = ["obs"]
    output_names = ["actions"]
    if recurrent is not None:
        for in_name, out_name in recurrent.state_names:
            inputs.append(torch.zeros(recurrent.num_layers, 2, recurrent.hidden_size))
            input_names.append(in_name)
            output_names.append(out_name)
    kwargs: dict[str, Any] = {
        "input_names": input_names,
        "output_names": output_names,
        "opset_version": opset,
    }
    if exporter == "dynamo":
        batch = torch.export.Dim("batch", min=1)
        shapes: list[dict[int, Any]] = [{0: batch}]
        shapes += [{1: batch} for _ in input_names[1:]]
        kwargs.update(dynamo=True, dynamic_shapes=tuple(shapes), external_data=False)
        kwargs["verbose"] = False
    elif exporter == "legacy":
        axes = {"obs": {0: "batch"}, "actions": {0: "batch"}}
        for name in input_names[1:] + output_names[1:]:
            axes[name] = {1: "batch"}
        kwargs.update(dynamo=False, dynamic_axes=axes)
    else:  # pragma: no cover - resolve_exporter validated the name
        raise ExportError(f"unknown exporter '{exporter}'")
    sink = io.StringIO()
    torch_logger = logging.getLogger("torch")
    level = torch_logger.level
    try:
        torch_logger.setLevel(logging.ERROR)
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(sink),
            contextlib.redirect_stderr(sink),
            torch.no_grad(),
        ):
            warnings.simplefilter("ignore")
            torch.onnx.export(module, tuple(inputs), str(target), **kwargs)
    except ExportError:
        raise
    except Exception as exc:  # torch's exporters raise many types
        raise ExportError(f"torch.onnx.export failed ({exporter} exporter): {exc}") from None
    finally:
        torch_logger.setLevel(level)


def _strip_build_traces(graph: Any) -> None:
    """Drop per-node doc strings and metadata (recursively, subgraphs included).

    torch's exporter stores the Python stack trace of every node there, with absolute
    paths of the machine that exported it; a shipped model must not carry them.
    """
    for node in graph.node:
        node.doc_string = ""
        del node.metadata_props[:]
        for attr in node.attribute:
            if attr.HasField("g"):
                _strip_build_traces(attr.g)
            for sub in attr.graphs:
                _strip_build_traces(sub)
    graph.doc_string = ""


def _fold_to_single_file(target: Path, metadata: Mapping[str, str]) -> Any:
    """Load the exported model with any external data inlined, set IR version and metadata."""
    onnx = require_onnx("ONNX export")
    from onnx.external_data_helper import uses_external_data

    try:
        model = onnx.load(str(target), load_external_data=True)
    except Exception as exc:  # onnx raises several types
        raise ExportError(f"cannot read back the exported model: {exc}") from None
    for tensor in model.graph.initializer:
        if uses_external_data(tensor):
            raise ExportError(f"initializer '{tensor.name}' still refers to external data")
    model.ir_version = min(int(model.ir_version), MAX_IR_VERSION)
    _strip_build_traces(model.graph)
    existing = {p.key for p in model.metadata_props}
    for key, value in metadata.items():
        if key in existing:
            continue
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.producer_name = model.producer_name or "tailguard"
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        raise ExportError(f"the exported model does not pass onnx.checker: {exc}") from None
    return model


def _random_observations(
    obs_dim: int, count: int, rng: np.random.Generator, center: Any, scale: Any
) -> np.ndarray:
    base = rng.standard_normal((count, obs_dim))
    c = np.zeros(obs_dim) if center is None else np.asarray(center, dtype=np.float64).reshape(-1)
    s = np.ones(obs_dim) if scale is None else np.asarray(scale, dtype=np.float64).reshape(-1)
    return (base * s + c).astype(np.float32)


def _validated_observations(observations: Any, obs_dim: int) -> np.ndarray | None:
    if observations is None:
        return None
    recorded = np.asarray(observations, dtype=np.float32)
    if recorded.ndim != 2 or recorded.shape[1] != obs_dim or recorded.shape[0] == 0:
        raise ExportError(
            f"recorded observations have shape {list(recorded.shape)}; expected "
            f"[n, {obs_dim}] with n >= 1"
        )
    if not np.all(np.isfinite(recorded)):
        raise ExportError("recorded observations contain NaN or Inf")
    return recorded


def parity_difference(reference: np.ndarray, got: np.ndarray) -> tuple[float, float]:
    """Largest absolute and largest scaled difference between two outputs of one shape.

    The scaled difference divides each element's by ``max(1, |reference|)`` (see
    :data:`DEFAULT_TOLERANCE`). A non-finite element anywhere makes both ``inf``.
    """
    ref = np.asarray(reference, np.float64)
    diff = np.abs(np.asarray(got, np.float64) - ref)
    if diff.size == 0:
        return 0.0, 0.0
    if not np.all(np.isfinite(diff)):
        return float("inf"), float("inf")
    scaled = diff / np.maximum(1.0, np.abs(ref))
    return float(np.max(diff)), float(np.max(scaled))


def parity_batches(
    obs_dim: int,
    *,
    observations: np.ndarray | None = None,
    seed: int = 0,
    obs_center: Any = None,
    obs_scale: Any = None,
) -> list[np.ndarray]:
    """The feed-forward parity inputs: 64 random observations, a batch of 1, the recorded ones.

    :func:`check_parity` and the torch-free SB3 exporter evaluate exactly these batches.

    Raises:
        ExportError: recorded observations of the wrong shape or non-finite.
    """
    rng = np.random.default_rng(seed)
    recorded = _validated_observations(observations, obs_dim)
    batches = [_random_observations(obs_dim, 64, rng, obs_center, obs_scale)]
    batches.append(batches[0][:1].copy())
    if recorded is not None:
        batches.append(recorded)
    return [np.ascontiguousarray(b) for b in batches]


def check_parity(
    module: Any,
    session: Any,
    obs_dim: int,
    recurrent: RecurrentSpec | None = None,
    *,
    observations: np.ndarray | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    seed: int = 0,
    obs_center: Any = None,
    obs_scale: Any = None,
) -> ParityReport:
    """Compare ``module`` (torch) and ``session`` (onnxruntime) on the same observations.

    Feed-forward: one batch of 64 random observations, a batch of 1, and the recorded ones.
    Recurrent: 4 random sequences of 16 steps run as a batch of 4 with the state carried, and
    the recorded observations as one sequence (batch 1) in their order.

    Args:
        module: the torch module (``forward(obs[, h_in[, c_in]])``).
        session: an ``onnxruntime.InferenceSession`` of the exported model.
        obs_dim: observation size.
        recurrent: the recurrent state, or ``None``.
        observations: recorded observations ``[n, obs_dim]`` (any float dtype) or ``None``.
        tolerance: largest scaled difference accepted (see :data:`DEFAULT_TOLERANCE`).
        seed: seed of the random observations.
        obs_center: mean of the random observations (e.g. the normalizer mean) or ``None``.
        obs_scale: scale of the random observations (e.g. the normalizer std) or ``None``.

    Returns:
        The report (``passed`` false above ``tolerance``; this function does not raise on it).

    Raises:
        ExportError: recorded observations of the wrong shape or non-finite.
    """
    torch = require_torch("ONNX parity check")
    rng = np.random.default_rng(seed)
    recorded = _validated_observations(observations, obs_dim)
    max_diff = 0.0
    max_scaled = 0.0
    count = 0

    def run_step(obs: np.ndarray, states: list[np.ndarray]) -> list[np.ndarray]:
        nonlocal max_diff, max_scaled
        with torch.no_grad():
            args = [torch.from_numpy(obs)] + [torch.from_numpy(s) for s in states]
            out = module(*args)
        torch_out = [out] if recurrent is None else list(out)
        torch_np = [t.detach().cpu().numpy().astype(np.float32) for t in torch_out]
        feed = {"obs": obs}
        if recurrent is not None:
            for (in_name, _), state in zip(recurrent.state_names, states, strict=True):
                feed[in_name] = state
        onnx_out = session.run(None, feed)
        for a, b in zip(torch_np, onnx_out, strict=True):
            if a.shape != b.shape:
                raise ExportError(f"output shapes differ: torch {a.shape}, onnx {b.shape}")
            diff, scaled = parity_difference(a, b)
            max_diff, max_scaled = max(max_diff, diff), max(max_scaled, scaled)
        # carry the torch state so errors cannot hide by compounding differently
        return torch_np[1:]

    if recurrent is None:
        batches = parity_batches(
            obs_dim, observations=recorded, seed=seed, obs_center=obs_center, obs_scale=obs_scale
        )
        for batch in batches:
            run_step(batch, [])
            count += batch.shape[0]
        steps = 0
    else:
        steps = 16  # >= 10 steps so state errors have time to show
        sequences: list[np.ndarray] = [
            _random_observations(obs_dim, 4 * steps, rng, obs_center, obs_scale).reshape(
                steps, 4, obs_dim
            )
        ]
        if recorded is not None:
            sequences.append(recorded.reshape(recorded.shape[0], 1, obs_dim))
        for seq in sequences:
            batch = seq.shape[1]
            states = [
                np.zeros((recurrent.num_layers, batch, recurrent.hidden_size), np.float32)
                for _ in recurrent.state_names
            ]
            for t in range(seq.shape[0]):
                states = run_step(np.ascontiguousarray(seq[t]), states)
                count += batch
    recorded_count = 0 if recorded is None else int(recorded.shape[0])
    passed = bool(np.isfinite(max_scaled) and max_scaled <= tolerance)
    return ParityReport(
        max_abs_diff=max_diff,
        max_scaled_diff=max_scaled,
        tolerance=float(tolerance),
        num_observations=count,
        sequence_steps=steps,
        recorded_observations=recorded_count,
        passed=passed,
    )


def export_module(
    module: Any,
    example_obs: Any,
    path: str | os.PathLike[str],
    *,
    recurrent: RecurrentSpec | None = None,
    metadata: Mapping[str, str] | None = None,
    observations: np.ndarray | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    seed: int = 0,
    obs_center: Any = None,
    obs_scale: Any = None,
    exporter: str = "auto",
    opset: int = 18,
) -> ExportResult:
    """Export a torch policy module to ``path`` as one self-contained ONNX file, with parity.

    Args:
        module: ``forward(obs [batch, obs_dim]) -> actions [batch, action_dim]``, or for
            recurrent policies ``forward(obs, h_in[, c_in]) -> (actions, h_out[, c_out])``
            with states ``[num_layers, batch, hidden]``; float32, deterministic.
        example_obs: the observation size (int), or example observations
            ``[n, obs_dim]`` (tensor or array), which then also join the parity check.
        path: the output ``.onnx`` file (written atomically, only if parity passes).
        recurrent: the recurrent state description, or ``None`` for feed-forward.
        metadata: extra metadata properties (keys should start with ``tailguard.``).
        observations: recorded observations ``[n, obs_dim]`` for the parity check.
        tolerance: largest scaled difference accepted by the parity check.
        seed: seed of the random parity observations.
        obs_center: mean of the random parity observations (e.g. normalizer mean).
        obs_scale: scale of the random parity observations (e.g. normalizer std).
        exporter: ``"dynamo"`` (torch's default exporter; needs onnxscript), ``"legacy"``
            (TorchScript) or ``"auto"`` (legacy, then dynamo if legacy fails to export or
            to pass the parity check; see :func:`exporter_candidates`). The one used is
            recorded as ``tailguard.exporter``.
        opset: ONNX opset.

    Returns:
        The written path, the parity report and the metadata.

    Raises:
        ExportError: the export, the single-file fold or the onnxruntime load failed.
        ParityError: the ONNX model differs from ``module`` by more than ``tolerance``.
    """
    require_torch("ONNX export")
    out_path = Path(path)
    if not out_path.parent.is_dir():
        raise ExportError("the output directory does not exist", out_path.parent)
    if isinstance(example_obs, int | np.integer):
        obs_dim = int(example_obs)
    else:
        example = np.asarray(
            example_obs.detach().cpu().numpy() if hasattr(example_obs, "detach") else example_obs,
            dtype=np.float32,
        )
        if example.ndim != 2:
            raise ExportError(f"example observations must be [n, obs_dim], got {example.shape}")
        obs_dim = int(example.shape[1])
        extra = _validated_observations(observations, obs_dim)
        observations = example if extra is None else np.concatenate([example, extra])
    if obs_dim < 1:
        raise ExportError(f"the observation size must be >= 1, got {obs_dim}")
    observations = _validated_observations(observations, obs_dim)
    candidates = exporter_candidates(exporter)
    module = module.eval()
    failures: list[str] = []
    for n, name in enumerate(candidates):
        try:
            model, report = _export_checked(
                module,
                int(obs_dim),
                recurrent,
                metadata,
                name,
                opset,
                observations,
                dict(tolerance=tolerance, seed=seed, obs_center=obs_center, obs_scale=obs_scale),
                out_path,
            )
            break
        except ExportError as exc:  # ParityError included
            if n == len(candidates) - 1:
                if not failures:
                    raise
                earlier = "; ".join(failures)
                raise type(exc)(f"{exc.message} (after {earlier})", exc.path) from None
            failures.append(f"{name} exporter: {exc}")
    data = model.SerializeToString()
    write_atomic(data, out_path)
    all_meta = {p.key: p.value for p in model.metadata_props}
    return ExportResult(path=out_path, parity=report, metadata=all_meta, size_bytes=len(data))


def write_atomic(data: bytes, out_path: Path) -> None:
    """Write ``data`` to ``out_path`` atomically (a temporary file beside it, then a rename).

    Raises:
        ExportError: the file cannot be written.
    """
    fd, tmp_name = tempfile.mkstemp(prefix=".tailguard-", suffix=".onnx", dir=out_path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp_name, 0o666 & ~_current_umask())  # mkstemp creates files 0600
        os.replace(tmp_name, out_path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise ExportError(f"cannot write the model ({exc.strerror})", out_path) from None


def _export_checked(
    module: Any,
    obs_dim: int,
    recurrent: RecurrentSpec | None,
    metadata: Mapping[str, str] | None,
    exporter: str,
    opset: int,
    observations: np.ndarray | None,
    parity: dict[str, Any],
    out_path: Path,
) -> tuple[Any, ParityReport]:
    """One exporter's model (single file, metadata set) and its passed parity report."""
    torch = require_torch("ONNX export")
    meta: dict[str, str] = {
        f"{METADATA_PREFIX}obs_dim": str(int(obs_dim)),
        f"{METADATA_PREFIX}recurrent": "none" if recurrent is None else recurrent.rnn_type,
        f"{METADATA_PREFIX}torch_version": str(torch.__version__),
        f"{METADATA_PREFIX}exporter": exporter,
    }
    if recurrent is not None:
        meta[f"{METADATA_PREFIX}rnn_num_layers"] = str(recurrent.num_layers)
        meta[f"{METADATA_PREFIX}rnn_hidden_size"] = str(recurrent.hidden_size)
    meta.update(metadata or {})
    with tempfile.TemporaryDirectory(prefix="tailguard-export-") as tmp:
        raw = Path(tmp) / "model.onnx"
        _torch_export(module, int(obs_dim), recurrent, raw, exporter, opset)
        model = _fold_to_single_file(raw, meta)
    session = _ort_session(model.SerializeToString())
    outputs = session.get_outputs()
    action_shape = outputs[0].shape
    if outputs[0].name != "actions" or len(action_shape) != 2:
        raise ExportError(
            f"the exported model's first output is '{outputs[0].name}' {action_shape}; "
            "expected 'actions' [batch, action_dim]"
        )
    action_dim = action_shape[1]
    if not isinstance(action_dim, int):
        raise ExportError(f"the exported action size is not fixed: {action_shape}")
    key = f"{METADATA_PREFIX}action_dim"
    if key not in meta:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, str(action_dim)
    report = check_parity(
        module, session, int(obs_dim), recurrent, observations=observations, **parity
    )
    if not report.passed:
        raise ParityError(report.summary() + "; the file was not written", out_path)
    for key, value in report.metadata().items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    return model, report

"""Stable-Baselines3 ``.zip`` → ONNX without torch: the audit's fast path.

``audit``, ``certify`` and ``replay`` take an SB3 model as ``--policy``; importing torch and
running its exporter costs seconds, more than the audit itself. This module does the same job
with numpy and the runtime's own ONNX writer:

1. :func:`read_state_dict` reads ``policy.pth`` (a torch zip archive: ``<prefix>/data.pkl``,
   raw storages ``<prefix>/data/<key>``, ``<prefix>/byteorder``) with a restricted unpickler
   that resolves exactly the globals a plain float state dict names and maps them to numpy
   builders of its own; any other global is refused unresolved, so nothing from the file
   runs;
2. the architecture is :func:`tailguard.adapters.sb3.parse_sb3`, the same parse the torch
   exporter uses;
3. :func:`onnx_bytes` emits ``Gemm`` + one-op activations, the VecNormalize prefix
   ``clip((obs - mean) / sqrt(var + eps), ±clip_obs)``, and the bound clip (PPO/A2C) or
   ``tanh`` + rescale (SAC/TD3);
4. parity: an independent float64 numpy forward pass of SB3's deterministic ``predict`` on the
   parsed weights against onnxruntime, on the observations ``check_parity`` uses.

Activations that need more than one ONNX op (gelu, swish, mish) and torch's legacy
(non-zip) serialization raise :class:`NativeExportUnsupported`; the caller then uses the
torch exporter.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import sys
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tailguard.adapters.export import (
    DEFAULT_TOLERANCE,
    METADATA_PREFIX,
    ExportResult,
    ParityReport,
    _ort_session,
    parity_batches,
    parity_difference,
    write_atomic,
)
from tailguard.adapters.sb3 import (
    POLICY_PTH_MAX_BYTES,
    Sb3Spec,
    parse_sb3,
    sb3_metadata,
)
from tailguard.errors import CheckpointError, ExportError, ParityError
from tailguard.runtime import _onnx_proto as proto

__all__ = [
    "NATIVE_ACTIVATIONS",
    "REFERENCE",
    "NativeExportUnsupported",
    "export_sb3_native",
    "onnx_bytes",
    "read_state_dict",
    "reference_actions",
]

REFERENCE = "numpy-float64"
"""The parity reference of the native path (named in reports and metadata)."""


class NativeExportUnsupported(ExportError):
    """The model is valid but the torch-free exporter cannot represent it (use torch's)."""


# --- the torch-free policy.pth reader ------------------------------------------------------

_PKL_MAX_BYTES = 16 << 20  # data.pkl of a state dict is a few KiB


def _refuse_build(name: str) -> None:
    raise pickle.UnpicklingError(f"setting the state of {name} is not allowed")


class _StorageType:
    """Stand-in for a ``torch.<Kind>Storage`` class named in a persistent id (never called).

    No instance attributes can be set from the pickle (a BUILD on it is refused), so one file
    cannot change how the next one is read.
    """

    __slots__ = ("dtype", "label", "name")

    def __init__(self, name: str, dtype: np.dtype | None, label: str) -> None:
        self.name, self.dtype, self.label = name, dtype, label

    def __repr__(self) -> str:
        return f"torch.{self.name}"

    def __setstate__(self, state: Any) -> None:
        _refuse_build(f"torch.{self.name}")


class _Global:
    """A resolved global as the pickle sees it: callable, nothing else (BUILD refused)."""

    __slots__ = ("_build", "_name")

    def __init__(self, name: str, build: Callable[..., Any]) -> None:
        self._name, self._build = name, build

    def __call__(self, *args: Any) -> Any:
        return self._build(*args)

    def __setstate__(self, state: Any) -> None:
        _refuse_build(self._name)


# The storage classes torch writes for tensors (``_pickle_storage_type``), by dtype.
_FLOAT_KINDS = {"Float": (np.float32, "float32"), "Double": (np.float64, "float64")}
_OTHER_KINDS = {
    "Half": "float16",
    "BFloat16": "bfloat16",
    "Long": "int64",
    "Int": "int32",
    "Short": "int16",
    "Char": "int8",
    "Byte": "uint8",
    "Bool": "bool",
    "ComplexFloat": "complex64",
    "ComplexDouble": "complex128",
    "QInt8": "qint8",
    "QUInt8": "quint8",
    "QInt32": "qint32",
}
_STORAGE_TYPES = {
    f"{kind}Storage": _StorageType(f"{kind}Storage", np.dtype(dt), label)
    for kind, (dt, label) in _FLOAT_KINDS.items()
} | {
    f"{kind}Storage": _StorageType(f"{kind}Storage", None, label)
    for kind, label in _OTHER_KINDS.items()
}


class _Storage:
    """One storage record: its type and (float kinds only) its raw bytes."""

    def __init__(
        self, kind: _StorageType, data: bytes, numel: int, data_dtype: np.dtype | None
    ) -> None:
        self.kind, self.data, self.numel, self.data_dtype = kind, data, numel, data_dtype


class _Unsupported:
    """A tensor of a dtype the native path does not read (reported with its key)."""

    def __init__(self, label: str) -> None:
        self.label = label


class _StateDict(dict):  # type: ignore[type-arg]
    """``collections.OrderedDict`` of a state dict; its ``_metadata`` (BUILD state) is dropped."""

    __slots__ = ()

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise pickle.UnpicklingError("unexpected state for an OrderedDict")


def _int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
    ):
        raise pickle.UnpicklingError(f"tensor {what} {value!r} is not a tuple of sizes")
    return value


def _rebuild_tensor_v2(
    storage: Any,
    storage_offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> Any:
    """numpy stand-in for ``torch._utils._rebuild_tensor_v2``: a strided view, copied."""
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError("a tensor is rebuilt from something that is not a storage")
    if storage.kind.dtype is None:
        return _Unsupported(storage.kind.label)
    shape, strides = _int_tuple(size, "size"), _int_tuple(stride, "stride")
    offset = storage_offset
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise pickle.UnpicklingError(f"tensor storage offset {offset!r} is not a size")
    if len(shape) != len(strides):
        raise pickle.UnpicklingError(f"tensor size {shape} and stride {strides} differ in rank")
    dtype: np.dtype = storage.kind.dtype
    if 0 in shape:
        return np.zeros(shape, dtype)
    last = offset + sum((n - 1) * s for n, s in zip(shape, strides, strict=True))
    if last >= storage.numel:
        raise pickle.UnpicklingError(
            f"tensor of size {list(shape)} (offset {offset}, stride {list(strides)}) reaches "
            f"element {last} of a storage of {storage.numel}"
        )
    view = np.ndarray(
        shape,
        dtype=storage.data_dtype,
        buffer=storage.data,
        offset=offset * dtype.itemsize,
        strides=tuple(s * dtype.itemsize for s in strides),
    )
    return view.astype(dtype, order="C", copy=True)  # native byte order, contiguous, owned


def _rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None) -> Any:
    """numpy stand-in for ``torch._utils._rebuild_parameter`` (``keep_vars`` state dicts)."""
    if not isinstance(data, np.ndarray | _Unsupported):
        raise pickle.UnpicklingError("a parameter is rebuilt from something that is not a tensor")
    return data


# Exactly what a plain state dict names; each maps to our own builder, never to torch.
_ALLOWED: dict[tuple[str, str], Any] = {
    (module, name): _Global(f"{module}.{name}", build)
    for module, name, build in (
        ("collections", "OrderedDict", _StateDict),
        ("torch._utils", "_rebuild_tensor_v2", _rebuild_tensor_v2),
        ("torch._utils", "_rebuild_parameter", _rebuild_parameter),
    )
} | {("torch", name): kind for name, kind in _STORAGE_TYPES.items()}


class _StateDictUnpickler(pickle.Unpickler):
    """Resolves only :data:`_ALLOWED`; storages come from the archive's records, bounded."""

    def __init__(
        self, file: io.BytesIO, record: Callable[[str, int], bytes], byteorder: str
    ) -> None:
        super().__init__(file)
        self._record = record
        self._order = "<" if byteorder == "little" else ">"
        self._storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        found = _ALLOWED.get((module, name))
        if found is None or "." in name:
            raise pickle.UnpicklingError(f"GLOBAL {module}.{name} is not allowed")
        return found

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r:.80}")
        _, kind, key, location, numel = pid
        if not isinstance(kind, _StorageType):
            raise pickle.UnpicklingError(f"persistent id names {kind!r:.80}, not a storage type")
        if not (isinstance(key, str) and re.fullmatch(r"\w{1,64}", key)):
            raise pickle.UnpicklingError(f"storage key {key!r:.80} is not a record name")
        if not isinstance(location, str) or not isinstance(numel, int) or numel < 0:
            raise pickle.UnpicklingError("malformed storage location or size")
        cached = self._storages.get(key)
        if cached is not None:
            if cached.kind is not kind:
                raise pickle.UnpicklingError(f"storage {key} is named with two types")
            return cached
        if kind.dtype is None:
            storage = _Storage(kind, b"", numel, None)
        else:
            data = self._record(f"data/{key}", numel * kind.dtype.itemsize)
            storage = _Storage(kind, data, numel, kind.dtype.newbyteorder(self._order))
        self._storages[key] = storage
        return storage


def read_state_dict(policy_bytes: bytes, path: Path) -> dict[str, np.ndarray]:
    """Read a torch-saved float state dict (the zip format of torch >= 1.6) without torch.

    Args:
        policy_bytes: the ``policy.pth`` bytes (already bounded by the SB3 zip reader).
        path: the file to name in errors.

    Returns:
        ``{key: array}``, float32 or float64 as stored, contiguous, native byte order.

    Raises:
        CheckpointError: a refused global (named; never resolved, nothing runs), a
            truncated, oversized or inconsistent record, or a tensor that is not float32 /
            float64.
        NativeExportUnsupported: torch's legacy (non-zip) serialization.
    """
    if not policy_bytes.startswith(b"PK"):
        raise NativeExportUnsupported(
            "policy.pth is not in torch's zip format (saved by torch < 1.6 or with "
            "_use_new_zipfile_serialization=False); the torch-free reader reads only that",
            path,
        )
    total = 0
    try:
        with zipfile.ZipFile(io.BytesIO(policy_bytes)) as archive:
            pickles = [n for n in archive.namelist() if re.fullmatch(r"[^/]+/data\.pkl", n)]
            if len(pickles) != 1:
                raise CheckpointError(
                    f"policy.pth holds {len(pickles)} '<prefix>/data.pkl' records; a torch "
                    "file has exactly one",
                    path,
                )
            prefix = pickles[0][: -len("data.pkl")]
            names = set(archive.namelist())

            def record(name: str, expected: int) -> bytes:
                nonlocal total
                member = prefix + name
                if member not in names:
                    raise CheckpointError(f"policy.pth has no record '{member}'", path)
                size = archive.getinfo(member).file_size
                total += size
                if size > POLICY_PTH_MAX_BYTES or total > POLICY_PTH_MAX_BYTES:
                    raise CheckpointError(
                        f"policy.pth record '{member}' unpacks to {size} bytes, past the "
                        f"{POLICY_PTH_MAX_BYTES} bytes a policy can need (a zip bomb?)",
                        path,
                    )
                if expected >= 0 and size != expected:
                    raise CheckpointError(
                        f"policy.pth record '{member}' has {size} bytes; its tensor needs "
                        f"{expected} (truncated or corrupt)",
                        path,
                    )
                return archive.read(member)

            pkl_size = archive.getinfo(pickles[0]).file_size
            if pkl_size > _PKL_MAX_BYTES:
                raise CheckpointError(
                    f"policy.pth data.pkl unpacks to {pkl_size} bytes (limit {_PKL_MAX_BYTES})",
                    path,
                )
            pkl = archive.read(pickles[0])
            order_name = prefix + "byteorder"
            order = (
                archive.read(order_name)[:16].decode(errors="replace").strip()
                if order_name in names
                else sys.byteorder
            )
            if order not in ("little", "big"):
                raise CheckpointError(f"policy.pth byteorder is '{order}', not little/big", path)
            state = _StateDictUnpickler(io.BytesIO(pkl), record, order).load()
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if text.startswith("GLOBAL "):
            raise CheckpointError(
                f"refused to load policy.pth: it names {text[7:].split()[0]}, which is not part "
                "of a plain state dict (tensors, dicts) and could execute code when loaded; "
                "nothing from the file was run",
                path,
            ) from None
        raise CheckpointError(f"cannot read policy.pth: {text}", path) from None
    except CheckpointError:
        raise
    except (
        zipfile.BadZipFile,
        EOFError,
        OSError,
        ValueError,
        TypeError,
        KeyError,
        IndexError,
        AttributeError,
        RecursionError,
    ) as exc:
        raise CheckpointError(
            f"cannot read policy.pth (truncated, corrupt or not a torch file): {exc}", path
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(
            f"policy.pth holds a {type(state).__name__}, not a state dict of tensors", path
        )
    out: dict[str, np.ndarray] = {}
    for key, value in state.items():
        if isinstance(value, _Unsupported):
            raise CheckpointError(
                f"policy.pth tensor '{key}' is {value.label}; only float32 and float64 "
                "weights are read",
                path,
            )
        if not isinstance(key, str) or not isinstance(value, np.ndarray):
            raise CheckpointError(f"policy.pth entry {key!r:.60} is not a tensor", path)
        out[key] = value
    return out


# --- the ONNX graph ------------------------------------------------------------------------

# activation name → (ONNX op, float attributes); identity has no node.
NATIVE_ACTIVATIONS: dict[str, tuple[str, dict[str, float]] | None] = {
    "tanh": ("Tanh", {}),
    "relu": ("Relu", {}),
    "elu": ("Elu", {"alpha": 1.0}),
    "lrelu": ("LeakyRelu", {"alpha": 0.01}),  # torch's default negative_slope
    "sigmoid": ("Sigmoid", {}),
    "softplus": ("Softplus", {}),
    "selu": ("Selu", {}),  # ONNX's default alpha/gamma are torch's constants in float32
    "identity": None,
}


def onnx_bytes(spec: Sb3Spec, metadata: dict[str, str] | None = None) -> bytes:
    """The deterministic action graph of ``spec``: ``obs [batch, obs_dim]`` → ``actions``.

    Raises:
        NativeExportUnsupported: an activation with no single-op ONNX form.
    """
    if spec.activation not in NATIVE_ACTIVATIONS:
        raise NativeExportUnsupported(
            f"activation '{spec.activation}' is not available natively (natively: "
            f"{sorted(NATIVE_ACTIVATIONS)})"
        )
    activation = NATIVE_ACTIVATIONS[spec.activation]
    nodes: list[bytes] = []
    inits: list[bytes] = []

    def const(name: str, value: Any) -> str:
        inits.append(proto.tensor(name, np.asarray(value, dtype=np.float32)))
        return name

    def op(kind: str, inputs: Sequence[str], out: str, **floats: float) -> str:
        nodes.append(proto.node(kind, inputs, [out], out, float_attrs=floats or None))
        return out

    x = "obs"
    norm = spec.normalizer
    if norm is not None:
        x = op("Sub", [x, const("vn_mean", norm.mean)], "vn_centered")
        x = op("Div", [x, const("vn_scale", norm.scale32)], "vn_scaled")
        x = op("Max", [x, const("vn_low", [-norm.clip_obs])], "vn_floor")
        x = op("Min", [x, const("vn_high", [norm.clip_obs])], "obs_normalized")
    last = len(spec.layers) - 1
    for i, (weight, bias) in enumerate(spec.layers):
        out = f"mean_{i}" if i == last else f"z{i}"
        nodes.append(
            proto.node(
                "Gemm",
                [x, const(f"W{i}", weight), const(f"B{i}", bias)],
                [out],
                f"gemm{i}",
                int_attrs={"transB": 1},
            )
        )
        x = out
        if i != last and activation is not None:
            x = op(activation[0], [x], f"h{i}", **activation[1])
    low, high = const("action_low", spec.action_low), const("action_high", spec.action_high)
    if spec.squash:
        x = op("Tanh", [x], "squashed")
        x = op("Add", [x, const("one", [1.0])], "shifted")
        x = op("Mul", [x, const("half", [0.5])], "unit")
        span = np.asarray(spec.action_high, np.float32) - np.asarray(spec.action_low, np.float32)
        x = op("Mul", [x, const("action_span", span)], "scaled")
        op("Add", [low, x], "actions")
    else:
        x = op("Max", [x, low], "floored")
        op("Min", [x, high], "actions")
    return proto.model(
        nodes,
        inputs=[proto.value_info("obs", ["batch", spec.obs_dim])],
        outputs=[proto.value_info("actions", ["batch", spec.action_dim])],
        initializers=inits,
        metadata=metadata,
    )


# --- the parity reference ------------------------------------------------------------------

_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946


def _activate(name: str, x: np.ndarray) -> np.ndarray:
    if name == "tanh":
        return np.tanh(x)
    if name == "relu":
        return np.maximum(x, 0.0)
    if name == "elu":
        return np.where(x > 0, x, np.expm1(np.minimum(x, 0.0)))
    if name == "lrelu":
        return np.where(x >= 0, x, 0.01 * x)
    if name == "sigmoid":
        return np.exp(-np.logaddexp(0.0, -x))
    if name == "softplus":
        return np.logaddexp(0.0, x)
    if name == "selu":
        return _SELU_SCALE * np.where(x > 0, x, _SELU_ALPHA * np.expm1(np.minimum(x, 0.0)))
    if name == "identity":
        return x
    raise NativeExportUnsupported(f"activation '{name}' is not available natively")


def reference_actions(spec: Sb3Spec, obs: np.ndarray) -> np.ndarray:
    """SB3's ``predict(obs, deterministic=True)`` for ``spec``, in float64 numpy.

    Written from SB3's semantics, not from the graph: normalize (``VecNormalize``), the actor
    MLP, then ``np.clip`` to the bounds (PPO/A2C) or ``unscale_action(tanh(mean))`` (SAC/TD3).
    """
    x = np.asarray(obs, dtype=np.float64)
    norm = spec.normalizer
    if norm is not None:
        x = np.clip(
            (x - norm.mean) / np.sqrt(norm.var + norm.epsilon), -norm.clip_obs, norm.clip_obs
        )
    last = len(spec.layers) - 1
    for i, (weight, bias) in enumerate(spec.layers):
        x = x @ np.asarray(weight, np.float64).T + np.asarray(bias, np.float64)
        if i != last:
            x = _activate(spec.activation, x)
    low = np.asarray(spec.action_low, np.float64)
    high = np.asarray(spec.action_high, np.float64)
    if spec.squash:
        return low + 0.5 * (np.tanh(x) + 1.0) * (high - low)
    return np.clip(x, low, high)


def _parity(
    spec: Sb3Spec, session: Any, observations: np.ndarray | None, tolerance: float, seed: int
) -> ParityReport:
    norm = spec.normalizer
    batches = parity_batches(
        spec.obs_dim,
        observations=observations,
        seed=seed,
        obs_center=None if norm is None else norm.mean,
        obs_scale=None if norm is None else np.sqrt(norm.var + norm.epsilon),
    )
    max_diff = 0.0
    max_scaled = 0.0
    for batch in batches:
        got = session.run(None, {"obs": batch})[0]
        want = reference_actions(spec, batch)
        if got.shape != want.shape:
            raise ExportError(f"output shapes differ: reference {want.shape}, onnx {got.shape}")
        diff, scaled = parity_difference(want, got)
        max_diff, max_scaled = max(max_diff, diff), max(max_scaled, scaled)
    recorded = 0 if observations is None else int(np.asarray(observations).shape[0])
    return ParityReport(
        max_abs_diff=max_diff,
        max_scaled_diff=max_scaled,
        tolerance=float(tolerance),
        num_observations=sum(int(b.shape[0]) for b in batches),
        sequence_steps=0,
        recorded_observations=recorded,
        passed=bool(np.isfinite(max_scaled) and max_scaled <= tolerance),
        reference=REFERENCE,
    )


def export_sb3_native(
    model_zip: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    vecnormalize: str | os.PathLike[str] | None = None,
    activation: str | None = None,
    hidden_sizes: Sequence[int] | None = None,
    observations: np.ndarray | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    seed: int = 0,
) -> ExportResult:
    """Export an SB3 model to ONNX without torch, with a float64 parity check.

    Same arguments, metadata and file guarantees (single file, atomic, written only when
    parity passes) as :func:`tailguard.adapters.sb3.export_sb3`, plus
    ``tailguard.exporter: native`` and ``tailguard.parity_reference: numpy-float64``.

    Raises:
        CheckpointError: see :func:`tailguard.adapters.sb3.parse_sb3` and
            :func:`read_state_dict`.
        NativeExportUnsupported: the model needs the torch exporter (see the module doc).
        ExportError: the output directory does not exist or onnxruntime rejects the graph.
        ParityError: parity above ``tolerance``; nothing is written.
    """
    out_path = Path(output)
    if not out_path.parent.is_dir():
        raise ExportError("the output directory does not exist", out_path.parent)
    spec = parse_sb3(
        model_zip,
        read_state_dict,
        activation=activation,
        vecnormalize=vecnormalize,
        hidden_sizes=hidden_sizes,
    )
    p = METADATA_PREFIX
    metadata = {
        f"{p}obs_dim": str(spec.obs_dim),
        f"{p}recurrent": "none",
        f"{p}exporter": "native",
        **sb3_metadata(spec),
    }
    session = _ort_session(onnx_bytes(spec, metadata))
    report = _parity(spec, session, observations, tolerance, seed)
    if not report.passed:
        raise ParityError(report.summary() + "; the file was not written", out_path)
    metadata.update(report.metadata())
    data = onnx_bytes(spec, metadata)
    write_atomic(data, out_path)
    return ExportResult(path=out_path, parity=report, metadata=metadata, size_bytes=len(data))

"""Policies the guard can run: an ONNX policy (onnxruntime) and a Python callable.

Both keep the same preallocated buffers so the guard's hot path treats them alike:

* two action buffers and two "check" buffers, used alternately (double buffering): the
  buffer of the last *applied* action stays intact while the next inference writes the
  other one, so holding the last action costs no copy;
* a check vector computed with every inference: ``slack = [s0, a-low, high-a,
  r+prev-a, r-prev+a]`` where ``a`` is the raw action, ``prev`` the last applied action,
  ``low/high`` the action bounds and ``r`` the max change per tick. Every entry is >= 0
  exactly when the action is finite, within bounds and within the rate limit; ``s0`` is
  ``1 + 0*sum(a)``, i.e. NaN as soon as any element is non-finite, and it comes first so a
  plain ``min()`` over the vector returns NaN in that case. The guard reads one number.

For ONNX policies the check is one ``Gemm`` node appended to the model's own graph at
load time (``guard/_onnx_proto.py``): ``[slack | next_bias] = actions @ MN + bias``. The
same arithmetic in numpy is the reference implementation (``CallablePolicy`` and the tests
use it).
"""

from __future__ import annotations

import functools
import hashlib
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tailguard.errors import PolicyLoadError
from tailguard.runtime import _onnx_proto as proto

__all__ = [
    "OnnxPolicy",
    "CallablePolicy",
    "TensorInfo",
    "session_options",
    "all_pass",
    "OBS_FLAGS",
    "SLACK_FLAGS",
]

RECURRENT_PAIRS = (("h_in", "h_out"), ("c_in", "c_out"))

#: "No limit" as a large finite value rather than inf, so every valid slack entry stays
#: below 2**127 and the byte test below holds; actions beyond it count as out of bounds.
UNLIMITED = 1e30
#: Where each float32's most significant byte (sign + 7 exponent bits) sits in memory.
TOP_BYTES = slice(3 if sys.byteorder == "little" else 0, None, 4)
#: ``bytes.translate`` tables over those top bytes: a top byte maps to 0x80 when its entry
#: fails the test and to 0 otherwise, so ``.isascii()`` of the result is True exactly when
#: every entry passes. Four C calls on a contiguous copy, no float is ever boxed (see
#: :func:`all_pass`). A slack entry passes when it is >= +0, finite and < 2**127 (top byte
#: below 0x7F); an observation when it is finite and |x| < 2**127 (top byte neither 0x7F
#: nor 0xFF).
SLACK_FLAGS = bytes(0x80 if b >= 0x7F else 0 for b in range(256))
OBS_FLAGS = bytes(0x80 if b & 0x7F == 0x7F else 0 for b in range(256))


def all_pass(buffer: memoryview, flags: bytes) -> bool:
    """True when every float32 in ``buffer`` (bytes, contiguous) passes ``flags``' test.

    The guard's hot path inlines exactly this expression.
    """
    return buffer.tobytes()[TOP_BYTES].translate(flags).isascii()


_CHECK_IN, _CHECK_OUT, _CHECK_MATRIX = "tailguard_check_bias", "tailguard_check", "tailguard_MN"


@dataclass(frozen=True)
class TensorInfo:
    """Name, shape (None or a str for a dynamic axis) and element type of a model tensor."""

    name: str
    shape: tuple[int | str | None, ...]
    type: str


def _check_matrix(action_size: int) -> np.ndarray:
    """MN [A, 2n] with n = 4A+1: ``a @ MN`` gives the action terms of slack and next bias."""
    a, n = action_size, 4 * action_size + 1
    eye = np.eye(a, dtype=np.float32)
    mn = np.zeros((a, 2 * n), dtype=np.float32)
    mn[:, 1 : 1 + a] = eye  # a - low
    mn[:, 1 + a : 1 + 2 * a] = -eye  # high - a
    mn[:, 1 + 2 * a : 1 + 3 * a] = -eye  # r + prev - a
    mn[:, 1 + 3 * a : 1 + 4 * a] = eye  # r - prev + a
    mn[:, n + 1 + 2 * a : n + 1 + 3 * a] = eye  # next: r + a
    mn[:, n + 1 + 3 * a : n + 1 + 4 * a] = -eye  # next: r - a
    return mn


class _CheckedPolicy:
    """Buffers, limits and the reference check shared by every policy kind.

    Guard-facing ("friend") attributes, stable for the hot path:
        _obs: float32 [O] input buffer; _act: float32 [2, A]; _chk: float32 [2, 3n]
        ([slack | next_bias | const] per slot); _slack_bytes: per slot, a byte view of the
        slack entries; _obs_bytes: the same of _obs (see :func:`all_pass`);
        _run_fn(_run_args[slot]) runs one inference into slot ``slot``.
    """

    obs_size: int
    action_size: int
    sha256: str | None
    name: str
    # The hot path calls _run_fn(_run_args[slot]): one inference into buffers of `slot`.
    _run_fn: Callable[[Any], Any]
    _run_args: tuple[Any, Any]

    def _init_buffers(self, obs_size: int, action_size: int) -> None:
        self.obs_size, self.action_size = obs_size, action_size
        a = action_size
        self._n = n = 4 * a + 1
        self._obs = np.zeros(obs_size, dtype=np.float32)
        self._act = np.zeros((2, a), dtype=np.float32)
        self._chk = np.zeros((2, 3 * n), dtype=np.float32)
        self._mn = _check_matrix(a)
        self._slack_bytes = tuple(self._chk[s, :n].data.cast("B") for s in (0, 1))
        self._obs_bytes = self._obs.data.cast("B")
        self._low = np.full(a, -UNLIMITED, dtype=np.float32)
        self._high = np.full(a, UNLIMITED, dtype=np.float32)
        self._rate = np.full(a, UNLIMITED, dtype=np.float32)
        self._write_const()
        for slot in (0, 1):
            self._set_applied(slot, self._act[slot])

    # -- limits ----------------------------------------------------------------------------
    def set_limits(
        self,
        low: Sequence[float] | np.ndarray | None,
        high: Sequence[float] | np.ndarray | None,
        max_delta: Sequence[float] | np.ndarray | None,
    ) -> None:
        """Set action bounds and the per-tick rate limit the checks test against.

        Args:
            low, high: float [A] bounds, or None for unbounded.
            max_delta: float [A] max |a_t - a_{t-1}| per tick, or None for no limit.
        """
        a = self.action_size
        self._low = _limit_vector(low, a, -UNLIMITED, "low")
        self._high = _limit_vector(high, a, UNLIMITED, "high")
        self._rate = _limit_vector(max_delta, a, UNLIMITED, "max_delta")
        self._write_const()
        for slot in (0, 1):
            self._set_applied(slot, self.clip(self._act[slot]))

    @property
    def limits(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(low, high, max_delta) as float32 [A] arrays; +-UNLIMITED where not limited."""
        return self._low.copy(), self._high.copy(), self._rate.copy()

    def clip(self, action: np.ndarray, prev: np.ndarray | None = None) -> np.ndarray:
        """Reference limiter: bounds, then the rate window around ``prev`` (float32 copy)."""
        out = np.clip(np.asarray(action, dtype=np.float32), self._low, self._high)
        if prev is not None:
            out = np.clip(out, prev - self._rate, prev + self._rate)
            out = np.clip(out, self._low, self._high)
        return out.astype(np.float32, copy=False)

    def _write_const(self) -> None:
        n = self._n
        const = np.concatenate(([1.0], -self._low, self._high, self._rate, self._rate))
        self._chk[:, 2 * n :] = const.astype(np.float32) + np.float32(0.0)  # no -0.0 (see top)

    def _set_applied(self, slot: int, action: np.ndarray) -> None:
        """Record ``action`` as the last applied action in ``slot`` (its bias for next tick)."""
        n, a = self._n, self.action_size
        self._act[slot] = action
        nb = self._chk[slot, n : 2 * n]
        nb[0] = 1.0
        nb[1 : 1 + a] = -self._low
        nb[1 + a : 1 + 2 * a] = self._high
        nb[1 + 2 * a : 1 + 3 * a] = self._rate + self._act[slot]
        nb[1 + 3 * a :] = self._rate - self._act[slot]

    def _reference_check(self, slot: int) -> None:
        """numpy version of the in-graph Gemm: chk[slot, :2n] = a @ MN + chk[other, n:3n]."""
        n = self._n
        other = self._chk[1 - slot, n:]
        a = self._act[slot].astype(np.float32)
        with np.errstate(invalid="ignore", over="ignore"):
            self._chk[slot, : 2 * n] = a @ self._mn + other
            # matmul may skip 0 * inf; the sentinel must be NaN for any non-finite action
            self._chk[slot, 0] = 1.0 + 0.0 * float(np.sum(a, dtype=np.float64))

    def reset_state(self) -> None:
        """Clear recurrent state (no-op for feed-forward policies)."""


def _limit_vector(values: Any, size: int, default: float, what: str) -> np.ndarray:
    if values is None:
        return np.full(size, default, dtype=np.float32)
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size != size:
        raise ValueError(f"{what}: expected {size} values (one per action), got {arr.size}")
    if np.isnan(arr).any():
        raise ValueError(f"{what}: NaN is not a limit")
    return arr.astype(np.float32)


def session_options(intra_op_threads: int = 1) -> Any:
    """onnxruntime SessionOptions for a control loop: few threads, no spinning, sequential."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = intra_op_threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning worker threads burn a core and steal it from the control loop.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.log_severity_level = 3
    return so


def _infos(args: Sequence[Any]) -> list[TensorInfo]:
    return [TensorInfo(a.name, tuple(a.shape), a.type) for a in args]


def _is_batch(dim: int | str | None) -> bool:
    return dim is None or isinstance(dim, str) or dim == 1


class OnnxPolicy(_CheckedPolicy):
    """An ONNX policy validated at load and run with preallocated, bound buffers.

    The model must take one float32 observation ``[batch, obs_size]`` (named ``obs``, or its
    only non-state input) and produce float32 actions ``[batch, action_size]`` (``actions``,
    or its first output); batch is 1 or dynamic. RSL-RL recurrent state (``h_in``/``h_out``,
    ``c_in``/``c_out``, shaped ``[layers, batch, hidden]``) is carried across steps and
    cleared by :meth:`reset_state`. Models with external data load when the data file sits
    where the model says.

    Args:
        path: the .onnx file.
        intra_op_threads: onnxruntime intra-op threads (1 is fastest for small MLPs).
        providers: onnxruntime execution providers (default CPU).
        fast_checks: fold the guard's action check into the graph (default). False uses the
            numpy reference check after a plain bound inference (slower; for comparison).

    Raises:
        PolicyLoadError: unreadable or invalid model, missing external data, or an interface
            the guard cannot run (names, shapes, dtypes); the message names the file.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        intra_op_threads: int = 1,
        providers: Sequence[str] | None = None,
        fast_checks: bool = True,
    ) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        self.name = self.path.name
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise PolicyLoadError(
                f"cannot read the policy file ({exc.strerror}); check the path", path
            ) from None
        self.sha256 = hashlib.sha256(data).hexdigest()
        try:
            self.ir_version, self.opsets, external = proto.model_header(data)
        except ValueError as exc:
            raise PolicyLoadError(
                f"not an ONNX model ({exc}); expected a .onnx file written by an ONNX exporter",
                path,
            ) from None
        if external:
            _check_external_data(data, self.path)
        self._providers = list(providers or ["CPUExecutionProvider"])
        self._intra = intra_op_threads
        so = session_options(intra_op_threads)
        try:
            plain = ort.InferenceSession(str(self.path), so, providers=self._providers)
        except Exception as exc:  # onnxruntime raises several unrelated types
            raise PolicyLoadError(f"onnxruntime cannot load the model: {exc}", path) from None
        self.inputs = _infos(plain.get_inputs())
        self.outputs = _infos(plain.get_outputs())
        meta = plain.get_modelmeta()
        self.metadata: dict[str, str] = dict(meta.custom_metadata_map)
        self.producer = f"{meta.producer_name} {getattr(meta, 'version', '')}".strip()
        self._plain = plain
        self._resolve_interface()
        self._init_buffers(self.obs_size, self.action_size)
        self.fast_checks = False
        if fast_checks:
            self._session = self._build_checked_session(data, so, external)
            self.fast_checks = True
        else:
            self._session = plain
        self._bind()
        self._call_state: dict[str, np.ndarray] = {}

    # -- interface -------------------------------------------------------------------------
    def _resolve_interface(self) -> None:
        path = self.path
        ins = {t.name: t for t in self.inputs}
        outs = {t.name: t for t in self.outputs}
        self.state_pairs: list[tuple[str, str]] = []
        for i_name, o_name in RECURRENT_PAIRS:
            if (i_name in ins) != (o_name in outs):
                have, missing = (i_name, o_name) if i_name in ins else (o_name, i_name)
                raise PolicyLoadError(
                    f"recurrent state '{have}' has no matching '{missing}'; RSL-RL naming pairs "
                    "h_in->h_out and c_in->c_out",
                    path,
                )
            if i_name in ins:
                self.state_pairs.append((i_name, o_name))
        state_in = {p[0] for p in self.state_pairs}
        state_out = {p[1] for p in self.state_pairs}
        obs_candidates = [t for t in self.inputs if t.name not in state_in]
        if "obs" in ins:
            obs = ins["obs"]
        elif len(obs_candidates) == 1:
            obs = obs_candidates[0]
        else:
            raise PolicyLoadError(
                "cannot tell which input is the observation: expected an input named 'obs' or a "
                f"single non-state input, found {[t.name for t in obs_candidates]}",
                path,
            )
        extra = [t.name for t in obs_candidates if t.name != obs.name]
        if extra:
            raise PolicyLoadError(
                f"unsupported extra inputs {extra}: the guard feeds only the observation "
                "(and h_in/c_in recurrent state); fold constants into the model",
                path,
            )
        act_candidates = [t for t in self.outputs if t.name not in state_out]
        if not act_candidates:
            raise PolicyLoadError("the model has no action output", path)
        act = outs.get("actions", act_candidates[0])
        for t, what in ((obs, "observation input"), (act, "action output")):
            if t.type != "tensor(float)":
                raise PolicyLoadError(
                    f"{what} '{t.name}' has element type {t.type}; expected tensor(float) "
                    "(float32). Re-export the model in float32",
                    path,
                )
            if len(t.shape) != 2 or not _is_batch(t.shape[0]) or not isinstance(t.shape[1], int):
                raise PolicyLoadError(
                    f"{what} '{t.name}' has shape {list(t.shape)}; expected [batch, size] with "
                    "batch 1 or dynamic and a fixed size",
                    path,
                )
        self.obs_name, self.action_name = obs.name, act.name
        self.obs_size, self.action_size = int(obs.shape[1]), int(act.shape[1])  # type: ignore[arg-type]
        self._state_shapes: dict[str, tuple[int, ...]] = {}
        for i_name, o_name in self.state_pairs:
            t = ins[i_name]
            shape = t.shape
            if (
                t.type != "tensor(float)"
                or len(shape) != 3
                or not isinstance(shape[0], int)
                or not _is_batch(shape[1])
                or not isinstance(shape[2], int)
            ):
                raise PolicyLoadError(
                    f"recurrent state '{i_name}' is {t.type} {list(shape)}; expected float32 "
                    "[layers, batch, hidden] with batch 1 or dynamic",
                    path,
                )
            self._state_shapes[i_name] = (shape[0], 1, shape[2])  # type: ignore[assignment]
            out_shape = outs[o_name].shape
            if len(out_shape) == 3 and out_shape[0] != shape[0] and isinstance(out_shape[0], int):
                raise PolicyLoadError(
                    f"'{o_name}' shape {list(out_shape)} does not match '{i_name}' {list(shape)}",
                    path,
                )

    @property
    def is_recurrent(self) -> bool:
        return bool(self.state_pairs)

    # -- sessions and bindings -------------------------------------------------------------
    def _build_checked_session(self, data: bytes, so: Any, external: bool) -> Any:
        import onnxruntime as ort

        a, n = self.action_size, self._n
        ext = proto.graph_extension(
            nodes=[
                proto.node(
                    "Gemm",
                    [self.action_name, _CHECK_MATRIX, _CHECK_IN],
                    [_CHECK_OUT],
                    "tailguard_check_gemm",
                )
            ],
            inputs=[proto.value_info(_CHECK_IN, [1, 2 * n])],
            outputs=[proto.value_info(_CHECK_OUT, [1, 2 * n])],
            initializers=[proto.tensor(_CHECK_MATRIX, _check_matrix(a))],
        )
        if external:  # bytes have no location; tell onnxruntime where the data file lives
            so.add_session_config_entry(
                "session.model_external_initializers_file_folder_path",
                str(self.path.resolve().parent),
            )
        try:
            return ort.InferenceSession(data + ext, so, providers=self._providers)
        except Exception as exc:
            raise PolicyLoadError(
                f"could not add the guard's check node to the model ({exc}); load it with "
                "OnnxPolicy(..., fast_checks=False) to use the slower reference checks",
                self.path,
            ) from None

    def _bind(self) -> None:
        sess = self._session
        self._states = {
            i: np.zeros((2, *shape), dtype=np.float32) for i, shape in self._state_shapes.items()
        }
        n, a = self._n, self.action_size
        obs2d = self._obs.reshape(1, -1)
        bindings = []
        for slot in (0, 1):
            b = sess.io_binding()
            b.bind_cpu_input(self.obs_name, obs2d)
            b.bind_output(
                self.action_name, "cpu", 0, np.float32, [1, a], self._act[slot].ctypes.data
            )
            for i_name, o_name in self.state_pairs:
                buf = self._states[i_name]
                b.bind_cpu_input(i_name, buf[1 - slot])
                shape = list(buf.shape[1:])
                b.bind_output(o_name, "cpu", 0, np.float32, shape, buf[slot].ctypes.data)
            if self.fast_checks:
                bias = self._chk[1 - slot, n:]
                b.bind_input(_CHECK_IN, "cpu", 0, np.float32, [1, 2 * n], bias.ctypes.data)
                b.bind_output(
                    _CHECK_OUT, "cpu", 0, np.float32, [1, 2 * n], self._chk[slot].ctypes.data
                )
            bindings.append(b)
        self._bindings = tuple(bindings)
        if self.fast_checks:
            # The C-level call skips one Python frame per tick; fall back to the public API.
            c_run = getattr(getattr(sess, "_sess", None), "run_with_iobinding", None)
            c_bindings = tuple(getattr(b, "_iobinding", None) for b in bindings)
            if c_run is not None and all(cb is not None for cb in c_bindings):
                # functools.partial calls through C: cheaper than a lambda frame.
                self._run_fn = functools.partial(_call_with_none, c_run)
                self._run_args = (c_bindings[0], c_bindings[1])
            else:
                self._run_fn, self._run_args = sess.run_with_iobinding, self._bindings
        else:
            self._run_fn, self._run_args = self._run_reference, (0, 1)

    def _run_reference(self, slot: int) -> None:
        self._session.run_with_iobinding(self._bindings[slot])
        self._reference_check(slot)

    def reset_state(self) -> None:
        """Zero the recurrent state (both slots) and the convenience-call state."""
        for buf in self._states.values():
            buf.fill(0.0)
        self._call_state = {}

    # -- convenience -----------------------------------------------------------------------
    def __call__(self, obs: np.ndarray) -> np.ndarray:
        """Plain inference outside any guard: obs [O] or [B, O] -> a copy of actions [B, A].

        Carries recurrent state across calls for batch 1 (cleared by :meth:`reset_state`).
        Not the hot path: it allocates.
        """
        x = np.asarray(obs, dtype=np.float32)
        x = x.reshape(1, -1) if x.ndim == 1 else x
        feeds: dict[str, np.ndarray] = {self.obs_name: x}
        for i_name, _ in self.state_pairs:
            layers, _, hidden = self._state_shapes[i_name]
            state = self._call_state.get(i_name)
            if state is None or state.shape[1] != x.shape[0]:
                state = np.zeros((layers, x.shape[0], hidden), dtype=np.float32)
            feeds[i_name] = state
        names = [self.action_name] + [o for _, o in self.state_pairs]
        results = self._plain.run(names, feeds)
        for (i_name, _), value in zip(self.state_pairs, results[1:], strict=True):
            self._call_state[i_name] = value
        return np.array(results[0], copy=True)

    def describe(self) -> dict[str, Any]:
        """Interface and provenance facts (for `tailguard inspect` and envelopes)."""
        return {
            "path": str(self.path),
            "sha256": self.sha256,
            "ir_version": self.ir_version,
            "opsets": dict(self.opsets),
            "producer": self.producer,
            "inputs": [
                {"name": t.name, "shape": list(t.shape), "type": t.type} for t in self.inputs
            ],
            "outputs": [
                {"name": t.name, "shape": list(t.shape), "type": t.type} for t in self.outputs
            ],
            "obs_name": self.obs_name,
            "action_name": self.action_name,
            "obs_size": self.obs_size,
            "action_size": self.action_size,
            "recurrent": [list(p) for p in self.state_pairs],
            "metadata": dict(self.metadata),
            "fast_checks": self.fast_checks,
        }


def _call_with_none(c_run: Callable[[Any, Any], Any], binding: Any) -> Any:
    return c_run(binding, None)


def _check_external_data(data: bytes, path: Path) -> None:
    """Fail early and clearly when a model's external data file is missing."""
    marker = b"location"
    folder = path.resolve().parent
    missing = set()
    start = 0
    while (i := data.find(marker, start)) != -1:
        start = i + len(marker)
        # StringStringEntryProto: key=1 "location", value=2 <len><name>
        j = start
        if j < len(data) and data[j] == 0x12:
            length = data[j + 1]
            name = data[j + 2 : j + 2 + length].decode(errors="replace")
            if name and not (folder / name).exists():
                missing.add(name)
    if missing:
        names = ", ".join(sorted(missing))
        raise PolicyLoadError(
            f"the model keeps its weights in external data file(s) {names}, not found in "
            f"{folder}; copy them next to the .onnx file, or re-export as one self-contained "
            "file (tailguard export writes self-contained files)",
            path,
        )


class CallablePolicy(_CheckedPolicy):
    """A Python function as a policy, with the same buffers and (reference) checks.

    Used for fallback controllers, tests, and the null policy of the overhead benchmark.

    Args:
        fn: ``fn(obs) -> action``; obs is the guard's float32 [O] buffer (do not keep it),
            the action anything convertible to float32 [A].
        obs_size, action_size: flat sizes.
        name: for stats and logs.
    """

    sha256 = None

    def __init__(
        self,
        fn: Callable[[np.ndarray], Any],
        obs_size: int,
        action_size: int,
        name: str = "callable",
    ) -> None:
        if obs_size <= 0 or action_size <= 0:
            raise ValueError(f"sizes must be positive, got obs {obs_size}, action {action_size}")
        self._fn = fn
        self.name = name
        self.path = None
        self.is_recurrent = False
        self.fast_checks = False
        self._init_buffers(obs_size, action_size)
        self._run_fn, self._run_args = self._run_reference, (0, 1)

    def _run_reference(self, slot: int) -> None:
        out = np.asarray(self._fn(self._obs), dtype=np.float32).reshape(-1)
        if out.size != self.action_size:
            raise ValueError(f"policy returned {out.size} values, expected {self.action_size}")
        self._act[slot] = out
        self._reference_check(slot)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        return np.asarray(self._fn(np.asarray(obs, dtype=np.float32)), dtype=np.float32)

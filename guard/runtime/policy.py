"""Policies the guard can run: an ONNX policy (onnxruntime) and a Python callable.

Both keep the same preallocated buffers so the guard's hot path treats them alike:

* two action buffers and two "check" buffers, used alternately (double buffering): the
  buffer of the last *applied* action stays intact while the next inference writes the
  other one, so holding the last action costs no copy;
* a check vector computed with every inference: ``slack`` holds, per action element,
  ``r+prev-a, r-prev+a, s0, a-low, high-a`` where ``a`` is the raw action, ``prev`` the
  last applied action, ``low/high`` the bounds, ``r`` the max change per tick and
  ``s0 = 0*a + 1`` (NaN exactly where ``a`` is non-finite). Every entry is >= +0 and
  < 2**127 exactly when the action is finite, within bounds and within the rate limit;
  the guard tests that with one byte test (:func:`all_pass` with :data:`SLACK_FLAGS`) and
  reads no float.
* optionally (``checks_observation``) ``|obs|`` right before the slack in the same
  buffer: the top byte of ``|x|`` is below 0x7F exactly when ``x`` is finite and
  ``|x| < 2**127``, the guard's observation rule, so the same byte test covers it.
* with an observation range (:meth:`_CheckedPolicy.set_observation_range`, the envelope's
  ``observations``), ``obs - low`` and ``high - obs`` instead of ``|obs|``: both are >= +0
  and finite exactly when the observation is finite and inside ``[low, high]`` (float32),
  so the same one byte test covers finiteness and the range (``checks_observation``).

For ONNX policies the check is appended to the model's own graph at load time
(:func:`check_extension`, serialized by ``_onnx_proto``): one ``Gemm`` that takes the
action as a ``[1, A]`` row and a constant ``[7, 1]`` column of signs,
``check[7, A] = signs @ actions + bias[7, A]``, so its memory is linear in the action size
(up to 64 actions the same rows come from ``actions @ [A, 7A]``, the faster M=1 shape;
with ``fold_observation``, an ``Abs(obs)`` node as well). Rows 5-6 (``r+a, r-a``) are the
next tick's rate bias; they sit right before the constant rows in the same buffer, so the
next inference reads them in place. The same arithmetic in numpy is the reference
implementation (``CallablePolicy`` and the tests use it).
"""

from __future__ import annotations

import functools
import hashlib
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np

from tailguard.errors import ConfigError, PolicyLoadError
from tailguard.runtime import _onnx_proto as proto

__all__ = [
    "OnnxPolicy",
    "CallablePolicy",
    "TensorInfo",
    "PolicyBuffers",
    "RunFn",
    "InferenceWrapper",
    "session_options",
    "all_pass",
    "OBS_FLAGS",
    "SLACK_FLAGS",
    "MAX_OBS_SIZE",
    "MAX_ACTION_SIZE",
    "MAX_STATE_SIZE",
]

#: One inference into the buffers of a slot: ``run(run_args[slot])``.
RunFn = Callable[[Any], Any]
#: Takes the policy's own run function, returns the one the guard calls instead.
InferenceWrapper = Callable[[RunFn], RunFn]

#: Load-time bounds on what a model may declare (a 91-byte file can declare any size).
#: Far above any robot policy; they keep the buffers (and onnxruntime's own) small.
MAX_OBS_SIZE = 1 << 16
MAX_ACTION_SIZE = 1 << 12
MAX_STATE_SIZE = 1 << 20  # elements of one recurrent state tensor

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


_CHECK_IN, _CHECK_OUT, _CHECK_SIGNS = "tailguard_check_bias", "tailguard_check", "tailguard_signs"
_OBS_ABS = "tailguard_obs_abs"
_OBS_LOW, _OBS_HIGH = "tailguard_obs_low", "tailguard_obs_high"  # range bounds (constants)
_OBS_BELOW, _OBS_ABOVE = "tailguard_obs_minus_low", "tailguard_high_minus_obs"
#: Rows of the check: r+prev-a, r-prev+a, s0, a-low, high-a | next r+a, r-a. The first five
#: are the slack, the last two the next tick's rate bias; ``CONST_ROWS`` follow them in
#: the buffer, so ``rows[5:12]`` of one slot is the bias of the other slot's next check.
CHECK_SIGNS = np.array([[-1.0], [1.0], [0.0], [1.0], [-1.0], [1.0], [-1.0]], dtype=np.float32)
SLACK_ROWS, CHECK_ROWS, CONST_ROWS = 5, 7, 5
#: Up to this action size the check Gemm takes the action as its left operand,
#: ``actions [1, A] @ signs_matrix [A, 7A]``: the M=1 shape onnxruntime runs fastest
#: (~3 % of a small MLP's tick faster than the [7, 1] @ [1, A] form, measured); the matrix
#: is at most 64 x 448 floats. Above it the [7, 1] column form keeps memory linear in A.
#: Both write the same [7, A] row-major layout and, for a finite action, the same bits.
ROW_CHECK_MAX_ACTIONS = 64


def _check_shape(action_size: int) -> list[int]:
    """Shape of the check Gemm's bias and output for this action size (same memory)."""
    if action_size <= ROW_CHECK_MAX_ACTIONS:
        return [1, CHECK_ROWS * action_size]
    return [CHECK_ROWS, action_size]


def _signs_matrix(action_size: int) -> np.ndarray:
    """[A, 7A]: block j is ``CHECK_SIGNS[j] * I``, so ``a @ it`` lays out ``signs * a``."""
    eye = np.eye(action_size, dtype=np.float32)
    return np.concatenate([sign * eye for sign in CHECK_SIGNS[:, 0]], axis=1)


@dataclass(frozen=True)
class TensorInfo:
    """Name, shape (None or a str for a dynamic axis) and element type of a model tensor."""

    name: str
    shape: tuple[int | str | None, ...]
    type: str


@dataclass(frozen=True)
class PolicyBuffers:
    """The preallocated buffers and run function of a policy (see the module docstring).

    Attributes:
        obs: float32 [O]; write the observation here before ``run``.
        actions: float32 [2, A]; ``run(run_args[slot])`` writes row ``slot``.
        check: float32 [2, O + 12*A]; per slot ``[|obs| | check rows | const rows]``.
        slack_bytes: per slot, a byte view of what the guard's one byte test covers.
        run: the run function (with the inference wrapper, if one is set).
        run_args: the argument of ``run`` for slot 0 and slot 1.
    """

    obs: np.ndarray
    actions: np.ndarray
    check: np.ndarray
    slack_bytes: tuple[memoryview, memoryview]
    run: RunFn
    run_args: tuple[Any, Any]


class _CheckedPolicy:
    """Buffers, limits and the reference check shared by every policy kind.

    Guard-facing ("friend") attributes, stable for the hot path:
        _obs: float32 [O] input buffer; _act: float32 [2, A]; _chk: float32 [2, O + 12A]
        ([|obs| | 7 check rows | 5 const rows] per slot, rows A wide); _slack_bytes: per
        slot, a byte view of the entries the byte test covers (``[|obs| | slack]`` when
        ``checks_observation``, else the slack alone); _obs_bytes: a byte view of _obs
        (see :func:`all_pass`); _run_fn(_run_args[slot]) runs one inference into slot
        ``slot``. Only this module assigns them: others use :meth:`set_inference_wrapper`.
    """

    obs_size: int
    action_size: int
    sha256: str | None
    name: str
    #: True when the check vector also tests the observation (``[|obs| | slack]``): a
    #: non-finite or |x| >= 2**127 observation element fails the same byte test as a bad
    #: action, so the guard needs no observation test of its own before the inference.
    checks_observation: bool = False
    # The hot path calls _run_fn(_run_args[slot]): one inference into buffers of `slot`.
    _run_fn: RunFn
    _run_args: tuple[Any, Any]

    def _init_buffers(
        self,
        obs_size: int,
        action_size: int,
        checks_observation: bool = False,
        obs_range: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        self.obs_size, self.action_size = obs_size, action_size
        self.obs_range = obs_range
        if obs_range is None:
            self._folds_abs = checks_observation  # |obs| in the check (kept under a range)
        self.checks_observation = checks_observation or obs_range is not None
        o, a = obs_size, action_size
        lead = 2 * o if obs_range is not None else o  # [obs-low | high-obs] or [|obs|]
        self._obs = np.zeros(o, dtype=np.float32)
        self._act = np.zeros((2, a), dtype=np.float32)
        self._chk = np.zeros((2, lead + (CHECK_ROWS + CONST_ROWS) * a), dtype=np.float32)
        self._rows = self._chk[:, lead:].reshape(2, CHECK_ROWS + CONST_ROWS, a)  # a view
        first = 0 if self.checks_observation else lead
        views = [self._chk[s, first : lead + SLACK_ROWS * a].data.cast("B") for s in (0, 1)]
        self._slack_bytes = (views[0], views[1])
        self._obs_bytes = self._obs.data.cast("B")
        self._low = np.full(a, -UNLIMITED, dtype=np.float32)
        self._high = np.full(a, UNLIMITED, dtype=np.float32)
        self._rate = np.full(a, UNLIMITED, dtype=np.float32)
        self._write_const()
        for slot in (0, 1):
            self._set_applied(slot, self._act[slot])

    # -- the inference hook ----------------------------------------------------------------
    def _set_run(self, run: RunFn, run_args: tuple[Any, Any]) -> None:
        """Install the policy's own run function (the wrapper, if set, goes around it)."""
        self._base_run, self._run_args = run, run_args
        wrapper = getattr(self, "_wrapper", None)
        self._run_fn = run if wrapper is None else wrapper(run)

    def set_inference_wrapper(self, wrapper: InferenceWrapper | None) -> None:
        """Put ``wrapper`` around every inference (simulated inference time, timing).

        ``wrapper(run)`` receives the policy's own run function and returns the one the
        guard calls instead, with the same signature (one argument, the slot's run
        argument). A new wrapper replaces the previous one, it never stacks; None removes
        it. Set it before building a ``Guard``: the guard binds the run function once.
        """
        base = self.__dict__.get("_base_run", self._run_fn)
        self._base_run = base
        self._wrapper = wrapper
        self._run_fn = base if wrapper is None else wrapper(base)

    @property
    def buffers(self) -> PolicyBuffers:
        """The policy's preallocated buffers and its (possibly wrapped) run function."""
        return PolicyBuffers(
            self._obs, self._act, self._chk, self._slack_bytes, self._run_fn, self._run_args
        )

    def run_slot(self, slot: int) -> None:
        """One inference of the observation in ``buffers.obs`` into slot ``slot`` (0 or 1)."""
        self._run_fn(self._run_args[slot])

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

        Raises:
            ConfigError: a vector of the wrong length, or a NaN limit.
        """
        a = self.action_size
        self._low = _limit_vector(low, a, -UNLIMITED, "low")
        self._high = _limit_vector(high, a, UNLIMITED, "high")
        self._rate = _limit_vector(max_delta, a, UNLIMITED, "max_delta")
        self._write_const()
        for slot in (0, 1):
            self._set_applied(slot, self.clip(self._act[slot]))

    def set_observation_range(
        self,
        low: Sequence[float] | np.ndarray | None,
        high: Sequence[float] | np.ndarray | None,
    ) -> None:
        """Test ``low <= obs <= high`` (float32, elementwise) in the check vector, or stop
        testing it (None, None). Rebuilds the buffers (and, for an ONNX policy, the checked
        session): call it before building a ``Guard``, which calls it for its envelope.

        Raises:
            ConfigError: a bound of the wrong length, not finite, or ``low > high``.
        """
        if low is None and high is None:
            new = None
        else:
            lo = np.asarray(low, dtype=np.float64).reshape(-1)
            hi = np.asarray(high, dtype=np.float64).reshape(-1)
            o = self.obs_size
            if lo.size != o or hi.size != o:
                raise ConfigError(
                    f"observation range: expected {o} lows and highs, got {lo.size}/{hi.size}"
                )
            if not (np.isfinite(lo).all() and np.isfinite(hi).all() and (lo <= hi).all()):
                raise ConfigError("observation range: bounds must be finite with low <= high")
            # + 0.0: no -0.0 bound (obs - low of an equal obs is then +0.0, which passes)
            new = (lo.astype(np.float32) + np.float32(0.0), hi.astype(np.float32) + np.float32(0.0))
        old = self.obs_range
        if (old is None and new is None) or (
            old is not None
            and new is not None
            and np.array_equal(old[0], new[0])
            and np.array_equal(old[1], new[1])
        ):
            return
        limits = self._low, self._high, self._rate
        self._init_buffers(self.obs_size, self.action_size, self._folds_abs, new)
        self._low, self._high, self._rate = limits
        self._write_const()
        for slot in (0, 1):
            self._set_applied(slot, self._act[slot])
        self._rebuild_checks()

    def _rebuild_checks(self) -> None:
        """Re-create whatever computes the check vector after the buffers changed."""

    def observation_outside(self) -> bool:
        """Reference test of the observation in the input buffer against the range: True
        when some element is below its low or above its high (False without a range)."""
        if self.obs_range is None:
            return False
        lo, hi = self.obs_range
        return bool(((self._obs < lo) | (self._obs > hi)).any())

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
        const = np.stack((np.ones_like(self._low), -self._low, self._high, self._rate, self._rate))
        self._rows[:, CHECK_ROWS:] = const + np.float32(0.0)  # no -0.0 (see top)

    def _set_applied(self, slot: int, action: np.ndarray) -> None:
        """Record ``action`` as the last applied action in ``slot`` (its bias for next tick)."""
        self._act[slot] = action
        rows = self._rows[slot]
        rows[SLACK_ROWS] = self._rate + self._act[slot]
        rows[SLACK_ROWS + 1] = self._rate - self._act[slot]

    def _reference_check(self, slot: int) -> None:
        """numpy version of the in-graph nodes: |obs|, and rows[slot, :7] = signs * a + bias
        where bias = rows[other, 5:12] (each entry one product by -1, 0 or 1 and one
        rounded add, as the Gemm computes it)."""
        o = self.obs_size
        if self.obs_range is not None:
            lo, hi = self.obs_range
            with np.errstate(invalid="ignore", over="ignore"):
                np.subtract(self._obs, lo, out=self._chk[slot, :o])
                np.subtract(hi, self._obs, out=self._chk[slot, o : 2 * o])
        elif self.checks_observation:
            np.abs(self._obs, out=self._chk[slot, :o])
        bias = self._rows[1 - slot, SLACK_ROWS:]
        a = self._act[slot].astype(np.float32)
        with np.errstate(invalid="ignore", over="ignore"):
            self._rows[slot, :CHECK_ROWS] = CHECK_SIGNS * a + bias

    def reset_state(self) -> None:
        """Clear recurrent state (no-op for feed-forward policies)."""


def _limit_vector(values: Any, size: int, default: float, what: str) -> np.ndarray:
    if values is None:
        return np.full(size, default, dtype=np.float32)
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size != size:
        raise ConfigError(f"{what}: expected {size} values (one per action), got {arr.size}")
    if np.isnan(arr).any():
        raise ConfigError(f"{what}: NaN is not a limit; use None (or omit it) for no limit")
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


@dataclass(frozen=True)
class ModelFile:
    """An ONNX file read and checked before onnxruntime sees it (see :func:`read_model_file`).

    Attributes:
        data: the file's bytes.
        sha256: hex digest of ``data`` (what envelopes bind to).
        header: the ModelProto header fields (IR version, opsets, producer, external data).
        external: the model keeps tensors in external files (checked to stay beside it).
    """

    data: bytes = field(repr=False)
    sha256: str
    header: Any
    external: bool


def read_model_file(path: Path) -> ModelFile:
    """Read an ONNX file's bytes, hash them, parse the header and check any external-data
    locations (bounded, never outside the model's folder): the one entrance for every
    policy kind.

    Raises:
        PolicyLoadError: unreadable, not an ONNX model, or external data that escapes.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PolicyLoadError(
            f"cannot read the policy file ({exc.strerror}); check the path", path
        ) from None
    try:
        header = proto.model_header(data)
    except PolicyLoadError as exc:
        raise PolicyLoadError(
            f"not an ONNX model ({exc}); expected a .onnx file written by an ONNX exporter",
            path,
        ) from None
    listed = bool(_check_external_data(data, path))  # always run: it also validates
    external = bool(header.uses_external_data) or listed
    return ModelFile(data, hashlib.sha256(data).hexdigest(), header, external)


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
        fold_observation: also test the observation inside the check vector (an
            ``Abs(obs)`` node; ``checks_observation`` becomes True and the guard's own
            observation test can go). Off by default: measured on the 2-core VM, the extra
            node costs more (~0.35 us) than the byte test it replaces (~0.2 us) for the
            17- and 48-element observations of the benchmark policies.

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
        fold_observation: bool = False,
    ) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        self.name = self.path.name
        model = read_model_file(self.path)
        data, external = model.data, model.external
        self.sha256, header = model.sha256, model.header
        self.ir_version, self.opsets = header.ir_version, dict(header.opsets)
        #: "name version" of the exporter (ModelProto producer_name/producer_version).
        self.producer = f"{header.producer_name} {header.producer_version}".strip()
        self._external = external
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
        self._plain = plain
        self._resolve_interface()
        # With fold_observation the in-graph check tests the observation too (Abs node);
        # the reference path computes the same |obs| in numpy.
        self._init_buffers(self.obs_size, self.action_size, checks_observation=fold_observation)
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
        for t, what, limit in (
            (obs, "observation input", MAX_OBS_SIZE),
            (act, "action output", MAX_ACTION_SIZE),
        ):
            size = int(t.shape[1])  # type: ignore[arg-type]
            if not 1 <= size <= limit:
                raise PolicyLoadError(
                    f"{what} '{t.name}' declares {size} elements; tailguard accepts 1 to "
                    f"{limit}. Check the export (a real policy's {what} is far smaller)",
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
            layers, hidden = int(shape[0]), int(shape[2])  # type: ignore[arg-type]
            if not (layers >= 1 and hidden >= 1 and layers * hidden <= MAX_STATE_SIZE):
                raise PolicyLoadError(
                    f"recurrent state '{i_name}' declares {list(shape)}; tailguard accepts "
                    f"layers * hidden from 1 to {MAX_STATE_SIZE}",
                    path,
                )
            self._state_shapes[i_name] = (layers, 1, hidden)
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

        ext = check_extension(
            self.obs_name,
            self.action_name,
            self.obs_size,
            self.action_size,
            fold_observation=self.checks_observation,
            obs_range=self.obs_range,
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
                f"could not add the guard's check nodes to the model ({exc}); load it with "
                "OnnxPolicy(..., fast_checks=False) to use the slower reference checks",
                self.path,
            ) from None

    def _bind(self) -> None:
        sess = self._session
        self._states = {
            i: np.zeros((2, *shape), dtype=np.float32) for i, shape in self._state_shapes.items()
        }
        a, o = self.action_size, self.obs_size
        rows = _check_shape(a)
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
                bias = self._rows[1 - slot, SLACK_ROWS:]  # the other slot's next rows + const
                b.bind_input(_CHECK_IN, "cpu", 0, np.float32, rows, bias.ctypes.data)
                b.bind_output(_CHECK_OUT, "cpu", 0, np.float32, rows, self._rows[slot].ctypes.data)
                if self.obs_range is not None:
                    chk = self._chk[slot]
                    b.bind_output(_OBS_BELOW, "cpu", 0, np.float32, [1, o], chk.ctypes.data)
                    above = chk[o:].ctypes.data
                    b.bind_output(_OBS_ABOVE, "cpu", 0, np.float32, [1, o], above)
                elif self.checks_observation:
                    obs_abs = self._chk[slot].ctypes.data
                    b.bind_output(_OBS_ABS, "cpu", 0, np.float32, [1, o], obs_abs)
            bindings.append(b)
        self._bindings = tuple(bindings)
        if self.fast_checks:
            # The C-level call skips one Python frame per tick; fall back to the public API.
            c_run = getattr(getattr(sess, "_sess", None), "run_with_iobinding", None)
            c_bindings = tuple(getattr(b, "_iobinding", None) for b in bindings)
            if c_run is not None and all(cb is not None for cb in c_bindings):
                # functools.partial calls through C: cheaper than a lambda frame.
                self._set_run(
                    functools.partial(_call_with_none, c_run), (c_bindings[0], c_bindings[1])
                )
            else:
                self._set_run(sess.run_with_iobinding, (self._bindings[0], self._bindings[1]))
        else:
            self._set_run(self._run_reference, (0, 1))

    def _run_reference(self, slot: int) -> None:
        self._session.run_with_iobinding(self._bindings[slot])
        self._reference_check(slot)

    def _rebuild_checks(self) -> None:
        """A new observation range: a new checked session (its nodes hold the bounds) and
        new bindings. The file is read again and must still be the one loaded."""
        if self.fast_checks:
            try:
                data = self.path.read_bytes()
            except OSError as exc:
                raise PolicyLoadError(
                    f"cannot read the policy file again ({exc.strerror})", self.path
                ) from None
            if hashlib.sha256(data).hexdigest() != self.sha256:
                raise PolicyLoadError(
                    "the policy file changed since it was loaded; load it again", self.path
                )
            so = session_options(self._intra)
            self._session = self._build_checked_session(data, so, self._external)
        self._bind()

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
            "checks_observation": self.checks_observation,
            "observation_range": self.obs_range is not None,
        }


def check_extension(
    obs_name: str,
    action_name: str,
    obs_size: int,
    action_size: int,
    *,
    fold_observation: bool = False,
    obs_range: tuple[np.ndarray, np.ndarray] | None = None,
) -> bytes:
    """The serialized graph fragment that, appended to a model, adds the guard's check.

    ``Gemm(signs [7, 1], actions [1, A], bias [7, A]) -> [7, A]`` (for up to
    :data:`ROW_CHECK_MAX_ACTIONS` actions the faster ``Gemm(actions, [A, 7A], bias [1, 7A])
    -> [1, 7A]``, same memory layout) with one new input (the bias) and one new output;
    with ``fold_observation`` also ``Abs(obs) -> [1, O]``; with ``obs_range`` (float32
    low, high) instead ``Sub(obs, low)`` and ``Sub(high, obs)``, each ``[1, O]`` (see the
    module docstring).
    """
    rows = _check_shape(action_size)
    if action_size <= ROW_CHECK_MAX_ACTIONS:
        operands, signs = [action_name, _CHECK_SIGNS, _CHECK_IN], _signs_matrix(action_size)
    else:
        operands, signs = [_CHECK_SIGNS, action_name, _CHECK_IN], CHECK_SIGNS
    nodes = [proto.node("Gemm", operands, [_CHECK_OUT], "tailguard_check_gemm")]
    outputs = [proto.value_info(_CHECK_OUT, rows)]
    initializers = [proto.tensor(_CHECK_SIGNS, signs)]
    if obs_range is not None:
        low, high = (np.asarray(b, dtype=np.float32).reshape(1, obs_size) for b in obs_range)
        nodes[:0] = [
            proto.node("Sub", [obs_name, _OBS_LOW], [_OBS_BELOW], "tailguard_obs_below"),
            proto.node("Sub", [_OBS_HIGH, obs_name], [_OBS_ABOVE], "tailguard_obs_above"),
        ]
        outputs[:0] = [
            proto.value_info(_OBS_BELOW, [1, obs_size]),
            proto.value_info(_OBS_ABOVE, [1, obs_size]),
        ]
        initializers += [proto.tensor(_OBS_LOW, low), proto.tensor(_OBS_HIGH, high)]
    elif fold_observation:
        nodes.insert(0, proto.node("Abs", [obs_name], [_OBS_ABS], "tailguard_obs_abs"))
        outputs.insert(0, proto.value_info(_OBS_ABS, [1, obs_size]))
    return proto.graph_extension(
        nodes=nodes,
        inputs=[proto.value_info(_CHECK_IN, rows)],
        outputs=outputs,
        initializers=initializers,
    )


def _call_with_none(c_run: Callable[[Any, Any], Any], binding: Any) -> Any:
    return c_run(binding, None)


_LOCATION_ENTRY = b"\x0a\x08location\x12"  # StringStringEntryProto key=1 "location", value=2


def _external_locations(data: bytes) -> list[str]:
    """Every ``location`` of an external-data entry in the model's bytes.

    A byte search rather than a parse, so nested graphs and attribute tensors are covered
    too; a stray match can only make the check stricter.
    """
    names = []
    start = 0
    while (i := data.find(_LOCATION_ENTRY, start)) != -1:
        start = i + len(_LOCATION_ENTRY)
        try:
            length, pos = proto.read_varint(data, start)
        except PolicyLoadError:
            continue
        names.append(data[pos : pos + length].decode(errors="replace"))
    return names


def _location_problem(name: str) -> str | None:
    """Why an external-data location is refused, or None when it names a file beside."""
    if not name:
        return "an empty location"
    if "\x00" in name:
        return "a NUL byte"
    for flavour in (PurePosixPath, PureWindowsPath):
        pure = flavour(name)
        if pure.is_absolute() or pure.drive or pure.root:
            return "an absolute path"
        if ".." in pure.parts:
            return "a path that leaves the model's folder ('..')"
    return None


def _check_external_data(data: bytes, path: Path) -> bool:
    """Refuse external-data locations outside the model's folder, and missing files.

    onnxruntime 1.17 (allowed by the dependency range) still follows absolute and ``../``
    locations, so the check is ours, before onnxruntime sees the file.

    Returns:
        True when the model references external data at all.
    """
    names = _external_locations(data)
    folder = path.resolve().parent
    refused = {n: why for n in names if (why := _location_problem(n)) is not None}
    if refused:
        listing = "; ".join(f"{n!r}: {why}" for n, why in sorted(refused.items()))
        raise PolicyLoadError(
            f"the model's external data location(s) are refused ({listing}); a policy's "
            "data file must sit in the model's own folder, named without a directory. "
            "Re-export as one self-contained file (tailguard export writes such files)",
            path,
        )
    missing = sorted({n for n in names if not (folder / n).is_file()})
    if missing:
        raise PolicyLoadError(
            f"the model keeps its weights in external data file(s) {', '.join(missing)}, not "
            f"found in {folder}; copy them next to the .onnx file, or re-export as one "
            "self-contained file (tailguard export writes self-contained files)",
            path,
        )
    return bool(names)


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
        if not (1 <= obs_size <= MAX_OBS_SIZE and 1 <= action_size <= MAX_ACTION_SIZE):
            raise ConfigError(
                f"sizes must be obs 1..{MAX_OBS_SIZE} and action 1..{MAX_ACTION_SIZE}, got "
                f"obs {obs_size}, action {action_size}"
            )
        self._fn = fn
        self.name = name
        self.path = None
        self.is_recurrent = False
        self.fast_checks = False
        self._init_buffers(obs_size, action_size, checks_observation=True)
        self._set_run(self._run_reference, (0, 1))

    def _run_reference(self, slot: int) -> None:
        if not all_pass(self._obs_bytes, OBS_FLAGS):
            # A function need not survive NaN input: no call, no action (the |obs| entries
            # already fail the check, and a reader of the action sees NaN, not a stale one).
            self._act[slot] = np.nan
            self._reference_check(slot)
            return
        out = np.asarray(self._fn(self._obs), dtype=np.float32).reshape(-1)
        if out.size != self.action_size:
            raise ConfigError(f"policy returned {out.size} values, expected {self.action_size}")
        self._act[slot] = out
        self._reference_check(slot)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        return np.asarray(self._fn(np.asarray(obs, dtype=np.float32)), dtype=np.float32)

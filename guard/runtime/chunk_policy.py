"""Action-chunk policies: one inference returns the next H actions, ``[batch, H, A]``.

ACT, diffusion and flow policies and pi0-style VLAs predict a *chunk* of ``H`` future
actions per inference and execute ``s`` of them (the *execute horizon*) before the next
inference starts (see ``tailguard.runtime.chunk_guard`` for how a chunk is executed and
guarded). This module loads such a policy and checks, before any loop starts, that ``H``,
``s`` and the model's output shape agree:

* ``H`` comes from the output shape (``[batch, H, A]`` with a fixed ``H``), from the model's
  metadata (``metadata_props`` key :data:`CHUNK_HORIZON_KEY`) or from the caller;
* ``s`` from the metadata (:data:`EXECUTE_HORIZON_KEY`) or from the caller;
* every source that gives a value must give the same one, ``1 <= s <= H`` and, for a
  dynamic ``H`` axis, one probe inference at load must return exactly ``[1, H, A]``.

Anything else is a :class:`~tailguard.errors.ConfigError` that says what was expected, what
was found and how to fix it. The file itself is read and validated like a per-tick
:class:`~tailguard.runtime.policy.OnnxPolicy` (bounded sizes, external data only beside the
model, float32 tensors, batch 1 or dynamic).

Buffers are preallocated and bound once: :attr:`obs` (float32 ``[O]``) is the input, and
``infer(slot)`` writes the chunk into ``chunks[slot]`` (float32 ``[2, H, A]``, two slots so
that the chunk being executed stays intact while the next one is computed).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tailguard.errors import ConfigError, PolicyLoadError
from tailguard.runtime.policy import (
    MAX_ACTION_SIZE,
    MAX_OBS_SIZE,
    RECURRENT_PAIRS,
    _call_with_none,
    _infos,
    _is_batch,
    read_model_file,
    session_options,
)

__all__ = [
    "CHUNK_HORIZON_KEY",
    "EXECUTE_HORIZON_KEY",
    "MAX_CHUNK_HORIZON",
    "CallableChunkPolicy",
    "ChunkPolicy",
    "OnnxChunkPolicy",
    "resolve_horizons",
]

#: ONNX ``metadata_props`` key holding the chunk length H (a decimal integer).
CHUNK_HORIZON_KEY = "tailguard.chunk_horizon"
#: ONNX ``metadata_props`` key holding the execute horizon s (a decimal integer).
EXECUTE_HORIZON_KEY = "tailguard.execute_horizon"
#: Largest chunk length accepted at load (real chunk policies use 8 to 100).
MAX_CHUNK_HORIZON = 1024


def _meta_int(meta: Mapping[str, str], key: str, where: Any) -> int | None:
    raw = meta.get(key)
    if raw is None:
        return None
    try:
        value = int(str(raw).strip())
    except ValueError:
        raise ConfigError(
            f"metadata {key!r}: expected a decimal integer, found {raw!r}; re-export with "
            f"metadata_props {key}=<int>",
            where,
        ) from None
    return value


def resolve_horizons(
    shape_horizon: int | None,
    metadata: Mapping[str, str],
    horizon: int | None,
    execute_horizon: int | None,
    where: Any = None,
) -> tuple[int, int]:
    """The chunk length H and execute horizon s every given source agrees on.

    Args:
        shape_horizon: H of the output shape ``[batch, H, A]``, None for a dynamic axis.
        metadata: the model's metadata_props (:data:`CHUNK_HORIZON_KEY`,
            :data:`EXECUTE_HORIZON_KEY`).
        horizon, execute_horizon: what the caller gives, or None.
        where: the file, for messages.

    Returns:
        ``(H, s)`` with ``1 <= s <= H <= MAX_CHUNK_HORIZON``.

    Raises:
        ConfigError: two sources disagree, a value is missing or out of range.
    """
    sources_h = [
        (name, value)
        for name, value in (
            ("the output shape", shape_horizon),
            (f"metadata {CHUNK_HORIZON_KEY!r}", _meta_int(metadata, CHUNK_HORIZON_KEY, where)),
            ("horizon=", horizon),
        )
        if value is not None
    ]
    if not sources_h:
        raise ConfigError(
            "the chunk length H is not known: expected a fixed H in the output shape "
            f"[batch, H, A], metadata {CHUNK_HORIZON_KEY!r} or horizon=; found a dynamic H "
            f"axis and neither; pass horizon=H or export with metadata {CHUNK_HORIZON_KEY}=H",
            where,
        )
    name0, h = sources_h[0]
    for name, value in sources_h[1:]:
        if value != h:
            raise ConfigError(
                f"chunk length H disagrees: expected {name} to match {name0} (H = {h}), found "
                f"H = {value}; re-export the model or pass the H the model outputs",
                where,
            )
    if not 1 <= h <= MAX_CHUNK_HORIZON:
        raise ConfigError(
            f"chunk length H: expected 1 to {MAX_CHUNK_HORIZON}, found {h}; check the export",
            where,
        )
    meta_s = _meta_int(metadata, EXECUTE_HORIZON_KEY, where)
    if meta_s is not None and execute_horizon is not None and meta_s != execute_horizon:
        raise ConfigError(
            f"execute horizon s disagrees: metadata {EXECUTE_HORIZON_KEY!r} says {meta_s}, "
            f"execute_horizon= says {execute_horizon}; give one value (or none, to use the "
            "model's)",
            where,
        )
    s = execute_horizon if execute_horizon is not None else meta_s
    if s is None:
        raise ConfigError(
            "the execute horizon s is not known: expected metadata "
            f"{EXECUTE_HORIZON_KEY!r} or execute_horizon=; found neither; pass "
            f"execute_horizon=s (1 <= s <= H = {h})",
            where,
        )
    if not 1 <= s <= h:
        raise ConfigError(
            f"execute horizon s: expected 1 <= s <= H = {h}, found s = {s}; a chunk cannot "
            "execute more actions than it holds",
            where,
        )
    return h, s


class ChunkPolicy:
    """What every chunk policy has (the guard's view of it).

    Attributes:
        obs_size, action_size, horizon (H), execute_horizon (s): the interface.
        obs: float32 [O], the input buffer ``infer`` reads.
        chunks: float32 [2, H, A]; ``infer(slot)`` writes ``chunks[slot]``.
        sha256: of the model file, or None.
        name: for stats and logs.
    """

    obs_size: int
    action_size: int
    horizon: int
    execute_horizon: int
    sha256: str | None = None
    name: str = "chunk policy"
    path: Path | None = None

    def _init_buffers(self, obs_size: int, action_size: int, horizon: int) -> None:
        self.obs_size, self.action_size, self.horizon = obs_size, action_size, horizon
        self.obs = np.zeros(obs_size, dtype=np.float32)
        self.chunks = np.zeros((2, horizon, action_size), dtype=np.float32)

    def infer(self, slot: int) -> None:
        """One inference of :attr:`obs` into ``chunks[slot]``; may raise."""
        raise NotImplementedError

    def reset_state(self) -> None:
        """Clear recurrent state (chunk policies here are feed-forward: nothing to clear)."""

    def __call__(self, obs: Any) -> np.ndarray:
        """Plain inference outside any guard: obs [O] -> a copy of the chunk [H, A]."""
        self.obs[:] = np.asarray(obs, dtype=np.float32).reshape(-1)
        self.infer(0)
        return self.chunks[0].copy()


class CallableChunkPolicy(ChunkPolicy):
    """A Python function as a chunk policy (tests, reference runs).

    Args:
        fn: ``fn(obs) -> chunk``; obs is the float32 [O] input buffer (do not keep it), the
            chunk anything convertible to float32 [H, A].
        obs_size, action_size, horizon, execute_horizon: the interface.
        name: for stats and logs.

    Raises:
        ConfigError: sizes out of range, or s outside 1..H.
    """

    def __init__(
        self,
        fn: Callable[[np.ndarray], Any],
        obs_size: int,
        action_size: int,
        horizon: int,
        execute_horizon: int,
        name: str = "callable chunk policy",
    ) -> None:
        if not (1 <= obs_size <= MAX_OBS_SIZE and 1 <= action_size <= MAX_ACTION_SIZE):
            raise ConfigError(
                f"sizes: expected obs 1..{MAX_OBS_SIZE} and action 1..{MAX_ACTION_SIZE}, found "
                f"obs {obs_size}, action {action_size}"
            )
        h, s = resolve_horizons(horizon, {}, None, execute_horizon)
        self._fn = fn
        self.name = name
        self.execute_horizon = s
        self._init_buffers(obs_size, action_size, h)

    def infer(self, slot: int) -> None:
        out = np.asarray(self._fn(self.obs), dtype=np.float32)
        if out.size != self.horizon * self.action_size:
            raise ConfigError(
                f"chunk policy returned {out.size} values, expected H x A = "
                f"{self.horizon} x {self.action_size}"
            )
        self.chunks[slot] = out.reshape(self.horizon, self.action_size)


class OnnxChunkPolicy(ChunkPolicy):
    """An ONNX chunk policy ``obs [batch, O] -> actions [batch, H, A]``, validated at load.

    The observation is the input named ``obs`` (or the only input); the chunk is the output
    named ``actions`` (or the first output). Recurrent chunk policies are refused.

    Args:
        path: the .onnx file.
        horizon: H, if the model does not say it (or to check that it does).
        execute_horizon: s, if the model's metadata does not say it (or to check it).
        intra_op_threads: onnxruntime intra-op threads.
        providers: onnxruntime execution providers (default CPU).

    Raises:
        PolicyLoadError: unreadable or invalid model, or an interface the guard cannot run.
        ConfigError: H, s and the output shape disagree (see the module docstring).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        horizon: int | None = None,
        execute_horizon: int | None = None,
        intra_op_threads: int = 1,
        providers: Sequence[str] | None = None,
    ) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        self.name = self.path.name
        self.sha256 = read_model_file(self.path).sha256
        so = session_options(intra_op_threads)
        try:
            sess = ort.InferenceSession(
                str(self.path), so, providers=list(providers or ["CPUExecutionProvider"])
            )
        except Exception as exc:  # onnxruntime raises several unrelated types
            raise PolicyLoadError(f"onnxruntime cannot load the model: {exc}", path) from None
        self._session = sess
        self.inputs = _infos(sess.get_inputs())
        self.outputs = _infos(sess.get_outputs())
        self.metadata: dict[str, str] = dict(sess.get_modelmeta().custom_metadata_map)
        shape_h = self._resolve_interface()
        self.horizon, self.execute_horizon = resolve_horizons(
            shape_h, self.metadata, horizon, execute_horizon, self.path
        )
        self._init_buffers(self.obs_size, self.action_size, self.horizon)
        self._bind()
        self._probe()

    def _resolve_interface(self) -> int | None:
        path = self.path
        names = {t.name for t in self.inputs} | {t.name for t in self.outputs}
        recurrent = [n for pair in RECURRENT_PAIRS for n in pair if n in names]
        if recurrent:
            raise PolicyLoadError(
                f"recurrent state {recurrent} in a chunk policy: tailguard runs feed-forward "
                "chunk policies only; export the chunk head without recurrent state",
                path,
            )
        ins = {t.name: t for t in self.inputs}
        if "obs" in ins:
            obs = ins["obs"]
        elif len(self.inputs) == 1:
            obs = self.inputs[0]
        else:
            raise PolicyLoadError(
                "cannot tell which input is the observation: expected an input named 'obs' or a "
                f"single input, found {[t.name for t in self.inputs]}",
                path,
            )
        if not self.outputs:
            raise PolicyLoadError("the model has no action output", path)
        act = {t.name: t for t in self.outputs}.get("actions", self.outputs[0])
        for t, what in ((obs, "observation input"), (act, "chunk output")):
            if t.type != "tensor(float)":
                raise PolicyLoadError(
                    f"{what} '{t.name}' has element type {t.type}; expected tensor(float) "
                    "(float32). Re-export the model in float32",
                    path,
                )
        if len(obs.shape) != 2 or not _is_batch(obs.shape[0]) or not isinstance(obs.shape[1], int):
            raise PolicyLoadError(
                f"observation input '{obs.name}' has shape {list(obs.shape)}; expected "
                "[batch, size] with batch 1 or dynamic and a fixed size",
                path,
            )
        shape = act.shape
        if len(shape) != 3 or not _is_batch(shape[0]) or not isinstance(shape[2], int):
            raise ConfigError(
                f"chunk output '{act.name}': expected shape [batch, H, A] with batch 1 or "
                f"dynamic and a fixed A, found {list(shape)}; a per-tick policy ([batch, A]) "
                "loads with OnnxPolicy",
                path,
            )
        for size, what, limit in (
            (obs.shape[1], "observation input", MAX_OBS_SIZE),
            (shape[2], "chunk output's action axis", MAX_ACTION_SIZE),
        ):
            if not 1 <= int(size) <= limit:  # type: ignore[arg-type]
                raise PolicyLoadError(
                    f"{what} declares {size} elements; tailguard accepts 1 to {limit}", path
                )
        self.obs_name, self.action_name = obs.name, act.name
        self.obs_size, self.action_size = int(obs.shape[1]), int(shape[2])  # type: ignore[arg-type]
        return shape[1] if isinstance(shape[1], int) else None

    def _bind(self) -> None:
        sess = self._session
        h, a = self.horizon, self.action_size
        bindings = []
        for slot in (0, 1):
            b = sess.io_binding()
            b.bind_cpu_input(self.obs_name, self.obs.reshape(1, -1))
            b.bind_output(
                self.action_name, "cpu", 0, np.float32, [1, h, a], self.chunks[slot].ctypes.data
            )
            bindings.append(b)
        self._bindings = tuple(bindings)
        c_run = getattr(getattr(sess, "_sess", None), "run_with_iobinding", None)
        c_bindings = tuple(getattr(b, "_iobinding", None) for b in bindings)
        if c_run is not None and all(cb is not None for cb in c_bindings):
            run = functools.partial(_call_with_none, c_run)
            self._run_args: tuple[Any, Any] = (c_bindings[0], c_bindings[1])
        else:
            run = sess.run_with_iobinding
            self._run_args = (bindings[0], bindings[1])
        self._run = run

    def _probe(self) -> None:
        """One inference on zeros: the model really returns [1, H, A] (a dynamic H axis is
        only known once it runs)."""
        out = self._session.run([self.action_name], {self.obs_name: self.obs.reshape(1, -1)})[0]
        want = (1, self.horizon, self.action_size)
        if tuple(out.shape) != want:
            raise ConfigError(
                f"chunk output '{self.action_name}': expected [1, H, A] = {list(want)} for one "
                f"observation, found {list(out.shape)}; pass the horizon the model really "
                "outputs (or fix its metadata)",
                self.path,
            )

    def infer(self, slot: int) -> None:
        self._run(self._run_args[slot])

    def describe(self) -> dict[str, Any]:
        """Interface and provenance facts."""
        return {
            "path": str(self.path),
            "sha256": self.sha256,
            "obs_size": self.obs_size,
            "action_size": self.action_size,
            "horizon": self.horizon,
            "execute_horizon": self.execute_horizon,
            "metadata": dict(self.metadata),
        }

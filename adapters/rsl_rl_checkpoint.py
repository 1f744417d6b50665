"""Read RSL-RL checkpoints of every generation without importing rsl_rl or running pickled code.

Layouts recognised (the actor part only; critics are ignored):

========  ===========================================================================
format    keys
========  ===========================================================================
1.x       ``model_state_dict``: ``actor.N.{weight,bias}``, ``std``, recurrent
          ``memory_a.rnn.*`` (legged_gym / unitree_rl_gym; also what 2.x/3.x write
          without observation normalization and with a scalar std)
2.x       as 1.x plus the runner-level ``obs_norm_state_dict`` (``_mean``, ``_var``,
          ``_std``, ``count``), or ``log_std`` instead of ``std``
3.x       ``model_state_dict`` with the normalizer inside: ``actor_obs_normalizer.*``
4.x       ``actor_state_dict``: ``mlp.N.*``, ``obs_normalizer.*``, ``std``/``log_std``,
          recurrent ``rnn.rnn.*``
5.x       as 4.x with ``distribution.std_param`` / ``distribution.log_std_param``
========  ===========================================================================

Normalization is ``(x - mean) / (std + 0.01)`` in every version. The activation cannot be
read from weights: it defaults to ELU (rsl-rl's default) and is configurable. Hidden sizes,
observation and action sizes, and the recurrent type (LSTM: 4 gates, GRU: 3, from the shape
of ``weight_hh``) are inferred. Any key under the actor that is not understood makes the load
fail with the list of such keys: a checkpoint is never partially loaded.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tailguard.adapters._torch import load_weights_only, require_torch
from tailguard.errors import CheckpointError

__all__ = [
    "KNOWN_FORMATS",
    "NORMALIZER_EPS",
    "RslRlActor",
    "RslRlActorSpec",
    "build_actor_module",
    "load_rsl_rl_checkpoint",
    "parse_rsl_rl_checkpoint",
    "read_torch_checkpoint",
]

NORMALIZER_EPS = 0.01
"""Added to the running std by rsl-rl's ``EmpiricalNormalization`` (all versions)."""

KNOWN_FORMATS = (
    "1.x: 'model_state_dict' with actor.N.*, std, memory_a.rnn.*",
    "2.x: as 1.x plus top-level 'obs_norm_state_dict' (or log_std)",
    "3.x: 'model_state_dict' with actor_obs_normalizer.*",
    "4.x: 'actor_state_dict' with mlp.N.*, obs_normalizer.*, std/log_std, rnn.rnn.*",
    "5.x: 'actor_state_dict' with distribution.std_param/log_std_param",
)

_ACTIVATION_NAMES = (
    "elu",
    "gelu",
    "identity",
    "lrelu",
    "mish",
    "relu",
    "selu",
    "sigmoid",
    "softplus",
    "swish",
    "tanh",
)
_LAYER_RE = re.compile(r"^(\d+)\.(weight|bias)$")
_RNN_RE = re.compile(r"^(weight_ih|weight_hh|bias_ih|bias_hh)_l(\d+)$")
_NORM_KEYS = frozenset({"_mean", "_var", "_std", "count"})


@dataclass(frozen=True)
class RslRlActorSpec:
    """What was read from a checkpoint (no tensors).

    Attributes:
        format_version: ``"1.x"`` … ``"5.x"`` (see the module docstring for the ambiguity
            of 1.x).
        obs_dim: observation size.
        action_dim: action size.
        hidden_sizes: MLP hidden layer sizes (the head after the RNN for recurrent actors).
        activation: activation used to rebuild the MLP (not stored in checkpoints).
        recurrent: ``"none"``, ``"lstm"`` or ``"gru"``.
        rnn_hidden_size: RNN hidden size (0 if not recurrent).
        rnn_num_layers: RNN layers (0 if not recurrent).
        normalizer: whether an observation normalizer is folded in.
        std_key: name of the noise parameter found (``std``, ``log_std``, …).
        sha256: sha256 of the source file ("" when parsed from memory).
    """

    format_version: str
    obs_dim: int
    action_dim: int
    hidden_sizes: tuple[int, ...]
    activation: str
    recurrent: str
    rnn_hidden_size: int
    rnn_num_layers: int
    normalizer: bool
    std_key: str
    sha256: str = ""


@dataclass(frozen=True)
class RslRlActor:
    """The actor's tensors, ready to rebuild with :func:`build_actor_module`.

    Attributes:
        spec: sizes and provenance.
        layers: MLP ``(weight [out, in], bias [out])`` pairs, in order.
        rnn_state: torch-native RNN parameters (``weight_ih_l0`` …), empty if not recurrent.
        obs_mean: normalizer mean ``[obs_dim]`` or ``None``.
        obs_std: normalizer std ``[obs_dim]`` or ``None``.
    """

    spec: RslRlActorSpec
    layers: tuple[tuple[Any, Any], ...]
    rnn_state: Mapping[str, Any] = field(default_factory=dict)
    obs_mean: Any = None
    obs_std: Any = None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_torch_checkpoint(path: str | os.PathLike[str]) -> Any:
    """``torch.load`` with ``weights_only=True`` on CPU, with every failure as ``CheckpointError``.

    Args:
        path: the ``.pt`` file.

    Raises:
        CheckpointError: missing, unreadable, truncated, not a torch file, or holding pickled
            objects other than tensors and plain containers (refused, never executed).
    """
    require_torch("Reading RSL-RL checkpoints")
    path = Path(path)
    if not path.is_file():
        raise CheckpointError("checkpoint file not found; check the path", path)
    return load_weights_only(path, path, "the checkpoint")


def load_rsl_rl_checkpoint(
    path: str | os.PathLike[str],
    *,
    activation: str = "elu",
    hidden_sizes: Sequence[int] | None = None,
) -> RslRlActor:
    """Load the actor of an RSL-RL checkpoint of any known format.

    Args:
        path: the checkpoint ``.pt`` file (``torch.save`` of the runner's dict).
        activation: the MLP activation (checkpoints do not store it); rsl-rl's default ELU.
        hidden_sizes: if given, the MLP hidden sizes the checkpoint must have.

    Returns:
        The actor's tensors and spec (``spec.sha256`` is the file's hash).

    Raises:
        CheckpointError: unreadable file, unknown layout (the message names the keys found and
            the known formats), inconsistent shapes, or ``hidden_sizes`` mismatch.
    """
    path = Path(path)
    ckpt = read_torch_checkpoint(path)
    try:
        return parse_rsl_rl_checkpoint(
            ckpt, activation=activation, hidden_sizes=hidden_sizes, sha256=_sha256(path)
        )
    except CheckpointError as exc:
        raise CheckpointError(exc.message, path) from None


def _keys_preview(keys: Sequence[str], limit: int = 12) -> str:
    shown = sorted(keys)[:limit]
    more = f" … (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return f"{shown}{more}"


def _unknown_layout(found: str) -> CheckpointError:
    return CheckpointError(
        f"unrecognised RSL-RL checkpoint layout: found {found}. Known formats: "
        + "; ".join(KNOWN_FORMATS)
    )


def _is_tensor(value: Any) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype") and hasattr(value, "reshape")


def parse_rsl_rl_checkpoint(
    ckpt: Any,
    *,
    activation: str = "elu",
    hidden_sizes: Sequence[int] | None = None,
    sha256: str = "",
) -> RslRlActor:
    """Recognise the layout of an already loaded checkpoint dict and extract the actor.

    A bare state dict (``actor.N.*`` or ``mlp.N.*`` keys at top level) is accepted as the
    corresponding ``model_state_dict`` / ``actor_state_dict``.

    Args:
        ckpt: the object ``torch.load`` returned.
        activation: the MLP activation name.
        hidden_sizes: if given, the hidden sizes the checkpoint must have.
        sha256: hash of the source file, recorded in the spec.

    Raises:
        CheckpointError: see :func:`load_rsl_rl_checkpoint`.
    """
    if activation.lower() not in _ACTIVATION_NAMES:
        raise CheckpointError(
            f"unknown activation '{activation}'; valid choices are {list(_ACTIVATION_NAMES)}"
        )
    if not isinstance(ckpt, Mapping):
        raise _unknown_layout(f"a {type(ckpt).__name__}, not a dict")
    keys = [str(k) for k in ckpt]
    if "actor_state_dict" in ckpt:
        state = ckpt["actor_state_dict"]
        if not isinstance(state, Mapping):
            raise _unknown_layout("'actor_state_dict' that is not a dict")
        actor = _parse_modern(state, activation, sha256)
    elif "model_state_dict" in ckpt:
        state = ckpt["model_state_dict"]
        if not isinstance(state, Mapping):
            raise _unknown_layout("'model_state_dict' that is not a dict")
        actor = _parse_legacy(state, ckpt.get("obs_norm_state_dict"), activation, sha256)
    elif keys and all(_is_tensor(v) for v in ckpt.values()):
        if any(k.startswith("mlp.") for k in keys):
            actor = _parse_modern(ckpt, activation, sha256)
        elif any(k.startswith("actor.") for k in keys):
            actor = _parse_legacy(ckpt, None, activation, sha256)
        else:
            raise _unknown_layout(f"a bare state dict with keys {_keys_preview(keys)}")
    else:
        raise _unknown_layout(f"top-level keys {_keys_preview(keys)}")
    if hidden_sizes is not None and tuple(int(h) for h in hidden_sizes) != actor.spec.hidden_sizes:
        raise CheckpointError(
            f"hidden sizes {list(hidden_sizes)} were requested but the checkpoint's actor has "
            f"{list(actor.spec.hidden_sizes)}; drop --hidden-sizes or pick the right checkpoint"
        )
    return actor


def _split(state: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _parse_layers(params: Mapping[str, Any], where: str) -> tuple[tuple[Any, Any], ...]:
    indexed: dict[int, dict[str, Any]] = {}
    for key, value in params.items():
        match = _LAYER_RE.match(key)
        if match is None:
            raise CheckpointError(f"unexpected key '{where}{key}' in the actor MLP")
        indexed.setdefault(int(match.group(1)), {})[match.group(2)] = value
    if not indexed:
        raise CheckpointError(f"no actor MLP layers ('{where}N.weight') found")
    layers: list[tuple[Any, Any]] = []
    for index in sorted(indexed):
        entry = indexed[index]
        if set(entry) != {"weight", "bias"}:
            raise CheckpointError(f"actor MLP layer '{where}{index}' lacks a weight or a bias")
        weight, bias = entry["weight"], entry["bias"]
        if len(weight.shape) != 2 or tuple(bias.shape) != (weight.shape[0],):
            raise CheckpointError(
                f"actor MLP layer '{where}{index}' has weight {list(weight.shape)} and bias "
                f"{list(bias.shape)}; expected [out, in] and [out]"
            )
        if layers and int(weight.shape[1]) != int(layers[-1][0].shape[0]):
            raise CheckpointError(
                f"actor MLP layer '{where}{index}' takes {int(weight.shape[1])} inputs but the "
                f"previous layer gives {int(layers[-1][0].shape[0])}"
            )
        layers.append((weight, bias))
    return tuple(layers)


def _parse_rnn(params: Mapping[str, Any], where: str) -> tuple[str, int, int, dict[str, Any]]:
    """Return (type, hidden_size, num_layers, torch-native state)."""
    by_layer: dict[int, dict[str, Any]] = {}
    for key, value in params.items():
        match = _RNN_RE.match(key)
        if match is None:
            raise CheckpointError(
                f"unexpected key '{where}{key}' in the actor RNN (bidirectional or projected "
                "RNNs are not supported)"
            )
        by_layer.setdefault(int(match.group(2)), {})[match.group(1)] = value
    num_layers = len(by_layer)
    if sorted(by_layer) != list(range(num_layers)):
        raise CheckpointError(f"actor RNN '{where}' has layers {sorted(by_layer)}; expected 0..n")
    first = by_layer[0]
    if set(first) != {"weight_ih", "weight_hh", "bias_ih", "bias_hh"}:
        raise CheckpointError(f"actor RNN layer 0 under '{where}' is incomplete: {sorted(first)}")
    rows, hidden = (int(d) for d in first["weight_hh"].shape)
    gates = rows // hidden if hidden else 0
    if hidden == 0 or rows % hidden or gates not in (3, 4):
        raise CheckpointError(
            f"actor RNN weight_hh_l0 has shape [{rows}, {hidden}]; expected [4*H, H] (LSTM) "
            "or [3*H, H] (GRU)"
        )
    rnn_type = "lstm" if gates == 4 else "gru"
    state: dict[str, Any] = {}
    for layer, entry in by_layer.items():
        in_size = int(first["weight_ih"].shape[1]) if layer == 0 else hidden
        expected = {
            "weight_ih": (rows, in_size),
            "weight_hh": (rows, hidden),
            "bias_ih": (rows,),
            "bias_hh": (rows,),
        }
        for name, shape in expected.items():
            if name not in entry or tuple(int(d) for d in entry[name].shape) != shape:
                got = list(entry[name].shape) if name in entry else "missing"
                raise CheckpointError(
                    f"actor RNN '{where}{name}_l{layer}' is {got}; expected {list(shape)} for "
                    f"a {rnn_type.upper()} with hidden size {hidden}"
                )
            state[f"{name}_l{layer}"] = entry[name]
    return rnn_type, hidden, num_layers, state


def _parse_normalizer(params: Mapping[str, Any], where: str) -> tuple[Any, Any]:
    unknown = sorted(set(params) - _NORM_KEYS)
    if unknown:
        raise CheckpointError(f"unexpected normalizer keys {[where + k for k in unknown]}")
    if "_mean" not in params or not ("_std" in params or "_var" in params):
        raise CheckpointError(
            f"observation normalizer '{where}' needs '_mean' and '_std' (or '_var'); found "
            f"{sorted(params)}"
        )
    mean = params["_mean"].reshape(-1)
    std = params["_std"].reshape(-1) if "_std" in params else params["_var"].reshape(-1).sqrt()
    if mean.shape != std.shape:
        raise CheckpointError(
            f"normalizer '{where}' mean {list(mean.shape)} and std {list(std.shape)} differ"
        )
    return mean, std


def _finish(
    version: str,
    layers: tuple[tuple[Any, Any], ...],
    rnn: tuple[str, int, int, dict[str, Any]] | None,
    norm: tuple[Any, Any] | None,
    std_key: str,
    std_value: Any,
    activation: str,
    sha256: str,
) -> RslRlActor:
    mlp_in = int(layers[0][0].shape[1])
    if rnn is not None:
        rnn_type, rnn_hidden, rnn_layers, rnn_state = rnn
        obs_dim = int(rnn_state["weight_ih_l0"].shape[1])
        if mlp_in != rnn_hidden:
            raise CheckpointError(
                f"the actor MLP takes {mlp_in} inputs but the RNN outputs {rnn_hidden}"
            )
    else:
        rnn_type, rnn_hidden, rnn_layers, rnn_state = "none", 0, 0, {}
        obs_dim = mlp_in
    action_dim = int(layers[-1][0].shape[0])
    if norm is not None and int(norm[0].shape[0]) != obs_dim:
        raise CheckpointError(
            f"the normalizer has {int(norm[0].shape[0])} entries but the actor takes "
            f"{obs_dim} observations"
        )
    if std_value is not None and int(std_value.reshape(-1).shape[0]) != action_dim:
        raise CheckpointError(
            f"'{std_key}' has {int(std_value.reshape(-1).shape[0])} entries but the actor "
            f"outputs {action_dim} actions"
        )
    spec = RslRlActorSpec(
        format_version=version,
        obs_dim=obs_dim,
        action_dim=action_dim,
        hidden_sizes=tuple(int(w.shape[0]) for w, _ in layers[:-1]),
        activation=activation.lower(),
        recurrent=rnn_type,
        rnn_hidden_size=rnn_hidden,
        rnn_num_layers=rnn_layers,
        normalizer=norm is not None,
        std_key=std_key,
        sha256=sha256,
    )
    return RslRlActor(
        spec=spec,
        layers=layers,
        rnn_state=rnn_state,
        obs_mean=None if norm is None else norm[0],
        obs_std=None if norm is None else norm[1],
    )


def _parse_legacy(
    state: Mapping[str, Any], runner_norm: Any, activation: str, sha256: str
) -> RslRlActor:
    """1.x–3.x: one ``model_state_dict`` holding actor and critic."""
    keys = [str(k) for k in state]
    ignored = ("critic.", "memory_c.", "critic_obs_normalizer.")
    known = ("actor.", "memory_a.rnn.", "actor_obs_normalizer.")
    unknown = [k for k in keys if not k.startswith(ignored + known) and k not in ("std", "log_std")]
    if unknown or not any(k.startswith("actor.") for k in keys):
        raise _unknown_layout(
            f"'model_state_dict' with keys {_keys_preview(keys)}"
            + (f", not understood: {_keys_preview(unknown)}" if unknown else "")
        )
    std_keys = [k for k in ("std", "log_std") if k in state]
    if len(std_keys) != 1:
        raise CheckpointError(
            f"expected exactly one of 'std' / 'log_std' in 'model_state_dict', found {std_keys}"
        )
    layers = _parse_layers(_split(state, "actor."), "actor.")
    rnn_params = _split(state, "memory_a.rnn.")
    rnn = _parse_rnn(rnn_params, "memory_a.rnn.") if rnn_params else None
    inner_norm = _split(state, "actor_obs_normalizer.")
    norm = None
    if inner_norm and runner_norm is not None:
        raise CheckpointError(
            "both 'actor_obs_normalizer.*' (3.x) and a runner-level 'obs_norm_state_dict' (2.x) "
            "are present; refusing to guess which one the policy used"
        )
    if inner_norm:
        version = "3.x"
        norm = _parse_normalizer(inner_norm, "actor_obs_normalizer.")
    elif runner_norm is not None:
        version = "2.x"
        if not isinstance(runner_norm, Mapping):
            raise CheckpointError("'obs_norm_state_dict' is not a dict of tensors")
        norm = _parse_normalizer(runner_norm, "obs_norm_state_dict.")
    else:
        version = "2.x" if std_keys[0] == "log_std" else "1.x"
    return _finish(version, layers, rnn, norm, std_keys[0], state[std_keys[0]], activation, sha256)


def _parse_modern(state: Mapping[str, Any], activation: str, sha256: str) -> RslRlActor:
    """4.x / 5.x: a separate ``actor_state_dict``."""
    keys = [str(k) for k in state]
    std_names = ("std", "log_std", "distribution.std_param", "distribution.log_std_param")
    known = ("mlp.", "rnn.rnn.", "obs_normalizer.")
    unknown = [k for k in keys if not k.startswith(known) and k not in std_names]
    if unknown or not any(k.startswith("mlp.") for k in keys):
        raise _unknown_layout(
            f"'actor_state_dict' with keys {_keys_preview(keys)}"
            + (f", not understood: {_keys_preview(unknown)}" if unknown else "")
        )
    std_keys = [k for k in std_names if k in state]
    if len(std_keys) != 1:
        raise CheckpointError(
            "expected exactly one Gaussian noise parameter (std, log_std, "
            "distribution.std_param or distribution.log_std_param) in 'actor_state_dict', "
            f"found {std_keys}; other output distributions are not supported"
        )
    version = "5.x" if std_keys[0].startswith("distribution.") else "4.x"
    layers = _parse_layers(_split(state, "mlp."), "mlp.")
    rnn_params = _split(state, "rnn.rnn.")
    rnn = _parse_rnn(rnn_params, "rnn.rnn.") if rnn_params else None
    norm_params = _split(state, "obs_normalizer.")
    norm = _parse_normalizer(norm_params, "obs_normalizer.") if norm_params else None
    return _finish(version, layers, rnn, norm, std_keys[0], state[std_keys[0]], activation, sha256)


def build_actor_module(actor: RslRlActor) -> Any:
    """Rebuild the deterministic actor (action mean) as a torch module, in eval mode.

    Returns:
        ``MlpActor`` (``forward(obs) -> actions``), ``LstmActor``
        (``forward(obs, h_in, c_in) -> (actions, h_out, c_out)``) or ``GruActor``
        (``forward(obs, h_in) -> (actions, h_out)``), all float32.
    """
    torch = require_torch("Rebuilding an RSL-RL actor")
    from tailguard.adapters import torch_modules as tm

    spec = actor.spec
    pre = None
    if actor.obs_mean is not None:
        pre = tm.ObsNormalizer(actor.obs_mean, actor.obs_std, NORMALIZER_EPS)
    mlp = tm.build_mlp(actor.layers, spec.activation)
    module: Any
    if spec.recurrent == "none":
        module = tm.MlpActor(mlp, pre=pre)
    else:
        rnn_cls = torch.nn.LSTM if spec.recurrent == "lstm" else torch.nn.GRU
        rnn = rnn_cls(spec.obs_dim, spec.rnn_hidden_size, spec.rnn_num_layers)
        rnn.load_state_dict(
            {k: v.to(torch.float32) for k, v in actor.rnn_state.items()}, strict=True
        )
        cls = tm.LstmActor if spec.recurrent == "lstm" else tm.GruActor
        module = cls(rnn, mlp, pre=pre)
    return module.eval()

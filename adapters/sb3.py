"""Stable-Baselines3 models (PPO, A2C, SAC, TD3) → self-contained ONNX, without running pickles.

An SB3 ``.zip`` holds ``policy.pth`` (a plain state dict, read with ``weights_only=True``) and
``data`` (JSON; spaces and classes are stored both pickled and as readable fields: only the
readable fields are used). The exported graph computes what ``model.predict(obs,
deterministic=True)`` returns for a flat ``Box`` observation:

* PPO / A2C: the Gaussian mean, clipped to the action bounds;
* SAC: ``tanh`` of the mean, rescaled from [-1, 1] to the action bounds;
* TD3 (and DDPG): the actor output (already ``tanh``), rescaled to the action bounds.

An optional ``VecNormalize`` statistics file is folded in front. That file is a pickle: it is
read with a restricted unpickler that only rebuilds numpy arrays and stand-in objects for SB3
and gymnasium classes, so no code from the file runs. Discrete or dict spaces, image
feature extractors and gSDE-squashed policies are refused with a clear message.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tailguard.adapters._torch import load_weights_only, require_torch
from tailguard.adapters.export import (
    DEFAULT_TOLERANCE,
    METADATA_PREFIX,
    ExportResult,
    export_module,
)
from tailguard.errors import CheckpointError

__all__ = [
    "ACTIVATION_NAMES",
    "POLICY_PTH_MAX_BYTES",
    "Sb3Policy",
    "Sb3Spec",
    "VecNormalizeStats",
    "export_sb3",
    "load_sb3",
    "parse_sb3",
    "read_vecnormalize",
    "read_vecnormalize_stats",
    "sb3_metadata",
    "torch_state_reader",
]

_SB3_ACTIVATIONS = {
    "Tanh": "tanh",
    "ReLU": "relu",
    "ELU": "elu",
    "LeakyReLU": "lrelu",
    "SELU": "selu",
    "GELU": "gelu",
    "SiLU": "swish",
    "Mish": "mish",
    "Sigmoid": "sigmoid",
    "Softplus": "softplus",
}


@dataclass(frozen=True)
class Sb3Policy:
    """What was read from an SB3 zip.

    Attributes:
        algorithm: ``"ppo"``, ``"a2c"``, ``"sac"`` or ``"td3"``.
        obs_dim: flat observation size.
        action_low: action lower bounds ``[action_dim]`` float32.
        action_high: action upper bounds ``[action_dim]`` float32.
        activation: activation of the actor MLP.
        hidden_sizes: actor hidden sizes.
        sha256: sha256 of the zip file.
        module: the torch module computing the deterministic action (eval mode).
    """

    algorithm: str
    obs_dim: int
    action_low: np.ndarray
    action_high: np.ndarray
    activation: str
    hidden_sizes: tuple[int, ...]
    sha256: str
    module: Any


@dataclass(frozen=True)
class VecNormalizeStats:
    """Frozen ``VecNormalize`` observation statistics (float64, as SB3 keeps them).

    The normalization is ``clip((x - mean) / sqrt(var + epsilon), -clip_obs, clip_obs)``.
    """

    mean: np.ndarray
    var: np.ndarray
    epsilon: float
    clip_obs: float

    @property
    def scale32(self) -> np.ndarray:
        """``sqrt(var + epsilon)`` computed in float64, stored float32 (what both graphs use)."""
        return np.sqrt(self.var + self.epsilon).astype(np.float32)


@dataclass(frozen=True)
class Sb3Spec:
    """The deterministic action path of an SB3 model, as plain numpy: THE one parse.

    Both exporters build from it: the torch modules (:func:`load_sb3`) and the torch-free
    ONNX graph (``tailguard.adapters.sb3_native``).

    Attributes:
        algorithm: ``"ppo"``, ``"a2c"``, ``"sac"`` or ``"td3"``.
        obs_dim: flat observation size.
        action_low: action lower bounds ``[action_dim]`` float32.
        action_high: action upper bounds ``[action_dim]`` float32.
        activation: the actor activation (names of ``_SB3_ACTIVATIONS`` or ``identity``).
        hidden_sizes: actor hidden sizes.
        layers: ``(weight [out, in], bias [out])`` per linear layer, as stored (float32/64).
        squash: ``True``: ``tanh`` then rescale from [-1, 1] to the bounds (SAC, TD3);
            ``False``: clip to the bounds (PPO, A2C).
        normalizer: VecNormalize statistics folded in front, or ``None``.
        obs_normalizer: ``"vecnormalize"`` when a statistics file was given, else ``"none"``.
        sha256: sha256 of the zip file.
        source_file: the zip's file name.
    """

    algorithm: str
    obs_dim: int
    action_low: np.ndarray
    action_high: np.ndarray
    activation: str
    hidden_sizes: tuple[int, ...]
    layers: tuple[tuple[np.ndarray, np.ndarray], ...]
    squash: bool
    normalizer: VecNormalizeStats | None
    obs_normalizer: str
    sha256: str
    source_file: str

    @property
    def action_dim(self) -> int:
        """Number of actions."""
        return int(self.action_low.shape[0])


def sb3_metadata(spec: Sb3Spec) -> dict[str, str]:
    """The ``tailguard.*`` metadata every SB3 export writes (torch or native)."""
    p = METADATA_PREFIX
    return {
        f"{p}source_format": "sb3",
        f"{p}source_version": spec.algorithm,
        f"{p}source_file": spec.source_file,
        f"{p}source_sha256": spec.sha256,
        f"{p}obs_dim": str(spec.obs_dim),
        f"{p}action_dim": str(spec.action_dim),
        f"{p}activation": spec.activation,
        f"{p}hidden_sizes": ",".join(str(h) for h in spec.hidden_sizes),
        f"{p}obs_normalizer": spec.obs_normalizer,
        f"{p}action_low": ",".join(repr(float(v)) for v in spec.action_low),
        f"{p}action_high": ",".join(repr(float(v)) for v in spec.action_high),
    }


def _parse_array(text: Any, what: str, path: Path) -> np.ndarray:
    if not isinstance(text, str):
        raise CheckpointError(f"the action space '{what}' is not stored readably", path)
    body = text.replace("[", " ").replace("]", " ").replace(",", " ").split()
    try:
        return np.array([float(v) for v in body], dtype=np.float32)
    except ValueError:
        raise CheckpointError(f"cannot parse the action space '{what}': {text!r}", path) from None


def _space_type(space: Any) -> str:
    text = space.get(":type:", "") if isinstance(space, Mapping) else ""
    match = re.search(r"'([\w.]+)'", text)
    return match.group(1).rsplit(".", 1)[-1] if match else "unknown"


# What an MLP policy's members can reasonably unpack to; anything larger is refused unread.
# The torch-free reader applies POLICY_PTH_MAX_BYTES to the members inside policy.pth too.
POLICY_PTH_MAX_BYTES = 512 << 20
_MEMBER_LIMITS = {"data": 16 << 20, "policy.pth": POLICY_PTH_MAX_BYTES}
_VECNORMALIZE_MAX_BYTES = 64 << 20


def _read_members(path: Path) -> tuple[dict[str, Any], bytes]:
    """The ``data`` JSON and the raw ``policy.pth`` bytes of an SB3 zip (bounded; no torch)."""
    if not path.is_file():
        raise CheckpointError("SB3 model file not found; check the path", path)
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if "data" not in names or "policy.pth" not in names:
                raise CheckpointError(
                    f"not a Stable-Baselines3 model zip: expected 'data' and 'policy.pth', "
                    f"found {sorted(names)}",
                    path,
                )
            for member, limit in _MEMBER_LIMITS.items():
                size = archive.getinfo(member).file_size
                if size > limit:
                    raise CheckpointError(
                        f"zip member '{member}' unpacks to {size} bytes, more than the "
                        f"{limit} bytes a policy of this kind can need (a zip bomb?)",
                        path,
                    )
            data = json.loads(archive.read("data"))
            policy_bytes = archive.read("policy.pth")
    except (zipfile.BadZipFile, OSError, json.JSONDecodeError, EOFError) as exc:
        raise CheckpointError(
            f"cannot read the SB3 zip (truncated or corrupt?): {exc}", path
        ) from None
    if not isinstance(data, dict):
        raise CheckpointError("unexpected SB3 zip content: 'data' is not a JSON object", path)
    return data, policy_bytes


def _read_zip(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``data`` and the state dict as torch tensors (``torch.load(weights_only=True)``)."""
    require_torch("Reading Stable-Baselines3 models")
    data, policy_bytes = _read_members(path)
    state = load_weights_only(io.BytesIO(policy_bytes), path, "policy.pth")
    if not isinstance(state, Mapping):
        raise CheckpointError("unexpected SB3 zip content", path)
    return data, dict(state)


StateReader = Callable[[bytes, Path], Mapping[str, np.ndarray]]
"""Reads ``policy.pth`` bytes into ``{key: float array}``: torch's or the torch-free one."""


def torch_state_reader(policy_bytes: bytes, path: Path) -> dict[str, np.ndarray]:
    """The state dict through ``torch.load(weights_only=True)``, as numpy arrays."""
    torch = require_torch("Reading Stable-Baselines3 models")
    state = load_weights_only(io.BytesIO(policy_bytes), path, "policy.pth")
    if not isinstance(state, Mapping):
        raise CheckpointError("unexpected SB3 zip content: policy.pth is not a state dict", path)
    out: dict[str, np.ndarray] = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"policy.pth entry '{key}' is not a tensor", path)
        out[str(key)] = value.detach().cpu().numpy()
    return out


def _layers(state: Mapping[str, Any], prefix: str) -> list[tuple[Any, Any]]:
    indices = sorted(
        {
            int(m.group(1))
            for k in state
            if (m := re.match(re.escape(prefix) + r"(\d+)\.weight$", k))
        }
    )
    return [(state[f"{prefix}{i}.weight"], state[f"{prefix}{i}.bias"]) for i in indices]


ACTIVATION_NAMES = frozenset(_SB3_ACTIVATIONS.values()) | {"identity"}
"""Every actor activation an SB3 export accepts (as ``activation=`` or from the zip)."""


def _activation(data: Mapping[str, Any], default: str, override: str | None) -> str:
    if override:
        name = override.lower()
        if name not in ACTIVATION_NAMES:
            raise CheckpointError(
                f"unknown activation '{override}'; valid choices are {sorted(ACTIVATION_NAMES)}"
            )
        return name
    kwargs = data.get("policy_kwargs")
    text = kwargs.get("activation_fn") if isinstance(kwargs, Mapping) else None
    if text is None:
        return default
    match = re.search(r"\.(\w+)'", str(text))
    name = match.group(1) if match else str(text)
    if name not in _SB3_ACTIVATIONS:
        raise CheckpointError(
            f"unsupported activation_fn {text}; pass activation= one of "
            f"{sorted(_SB3_ACTIVATIONS.values())}"
        )
    return _SB3_ACTIVATIONS[name]


def _check_chain(layers: Sequence[tuple[Any, Any]], path: Path) -> None:
    """Every layer is weight [out, in] + bias [out], each taking the previous one's output."""
    previous: int | None = None
    for index, (weight, bias) in enumerate(layers):
        w_shape, b_shape = tuple(weight.shape), tuple(bias.shape)
        if len(w_shape) != 2 or b_shape != (w_shape[0],):
            raise CheckpointError(
                f"actor layer {index} has weight {list(w_shape)} and bias {list(b_shape)}; "
                "expected [out, in] and [out]",
                path,
            )
        if previous is not None and w_shape[1] != previous:
            raise CheckpointError(
                f"actor layer {index} takes {w_shape[1]} inputs but the layer before it "
                f"outputs {previous}",
                path,
            )
        previous = w_shape[0]


def parse_sb3(
    path: str | os.PathLike[str],
    read_state: StateReader,
    *,
    activation: str | None = None,
    vecnormalize: str | os.PathLike[str] | None = None,
    hidden_sizes: Sequence[int] | None = None,
) -> Sb3Spec:
    """Read an SB3 model zip (and optional VecNormalize file) into an :class:`Sb3Spec`.

    Args:
        path: the ``.zip`` written by ``model.save``.
        read_state: turns the ``policy.pth`` bytes into arrays (:func:`torch_state_reader`
            or ``tailguard.adapters.sb3_native.read_state_dict``).
        activation: override the actor activation (default: from ``policy_kwargs``, else
            SB3's default: tanh for PPO/A2C, relu for SAC/TD3).
        vecnormalize: a ``VecNormalize.save`` file whose observation statistics are folded in.
        hidden_sizes: if given, the actor hidden sizes the model must have.

    Raises:
        CheckpointError: unreadable file, unsupported algorithm, space or architecture, or a
            ``hidden_sizes`` mismatch.
    """
    path = Path(path)
    data, policy_bytes = _read_members(path)
    state = read_state(policy_bytes, path)
    obs_space: dict[str, Any] = data.get("observation_space") or {}
    act_space: dict[str, Any] = data.get("action_space") or {}
    if _space_type(act_space) != "Box":
        raise CheckpointError(
            f"action space {_space_type(act_space)} is not supported: only continuous Box "
            "action spaces export to a guarded policy (discrete policies need an argmax the "
            "guard cannot bound)",
            path,
        )
    if _space_type(obs_space) != "Box":
        raise CheckpointError(
            f"observation space {_space_type(obs_space)} is not supported; expected a flat Box",
            path,
        )
    shape = json.loads(str(obs_space.get("_shape", "[]")).replace("(", "[").replace(")", "]"))
    if not isinstance(shape, list) or len(shape) != 1:
        raise CheckpointError(f"observation shape {shape} is not flat (1-D)", path)
    obs_dim = int(shape[0])
    low = _parse_array(act_space.get("low"), "low", path)
    high = _parse_array(act_space.get("high"), "high", path)
    module_name = str(data.get("policy_class", {}).get("__module__", ""))
    unknown_extractor = [k for k in state if "features_extractor." in k]
    if unknown_extractor:
        raise CheckpointError(
            f"feature extractors with parameters are not supported: {unknown_extractor[:4]}",
            path,
        )
    raw_kwargs = data.get("policy_kwargs")
    kwargs: Mapping[str, Any] = raw_kwargs if isinstance(raw_kwargs, Mapping) else {}
    if "action_net.weight" in state and any(k.startswith("mlp_extractor.") for k in state):
        algorithm = "ppo" if "clip_range" in data else "a2c"
        if any(k.startswith("mlp_extractor.shared_net.") for k in state):
            raise CheckpointError("shared mlp_extractor layers (SB3 < 1.8) are not supported", path)
        if bool(kwargs.get("squash_output", False)):
            raise CheckpointError("squash_output=True (gSDE) policies are not supported", path)
        act = _activation(data, "tanh", activation)
        layers = _layers(state, "mlp_extractor.policy_net.")
        layers.append((state["action_net.weight"], state["action_net.bias"]))
        squash = False
    elif "actor.mu.weight" in state and any(k.startswith("actor.latent_pi.") for k in state):
        algorithm = "sac"
        act = _activation(data, "relu", activation)
        layers = _layers(state, "actor.latent_pi.")
        layers.append((state["actor.mu.weight"], state["actor.mu.bias"]))
        squash = True
    elif any(k.startswith("actor.mu.") for k in state) and "td3" in module_name:
        algorithm = "td3"
        act = _activation(data, "relu", activation)
        layers = _layers(state, "actor.mu.")
        squash = True
    else:
        raise CheckpointError(
            "unrecognised SB3 policy: expected PPO/A2C (mlp_extractor.policy_net.*, "
            "action_net.*), SAC (actor.latent_pi.*, actor.mu.*) or TD3 (actor.mu.N.*); found "
            f"keys {sorted(state)[:12]}",
            path,
        )
    _check_chain(layers, path)
    if not layers or int(layers[0][0].shape[1]) != obs_dim:
        raise CheckpointError(f"the actor does not take {obs_dim} observations", path)
    if int(layers[-1][0].shape[0]) != low.shape[0] or high.shape != low.shape:
        raise CheckpointError(
            f"the actor outputs {int(layers[-1][0].shape[0])} actions but the action space "
            f"has {low.shape[0]}",
            path,
        )
    found_sizes = tuple(int(w.shape[0]) for w, _ in layers[:-1])
    if hidden_sizes is not None and tuple(int(h) for h in hidden_sizes) != found_sizes:
        raise CheckpointError(
            f"hidden sizes {list(hidden_sizes)} were requested but the actor has "
            f"{list(found_sizes)}",
            path,
        )
    normalizer = None
    if vecnormalize is not None:
        normalizer = read_vecnormalize_stats(vecnormalize, obs_dim)
    return Sb3Spec(
        algorithm=algorithm,
        obs_dim=obs_dim,
        action_low=low,
        action_high=high,
        activation=act,
        hidden_sizes=found_sizes,
        layers=tuple((np.asarray(w), np.asarray(b)) for w, b in layers),
        squash=squash,
        normalizer=normalizer,
        obs_normalizer="vecnormalize" if vecnormalize is not None else "none",
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        source_file=path.name,
    )


def load_sb3(
    path: str | os.PathLike[str],
    *,
    activation: str | None = None,
    vecnormalize: str | os.PathLike[str] | None = None,
    hidden_sizes: Sequence[int] | None = None,
) -> Sb3Policy:
    """Read an SB3 model zip (and optional VecNormalize file) into a deterministic module.

    The parse is :func:`parse_sb3` with torch's reader (the arguments and errors are its
    own); this builds the torch modules from it.
    """
    spec = parse_sb3(
        path,
        torch_state_reader,
        activation=activation,
        vecnormalize=vecnormalize,
        hidden_sizes=hidden_sizes,
    )
    return _torch_policy(spec)


def _torch_policy(spec: Sb3Spec) -> Sb3Policy:
    """The torch modules of ``spec``'s deterministic action path."""
    torch = require_torch("Reading Stable-Baselines3 models")
    from tailguard.adapters import torch_modules as tm

    low_t, high_t = torch.from_numpy(spec.action_low), torch.from_numpy(spec.action_high)
    post: Any = (
        tm.SquashRescale(low_t, high_t, apply_tanh=True)
        if spec.squash
        else tm.BoundsClip(low_t, high_t)
    )
    mlp = tm.build_mlp(
        [(torch.from_numpy(w), torch.from_numpy(b)) for w, b in spec.layers], spec.activation
    )
    module = tm.MlpActor(mlp, pre=_vecnormalize_module(spec.normalizer), post=post).eval()
    return Sb3Policy(
        algorithm=spec.algorithm,
        obs_dim=spec.obs_dim,
        action_low=spec.action_low,
        action_high=spec.action_high,
        activation=spec.activation,
        hidden_sizes=spec.hidden_sizes,
        sha256=spec.sha256,
        module=module,
    )


class _Stub:
    """Stand-in for SB3 / gymnasium objects inside a VecNormalize pickle (holds state only)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
            state = state[1] if state[0] is None else {**state[0], **state[1]}
        if isinstance(state, dict):
            self.__dict__.update(state)


# Every global a VecNormalize pickle may name, as exact (module, name) pairs. Nothing else is
# resolved: no prefixes, no dotted names (protocol 4 would follow ``a.b.c`` attribute chains
# from an allowed module to anything it reaches, e.g. ``__builtins__``).
_NUMPY_REBUILT = frozenset(
    {
        (core, fn)
        for core in ("numpy.core.multiarray", "numpy._core.multiarray")
        for fn in ("_reconstruct", "scalar")
    }
    | {("numpy", "ndarray"), ("numpy", "dtype")}
    | {
        ("numpy.dtypes", f"{kind}DType")
        for kind in (
            "Bool",
            "Int8",
            "Int16",
            "Int32",
            "Int64",
            "UInt8",
            "UInt16",
            "UInt32",
            "UInt64",
            "Float16",
            "Float32",
            "Float64",
            "LongDouble",
        )
    }
)
# Objects whose state is kept (as attributes of a ``_Stub``) but whose class never runs.
_STUBBED = frozenset(
    {
        ("stable_baselines3.common.vec_env.vec_normalize", "VecNormalize"),
        ("stable_baselines3.common.running_mean_std", "RunningMeanStd"),
        ("gymnasium.spaces.box", "Box"),
        ("gymnasium.spaces.dict", "Dict"),
        ("gym.spaces.box", "Box"),
        ("gym.spaces.dict", "Dict"),
        ("numpy.random._pickle", "__generator_ctor"),
        ("numpy.random._pickle", "__bit_generator_ctor"),
        ("numpy.random._pickle", "__randomstate_ctor"),
        ("numpy.random._generator", "Generator"),
        ("numpy.random.mtrand", "RandomState"),
        ("numpy.random.bit_generator", "SeedSequence"),
        ("numpy.random.bit_generator", "__pyx_unpickle_SeedSequence"),
        ("numpy.random._pcg64", "PCG64"),
        ("numpy.random._pcg64", "PCG64DXSM"),
        ("numpy.random._mt19937", "MT19937"),
        ("numpy.random._philox", "Philox"),
        ("numpy.random._sfc64", "SFC64"),
    }
)


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the exact pairs above; everything else is refused before it is looked up."""

    def find_class(self, module: str, name: str) -> Any:
        if "." in name:
            raise pickle.UnpicklingError(f"dotted global name {module}.{name} is not allowed")
        if (module, name) in _NUMPY_REBUILT:
            return super().find_class(module, name)
        if (module, name) in _STUBBED:
            return _Stub
        if (module, name) == ("collections", "OrderedDict"):
            return dict
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed")


def read_vecnormalize(path: str | os.PathLike[str], obs_dim: int) -> Any:
    """Read a ``VecNormalize.save`` file into a frozen normalization module, safely.

    Args:
        path: the pickle written by ``VecNormalize.save``.
        obs_dim: the policy's observation size (checked).

    Returns:
        A ``VecNormalizeObs`` module, or ``None`` if the file has ``norm_obs=False``.

    Raises:
        CheckpointError: unreadable file, disallowed pickled objects, or wrong sizes.
    """
    require_torch("Reading VecNormalize statistics")
    return _vecnormalize_module(read_vecnormalize_stats(path, obs_dim))


def _vecnormalize_module(stats: VecNormalizeStats | None) -> Any:
    if stats is None:
        return None
    torch = require_torch("Reading VecNormalize statistics")
    from tailguard.adapters import torch_modules as tm

    return tm.VecNormalizeObs(
        torch.from_numpy(stats.mean), torch.from_numpy(stats.var), stats.epsilon, stats.clip_obs
    )


def read_vecnormalize_stats(path: str | os.PathLike[str], obs_dim: int) -> VecNormalizeStats | None:
    """Read a ``VecNormalize.save`` file's observation statistics, safely (no torch).

    Args:
        path: the pickle written by ``VecNormalize.save``.
        obs_dim: the policy's observation size (checked).

    Returns:
        The statistics, or ``None`` if the file has ``norm_obs=False``.

    Raises:
        CheckpointError: unreadable file, disallowed pickled objects, or wrong sizes.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > _VECNORMALIZE_MAX_BYTES:
            raise CheckpointError(
                f"the VecNormalize file has {size} bytes; statistics files are a few KiB "
                f"(limit {_VECNORMALIZE_MAX_BYTES})",
                path,
            )
        with path.open("rb") as handle:
            obj = _RestrictedUnpickler(handle).load()
    except FileNotFoundError:
        raise CheckpointError("VecNormalize file not found; check the path", path) from None
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"refused to load the VecNormalize file: {exc} (only numpy arrays and SB3 / "
            "gymnasium state are read; nothing from the file is executed)",
            path,
        ) from None
    except (EOFError, OSError, ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
        raise CheckpointError(f"cannot read the VecNormalize file: {exc}", path) from None
    state = obj.__dict__ if isinstance(obj, _Stub) else {}
    if not state.get("norm_obs", True):
        return None
    rms = state.get("obs_rms")
    mean = getattr(rms, "mean", None)
    var = getattr(rms, "var", None)
    if not (_is_real_array(mean) and _is_real_array(var)):
        raise CheckpointError(
            "no observation statistics (obs_rms.mean / obs_rms.var) found; dict observation "
            "spaces are not supported",
            path,
        )
    if mean.shape != (obs_dim,) or var.shape != (obs_dim,):
        raise CheckpointError(
            f"VecNormalize statistics have shape {list(mean.shape)}; the policy takes "
            f"{obs_dim} observations",
            path,
        )
    epsilon, clip_obs = state.get("epsilon", 1e-8), state.get("clip_obs", 10.0)
    if not all(_is_finite_number(v) for v in (epsilon, clip_obs)) or not (
        float(epsilon) > 0 and float(clip_obs) > 0
    ):
        raise CheckpointError(
            f"epsilon and clip_obs must be positive finite numbers; found {epsilon!r}, "
            f"{clip_obs!r}",
            path,
        )
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(var)) and np.all(var >= 0)):
        raise CheckpointError("VecNormalize mean/var hold non-finite or negative values", path)
    return VecNormalizeStats(
        mean=mean.astype(np.float64),
        var=var.astype(np.float64),
        epsilon=float(epsilon),
        clip_obs=float(clip_obs),
    )


def _is_real_array(value: Any) -> bool:
    return isinstance(value, np.ndarray) and value.dtype.kind in "fiu"


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, int | float | np.floating | np.integer) and bool(
        np.isfinite(float(value))
    )


def export_sb3(
    model_zip: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    vecnormalize: str | os.PathLike[str] | None = None,
    activation: str | None = None,
    hidden_sizes: Sequence[int] | None = None,
    observations: np.ndarray | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    exporter: str = "auto",
) -> ExportResult:
    """Export an SB3 model's deterministic policy to a self-contained ONNX file, with parity.

    Args:
        model_zip: the SB3 ``.zip``.
        output: the ``.onnx`` file to write.
        vecnormalize: optional ``VecNormalize`` statistics file to fold in.
        activation: override the actor activation.
        hidden_sizes: expected actor hidden sizes (checked if given).
        observations: recorded (raw, unnormalized) observations for the parity check.
        tolerance: parity tolerance (largest scaled difference, see ``DEFAULT_TOLERANCE``).
        exporter: ``"auto"``, ``"dynamo"`` or ``"legacy"`` (see ``export_module``).

    Raises:
        CheckpointError: see :func:`load_sb3`.
        ExportError: the export failed.
        ParityError: parity above ``tolerance``.
    """
    spec = parse_sb3(
        model_zip,
        torch_state_reader,
        activation=activation,
        vecnormalize=vecnormalize,
        hidden_sizes=hidden_sizes,
    )
    policy = _torch_policy(spec)
    return export_module(
        policy.module,
        policy.obs_dim,
        output,
        metadata=sb3_metadata(spec),
        observations=observations,
        tolerance=tolerance,
        exporter=exporter,
    )

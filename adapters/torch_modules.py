"""Plain torch modules that rebuild a policy's deterministic action path for ONNX export.

Every module here takes float32 observations ``[batch, obs_dim]`` and returns float32
actions ``[batch, action_dim]``; recurrent ones also take and return the RSL-RL state
``[num_layers, batch, hidden]`` (``h``, and ``c`` for an LSTM). Nothing here knows about
checkpoint files: the loaders in ``tailguard.adapters.rsl_rl_checkpoint`` and
``tailguard.adapters.sb3`` fill them.

This module imports torch at module level; import it only from code that already needs torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from tailguard.errors import CheckpointError

__all__ = [
    "ACTIVATIONS",
    "BoundsClip",
    "GruActor",
    "LstmActor",
    "MlpActor",
    "ObsNormalizer",
    "SquashRescale",
    "VecNormalizeObs",
    "build_mlp",
    "make_activation",
]

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "elu": nn.ELU,
    "selu": nn.SELU,
    "relu": nn.ReLU,
    "lrelu": nn.LeakyReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "softplus": nn.Softplus,
    "gelu": nn.GELU,
    "swish": nn.SiLU,
    "mish": nn.Mish,
    "identity": nn.Identity,
}


def make_activation(name: str) -> nn.Module:
    """Return a fresh activation module for ``name`` (rsl-rl's names, e.g. ``elu``)."""
    try:
        return ACTIVATIONS[name.lower()]()
    except KeyError:
        raise CheckpointError(
            f"unknown activation '{name}'; valid choices are {sorted(ACTIVATIONS)}"
        ) from None


def build_mlp(
    layers: Sequence[tuple[torch.Tensor, torch.Tensor]], activation: str
) -> nn.Sequential:
    """Build Linear/activation/…/Linear from ``(weight [out, in], bias [out])`` pairs.

    The activation follows every layer but the last, as in rsl-rl's actor MLPs.
    """
    modules: list[nn.Module] = []
    for index, (weight, bias) in enumerate(layers):
        linear = nn.Linear(int(weight.shape[1]), int(weight.shape[0]))
        with torch.no_grad():
            linear.weight.copy_(weight.to(torch.float32))
            linear.bias.copy_(bias.to(torch.float32))
        modules.append(linear)
        if index < len(layers) - 1:
            modules.append(make_activation(activation))
    return nn.Sequential(*modules)


class ObsNormalizer(nn.Module):
    """RSL-RL empirical normalization, frozen: ``(x - mean) / (std + eps)``.

    Args:
        mean: running mean ``[obs_dim]``.
        std: running standard deviation ``[obs_dim]``.
        eps: added to ``std`` (0.01 in every rsl-rl version).
    """

    mean: torch.Tensor
    denominator: torch.Tensor

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, eps: float = 0.01) -> None:
        super().__init__()
        self.register_buffer("mean", mean.reshape(-1).to(torch.float32).clone())
        self.register_buffer("denominator", (std.reshape(-1).to(torch.float32) + eps).clone())

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """Normalize ``obs`` ``[batch, obs_dim]``."""
        return (obs - self.mean) / self.denominator


class VecNormalizeObs(nn.Module):
    """SB3 ``VecNormalize`` observation normalization, frozen.

    ``clip((x - mean) / sqrt(var + epsilon), -clip_obs, clip_obs)``.
    """

    mean: torch.Tensor
    scale: torch.Tensor

    def __init__(
        self, mean: torch.Tensor, var: torch.Tensor, epsilon: float, clip_obs: float
    ) -> None:
        super().__init__()
        self.register_buffer("mean", mean.reshape(-1).to(torch.float32).clone())
        scale = torch.sqrt(var.reshape(-1).to(torch.float64) + epsilon).to(torch.float32)
        self.register_buffer("scale", scale)
        self.clip_obs = float(clip_obs)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """Normalize and clip ``obs`` ``[batch, obs_dim]``."""
        return torch.clamp((obs - self.mean) / self.scale, -self.clip_obs, self.clip_obs)


class BoundsClip(nn.Module):
    """Clip actions to per-dimension bounds (SB3 ``predict`` for unsquashed Box actions)."""

    low: torch.Tensor
    high: torch.Tensor

    def __init__(self, low: torch.Tensor, high: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("low", low.reshape(-1).to(torch.float32).clone())
        self.register_buffer("high", high.reshape(-1).to(torch.float32).clone())

    def forward(self, actions: torch.Tensor) -> torch.Tensor:
        """Return ``min(max(actions, low), high)``."""
        return torch.minimum(torch.maximum(actions, self.low), self.high)


class SquashRescale(nn.Module):
    """Rescale actions from [-1, 1] to [low, high], optionally applying tanh first (SAC)."""

    low: torch.Tensor
    high: torch.Tensor

    def __init__(self, low: torch.Tensor, high: torch.Tensor, apply_tanh: bool) -> None:
        super().__init__()
        self.register_buffer("low", low.reshape(-1).to(torch.float32).clone())
        self.register_buffer("high", high.reshape(-1).to(torch.float32).clone())
        self.apply_tanh = apply_tanh

    def forward(self, actions: torch.Tensor) -> torch.Tensor:
        """Return ``low + 0.5 * (a + 1) * (high - low)`` with ``a`` = (tanh of) ``actions``."""
        squashed = torch.tanh(actions) if self.apply_tanh else actions
        return self.low + 0.5 * (squashed + 1.0) * (self.high - self.low)


class MlpActor(nn.Module):
    """Feed-forward deterministic actor: ``post(mlp(pre(obs)))``.

    Args:
        mlp: the network from (normalized) observations to the action mean.
        pre: observation preprocessing (normalizer) or ``None``.
        post: action postprocessing (clip, squash) or ``None``.
    """

    def __init__(
        self, mlp: nn.Module, pre: nn.Module | None = None, post: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.pre = pre if pre is not None else nn.Identity()
        self.mlp = mlp
        self.post = post if post is not None else nn.Identity()

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """Map observations ``[batch, obs_dim]`` to actions ``[batch, action_dim]``."""
        return self.post(self.mlp(self.pre(obs)))


class LstmActor(nn.Module):
    """RSL-RL recurrent actor with an LSTM memory: normalizer → LSTM → MLP.

    Args:
        rnn: the ``nn.LSTM`` (sequence-first, as in rsl-rl).
        mlp: the head from the LSTM output to the action mean.
        pre: observation normalizer or ``None``.
    """

    def __init__(self, rnn: nn.LSTM, mlp: nn.Module, pre: nn.Module | None = None) -> None:
        super().__init__()
        self.pre = pre if pre is not None else nn.Identity()
        self.rnn = rnn
        self.mlp = mlp

    def forward(
        self, obs: torch.Tensor, h_in: torch.Tensor, c_in: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One step: ``obs`` ``[batch, obs_dim]``, state ``[layers, batch, hidden]``."""
        out, (h_out, c_out) = self.rnn(self.pre(obs).unsqueeze(0), (h_in, c_in))
        return self.mlp(out.squeeze(0)), h_out, c_out


class GruActor(nn.Module):
    """RSL-RL recurrent actor with a GRU memory: normalizer → GRU → MLP."""

    def __init__(self, rnn: nn.GRU, mlp: nn.Module, pre: nn.Module | None = None) -> None:
        super().__init__()
        self.pre = pre if pre is not None else nn.Identity()
        self.rnn = rnn
        self.mlp = mlp

    def forward(self, obs: torch.Tensor, h_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step: ``obs`` ``[batch, obs_dim]``, state ``[layers, batch, hidden]``."""
        out, h_out = self.rnn(self.pre(obs).unsqueeze(0), h_in)
        return self.mlp(out.squeeze(0)), h_out

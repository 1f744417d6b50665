"""Build tiny RSL-RL checkpoints of every format, and a numpy reference of their actor."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

OBS_DIM = 5
ACTION_DIM = 3
HIDDEN = (8, 6)
RNN_HIDDEN = 7


@dataclass
class Case:
    """One checkpoint to build: format generation, memory type, normalizer, noise parameter."""

    version: str  # "1".."5"
    rnn: str = "none"  # none | lstm | gru
    normalizer: bool = False
    std_kind: str = "std"  # std | log_std
    rnn_layers: int = 1

    @property
    def expected_version(self) -> str:
        if self.version in ("1", "2", "3"):
            if self.normalizer:
                return "3.x" if self.version == "3" else "2.x"
            return "2.x" if self.std_kind == "log_std" else "1.x"
        return f"{self.version}.x"

    @property
    def id(self) -> str:
        norm = "norm" if self.normalizer else "nonorm"
        return f"v{self.version}-{self.rnn}-{norm}-{self.std_kind}-L{self.rnn_layers}"


def _linear(gen: torch.Generator, n_in: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor]:
    return (
        torch.randn(n_out, n_in, generator=gen) / np.sqrt(n_in),
        torch.randn(n_out, generator=gen) * 0.1,
    )


def _rnn_params(gen: torch.Generator, kind: str, n_in: int, layers: int) -> dict[str, torch.Tensor]:
    gates = 4 if kind == "lstm" else 3
    out: dict[str, torch.Tensor] = {}
    for layer in range(layers):
        size_in = n_in if layer == 0 else RNN_HIDDEN
        out[f"weight_ih_l{layer}"] = torch.randn(gates * RNN_HIDDEN, size_in, generator=gen) * 0.4
        out[f"weight_hh_l{layer}"] = (
            torch.randn(gates * RNN_HIDDEN, RNN_HIDDEN, generator=gen) * 0.4
        )
        out[f"bias_ih_l{layer}"] = torch.randn(gates * RNN_HIDDEN, generator=gen) * 0.1
        out[f"bias_hh_l{layer}"] = torch.randn(gates * RNN_HIDDEN, generator=gen) * 0.1
    return out


def _mlp(gen: torch.Generator, n_in: int, n_out: int, prefix: str) -> dict[str, torch.Tensor]:
    sizes = [n_in, *HIDDEN, n_out]
    out: dict[str, torch.Tensor] = {}
    for i in range(len(sizes) - 1):
        w, b = _linear(gen, sizes[i], sizes[i + 1])
        out[f"{prefix}{2 * i}.weight"] = w
        out[f"{prefix}{2 * i}.bias"] = b
    return out


def _norm(gen: torch.Generator, dim: int) -> dict[str, torch.Tensor]:
    mean = torch.randn(1, dim, generator=gen)
    var = torch.rand(1, dim, generator=gen) * 4 + 0.2
    return {"_mean": mean, "_var": var, "_std": var.sqrt(), "count": torch.tensor(1234)}


def _prefixed(prefix: str, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in params.items()}


def build(case: Case, seed: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return (checkpoint dict as rsl-rl writes it, reference parameters)."""
    gen = torch.Generator().manual_seed(seed)
    mlp_in = RNN_HIDDEN if case.rnn != "none" else OBS_DIM
    actor_mlp = _mlp(gen, mlp_in, ACTION_DIM, "")
    critic_mlp = _mlp(gen, mlp_in, 1, "")
    rnn_a = _rnn_params(gen, case.rnn, OBS_DIM, case.rnn_layers) if case.rnn != "none" else {}
    rnn_c = _rnn_params(gen, case.rnn, OBS_DIM, case.rnn_layers) if case.rnn != "none" else {}
    norm = _norm(gen, OBS_DIM) if case.normalizer else None
    std = torch.rand(ACTION_DIM, generator=gen) + 0.5
    noise = std if case.std_kind == "std" else std.log()
    ref = {"mlp": actor_mlp, "rnn": rnn_a, "norm": norm, "rnn_kind": case.rnn}
    if case.version in ("1", "2", "3"):
        model = _prefixed("actor.", actor_mlp) | _prefixed("critic.", critic_mlp)
        model[case.std_kind] = noise
        model |= _prefixed("memory_a.rnn.", rnn_a) | _prefixed("memory_c.rnn.", rnn_c)
        ckpt: dict[str, Any] = {"optimizer_state_dict": {}, "iter": 42, "infos": None}
        if norm is not None and case.version == "3":
            model |= _prefixed("actor_obs_normalizer.", norm)
            model |= _prefixed("critic_obs_normalizer.", _norm(gen, OBS_DIM))
        elif norm is not None:
            ckpt["obs_norm_state_dict"] = norm
            ckpt["critic_obs_norm_state_dict"] = _norm(gen, OBS_DIM)
        ckpt["model_state_dict"] = model
        return ckpt, ref
    actor = _prefixed("mlp.", actor_mlp) | _prefixed("rnn.rnn.", rnn_a)
    critic = _prefixed("mlp.", critic_mlp) | _prefixed("rnn.rnn.", rnn_c)
    if norm is not None:
        actor |= _prefixed("obs_normalizer.", norm)
        critic |= _prefixed("obs_normalizer.", _norm(gen, OBS_DIM))
    if case.version == "4":
        actor[case.std_kind] = noise
    else:
        actor[f"distribution.{case.std_kind}_param"] = noise
    return {
        "actor_state_dict": actor,
        "critic_state_dict": critic,
        "optimizer_state_dict": {},
        "iter": 7,
        "infos": {"note": "tiny"},
    }, ref


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def reference_rollout(ref: dict[str, Any], obs_seq: np.ndarray) -> np.ndarray:
    """Plain numpy actor: obs ``[steps, batch, obs_dim]`` -> actions ``[steps, batch, act]``."""
    p = {k: v.double().numpy() for k, v in ref["mlp"].items()}
    rnn = {k: v.double().numpy() for k, v in ref["rnn"].items()}
    layers = len(rnn) // 4
    steps, batch, _ = obs_seq.shape
    h = [np.zeros((batch, RNN_HIDDEN)) for _ in range(layers)]
    c = [np.zeros((batch, RNN_HIDDEN)) for _ in range(layers)]
    out = []
    for t in range(steps):
        x = obs_seq[t].astype(np.float64)
        if ref["norm"] is not None:
            x = (x - ref["norm"]["_mean"].double().numpy()) / (
                ref["norm"]["_std"].double().numpy() + 0.01
            )
        for layer in range(layers):
            gi = x @ rnn[f"weight_ih_l{layer}"].T + rnn[f"bias_ih_l{layer}"]
            gh = h[layer] @ rnn[f"weight_hh_l{layer}"].T + rnn[f"bias_hh_l{layer}"]
            if ref["rnn_kind"] == "lstm":
                i, f, g, o = np.split(gi + gh, 4, axis=1)
                c[layer] = _sigmoid(f) * c[layer] + _sigmoid(i) * np.tanh(g)
                h[layer] = _sigmoid(o) * np.tanh(c[layer])
            else:
                ir, iz, in_ = np.split(gi, 3, axis=1)
                hr, hz, hn = np.split(gh, 3, axis=1)
                r, z = _sigmoid(ir + hr), _sigmoid(iz + hz)
                n = np.tanh(in_ + r * hn)
                h[layer] = (1 - z) * n + z * h[layer]
            x = h[layer]
        n_layers = len(p) // 2
        for i in range(n_layers):
            x = x @ p[f"{2 * i}.weight"].T + p[f"{2 * i}.bias"]
            if i < n_layers - 1:
                x = np.where(x > 0, x, np.expm1(np.minimum(x, 0)))
        out.append(x)
    return np.stack(out)


def all_cases() -> list[Case]:
    """Every supported combination (1.x-3.x layouts without normalizer coincide)."""
    cases = []
    for rnn in ("none", "lstm", "gru"):
        cases.append(Case("1", rnn))
        cases.append(Case("2", rnn, normalizer=False, std_kind="log_std"))
        cases += [Case("2", rnn, normalizer=True, std_kind=s) for s in ("std", "log_std")]
        cases += [Case("3", rnn, normalizer=True, std_kind=s) for s in ("std", "log_std")]
        for version in ("4", "5"):
            for norm in (False, True):
                cases += [Case(version, rnn, norm, s) for s in ("std", "log_std")]
    cases.append(Case("3", "lstm", True, "std", rnn_layers=2))
    cases.append(Case("5", "gru", True, "log_std", rnn_layers=2))
    return cases

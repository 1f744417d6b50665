"""``harden`` for RSL-RL ``.pt`` checkpoints: fine-tune from the file's own weights with
rsl-rl-lib's ``OnPolicyRunner`` (PPO) under the training mix the audit's failures produce.

The checkpoint is read weights-only (``read_torch_checkpoint`` of
:mod:`tailguard.adapters.rsl_rl_checkpoint`; no code from the file runs), its actor is
recognised by the same parser the audit's export uses, and its critic by the same layer,
RNN and normalizer readers. Every supported layout (1.x to 5.x, MLP or LSTM/GRU memory, with
or without an empirical observation normalizer, a ``std`` or ``log_std`` noise parameter) is
mapped onto rsl-rl-lib 5.x models:

=====================================  ==============================================
in the file                            in the 5.x model
=====================================  ==============================================
``actor.N.*`` / ``mlp.N.*``            ``mlp.N.*`` of the actor (``MLPModel`` or
                                       ``RNNModel``)
``memory_a.rnn.*`` / ``rnn.rnn.*``     ``rnn.rnn.*`` (``rnn_type``, hidden size and
                                       layers from the weight shapes)
``critic.N.*`` / critic ``mlp.N.*``    the critic's ``mlp.N.*`` (its own sizes)
``std`` / ``distribution.std_param``   ``distribution.std_param`` (``std_type="scalar"``)
``log_std`` / ``…log_std_param``       ``distribution.log_std_param`` (``"log"``)
normalizer (3.x in the model, 2.x      ``obs_normalizer._mean/_var/_std/count`` (the
runner-level, 4.x/5.x per model)       critic uses the actor's when the file has no
                                       critic normalizer of its own)
=====================================  ==============================================

The normalizers keep rsl-rl's semantics: ``(x - mean) / (std + 0.01)``, updated from the
fine-tuning rollouts with the file's ``count`` as the weight of the old statistics (a file
without ``count`` keeps them fixed), and folded into the exported ONNX by
:func:`tailguard.adapters.rsl_rl_export.export_rsl_rl`. The activation is not stored in
checkpoints: ELU, rsl-rl's default and what the audit exports with. The optimizer state is
loaded when the file is a 5.x checkpoint whose Adam state fits the rebuilt parameters
(what ``OnPolicyRunner.save`` writes); otherwise the optimizer starts fresh, and
``training.json`` says which.

Refused with a :class:`~tailguard.errors.ConfigError` before anything runs: a layout the
parser does not recognise, a file without a critic (PPO needs the value function), a critic
with keys that cannot be mapped, or sizes that disagree with the env.
"""

from __future__ import annotations

import contextlib
import io
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tailguard.errors import CheckpointError, ConfigError, MissingExtraError

__all__ = [
    "ACTIVATION",
    "DEFAULT_NUM_ENVS",
    "MAX_STEPS_PER_ENV",
    "build_runner",
    "finetune_rsl_rl",
    "read_rsl_rl",
]

#: The MLP activation (not stored in checkpoints): rsl-rl's default, what the audit exports with.
ACTIVATION = "elu"
#: Environments stepped per PPO iteration (rsl-rl collects ``num_envs * num_steps_per_env``).
DEFAULT_NUM_ENVS = 16
#: Rollout length per env and iteration (the shipped Hopper training script's 128).
MAX_STEPS_PER_ENV = 128
_PPO_SETTINGS: dict[str, Any] = {
    "num_learning_epochs": 5,
    "num_mini_batches": 4,
    "clip_param": 0.2,
    "gamma": 0.99,
    "lam": 0.95,
    "value_loss_coef": 1.0,
    "entropy_coef": 0.0,
    "max_grad_norm": 1.0,
    "schedule": "fixed",
}

ProgressFn = Callable[[str, int, int], None]


def _require_rsl_rl() -> Any:
    try:
        import rsl_rl
        from rsl_rl.runners import OnPolicyRunner  # noqa: F401
    except ImportError as exc:
        raise MissingExtraError("rsl-rl-lib", "train", "Fine-tuning RSL-RL checkpoints") from exc
    return rsl_rl


def _refuse(path: Path, what: str) -> ConfigError:
    return ConfigError(
        f"harden cannot fine-tune this RSL-RL checkpoint: {what}. It can still be audited "
        "(`tailguard audit --policy` takes it as is)",
        path,
    )


def _critic(ckpt: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """The critic's tensors: MLP layers, RNN, normalizer (``None`` when absent)."""
    from tailguard.adapters.rsl_rl_checkpoint import (
        _parse_layers,
        _parse_normalizer,
        _parse_rnn,
        _split,
    )

    if "critic_state_dict" in ckpt:
        state = ckpt["critic_state_dict"]
        if not isinstance(state, Mapping):
            raise _refuse(path, "'critic_state_dict' is not a dict of tensors")
        prefixes = {"mlp": "mlp.", "rnn": "rnn.rnn.", "norm": "obs_normalizer."}
        runner_norm = None
        where = "critic_state_dict"
    elif "model_state_dict" in ckpt and isinstance(ckpt["model_state_dict"], Mapping):
        state = ckpt["model_state_dict"]
        prefixes = {"mlp": "critic.", "rnn": "memory_c.rnn.", "norm": "critic_obs_normalizer."}
        runner_norm = ckpt.get("critic_obs_norm_state_dict")
        where = "model_state_dict"
    else:
        raise _refuse(
            path,
            "it holds no critic (no 'critic_state_dict', no 'critic.*' weights); PPO needs the "
            "value function. Pass the full checkpoint the runner saved",
        )
    keys = [str(k) for k in state]
    if where == "critic_state_dict":
        mine = keys
    else:
        mine = [k for k in keys if k.startswith(("critic.", "memory_c.", "critic_obs_normalizer."))]
    unknown = [k for k in mine if not k.startswith(tuple(prefixes.values()))]
    if unknown:
        raise _refuse(path, f"critic keys it cannot map: {sorted(unknown)[:8]}")
    mlp = _split(state, prefixes["mlp"])
    if not mlp:
        raise _refuse(path, f"no critic MLP layers ('{prefixes['mlp']}N.weight') in '{where}'")
    try:
        layers = _parse_layers(mlp, prefixes["mlp"])
        rnn_params = _split(state, prefixes["rnn"])
        rnn = _parse_rnn(rnn_params, prefixes["rnn"]) if rnn_params else None
        norm_params = _split(state, prefixes["norm"])
        if norm_params and runner_norm is not None:
            raise CheckpointError("both a critic normalizer in the model and a runner-level one")
        norm = None
        if norm_params:
            norm = (norm_params, _parse_normalizer(norm_params, prefixes["norm"]))
        elif isinstance(runner_norm, Mapping):
            norm = (runner_norm, _parse_normalizer(runner_norm, "critic_obs_norm_state_dict."))
    except CheckpointError as exc:
        raise _refuse(path, f"its critic is not readable ({exc.message})") from None
    if int(layers[-1][0].shape[0]) != 1:
        raise _refuse(path, f"its critic outputs {int(layers[-1][0].shape[0])} values, not 1")
    return {"layers": layers, "rnn": rnn, "norm": norm}


def _norm_state(raw: Mapping[str, Any], mean: Any, std: Any) -> tuple[dict[str, Any], bool]:
    """rsl-rl 5.x ``EmpiricalNormalization`` buffers; False when the file has no ``count``."""
    import torch

    mean = mean.reshape(1, -1).to(torch.float32)
    std = std.reshape(1, -1).to(torch.float32)
    var = raw["_var"].reshape(1, -1).to(torch.float32) if "_var" in raw else std.square()
    has_count = "count" in raw
    count = torch.as_tensor(raw["count"] if has_count else 0).reshape(()).to(torch.long)
    return {"_mean": mean, "_var": var, "_std": std, "count": count}, has_count


def _model_state(
    layers: Any, rnn: Any, norm: tuple[Mapping[str, Any], Any] | None
) -> tuple[dict[str, Any], dict[str, Any], bool]:
    """(5.x state dict, model config, normalizer count present) of one network."""
    import torch

    state: dict[str, Any] = {}
    for i, (w, b) in enumerate(layers):
        state[f"mlp.{2 * i}.weight"] = w.to(torch.float32)
        state[f"mlp.{2 * i}.bias"] = b.to(torch.float32)
    cfg: dict[str, Any] = {
        "class_name": "MLPModel",
        "hidden_dims": [int(w.shape[0]) for w, _ in layers[:-1]],
        "activation": ACTIVATION,
        "obs_normalization": norm is not None,
    }
    if rnn is not None:
        rnn_type, hidden, num_layers, rnn_state = rnn
        cfg.update(
            class_name="RNNModel",
            rnn_type=rnn_type,
            rnn_hidden_dim=int(hidden),
            rnn_num_layers=int(num_layers),
        )
        state.update({f"rnn.rnn.{k}": v.to(torch.float32) for k, v in rnn_state.items()})
    has_count = True
    if norm is not None:
        raw, (mean, std) = norm
        buffers, has_count = _norm_state(raw, mean, std)
        state.update({f"obs_normalizer.{k}": v for k, v in buffers.items()})
    return state, cfg, has_count


def read_rsl_rl(policy: Path) -> dict[str, Any]:
    """Read and map an RSL-RL checkpoint for fine-tuning (weights-only; nothing runs).

    Returns:
        ``{"spec", "actor_state", "critic_state", "actor_cfg", "critic_cfg",
        "optimizer_state", "normalizer_fixed", "noise"}``.

    Raises:
        ConfigError: a layout harden cannot fine-tune (see the module docstring), or an
            unreadable file / one holding pickled objects (refused, never executed).
        MissingExtraError: rsl-rl-lib is not installed.
    """
    import torch

    from tailguard.adapters.rsl_rl_checkpoint import (
        _sha256,
        parse_rsl_rl_checkpoint,
        read_torch_checkpoint,
    )

    _require_rsl_rl()
    path = Path(policy)
    try:
        ckpt = read_torch_checkpoint(path)
        actor = parse_rsl_rl_checkpoint(ckpt, activation=ACTIVATION, sha256=_sha256(path))
    except CheckpointError as exc:
        raise _refuse(path, exc.message) from None
    spec = actor.spec
    assert isinstance(ckpt, Mapping)  # the parser refuses anything else
    critic = _critic(ckpt, path)
    if critic["norm"] is None and actor.obs_mean is not None:
        shared = "actor"  # 2.x-era files normalized once for both networks
        critic_norm = _actor_norm_raw(ckpt, actor)
    else:
        shared = ""
        critic_norm = critic["norm"]
    rnn = None
    if spec.recurrent != "none":
        rnn = (spec.recurrent, spec.rnn_hidden_size, spec.rnn_num_layers, dict(actor.rnn_state))
    actor_state, actor_cfg, actor_count = _model_state(
        actor.layers, rnn, _actor_norm_raw(ckpt, actor) if actor.obs_mean is not None else None
    )
    critic_state, critic_cfg, critic_count = _model_state(
        critic["layers"], critic["rnn"], critic_norm
    )
    critic_in = (
        int(critic["rnn"][3]["weight_ih_l0"].shape[1])
        if critic["rnn"] is not None
        else int(critic["layers"][0][0].shape[1])
    )
    if critic_in != spec.obs_dim:
        raise _refuse(
            path,
            f"its critic takes {critic_in} observations and its actor {spec.obs_dim} (a "
            "privileged critic observation harden's gymnasium env does not provide)",
        )
    noise = _noise(ckpt, spec.std_key)
    std_type = "log" if "log_std" in spec.std_key else "scalar"
    param = "log_std_param" if std_type == "log" else "std_param"
    actor_state[f"distribution.{param}"] = noise.reshape(-1).to(torch.float32)
    actor_cfg["distribution_cfg"] = {
        "class_name": "GaussianDistribution",
        "init_std": 1.0,
        "std_type": std_type,
    }
    return {
        "path": path,
        "spec": spec,
        "actor_state": actor_state,
        "critic_state": critic_state,
        "actor_cfg": actor_cfg,
        "critic_cfg": critic_cfg,
        "critic_normalizer": "the actor's (the file has none for the critic)"
        if shared
        else ("own" if critic_norm is not None else "none"),
        "optimizer_state": ckpt.get("optimizer_state_dict")
        if spec.format_version == "5.x"
        else None,
        "normalizer_fixed": not (actor_count and critic_count),
    }


def _actor_norm_raw(ckpt: Mapping[str, Any], actor: Any) -> tuple[Mapping[str, Any], Any]:
    """The actor normalizer's raw buffers (for ``_var`` and ``count``) and parsed mean/std."""
    raw: Any = {}
    if "actor_state_dict" in ckpt:
        raw = {k[len("obs_normalizer.") :]: v for k, v in ckpt["actor_state_dict"].items()
               if str(k).startswith("obs_normalizer.")}  # fmt: skip
    elif isinstance(ckpt.get("obs_norm_state_dict"), Mapping):
        raw = ckpt["obs_norm_state_dict"]
    elif "model_state_dict" in ckpt:
        raw = {k[len("actor_obs_normalizer.") :]: v for k, v in ckpt["model_state_dict"].items()
               if str(k).startswith("actor_obs_normalizer.")}  # fmt: skip
    return raw, (actor.obs_mean, actor.obs_std)


def _noise(ckpt: Mapping[str, Any], key: str) -> Any:
    state = ckpt["actor_state_dict"] if "actor_state_dict" in ckpt else ckpt.get("model_state_dict")
    if not isinstance(state, Mapping):
        state = ckpt
    return state[key]


def _train_cfg(
    model: dict[str, Any], seed: int, learning_rate: float, steps: int
) -> dict[str, Any]:
    return {
        "seed": seed,
        "num_steps_per_env": steps,
        "save_interval": 1_000_000_000,
        "check_for_nan": True,
        "obs_groups": {"actor": ["policy"], "critic": ["policy"]},
        "algorithm": {"class_name": "PPO", "learning_rate": learning_rate, **_PPO_SETTINGS},
        "actor": {
            k: (dict(v) if isinstance(v, dict) else v) for k, v in model["actor_cfg"].items()
        },
        "critic": dict(model["critic_cfg"]),
    }


def _load_optimizer(runner: Any, state: Any) -> str:
    """Load the file's Adam state when it fits the rebuilt parameters; say what happened."""
    if not isinstance(state, Mapping) or not state.get("param_groups"):
        return "fresh (the file holds no optimizer state)"
    opt = runner.alg.optimizer
    params = [p for g in opt.param_groups for p in g["params"]]
    groups = state["param_groups"]
    saved = [i for g in groups if isinstance(g, Mapping) for i in g.get("params", [])]
    per_param = state.get("state", {})
    fits = len(groups) == len(opt.param_groups) and len(saved) == len(params)
    if fits:
        for index, param in zip(saved, params, strict=True):
            entry = per_param.get(index, {}) if isinstance(per_param, Mapping) else {}
            for name in ("exp_avg", "exp_avg_sq"):
                value = entry.get(name) if isinstance(entry, Mapping) else None
                if value is not None and tuple(value.shape) != tuple(param.shape):
                    fits = False
    if not fits:
        return "fresh (the file's optimizer state does not fit the rebuilt parameters)"
    lr = opt.param_groups[0]["lr"]
    opt.load_state_dict(dict(state))
    for group in opt.param_groups:
        group["lr"] = lr  # the fine-tuning rate, not the file's last adaptive rate
    return "loaded from the file (Adam moments), learning rate reset to the fine-tuning rate"


def build_runner(
    model: dict[str, Any], venv: Any, seed: int, learning_rate: float, steps_per_env: int
) -> tuple[Any, dict[str, Any], str]:
    """An ``OnPolicyRunner`` whose actor and critic are the checkpoint's networks.

    Returns:
        (runner, its train config, what happened to the optimizer state).

    Raises:
        ConfigError: the weights do not fit the rebuilt networks or the env's sizes.
    """
    import torch
    from rsl_rl.runners import OnPolicyRunner

    spec = model["spec"]
    if venv.num_obs != spec.obs_dim or venv.num_actions != spec.action_dim:
        raise ConfigError(
            f"the checkpoint's actor takes {spec.obs_dim} observations and gives "
            f"{spec.action_dim} actions; the env has {venv.num_obs} and {venv.num_actions}",
            model["path"],
        )
    cfg = _train_cfg(model, seed, learning_rate, steps_per_env)
    torch.manual_seed(seed)
    with contextlib.redirect_stdout(io.StringIO()):  # rsl-rl prints both models
        runner = OnPolicyRunner(venv, cfg, log_dir=None, device="cpu")
    for net, key in ((runner.alg.actor, "actor_state"), (runner.alg.critic, "critic_state")):
        try:
            net.load_state_dict(model[key], strict=True)
        except RuntimeError as exc:
            raise ConfigError(
                f"the checkpoint's {key.split('_')[0]} does not fit the rsl-rl "
                f"{rsl_version()} model rebuilt from it: {str(exc).splitlines()[0]}",
                model["path"],
            ) from None
    if model["normalizer_fixed"]:
        for net in (runner.alg.actor, runner.alg.critic):
            if hasattr(net.obs_normalizer, "until"):
                net.obs_normalizer.until = 0  # no count in the file: keep its statistics
    optimizer = _load_optimizer(runner, model["optimizer_state"])
    return runner, cfg, optimizer


def rsl_version() -> str:
    """The installed rsl-rl-lib version."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rsl-rl-lib")
    except PackageNotFoundError:  # pragma: no cover - an editable checkout without metadata
        return "unknown"


def _rollout_observations(runner: Any, env_id: str, seed: int, steps: int = 200) -> np.ndarray:
    """Raw observations of a deterministic rollout of the fine-tuned actor (parity check)."""
    import gymnasium as gym
    import torch
    from tensordict import TensorDict

    policy = runner.alg.get_policy()
    policy.eval()
    policy.reset()
    env = gym.make(env_id)
    space: Any = env.action_space
    obs, _ = env.reset(seed=seed)
    out = []
    with torch.inference_mode():
        for _ in range(steps):
            x = np.asarray(obs, np.float32).reshape(1, -1)
            out.append(x[0])
            td = TensorDict({"policy": torch.from_numpy(x)}, batch_size=[1])
            action = policy(td).numpy()[0].astype(np.float64)
            action = np.clip(action, space.low, space.high)
            obs, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                obs, _ = env.reset()
                policy.reset()
    env.close()
    return np.stack(out)


def finetune_rsl_rl(
    model: dict[str, Any],
    env_id: str,
    mix: Any,
    period_ns: int,
    timesteps: int,
    seed: int,
    learning_rate: float,
    out: Path,
    progress: ProgressFn | None,
    *,
    num_envs: int = DEFAULT_NUM_ENVS,
) -> dict[str, Any]:
    """Fine-tune ``model`` (from :func:`read_rsl_rl`) under ``mix`` for ``timesteps`` env steps.

    ``num_envs`` envs (env i's timing wrapper seeded ``seed + i``) collect ``num_steps_per_env =
    min(128, ceil(timesteps / num_envs))`` steps each per iteration, for ``ceil(timesteps /
    (num_envs * num_steps_per_env))`` PPO iterations, on one torch thread, torch seeded
    with ``seed``.

    Returns:
        ``{"record", "model" (hardened.pt, an rsl-rl 5.x runner checkpoint), "observations"}``.
    """
    import torch

    from tailguard.adapters.rsl_rl_vecenv import GymnasiumVecEnv
    from tailguard.audit.harden import _make_env

    torch.set_num_threads(1)
    steps = max(2, min(MAX_STEPS_PER_ENV, math.ceil(timesteps / num_envs)))
    iterations = math.ceil(timesteps / (num_envs * steps))
    venv = GymnasiumVecEnv(
        [lambda i=i: _make_env(env_id, mix, period_ns, seed + i) for i in range(num_envs)],
        seed=seed,
    )
    try:
        runner, cfg, optimizer = build_runner(model, venv, seed, learning_rate, steps)
        torch.manual_seed(seed)
        started = time.perf_counter()
        total = iterations * num_envs * steps
        for done in range(iterations):
            with contextlib.redirect_stdout(io.StringIO()):
                runner.learn(num_learning_iterations=1)
            runner.current_learning_iteration = done + 1
            if progress is not None:
                progress("train", min((done + 1) * num_envs * steps, total), total)
        wall_s = time.perf_counter() - started
        returns = list(venv.recent_returns)
    finally:
        venv.close()
    spec = model["spec"]
    model_path = out / "hardened.pt"
    runner.save(
        str(model_path),
        infos={
            "tailguard": "harden",
            "fine_tuned_from_sha256": spec.sha256,
            "env": env_id,
            "seed": seed,
            "env_steps": total,
        },
    )
    observations = _rollout_observations(runner, env_id, seed)
    actor_cfg = cfg["actor"]
    record = {
        "algorithm": "ppo",
        "framework": "rsl-rl",
        "rsl_rl": rsl_version(),
        "torch": torch.__version__,
        "fine_tuned_from_sha256": spec.sha256,
        "source_format": spec.format_version,
        "architecture": {
            "actor": actor_cfg["class_name"],
            "pi": list(spec.hidden_sizes),
            "vf": list(cfg["critic"]["hidden_dims"]),
            "activation": ACTIVATION,
            "recurrent": spec.recurrent,
            "rnn_hidden_size": spec.rnn_hidden_size,
            "rnn_num_layers": spec.rnn_num_layers,
            "noise_parameter": f"{spec.std_key} -> distribution."
            + (
                "log_std_param"
                if actor_cfg["distribution_cfg"]["std_type"] == "log"
                else "std_param"
            ),
        },
        "settings": {
            "learning_rate": learning_rate,
            "num_envs": num_envs,
            "num_steps_per_env": steps,
            "iterations": iterations,
            **_PPO_SETTINGS,
        },
        "optimizer": optimizer,
        "obs_normalizer": {
            "actor": "empirical (rsl-rl), updated while fine-tuning, folded into the ONNX"
            if spec.normalizer
            else "none",
            "critic": model["critic_normalizer"],
            "updated": not model["normalizer_fixed"],
        },
        "seed": seed,
        "timesteps": timesteps,
        "env_steps": total,
        "mean_training_return": float(np.mean(returns)) if returns else None,
        "torch_threads": 1,
        "wall_s": round(wall_s, 2),
        "randomization": mix.to_dict(),
    }
    return {"record": record, "model": model_path, "observations": observations}

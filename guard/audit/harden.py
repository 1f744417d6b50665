"""``harden``: audit a policy, fine-tune it from its own weights under the timing it fails,
export it with the parity check, re-audit it, compare, and certify the pair.

1. The policy is audited (:func:`tailguard.audit.audit.run_audit`).
2. Every condition it does not tolerate becomes a training latency profile in the audit's
   own spec language (:func:`training_mix`): a latency condition (constant, lognormal tails,
   spikes, deadline-miss patterns, frontier cells, measured profiles) is trained on its
   latency spec; an observation-age condition on the same age as a command latency (the
   loop delay from state to actuation is the same for a memoryless policy); period-jitter,
   rate-change and command-drop conditions have no training wrapper yet and are listed as
   skipped. The out-of-envelope stresses certify will judge the pair under (derived from
   the original's audited envelope: where the fallback is in charge) are added the same way
   (``train_outside``). The trained profiles share ``1 - nominal_share`` equally; nominal
   timing keeps ``nominal_share`` of the episodes so nominal performance is kept.
3. The model is fine-tuned FROM ITS OWN WEIGHTS without running code from the file: a fresh
   SB3 model is built with the architecture read by :mod:`tailguard.adapters.sb3`
   (algorithm, hidden sizes, activation, spaces) and the weights-only state dict is loaded
   into ``model.policy``; VecNormalize statistics come from the restricted reader. The
   optimizer starts fresh (its state is not read). An RSL-RL ``.pt`` is rebuilt as rsl-rl-lib
   5.x actor and critic holding the checkpoint's weights, normalizers and (5.x) optimizer
   state and trained with its ``OnPolicyRunner`` (:mod:`tailguard.audit.harden_rsl_rl`),
   on the same timing wrappers. Training latency at the resolution the audit judges: the
   MuJoCo envs the substep simulator supports through
   :class:`~tailguard.firmware_sim.wrappers.ExactLatencyWrapper` (each command from its
   exact release instant), other envs through ``ActionLatencyWrapper(round_up=True)`` (the
   audit's whole-step resolution).
4. The result is exported to ONNX with the parity check, 5. re-audited on the same episodes
   and conditions, compared (``report diff``), and 6. the pair (original in charge, hardened
   as the guard's fallback) is certified against the original's audited envelope, whose
   per-tick timing violations switch to the fallback instead of holding (``PAIR_RESPONSES``).

Supported: SB3 PPO and A2C ``.zip``, and RSL-RL ``.pt`` checkpoints of every format the
audit reads (1.x to 5.x, MLP or recurrent; fine-tuned with rsl-rl-lib's ``OnPolicyRunner``,
exported with the RSL-RL adapter: :mod:`tailguard.audit.harden_rsl_rl`). SAC / TD3
(off-policy: replay buffer and target networks are not in the weights-only state) are
refused with a message.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tailguard.audit.audit import DEFAULT_EPISODES, AuditResult, run_audit
from tailguard.audit.conditions import Condition
from tailguard.audit.ratings import required_threshold
from tailguard.errors import ConfigError, MissingExtraError, UnsupportedEnvError

__all__ = [
    "DEFAULT_NOMINAL_SHARE",
    "DEFAULT_TIMESTEPS",
    "FINETUNE_LEARNING_RATE",
    "PAIR_RESPONSES",
    "SUPPORTED_ALGORITHMS",
    "HardenResult",
    "TrainingMix",
    "build_model",
    "harden",
    "training_mix",
]

DEFAULT_TIMESTEPS = 200_000
DEFAULT_NOMINAL_SHARE = 0.3
#: Fine-tuning learning rate (the shipped robust Hopper policy's, a third of PPO's default).
FINETUNE_LEARNING_RATE = 1e-4
SUPPORTED_ALGORITHMS = ("ppo", "a2c")
#: The pair's envelope hands control to the hardened fallback on the per-tick timing
#: violations the audited envelope answers with "hold": with a policy to fall back on,
#: repeating one command for many ticks is the worse answer (measured: under certify's
#: out-of-envelope observation age, holding kept the guarded Hopper at a return of 63 vs 741
#: unguarded; with these responses that check passed).
PAIR_RESPONSES = {"latency_max": "fallback", "obs_age": "fallback", "deadline_miss": "fallback"}
_LATENCY_DIMENSIONS = frozenset(
    {
        "latency_fixed",
        "latency_lognormal",
        "latency_lognormal_capped",
        "latency_spikes",
        "deadline_misses",
        "frontier",
        "measured",
        "custom",
    }
)
_ACTIVATIONS = {
    "tanh": "Tanh",
    "relu": "ReLU",
    "elu": "ELU",
    "lrelu": "LeakyReLU",
    "selu": "SELU",
    "gelu": "GELU",
    "swish": "SiLU",
    "mish": "Mish",
    "sigmoid": "Sigmoid",
    "softplus": "Softplus",
}

ProgressFn = Callable[[str, int, int], None]


@dataclass(frozen=True)
class TrainingMix:
    """The training timing randomization derived from an audit.

    Attributes:
        profiles: ``(weight, latency spec, from condition, how)``; weights sum to 1, nominal
            first.
        skipped: failing conditions not trained on, each ``{"condition", "reason"}``.
        nominal_share: the weight of nominal timing.
        failing: names of every condition the audit did not tolerate.
    """

    profiles: tuple[tuple[float, str, str, str], ...]
    skipped: tuple[dict[str, str], ...]
    nominal_share: float
    failing: tuple[str, ...]

    @property
    def trainable(self) -> bool:
        """True when at least one failing condition is trained on."""
        return len(self.profiles) > 1

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what ``training.json`` records)."""
        return {
            "nominal_share": self.nominal_share,
            "weighting": "nominal_share for nominal timing; the rest shared equally by the "
            "trained failing conditions; one profile drawn per training episode",
            "failing_conditions": list(self.failing),
            "profiles": [
                {"weight": w, "latency": spec, "condition": cond, "how": how}
                for w, spec, cond, how in self.profiles
            ],
            "skipped": list(self.skipped),
        }


def training_mix(
    audit: AuditResult,
    nominal_share: float = DEFAULT_NOMINAL_SHARE,
    outside: Sequence[Condition] = (),
) -> TrainingMix:
    """The training randomization for the conditions ``audit`` did not tolerate, plus
    ``outside`` conditions (the out-of-envelope stresses certify judges the pair under: the
    fallback is in charge exactly there).

    Raises:
        ConfigError: ``nominal_share`` outside (0, 1).
    """
    if not 0.0 < nominal_share < 1.0:
        raise ConfigError(f"nominal_share must be in (0, 1), got {nominal_share}")
    trained: list[tuple[str, str, str]] = []
    skipped: list[dict[str, str]] = []
    candidates = [
        (r.condition, "") for r in audit.conditions[1:] if r.rating and not r.rating.tolerated
    ]
    failing = [c.name for c, _ in candidates]
    candidates += [(c, "out-of-envelope stress of the pair; ") for c in outside]
    for c, origin in candidates:
        timing_changed = c.dt != "nominal" or c.drop_prob > 0
        if timing_changed:
            what = "command drops" if c.drop_prob > 0 else "the control period"
            skipped.append(
                {
                    "condition": c.name,
                    "reason": f"it changes {what}; harden has no training wrapper for that "
                    "yet (latency and observation age only)",
                }
            )
        elif c.latency != "nominal":
            how = origin + "latency spec"
            if c.obs_delay != "nominal":
                how += " (its observation age is not added: two profiles are not summed)"
            trained.append((c.latency, c.name, how))
        elif c.obs_delay != "nominal":
            trained.append(
                (
                    c.obs_delay,
                    c.name,
                    origin + "observation age trained as an equal command latency (same loop delay "
                    "from state to actuation for a memoryless policy)",
                )
            )
    profiles: list[tuple[float, str, str, str]] = [
        (nominal_share, "nominal", "nominal", "nominal timing, to keep nominal performance")
    ]
    for spec, name, how in trained:
        profiles.append(((1.0 - nominal_share) / len(trained), spec, name, how))
    if not trained:
        profiles = [(1.0, "nominal", "nominal", "nothing to train on")]
    return TrainingMix(tuple(profiles), tuple(skipped), nominal_share, tuple(failing))


@dataclass
class HardenResult:
    """What ``harden`` produced.

    Attributes:
        status: ``"certified"`` (certify ran; see ``certify.verdict``), ``"nothing_to_harden"``
            (every condition tolerated) or ``"untrainable"`` (the failing conditions are all
            of kinds harden cannot train on).
        before, after: the audits of the original and hardened policies (after: None
            unless trained).
        mix: the training randomization.
        training: the training record (``training.json``), empty unless trained.
        hardened_model, hardened_onnx, hardened_vecnormalize: the outputs (None unless
            trained).
        diff: the ``report diff`` document (before -> after).
        certify: the certification of the pair.
        files: every file written, by role.
    """

    status: str
    before: AuditResult
    mix: TrainingMix
    after: AuditResult | None = None
    training: dict[str, Any] = field(default_factory=dict)
    hardened_model: Path | None = None
    hardened_onnx: Path | None = None
    hardened_vecnormalize: Path | None = None
    diff: dict[str, Any] | None = None
    certify: Any = None
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        """certify's 0 pass / 1 warn / 2 fail; 0 with nothing to harden; 1 untrainable."""
        if self.certify is not None:
            return int(self.certify.exit_code)
        return 0 if self.status == "nothing_to_harden" else 1

    @property
    def verdict(self) -> str:
        """certify's verdict, or the status."""
        return str(self.certify.verdict) if self.certify is not None else self.status


def _check_policy(policy: Path) -> None:
    if not policy.is_file():
        raise ConfigError(
            "policy file not found; pass the SB3 .zip or the RSL-RL .pt checkpoint the policy "
            "was saved as",
            policy,
        )
    suffix = policy.suffix.lower()
    if suffix == ".onnx":
        raise ConfigError(
            "an ONNX file holds no training state (no value function, no log-std, no "
            "normalization statistics to update): harden cannot fine-tune it; pass the SB3 "
            ".zip it was exported from (and its --vecnormalize file) or the RSL-RL .pt "
            "checkpoint",
            policy,
        )
    if suffix not in (".zip", ".pt"):
        raise ConfigError(
            f"unrecognised policy format '{suffix or '(no suffix)'}'; harden fine-tunes SB3 "
            ".zip models (PPO, A2C) and RSL-RL .pt checkpoints (PPO, formats 1.x to 5.x)",
            policy,
        )


def _require_sb3() -> Any:
    try:
        import stable_baselines3
    except ImportError as exc:
        raise MissingExtraError(
            "stable-baselines3", "train", "Fine-tuning with `tailguard harden`"
        ) from exc
    return stable_baselines3


def _read_model(policy: Path, vecnormalize: Path | None) -> dict[str, Any]:
    """Architecture, state dict, readable hyperparameters and VecNormalize state (no code
    from the files runs)."""
    from tailguard.adapters.sb3 import _read_zip, load_sb3

    info = load_sb3(policy, vecnormalize=vecnormalize)
    if info.algorithm not in SUPPORTED_ALGORITHMS:
        raise ConfigError(
            f"harden fine-tunes {', '.join(a.upper() for a in SUPPORTED_ALGORITHMS)} models; "
            f"this is {info.algorithm.upper()} (off-policy: its replay buffer and target "
            "networks are not in the weights-only state)",
            policy,
        )
    data, state = _read_zip(policy)
    import re

    vf_layers = sorted(
        int(m.group(1))
        for k in state
        if (m := re.match(r"mlp_extractor\.value_net\.(\d+)\.weight$", k))
    )
    vf_sizes = [int(state[f"mlp_extractor.value_net.{i}.weight"].shape[0]) for i in vf_layers]
    vn = _read_vecnormalize_state(vecnormalize) if vecnormalize is not None else None
    return {"info": info, "data": data, "state": state, "vf_sizes": vf_sizes, "vecnormalize": vn}


def _read_vecnormalize_state(path: Path) -> dict[str, Any]:
    """The VecNormalize statistics (restricted unpickler: arrays and stand-ins only).

    Called after ``load_sb3`` read the same file through ``read_vecnormalize``, which bounds
    its size and checks the observation statistics; the return statistics are checked here.
    """
    import pickle

    from tailguard.adapters.sb3 import _RestrictedUnpickler, _Stub
    from tailguard.errors import CheckpointError

    try:
        with Path(path).open("rb") as handle:
            obj = _RestrictedUnpickler(handle).load()
    except (pickle.UnpicklingError, EOFError, OSError, ValueError, TypeError) as exc:
        raise CheckpointError(f"cannot read the VecNormalize file: {exc}", path) from None
    state = obj.__dict__ if isinstance(obj, _Stub) else {}

    def rms(name: str) -> dict[str, Any] | None:
        r = state.get(name)
        if r is None:
            return None
        try:
            out: dict[str, Any] = {
                "mean": np.asarray(r.mean, np.float64),
                "var": np.asarray(r.var, np.float64),
                "count": float(getattr(r, "count", 1e-4)),
            }
        except (AttributeError, TypeError, ValueError):
            raise CheckpointError(
                f"VecNormalize {name} holds no numeric statistics", path
            ) from None
        finite = all(np.all(np.isfinite(out[k])) for k in ("mean", "var", "count"))
        if not finite or np.any(out["var"] < 0) or out["count"] <= 0:
            raise CheckpointError(f"VecNormalize {name} holds non-finite or negative values", path)
        return out

    def num(key: str, default: float) -> float:
        v = state.get(key, default)
        return float(v) if isinstance(v, int | float | np.floating) else default

    return {
        "norm_obs": bool(state.get("norm_obs", True)),
        "norm_reward": bool(state.get("norm_reward", True)),
        "clip_obs": num("clip_obs", 10.0),
        "clip_reward": num("clip_reward", 10.0),
        "gamma": num("gamma", 0.99),
        "epsilon": num("epsilon", 1e-8),
        "obs_rms": rms("obs_rms"),
        "ret_rms": rms("ret_rms"),
    }


def _make_env(env_id: str, mix: TrainingMix, period_ns: int, seed: int) -> Any:
    """The training env at the audit's resolution of ``env_id``: exact release times where
    the substep simulator supports the env, whole steps (rounded up) elsewhere."""
    import gymnasium as gym

    from tailguard.firmware_sim.wrappers import ActionLatencyWrapper, ExactLatencyWrapper

    inner = gym.make(env_id)
    specs = [spec for _, spec, _, _ in mix.profiles]
    weights = [w for w, _, _, _ in mix.profiles]
    try:
        return ExactLatencyWrapper(inner, specs, weights=weights, seed=seed, reset_seed_offset=7919)
    except UnsupportedEnvError:
        pass
    return ActionLatencyWrapper(
        inner, specs, period_ns=period_ns, seed=seed, weights=weights, round_up=True
    )


class _Callback:
    """Adapts SB3's callback protocol to ``progress('train', done, total)``."""

    def __new__(cls, progress: ProgressFn | None, total: int) -> Any:
        from stable_baselines3.common.callbacks import BaseCallback

        class Report(BaseCallback):  # type: ignore[misc]
            def _on_step(self) -> bool:
                if progress is not None:
                    progress("train", min(int(self.num_timesteps), total), total)
                return True

        return Report()


def build_model(
    model_info: dict[str, Any], venv: Any, seed: int, learning_rate: float, timesteps: int
) -> tuple[Any, dict[str, Any]]:
    """A fresh SB3 model of the file's architecture holding the file's weights.

    The hyperparameters stored as plain numbers in the zip's ``data`` are kept (PPO's
    ``n_steps`` and ``batch_size`` capped at the budget); the learning rate is
    ``learning_rate``; the optimizer is fresh.

    Raises:
        ConfigError: the weights do not fit the architecture.
    """
    import stable_baselines3 as sb3
    import torch

    info = model_info["info"]
    data = model_info["data"]
    act = getattr(torch.nn, _ACTIVATIONS[info.activation])
    policy_kwargs = {
        "net_arch": {"pi": list(info.hidden_sizes), "vf": list(model_info["vf_sizes"])},
        "activation_fn": act,
    }

    def plain(key: str, default: Any, kind: type) -> Any:
        v = data.get(key, default)
        return v if isinstance(v, kind) and not isinstance(v, bool) else default

    settings: dict[str, Any] = {
        "learning_rate": learning_rate,
        "gamma": plain("gamma", 0.99, float),
        "gae_lambda": plain("gae_lambda", 0.95, float),
        "ent_coef": plain("ent_coef", 0.0, float),
        "vf_coef": plain("vf_coef", 0.5, float),
        "max_grad_norm": plain("max_grad_norm", 0.5, float),
    }
    algo: Any
    if info.algorithm == "ppo":
        n_steps = max(2, min(plain("n_steps", 2048, int), timesteps))
        settings.update(
            n_steps=n_steps,
            batch_size=max(2, min(plain("batch_size", 64, int), n_steps)),
            n_epochs=plain("n_epochs", 10, int),
        )
        algo = sb3.PPO
    else:
        settings.update(n_steps=max(1, min(plain("n_steps", 5, int), timesteps)))
        algo = sb3.A2C
    model = algo(
        "MlpPolicy",
        venv,
        seed=seed,
        device="cpu",
        verbose=0,
        policy_kwargs=policy_kwargs,
        **settings,
    )
    state = dict(model_info["state"])
    missing, unexpected = model.policy.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConfigError(
            f"the model's weights do not fit the architecture read from it (missing "
            f"{sorted(missing)[:6]}, unexpected {sorted(unexpected)[:6]})"
        )
    return model, settings


def _finetune(
    model_info: dict[str, Any],
    env_id: str,
    mix: TrainingMix,
    period_ns: int,
    timesteps: int,
    seed: int,
    learning_rate: float,
    out: Path,
    progress: ProgressFn | None,
) -> dict[str, Any]:
    import stable_baselines3 as sb3
    import torch
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    torch.set_num_threads(1)
    info = model_info["info"]
    venv: Any = DummyVecEnv([lambda: Monitor(_make_env(env_id, mix, period_ns, seed))])
    vn = model_info["vecnormalize"]
    if vn is not None:
        venv = VecNormalize(
            venv,
            norm_obs=vn["norm_obs"],
            norm_reward=vn["norm_reward"],
            clip_obs=vn["clip_obs"],
            clip_reward=vn["clip_reward"],
            gamma=vn["gamma"],
            epsilon=vn["epsilon"],
        )
        for name in ("obs_rms", "ret_rms"):
            stats = vn[name]
            if stats is not None:
                target = getattr(venv, name)
                if np.shape(target.mean) != stats["mean"].shape:
                    raise ConfigError(
                        f"VecNormalize {name} has shape {list(stats['mean'].shape)}, the env "
                        f"needs {list(np.shape(target.mean))}"
                    )
                target.mean, target.var, target.count = stats["mean"], stats["var"], stats["count"]
    venv.seed(seed)
    model, settings = build_model(model_info, venv, seed, learning_rate, timesteps)
    started = time.perf_counter()
    model.learn(total_timesteps=timesteps, callback=_Callback(progress, timesteps))
    wall_s = time.perf_counter() - started
    model_path = out / "hardened.zip"
    model.save(model_path)
    vn_path = None
    if vn is not None:
        vn_path = out / "hardened.vecnormalize.pkl"
        venv.save(str(vn_path))
    observations = _record_observations(model, venv, env_id, seed)
    venv.close()
    record = {
        "algorithm": info.algorithm,
        "stable_baselines3": sb3.__version__,
        "torch": torch.__version__,
        "fine_tuned_from_sha256": info.sha256,
        "architecture": {
            "pi": list(info.hidden_sizes),
            "vf": list(model_info["vf_sizes"]),
            "activation": info.activation,
        },
        "settings": settings,
        "optimizer": "fresh (the file's optimizer state is not read)",
        "vecnormalize": None
        if vn is None
        else {k: vn[k] for k in ("norm_obs", "norm_reward", "clip_obs", "gamma")},
        "seed": seed,
        "timesteps": timesteps,
        "torch_threads": 1,
        "wall_s": round(wall_s, 2),
        "randomization": mix.to_dict(),
    }
    return {
        "record": record,
        "model": model_path,
        "vecnormalize": vn_path,
        "observations": observations,
    }


def _record_observations(model: Any, venv: Any, env_id: str, seed: int) -> np.ndarray:
    """Raw observations of a short deterministic rollout (the parity check's recorded set)."""
    import gymnasium as gym

    env = gym.make(env_id)
    obs, _ = env.reset(seed=seed)
    out = []
    for _ in range(200):
        out.append(np.asarray(obs, np.float32).reshape(-1))
        x = np.asarray(obs, np.float32)[None]
        if hasattr(venv, "normalize_obs"):
            x = venv.normalize_obs(x)
        action, _ = model.predict(x, deterministic=True)
        obs, _, terminated, truncated, _ = env.step(action[0])
        if terminated or truncated:
            obs, _ = env.reset()
    env.close()
    return np.stack(out)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def harden(
    policy: str | Path,
    env: str,
    out: str | Path,
    *,
    vecnormalize: str | Path | None = None,
    timesteps: int = DEFAULT_TIMESTEPS,
    seed: int = 0,
    episodes: int = DEFAULT_EPISODES,
    quick: bool = False,
    workers: int = 1,
    executor: Any = None,
    address: str | None = None,
    require: str = "MILD",
    nominal_share: float = DEFAULT_NOMINAL_SHARE,
    learning_rate: float = FINETUNE_LEARNING_RATE,
    train_outside: bool = True,
    n_resamples: int = 9999,
    certify_episodes: int | None = None,
    html: bool = True,
    progress: ProgressFn | None = None,
) -> HardenResult:
    """Audit, fine-tune under the failing timing, export, re-audit, diff, certify the pair.

    Args:
        policy: an SB3 ``.zip`` (PPO or A2C) or an RSL-RL ``.pt`` checkpoint.
        env: a gymnasium env id.
        out: output folder: ``before/`` and ``after/`` audits, ``training.json``,
            ``hardened.zip`` (RSL-RL: ``hardened.pt``) / ``.onnx`` (/ ``.vecnormalize.pkl``),
            ``diff/``, ``pair/``
            (envelope.json, pair.json) and ``certify/``.
        vecnormalize: the model's VecNormalize statistics.
        timesteps: fine-tuning budget, env steps.
        seed: seeds the audits (episode i resets with seed+i), the training and its timing.
        episodes: paired episodes per condition (audits and certify).
        quick: the smoke sweep.
        workers: audit worker processes.
        executor, address: where the audits' and certify's units run (``"local"``,
            ``"ray"`` or an executor; see :func:`tailguard.audit.run_audit`); one
            connection serves every stage.
        require: the rating a condition must reach (PASS or MILD).
        nominal_share: the share of nominal-timing training episodes.
        learning_rate: the fine-tuning learning rate.
        train_outside: also train on the out-of-envelope stresses certify judges the pair
            under (the original's envelope: where the fallback is in charge).
        n_resamples: bootstrap resamples.
        certify_episodes: episodes per certify profile (default ``episodes``).
        html: write report.html files.
        progress: ``progress(stage, done, total)``; stages ``audit``, ``train``,
            ``re-audit``, ``certify``.

    Raises:
        ConfigError: an input harden cannot fine-tune (ONNX, unknown suffix, missing file,
            SAC/TD3, an RSL-RL checkpoint whose layout cannot be mapped, a non-gymnasium env
            id), before anything runs.
        MissingExtraError: stable-baselines3 (or, for ``.pt``, rsl-rl-lib) is not installed
            (``pip install 'tailguard[train]'``).
    """
    from tailguard.audit.executor import select_executor

    runner, close = select_executor(executor, workers=workers, address=address)
    try:
        return _harden(
            policy,
            env,
            out,
            runner,
            vecnormalize=vecnormalize,
            timesteps=timesteps,
            seed=seed,
            episodes=episodes,
            quick=quick,
            workers=workers,
            require=require,
            nominal_share=nominal_share,
            learning_rate=learning_rate,
            train_outside=train_outside,
            n_resamples=n_resamples,
            certify_episodes=certify_episodes,
            html=html,
            progress=progress,
        )
    finally:
        close()


def _harden(
    policy: str | Path,
    env: str,
    out: str | Path,
    runner: Any,
    *,
    vecnormalize: str | Path | None = None,
    timesteps: int = DEFAULT_TIMESTEPS,
    seed: int = 0,
    episodes: int = DEFAULT_EPISODES,
    quick: bool = False,
    workers: int = 1,
    require: str = "MILD",
    nominal_share: float = DEFAULT_NOMINAL_SHARE,
    learning_rate: float = FINETUNE_LEARNING_RATE,
    train_outside: bool = True,
    n_resamples: int = 9999,
    certify_episodes: int | None = None,
    html: bool = True,
    progress: ProgressFn | None = None,
) -> HardenResult:
    """:func:`harden` on an executor (``runner``)."""
    from tailguard.audit.certification import certify
    from tailguard.audit.diff import diff_markdown, diff_summaries
    from tailguard.audit.outputs import dump_json, write_audit, write_certify
    from tailguard.envelope.model import save_envelope

    src = Path(policy)
    _check_policy(src)
    if timesteps < 1:
        raise ConfigError(f"timesteps must be >= 1, got {timesteps}")
    if env.startswith(("py:", "mjcf:")):
        raise ConfigError(f"harden trains on gymnasium env ids; got '{env}'")
    required_threshold(require)
    vn_path = Path(vecnormalize) if vecnormalize is not None else None
    rsl_rl = src.suffix.lower() == ".pt"
    if rsl_rl:
        from tailguard.audit.harden_rsl_rl import read_rsl_rl

        if vn_path is not None:
            raise ConfigError("--vecnormalize goes with an SB3 .zip model only", src)
        model_info = read_rsl_rl(src)
    else:
        _require_sb3()
        model_info = _read_model(src, vn_path)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}

    def stage(name: str) -> Callable[[int, int], None] | None:
        if progress is None:
            return None
        return lambda done, total: progress(name, done, total)

    before = run_audit(
        src,
        env,
        episodes=episodes,
        seed=seed,
        workers=workers,
        executor=runner,
        quick=quick,
        require=require,
        n_resamples=n_resamples,
        workdir=folder / "before",
        vecnormalize=vn_path,
        progress=stage("audit"),
    )
    for k, p in write_audit(before, folder / "before", html=html).items():
        files[f"before_{k}"] = p
    outside: list[Condition] = []
    if train_outside and before.envelope is not None:
        from tailguard.audit.certification import _stress_conditions

        outside = _stress_conditions(before.envelope, [])[1]
    mix = training_mix(before, nominal_share, outside)
    result = HardenResult(status="certified", before=before, mix=mix, files=files)
    if not mix.failing:
        result.status = "nothing_to_harden"
        return result
    if not mix.trainable:
        result.status = "untrainable"
        return result
    from tailguard.audit.harden_rsl_rl import ACTIVATION, finetune_rsl_rl

    tuned = (finetune_rsl_rl if rsl_rl else _finetune)(
        model_info,
        env,
        mix,
        before.task.period_ns,
        timesteps,
        seed,
        learning_rate,
        folder,
        progress,
    )
    onnx_path = folder / "hardened.onnx"
    if rsl_rl:
        from tailguard.adapters.rsl_rl_export import export_rsl_rl

        exported = export_rsl_rl(
            tuned["model"], onnx_path, activation=ACTIVATION, observations=tuned["observations"]
        )
    else:
        from tailguard.adapters.sb3 import export_sb3

        exported = export_sb3(
            tuned["model"],
            onnx_path,
            vecnormalize=tuned["vecnormalize"],
            observations=tuned["observations"],
        )
    record = tuned["record"]
    record["export"] = {
        "onnx": onnx_path.name,
        "onnx_sha256": _sha256(onnx_path),
        "parity": exported.parity.record(),
    }
    files["training"] = folder / "training.json"
    files["training"].write_text(dump_json(record), encoding="utf-8")
    files.update(model=tuned["model"], onnx=onnx_path)
    result.training = record
    result.hardened_model = tuned["model"]
    result.hardened_onnx = onnx_path
    result.hardened_vecnormalize = tuned.get("vecnormalize")
    after = run_audit(
        onnx_path,
        env,
        episodes=episodes,
        seed=seed,
        workers=workers,
        executor=runner,
        conditions=[r.condition for r in before.conditions],
        require=require,
        n_resamples=n_resamples,
        workdir=folder / "after",
        progress=stage("re-audit"),
    )
    result.after = after
    for k, p in write_audit(after, folder / "after", html=html).items():
        files[f"after_{k}"] = p
    diff = diff_summaries(before.summary(), after.summary(), n_resamples=n_resamples, seed=seed)
    result.diff = diff
    (folder / "diff").mkdir(exist_ok=True)
    files["diff"] = folder / "diff" / "diff.json"
    files["diff"].write_text(dump_json(diff), encoding="utf-8")
    files["diff_markdown"] = folder / "diff" / "diff.md"
    files["diff_markdown"].write_text(diff_markdown(diff), encoding="utf-8")
    pair = folder / "pair"
    pair.mkdir(exist_ok=True)
    original_onnx = folder / "before" / "policy.onnx"  # where run_audit exported it
    envelope_path = pair / "envelope.json"
    save_envelope(before.envelope.with_responses(PAIR_RESPONSES), envelope_path)
    pair_doc = {
        "in_charge": {"policy": src.name, "onnx": str(original_onnx.relative_to(folder))},
        "fallback": {"policy": tuned["model"].name, "onnx": onnx_path.name},
        "envelope": envelope_path.name,
        "envelope_from": "the original policy's audit (before/): the guard hands control to "
        "the hardened fallback when the timing leaves what the original tolerates",
        "responses_changed": PAIR_RESPONSES,
        "certify": f"tailguard certify --policy {original_onnx.relative_to(folder)} "
        f"--envelope pair/envelope.json --fallback {onnx_path.name} --env {env}",
    }
    files["pair"] = pair / "pair.json"
    files["pair"].write_text(json.dumps(pair_doc, indent=2) + "\n", encoding="utf-8")
    files["envelope"] = envelope_path
    cert = certify(
        original_onnx,
        envelope_path,
        env,
        fallback=str(onnx_path),
        episodes=certify_episodes or episodes,
        seed=seed + 1000,
        workers=workers,
        executor=runner,
        require=require,
        n_resamples=n_resamples,
        workdir=folder / "certify",
        progress=stage("certify"),
    )
    result.certify = cert
    for k, p in write_certify(cert, folder / "certify", html=html).items():
        files[f"certify_{k}"] = p
    return result

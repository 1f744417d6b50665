"""Train the shipped Hopper-v5 chunk policy by behaviour cloning from the nominal policy.

The teacher is ``hopper_nominal.onnx`` (raw observations in, actions out). Data generation:
seeded Hopper-v5 rollouts in gymnasium in which the teacher acts; on a fraction of the
episodes each executed action gets Gaussian noise (the labels stay the teacher's clean
actions), so the data also covers states near the teacher's trajectory. A sample is the
observation at step t and the teacher's next ``H`` actions along the executed trajectory,
``a_t .. a_{t+H-1}`` (clipped to the action bounds, as MuJoCo clamps the command); samples
whose chunk would run past the episode's end are left out. Then ``dagger_rounds`` rounds of
DAgger: the student acts as it will be run (synchronous chunks, ``s`` actions each), the
teacher labels the states it visits, the data is aggregated and training continues. The
round kept is the one with the best mean return in synchronous chunks on separate selection
seeds (every round's score is recorded); the final evaluation uses reset seeds 0..19.

The student is an MLP ``obs [batch, 11] -> [batch, H * 3]`` reshaped to ``[batch, H, 3]``
(the observation normalization is a fixed first layer of the exported graph), trained with
mean squared error. It is exported to ONNX with ``tailguard.chunk_horizon`` = H and
``tailguard.execute_horizon`` = s in the metadata, checked for parity against torch, loaded
back with ``OnnxChunkPolicy`` and evaluated in synchronous execution; everything (settings,
seeds, versions, wall time, evaluation) goes to ``hopper_chunk.training.json``.

Usage (from the repository root, CPU minutes, one torch thread)::

    nice -n 19 python -m tailguard.policies.train_chunk_hopper --out guard/policies/hopper_chunk
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
TEACHER = HERE / "hopper_nominal.onnx"
ENV_ID = "Hopper-v5"
HORIZON = 8
EXECUTE = 5

SETTINGS: dict[str, Any] = {
    "horizon": HORIZON,
    "execute_horizon": EXECUTE,
    "episodes": 80,
    "noisy_episode_fraction": 0.5,
    "action_noise_std": 0.1,
    "reset_seed_base": 50_000,  # outside the audit's and the demo's reset seeds
    "hidden_sizes": [256, 256],
    "activation": "elu",
    "epochs": 40,
    "batch_size": 256,
    "learning_rate": 1e-3,
    "weight_decay": 0.0,
    "validation_fraction": 0.1,
    "dagger_rounds": 3,
    "dagger_episodes": 40,
    "dagger_epochs": 15,
    "selection_seed_base": 60_000,  # the round kept is the best on these (not the eval seeds)
    "selection_episodes": 10,
    "seed": 7,
}


def collect(
    settings: dict[str, Any],
    seed: int,
    *,
    episodes: int,
    seed_base: int,
    id_base: int = 0,
    student: Any = None,
) -> dict[str, np.ndarray]:
    """Rollouts labelled by the teacher: observations [n, 11], chunk labels [n, H, 3] (the
    teacher's actions at the next H visited states), episode ids [n].

    Without ``student`` the teacher acts (with action noise on a fraction of the episodes);
    with one (a torch chunk model) the student acts as it will be run -- synchronous chunks,
    ``s`` actions each -- and the teacher only labels the states it visits (DAgger).
    """
    import gymnasium as gym
    import onnxruntime as ort
    import torch

    teacher = ort.InferenceSession(str(TEACHER), providers=["CPUExecutionProvider"])
    env = gym.make(ENV_ID)
    low, high = env.action_space.low, env.action_space.high
    rng = np.random.default_rng(seed)
    h, s = int(settings["horizon"]), int(settings["execute_horizon"])
    obs_all, labels_all, ids_all = [], [], []
    for ep in range(episodes):
        noisy = student is None and rng.random() < float(settings["noisy_episode_fraction"])
        obs, _ = env.reset(seed=seed_base + ep)
        observations, actions = [], []
        done = False
        k = 0
        chunk = None
        while not done:
            a = teacher.run(None, {"obs": obs.astype(np.float32).reshape(1, -1)})[0][0]
            a = np.clip(a, low, high)
            observations.append(obs.astype(np.float32))
            actions.append(a.astype(np.float32))
            executed = a
            if student is not None:
                if k % s == 0:
                    with torch.no_grad():
                        x = torch.as_tensor(obs, dtype=torch.float32).reshape(1, -1)
                        chunk = student(x).numpy()[0]
                executed = np.clip(chunk[k % s], low, high)
                k += 1
            elif noisy:
                noise = rng.normal(0.0, float(settings["action_noise_std"]), a.shape)
                executed = np.clip(a + noise, low, high)
            obs, _, terminated, truncated, _ = env.step(executed)
            done = bool(terminated or truncated)
        acts = np.asarray(actions)
        for t in range(len(observations) - h + 1):
            obs_all.append(observations[t])
            labels_all.append(acts[t : t + h])
            ids_all.append(id_base + ep)
    env.close()
    return {
        "obs": np.asarray(obs_all, np.float32).reshape(-1, 11),
        "labels": np.asarray(labels_all, np.float32).reshape(-1, h, 3),
        "episode": np.asarray(ids_all, np.int64),
    }


def build_model(settings: dict[str, Any], mean: np.ndarray, std: np.ndarray) -> Any:
    import torch
    from torch import nn

    h, a = int(settings["horizon"]), 3

    class ChunkMLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
            self.register_buffer("inv_std", torch.as_tensor(1.0 / std, dtype=torch.float32))
            layers: list[nn.Module] = []
            width = mean.size
            for hidden in settings["hidden_sizes"]:
                layers += [nn.Linear(width, int(hidden)), nn.ELU()]
                width = int(hidden)
            layers.append(nn.Linear(width, h * a))
            self.net = nn.Sequential(*layers)

        def forward(self, obs: Any) -> Any:
            z = (obs - self.mean) * self.inv_std
            return self.net(z).reshape(-1, h, a)

    return ChunkMLP()


def train(
    data: dict[str, np.ndarray],
    settings: dict[str, Any],
    seed: int,
    epochs: int,
    model: Any = None,
    opt: Any = None,
) -> tuple[Any, Any, dict]:
    """Train (or continue training) on ``data``; validation on held-out episodes."""
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    episodes = np.unique(data["episode"])
    n_val = max(1, round(float(settings["validation_fraction"]) * episodes.size))
    val_eps = set(rng.choice(episodes, n_val, replace=False).tolist())
    is_val = np.array([e in val_eps for e in data["episode"]])
    x_tr, y_tr = data["obs"][~is_val], data["labels"][~is_val]
    x_va, y_va = data["obs"][is_val], data["labels"][is_val]
    if model is None:
        mean = x_tr.mean(axis=0)
        std = np.maximum(x_tr.std(axis=0), 1e-3)
        model = build_model(settings, mean, std)
        opt = torch.optim.Adam(
            model.parameters(),
            lr=float(settings["learning_rate"]),
            weight_decay=float(settings["weight_decay"]),
        )
    xt, yt = torch.as_tensor(x_tr), torch.as_tensor(y_tr)
    xv, yv = torch.as_tensor(x_va), torch.as_tensor(y_va)
    bs = int(settings["batch_size"])
    history = []
    for epoch in range(epochs):
        perm = torch.as_tensor(rng.permutation(len(xt)))
        model.train()
        total = 0.0
        for i in range(0, len(xt), bs):
            idx = perm[i : i + bs]
            loss = torch.mean((model(xt[idx]) - yt[idx]) ** 2)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        model.eval()
        with torch.no_grad():
            val = float(torch.mean((model(xv) - yv) ** 2))
        history.append({"epoch": epoch + 1, "train_mse": total / len(xt), "val_mse": val})
        if (epoch + 1) % 5 == 0:
            print(f"epoch {epoch + 1}: train {total / len(xt):.5f} val {val:.5f}", flush=True)
    model.eval()
    return (
        model,
        opt,
        {
            "train_samples": len(xt),
            "validation_samples": len(xv),
            "validation_episodes": sorted(int(e) for e in val_eps),
            "history": history,
        },
    )


def export(model: Any, path: Path, settings: dict[str, Any], probe: np.ndarray) -> float:
    """ONNX export with the chunk metadata; returns the parity max abs difference."""
    import onnx
    import onnxruntime as ort
    import torch

    from tailguard.runtime.chunk_policy import CHUNK_HORIZON_KEY, EXECUTE_HORIZON_KEY

    tmp = path.with_suffix(".tmp.onnx")
    with torch.no_grad():
        torch.onnx.export(
            model,
            (torch.zeros(2, probe.shape[1]),),
            str(tmp),
            input_names=["obs"],
            output_names=["actions"],
            dynamic_axes={"obs": {0: "batch"}, "actions": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    m = onnx.load(str(tmp))
    m.ir_version = min(int(m.ir_version), 10)
    meta = {
        CHUNK_HORIZON_KEY: str(settings["horizon"]),
        EXECUTE_HORIZON_KEY: str(settings["execute_horizon"]),
        "tailguard.teacher": TEACHER.name,
        "tailguard.training": "behaviour cloning (train_chunk_hopper.py)",
    }
    for key, value in meta.items():
        entry = m.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(m, str(path))
    tmp.unlink()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"obs": probe})[0]
    with torch.no_grad():
        want = model(torch.as_tensor(probe)).numpy()
    return float(np.abs(got - want).max())


def selection_return(model: Any, settings: dict[str, Any], seeds: list[int]) -> float:
    """Mean return of the torch model in synchronous chunks on ``seeds`` (model selection
    between rounds; these seeds are disjoint from the final evaluation's)."""
    import gymnasium as gym
    import torch

    env = gym.make(ENV_ID)
    s = int(settings["execute_horizon"])
    total = 0.0
    for seed in seeds:
        obs, _ = env.reset(seed=seed)
        done = False
        while not done:
            with torch.no_grad():
                chunk = model(torch.as_tensor(obs, dtype=torch.float32).reshape(1, -1))[0]
            for k in range(s):
                obs, r, terminated, truncated, _ = env.step(np.clip(chunk[k].numpy(), -1, 1))
                total += float(r)
                done = bool(terminated or truncated)
                if done:
                    break
    env.close()
    return total / len(seeds)


def evaluate_sync(path: Path, seeds: list[int]) -> list[dict[str, Any]]:
    """Synchronous chunked execution in gymnasium (execute s, re-plan): per-episode returns."""
    import gymnasium as gym

    from tailguard.runtime.chunk_policy import OnnxChunkPolicy

    policy = OnnxChunkPolicy(path)
    env = gym.make(ENV_ID)
    out = []
    for seed in seeds:
        obs, _ = env.reset(seed=seed)
        ret, steps, done, terminated = 0.0, 0, False, False
        while not done:
            chunk = policy(obs)
            for k in range(policy.execute_horizon):
                obs, r, terminated, truncated, _ = env.step(chunk[k])
                ret += float(r)
                steps += 1
                done = bool(terminated or truncated)
                if done:
                    break
        out.append({"seed": seed, "return": ret, "steps": steps, "terminated": bool(terminated)})
    env.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=HERE / "hopper_chunk", help="path prefix")
    ap.add_argument("--seed", type=int, default=SETTINGS["seed"])
    ap.add_argument("--episodes", type=int, default=SETTINGS["episodes"])
    ap.add_argument("--epochs", type=int, default=SETTINGS["epochs"])
    ap.add_argument("--eval-episodes", type=int, default=20)
    ap.add_argument("--dagger-rounds", type=int, default=SETTINGS["dagger_rounds"])
    args = ap.parse_args(argv)
    import gymnasium
    import onnxruntime
    import torch

    torch.set_num_threads(1)
    settings = dict(
        SETTINGS,
        seed=args.seed,
        episodes=args.episodes,
        epochs=args.epochs,
        dagger_rounds=args.dagger_rounds,
    )
    t0 = time.perf_counter()
    data = collect(
        settings,
        args.seed,
        episodes=int(settings["episodes"]),
        seed_base=int(settings["reset_seed_base"]),
    )
    t_data = time.perf_counter() - t0
    print(f"{len(data['obs'])} samples from {settings['episodes']} episodes ({t_data:.1f} s)")
    model, opt, info = train(data, settings, args.seed, int(settings["epochs"]))
    select_seeds = list(
        range(
            int(settings["selection_seed_base"]),
            int(settings["selection_seed_base"]) + int(settings["selection_episodes"]),
        )
    )
    score = selection_return(model, settings, select_seeds)
    print(f"round 0: selection return {score:.0f}")
    best = (score, 0, copy.deepcopy(model.state_dict()))
    rounds = [dict(info, round=0, samples=len(data["obs"]), selection_return=score)]
    for r in range(1, int(settings["dagger_rounds"]) + 1):
        new = collect(
            settings,
            args.seed + r,
            episodes=int(settings["dagger_episodes"]),
            seed_base=int(settings["reset_seed_base"]) + 1000 * r,
            id_base=10_000 * r,
            student=model,
        )
        data = {k: np.concatenate([data[k], new[k]]) for k in data}
        print(f"DAgger round {r}: +{len(new['obs'])} samples, {len(data['obs'])} in all")
        model, opt, info = train(
            data, settings, args.seed + r, int(settings["dagger_epochs"]), model, opt
        )
        score = selection_return(model, settings, select_seeds)
        print(f"round {r}: selection return {score:.0f}")
        rounds.append(dict(info, round=r, samples=len(data["obs"]), selection_return=score))
        if score > best[0]:
            best = (score, r, copy.deepcopy(model.state_dict()))
    model.load_state_dict(best[2])
    info = {"rounds": rounds, "selected_round": best[1], "selection_seeds": select_seeds}
    onnx_path = args.out.with_suffix(".onnx")
    parity = export(model, onnx_path, settings, data["obs"][:: max(1, len(data["obs"]) // 400)])
    wall = time.perf_counter() - t0
    evaluation = evaluate_sync(onnx_path, list(range(args.eval_episodes)))
    returns = np.array([e["return"] for e in evaluation])
    record = {
        "env": ENV_ID,
        "algorithm": (
            "behaviour cloning of hopper_nominal.onnx (MSE on H-step action chunks), then "
            "DAgger rounds (the student acts in sync chunks, the teacher labels)"
        ),
        "teacher": TEACHER.name,
        "settings": settings,
        "seed": args.seed,
        "versions": {
            "torch": torch.__version__,
            "gymnasium": gymnasium.__version__,
            "onnxruntime": onnxruntime.__version__,
            "python": platform.python_version(),
        },
        "torch_threads": 1,
        "samples": len(data["obs"]),
        "data_wall_s": round(t_data, 1),
        "wall_s": round(wall, 1),
        "parity_max_abs_diff": parity,
        "training": info,
        "evaluation_sync": {
            "reset_seeds": [e["seed"] for e in evaluation],
            "mean_return": float(returns.mean()),
            "std_return": float(returns.std()),
            "terminated": int(sum(e["terminated"] for e in evaluation)),
            "episodes": evaluation,
        },
    }
    args.out.with_suffix(".training.json").write_text(json.dumps(record, indent=2) + "\n")
    print(
        f"wrote {onnx_path} (parity {parity:.2e}); sync return {returns.mean():.0f} +- "
        f"{returns.std():.0f}, {record['evaluation_sync']['terminated']} of {len(returns)} fell; "
        f"{wall:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

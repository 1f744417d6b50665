"""ExactLatencyWrapper: training under the timing the simulated-time replay judges."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

gym = pytest.importorskip("gymnasium")
pytest.importorskip("mujoco")

from tailguard.errors import ProfileError, UnsupportedEnvError  # noqa: E402
from tailguard.firmware_sim.controllers import OnnxController  # noqa: E402
from tailguard.firmware_sim.replay import TimingSpec, build_loop, make_task  # noqa: E402
from tailguard.firmware_sim.wrappers import (  # noqa: E402
    ExactLatencyWrapper,
    SubstepLatencyWrapper,
)

POLICY = Path(__file__).resolve().parents[2] / "guard" / "policies" / "hopper_nominal.onnx"


def _open_loop(env: gym.Env, actions: list[np.ndarray], seed: int) -> list[tuple]:
    env.reset(seed=seed)
    out = []
    for a in actions:
        obs, r, term, trunc, _ = env.step(a)
        out.append((np.asarray(obs), float(r), bool(term)))
        if term or trunc:
            break
    env.close()
    return out


def _actions(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [rng.uniform(-1.0, 1.0, 3) for _ in range(n)]


def test_zero_latency_is_the_plain_env_trajectory() -> None:
    actions = _actions(150)
    plain = _open_loop(gym.make("Hopper-v5"), actions, seed=4)
    exact = _open_loop(ExactLatencyWrapper(gym.make("Hopper-v5"), "nominal"), actions, seed=4)
    assert len(plain) == len(exact) > 1
    for (o1, r1, t1), (o2, r2, t2) in zip(plain, exact, strict=True):
        assert np.array_equal(o1, o2)  # the same states bit for bit
        assert t1 == t2
        assert r2 == pytest.approx(r1, rel=1e-12, abs=1e-12)  # the terms summed in another order


def test_one_period_of_latency_is_the_substep_wrappers_one_step_late_rollout() -> None:
    # On the substep grid both wrappers release at the same instant.
    actions = _actions(120)
    exact = _open_loop(ExactLatencyWrapper(gym.make("Hopper-v5"), "fixed:ms=8"), actions, 1)
    grid = _open_loop(SubstepLatencyWrapper(gym.make("Hopper-v5"), "fixed:ms=8"), actions, 1)
    assert len(exact) == len(grid)
    for (o1, r1, t1), (o2, r2, t2) in zip(exact, grid, strict=True):
        assert np.array_equal(o1, o2) and t1 == t2
        assert r1 == pytest.approx(r2, rel=1e-12, abs=1e-12)


def test_an_off_grid_latency_differs_from_the_substep_rounding() -> None:
    actions = _actions(60)
    exact = _open_loop(ExactLatencyWrapper(gym.make("Hopper-v5"), "fixed:ms=3"), actions, 2)
    grid = _open_loop(SubstepLatencyWrapper(gym.make("Hopper-v5"), "fixed:ms=3"), actions, 2)
    # 3 ms is 1.5 substeps: the grid holds the old command for 4 ms, the exact release 3 ms.
    assert not np.array_equal(exact[0][0], grid[0][0])


def _closed_loop(env: gym.Env, policy: OnnxController, seed: int) -> tuple[float, int]:
    obs, _ = env.reset(seed=seed)
    total, steps = 0.0, 0
    while True:
        obs, r, term, trunc, _ = env.step(policy(np.asarray(obs), 0).copy())
        total, steps = total + float(r), steps + 1
        if term or trunc:
            return total, steps


@pytest.mark.parametrize("spec", ["fixed:ms=3", "fixed:ms=5.3"])
def test_a_fixed_latency_matches_the_simulated_time_replay(spec: str) -> None:
    """The wrapper and the replay loop apply a command at the same instant, so the closed
    loop with the shipped policy gives the same episode (return to float rounding)."""
    wrapped = _closed_loop(
        ExactLatencyWrapper(gym.make("Hopper-v5"), spec), OnnxController(POLICY), seed=0
    )
    task = make_task("Hopper-v5")
    loop = build_loop(task, OnnxController(POLICY), TimingSpec(latency=spec))
    result = loop.run_episode(0)
    assert wrapped[1] == result.length
    assert wrapped[0] == pytest.approx(result.ret, rel=1e-9)


def test_refuses_unsupported_envs_and_bad_specs() -> None:
    with pytest.raises(UnsupportedEnvError, match="substep simulator"):
        ExactLatencyWrapper(gym.make("Hopper-v4"), "nominal")
    with pytest.raises(ProfileError):
        ExactLatencyWrapper(gym.make("Hopper-v5"), "lognormal:median_ms=-1")
    env = ExactLatencyWrapper(gym.make("Hopper-v5"), "nominal")
    with pytest.raises(ProfileError, match="before reset"):
        env.step(np.zeros(3))


def test_the_fine_tuning_script_builds_both_releases() -> None:
    from tailguard.policies.finetune_sb3_hopper import RELEASES, make_latency_env

    assert isinstance(make_latency_env(0, release="exact"), ExactLatencyWrapper)
    substep = make_latency_env(0, release="substep")
    assert type(substep) is SubstepLatencyWrapper and RELEASES == ("exact", "substep")


def test_every_fine_tuning_mix_is_a_valid_latency_mix() -> None:
    """Each ``--timing`` choice builds (the wrapper validates specs and weights) and steps."""
    from tailguard.policies.finetune_sb3_hopper import LONG_TAIL, MIXES, make_latency_env

    assert set(MIXES) == {"randomized", "long-tail", "nominal"}
    for name, mix in MIXES.items():
        assert sum(w for w, _ in mix) == pytest.approx(1.0), name
        env = make_latency_env(0, mix)
        env.reset(seed=0)
        env.step(np.zeros(3))
        env.close()
    assert LONG_TAIL in {s for _, s in MIXES["long-tail"]}


@pytest.mark.parametrize(
    "bad",
    [["--checkpoint-every", "-1"], ["--timesteps", "0"], ["--episodes", "1"], ["--seed", "-2"]],
)
def test_the_fine_tuning_script_refuses_bad_numbers_before_training(
    bad: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tailguard.policies.finetune_sb3_hopper import main

    with pytest.raises(SystemExit) as exc:
        main(["--nominal", str(tmp_path / "n"), "--out", str(tmp_path / "p"), *bad])
    assert exc.value.code == 2
    assert "--checkpoint-every >= 0" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing trained, nothing written

"""Raw-MJCF robots under PD firmware: the PD tracks targets, and latency delays target changes
by exactly the sampled amount."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gymnasium")
pytest.importorskip("mujoco")

from tailguard.errors import TailguardError
from tailguard.firmware_sim.controllers import CallableController
from tailguard.firmware_sim.loop import SimLoop
from tailguard.firmware_sim.pd_robot import PdConfig, PdRobotTask
from tailguard.firmware_sim.profiles import FixedProfile
from tailguard.firmware_sim.replay import make_task

MS = 1_000_000


@pytest.fixture(scope="module")
def ant() -> PdRobotTask:
    """gymnasium's ant.xml under PD firmware, 1 kHz physics / 50 Hz policy, 1 s episodes."""
    return PdRobotTask.from_name("ant", PdConfig(max_episode_steps=50))


def test_rates_and_sizes(ant: PdRobotTask) -> None:
    """1 kHz physics, 50 Hz policy, 8 joint targets, 27 observations."""
    assert (ant.substep_ns, ant.period_ns, ant.nu, ant.obs_size) == (MS, 20 * MS, 8, 27)
    assert ant.reset(0).shape == (27,)


def test_pd_tracks_a_constant_target(ant: PdRobotTask) -> None:
    """Holding a constant action, the joints settle on its targets and the robot stands."""
    action = np.array([0.5, -0.5, -0.5, 0.5, 0.3, 0.5, -0.3, -0.5], np.float32)
    r = SimLoop(ant, CallableController(lambda obs: action)).run_episode(0)
    assert not r.terminated and r.length == 50
    np.testing.assert_allclose(ant.joint_positions(), ant.targets(action), atol=0.02)
    assert r.ret > 0.9 * r.length  # healthy every tick, small torque cost


def _switching(ant: PdRobotTask, switch_tick: int, seen: list[np.ndarray]) -> CallableController:
    a1 = np.full(ant.nu, 0.8, np.float32)
    zero = np.zeros(ant.nu, np.float32)

    def policy(obs: np.ndarray) -> np.ndarray:
        seen.append(obs.copy())
        return a1 if len(seen) > switch_tick else zero

    return CallableController(policy)


def test_latency_delays_target_changes(ant: PdRobotTask) -> None:
    """A target change decided at tick 10 (t = 200 ms) reaches the PD at 200 ms + latency: the
    per-substep command switches exactly at 215 ms with 15 ms latency, the state is untouched
    before, and by the next tick (220 ms) the robot has moved only for 5 ms instead of 20."""
    runs = {}
    for name, switch, latency in (("never", 10_000, 15), ("now", 10, 0), ("late", 10, 15)):
        seen: list[np.ndarray] = []
        loop = SimLoop(ant, _switching(ant, switch, seen), latency=FixedProfile(latency * MS))
        r = loop.run_episode(1, trace=True, substep_ctrl=True)
        runs[name] = (seen, r)
    never, now, late = (runs[k][0] for k in ("never", "now", "late"))

    def moved(a: np.ndarray, b: np.ndarray) -> float:
        # Equal runs agree up to rounding (they split the physics into different segments).
        return float(np.abs(a - b).max())

    assert moved(now[10], never[10]) < 1e-9 and moved(late[10], never[10]) < 1e-9
    assert 1e-4 < moved(late[11], never[11]) < 0.5 * moved(now[11], never[11])
    tr = runs["late"][1].trace
    assert tr is not None and tr.ctrl is not None and tr.ctrl_ns is not None
    first = tr.ctrl_ns[np.flatnonzero(tr.ctrl[:, 0] == np.float32(0.8))[0]]
    assert first == 200 * MS + 15 * MS


def test_off_grid_latency_switches_the_target_at_its_release(ant: PdRobotTask) -> None:
    """A 15.3 ms latency (off the 1 ms PD/physics grid): the target decided at 200 ms takes
    effect at exactly 215.3 ms, the 1 ms step it falls in split at that instant; the robot
    then moves less by the next tick than with 15 ms and more than with 16 ms."""
    moved = {}
    for latency_us in (15_000, 15_300, 16_000):
        seen: list[np.ndarray] = []
        loop = SimLoop(ant, _switching(ant, 10, seen), latency=FixedProfile(latency_us * 1000))
        r = loop.run_episode(1, trace=True, substep_ctrl=True)
        tr = r.trace
        assert tr is not None and tr.ctrl is not None and tr.ctrl_ns is not None
        first = tr.ctrl_ns[np.flatnonzero(tr.ctrl[:, 0] == np.float32(0.8))[0]]
        assert first == 200 * MS + latency_us * 1000
        moved[latency_us] = seen[11]
    never: list[np.ndarray] = []
    SimLoop(ant, _switching(ant, 10_000, never)).run_episode(1)

    def dist(a: np.ndarray) -> float:
        return float(np.abs(a - never[11]).max())

    assert dist(moved[15_000]) > dist(moved[15_300]) > dist(moved[16_000]) > 1e-6


def test_hopper_preset_and_path_load() -> None:
    """The hopper preset loads with gymnasium's observation layout (11) and so does a path."""
    hopper = make_task("mjcf:hopper")
    assert (hopper.nu, hopper.obs_size, hopper.period_ns) == (3, 11, 20 * MS)
    from tailguard.firmware_sim.pd_robot import gymnasium_asset

    by_path = make_task(f"mjcf:{gymnasium_asset('ant.xml')}")
    assert by_path.nu == 8


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ({"physics_hz": 1000, "policy_hz": 30}, "multiple of policy_hz"),
        ({"kp": 0.0}, "kp and action_scale_rad"),
        ({"max_episode_steps": 0}, "max_episode_steps"),
    ],
)
def test_bad_config_is_rejected(config: dict[str, float], fragment: str) -> None:
    """Invalid rates, gains or horizons raise TailguardError naming the field."""
    with pytest.raises(TailguardError, match=fragment):
        PdConfig(**config)  # type: ignore[arg-type]


def test_bad_mjcf_is_rejected(tmp_path: Path) -> None:
    """An MJCF without actuators, or an unparsable file, raises TailguardError."""
    bare = tmp_path / "bare.xml"
    bare.write_text("<mujoco><worldbody><body><joint type='hinge'/><geom size='.1'/>"
                    "</body></worldbody></mujoco>")  # fmt: skip
    with pytest.raises(TailguardError, match="no actuators"):
        PdRobotTask(bare)
    broken = tmp_path / "broken.xml"
    broken.write_text("<mujoco><worldbody>")
    with pytest.raises(TailguardError, match="cannot load MJCF"):
        PdRobotTask(broken)


def test_replay_cli_runs_mjcf_robot(tmp_path: Path) -> None:
    """`tailguard replay --env mjcf:ant` runs guarded and records the PD task in the JSON."""
    import argparse
    import io

    from fsim_helpers import write_linear_onnx

    from tailguard.firmware_sim.cli import register

    policy = write_linear_onnx(tmp_path / "ant.onnx", 27, 8)
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["replay", "--policy", str(policy), "--env", "mjcf:ant",
                              "--episodes", "1", "--profile", "fixed:ms=5", "--quiet",
                              "--json", str(tmp_path / "o.json")])  # fmt: skip
    assert args.handler(args, io.StringIO()) == 0
    doc = json.loads((tmp_path / "o.json").read_text())
    assert doc["task"]["kind"] == "mjcf-pd" and doc["period_ns"] == 20 * MS
    assert doc["episodes"][0]["guard"]["ticks"] == doc["episodes"][0]["length"]

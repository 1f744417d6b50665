"""The audit's work units on a real local Ray: byte-identical results against the local
executor, files sent by content, a killed worker retried, a failing unit named, and the clear
errors for a missing Ray or an unreachable cluster."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from audit_plants import PERIOD_NS
from cluster_plants import EXPLODING_SEED, PLANT_PATH

from tailguard.audit.audit import run_audit
from tailguard.audit.certification import certify
from tailguard.audit.conditions import NOMINAL, Condition
from tailguard.audit.executor import LocalExecutor, select_executor
from tailguard.audit.outputs import dump_json
from tailguard.audit.portable import file_digest, relocate, spec_files, unit_files
from tailguard.audit.sweep import build_sweep
from tailguard.audit.units import GuardSettings, Target, WorkUnit, run_unit
from tailguard.envelope.model import save_envelope
from tailguard.errors import ConfigError
from tailguard.tools.cli import main as cli_main

pytestmark = pytest.mark.timeout(120)

ENV = "py:audit_plants:integrator"


def _without_run(doc: dict[str, Any]) -> str:
    return dump_json({k: v for k, v in doc.items() if k != "run"})


def _profile(tmp: Path) -> Path:
    """A measured latency profile: mostly 2 ms, now and then 9 ms."""
    path = tmp / "measured.json"
    path.write_text(json.dumps({"counts": {"2000000": 40, "9000000": 3}}))
    return path


def _conditions(profile: Path) -> list[Condition]:
    conds = build_sweep(
        PERIOD_NS,
        dimensions=["latency_fixed", "dt_jitter"],
        levels={"latency_fixed": [0.25, 0.75], "dt_jitter": [0.2]},
    )
    mix = f"mix:0.5*nominal+0.5*empirical:{profile}"
    return [
        *conds,
        Condition(name="measured", dimension="measured", latency=f"empirical:{profile}"),
        Condition(name="mixed", dimension="custom", latency=mix),
    ]


def test_audit_and_certify_summaries_byte_identical_to_local(
    ray_local: Any, plant_policy: Path, plant_fallback: Path, tmp_path: Path
) -> None:
    """Same inputs and seed: the audit's and certify's summary.json bytes (``run`` aside) are
    the local executor's, with a measured profile file and a fallback ONNX file in play."""
    profile = _profile(tmp_path)
    kw: dict[str, Any] = dict(
        episodes=4, conditions=_conditions(profile), n_resamples=300, block=2, derive=True
    )
    local = run_audit(plant_policy, ENV, executor=LocalExecutor(), **kw)
    remote = run_audit(plant_policy, ENV, executor="ray", **kw)
    assert remote.run["executor"] == "RayExecutor" and remote.run["workers"] == 2
    assert _without_run(local.summary()) == _without_run(remote.summary())

    envelope = tmp_path / "envelope.json"
    save_envelope(local.envelope, envelope)
    ckw: dict[str, Any] = dict(
        fallback=str(plant_fallback), profiles=[str(profile)], episodes=3, n_resamples=300
    )
    c_local = certify(plant_policy, envelope, ENV, executor=LocalExecutor(), **ckw)
    c_remote = certify(plant_policy, envelope, ENV, executor="ray", **ckw)
    assert c_remote.run["executor"] == "RayExecutor"
    assert _without_run(c_local.summary()) == _without_run(c_remote.summary())


def test_files_travel_by_content_not_by_path(
    ray_local: Any, plant_policy: Path, plant_fallback: Path, tmp_path: Path
) -> None:
    """A unit naming files that exist nowhere runs on a worker from the object store's
    content alone, to the same episodes as the local run on the real files."""
    from tailguard.audit.ray_executor import RayExecutor

    profile = _profile(tmp_path)
    ghost = Path("/nonexistent-tailguard-node")
    real = {
        str(ghost / "main.onnx"): plant_policy,
        str(ghost / "robust.onnx"): plant_fallback,
        str(ghost / "measured.json"): profile,
    }
    spec = f"mix:0.9*nominal+0.1*empirical:{ghost / 'measured.json'}"
    unit = WorkUnit(
        Target(ENV, str(ghost / "main.onnx"), seed=7),
        Condition(name="c", dimension="custom", latency=spec),
        0,
        0,
        2,
        guard=GuardSettings(_starter(plant_policy), fallback=str(ghost / "robust.onnx")),
    )
    assert unit_files(unit) == list(real)
    assert spec_files(spec) == [str(ghost / "measured.json")]
    executor = RayExecutor()
    executor.connect()
    files = {p: (file_digest(f), f.name, ray_local.put(f.read_bytes())) for p, f in real.items()}
    remote = ray_local.get(executor._remote.remote(unit, files))
    local = run_unit(relocate(unit, {p: str(f) for p, f in real.items()}))
    assert [e.ret for e in remote.episodes] == [e.ret for e in local.episodes]
    assert [e.guard for e in remote.episodes] == [e.guard for e in local.episodes]
    assert [e.latency_ns.tolist() for e in remote.episodes] == [
        e.latency_ns.tolist() for e in local.episodes
    ]


def _starter(policy: Path) -> dict[str, Any]:
    from tailguard.envelope.model import starter_envelope
    from tailguard.runtime.policy import OnnxPolicy

    pol = OnnxPolicy(policy)
    return starter_envelope(
        obs_size=1, action_size=1, period_ns=PERIOD_NS, sha256=pol.sha256
    ).to_dict()


def _running_unit_pids() -> list[int]:
    """PIDs of Ray worker processes running a unit right now (their title names the task)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if cmd.startswith(b"ray::run_portable"):
            pids.append(int(entry))
    return pids


def test_killed_worker_is_retried_and_results_identical(ray_local: Any, plant_policy: Path) -> None:
    """SIGKILL a worker process in the middle of a unit: Ray re-runs the unit and the audit
    completes with the local executor's results."""
    env = "py:cluster_plants:slow"
    conds = [NOMINAL, Condition(name="lat", dimension="custom", latency="fixed:ms=5")]
    kw: dict[str, Any] = dict(episodes=6, conditions=conds, n_resamples=200, block=3)
    killed: list[int] = []

    def kill_one(done: int, total: int) -> None:
        if killed:
            return
        for _ in range(100):  # the next unit is starting on the freed worker
            pids = _running_unit_pids()
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
                return
            time.sleep(0.05)

    remote = run_audit(plant_policy, env, executor="ray", progress=kill_one, derive=False, **kw)
    assert killed, "no running unit was found to kill"
    local = run_audit(plant_policy, env, executor=LocalExecutor(), derive=False, **kw)
    assert _without_run(local.summary()) == _without_run(remote.summary())


def test_deterministic_unit_failure_names_the_unit(ray_local: Any, plant_policy: Path) -> None:
    """A unit that raises fails the run with an error naming its condition, episodes, policy
    and cause (not retried: it would raise again)."""
    from tailguard.audit.ray_executor import UnitFailedError

    conds = [NOMINAL, Condition(name="lat", dimension="custom", latency="fixed:ms=1")]
    with pytest.raises(UnitFailedError) as info:
        run_audit(
            plant_policy,
            "py:cluster_plants:exploding",
            episodes=4,
            conditions=conds,
            n_resamples=200,
            block=2,
            executor="ray",
            derive=False,
        )
    text = str(info.value)
    lo = EXPLODING_SEED - EXPLODING_SEED % 2
    assert f"episodes {lo}..{lo + 1}" in text and "main.onnx" in text
    assert f"plant exploded at reset seed {EXPLODING_SEED}" in text


def test_cli_audit_on_ray_matches_local(ray_local: Any, plant_policy: Path, tmp_path: Path) -> None:
    """`tailguard audit --executor ray` writes the summary `--executor local` writes."""
    docs = []
    for name in ("local", "ray"):
        out = tmp_path / name
        args = ["audit", "--policy", str(plant_policy), "--env", ENV, "--out", str(out)]
        args += ["--quick", "--episodes", "3", "--resamples", "200", "--no-html", "--quiet"]
        assert cli_main([*args, "--executor", name]) == 0
        docs.append(json.loads((out / "summary.json").read_text()))
    assert docs[1]["run"]["executor"] == "RayExecutor"
    assert _without_run(docs[0]) == _without_run(docs[1])


def test_usage_and_connection_errors(tmp_path: Path, plant_policy: Path) -> None:
    """--address without --executor ray is a usage error; a malformed or unreachable address
    is a ConfigError within the connect timeout, before any episode runs."""
    from tailguard.audit.ray_executor import RayExecutor

    out = tmp_path / "o"
    args = ["audit", "--policy", str(plant_policy), "--env", ENV, "--out", str(out), "--quick"]
    assert cli_main([*args, "--address", "auto"]) == 2
    assert cli_main([*args, "--executor", "ray", "--address", "http://x"]) == 2
    harden = ["harden", "--policy", str(plant_policy), "--env", "Pendulum-v1", "--out", str(out)]
    assert cli_main([*harden, "--address", "auto"]) == 2
    assert cli_main([*harden, "--executor", "ray", "--address", "ray://"]) == 2
    for bad in ("http://host", "host:notaport", "ray://", ":123", "host:70000"):
        with pytest.raises(ConfigError, match="--address must be"):
            RayExecutor(bad)
    with pytest.raises(ConfigError, match="--address is for --executor ray"):
        select_executor("local", address="auto")
    with pytest.raises(ConfigError, match="--executor must be one of"):
        select_executor("dask")


@pytest.mark.timeout(30)  # bounded by the probe, not Ray's own minute-long retries
def test_unreachable_cluster_is_refused_within_the_connect_timeout() -> None:
    """Nothing listens on 127.0.0.1:9: a ConfigError naming the address, at once."""
    pytest.importorskip("ray")
    from tailguard.audit.ray_executor import RayExecutor

    with pytest.raises(ConfigError, match=r"cannot reach the Ray cluster at 127\.0\.0\.1:9"):
        RayExecutor("127.0.0.1:9", connect_timeout_s=2.0).connect()


def test_missing_ray_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without Ray, --executor ray says how to install it."""
    from tailguard.audit.ray_executor import RayExecutor

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'tailguard\[cluster\]'"):
        RayExecutor().connect()


_TWO_NODES = """
import json, sys
from ray.cluster_utils import Cluster
import ray
from tailguard.audit.audit import run_audit
from tailguard.audit.conditions import NOMINAL, Condition
from tailguard.audit.outputs import dump_json

cluster = Cluster(
    initialize_head=True,
    head_node_args={"num_cpus": 1, "include_dashboard": False},
)
cluster.add_node(num_cpus=1)
cluster.wait_for_nodes()
try:
    conds = [NOMINAL, Condition(name="lat", dimension="custom", latency="fixed:ms=5")]
    r = run_audit(sys.argv[1], sys.argv[2], episodes=4, conditions=conds, n_resamples=200,
                  block=1, executor="ray", address=cluster.address, derive=False)
    doc = {k: v for k, v in r.summary().items() if k != "run"}
    after = ray.is_initialized()  # the executor joined the cluster: it leaves, the cluster stays
    ray.init(address=cluster.address, log_to_driver=False)
    nodes = [n for n in ray.nodes() if n["Alive"]]
    print(json.dumps({"nodes": len(nodes), "summary": dump_json(doc), "run": r.run,
                      "connected_after": after}))
finally:
    ray.shutdown()
    cluster.shutdown()
"""


def test_two_node_cluster_in_one_machine(plant_policy: Path) -> None:
    """A head and a worker node (``ray.cluster_utils.Cluster``, one CPU each, in a separate
    process), joined with ``address=HOST:PORT``: the audit's summary is the local executor's,
    and the executor disconnects when the audit ends (the cluster keeps running)."""
    pytest.importorskip("ray")
    conds = [NOMINAL, Condition(name="lat", dimension="custom", latency="fixed:ms=5")]
    local = run_audit(
        plant_policy, ENV, episodes=4, conditions=conds, n_resamples=200, block=1, derive=False
    )
    done = subprocess.run(
        [sys.executable, "-c", _TWO_NODES, str(plant_policy), ENV],
        capture_output=True,
        text=True,
        timeout=100,
        env={**os.environ, "PYTHONPATH": PLANT_PATH, "RAY_USAGE_STATS_ENABLED": "0"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["nodes"] == 2 and out["run"]["workers"] == 2
    assert out["connected_after"] is False
    assert out["summary"] == _without_run(local.summary())


def test_a_ray_already_running_here_is_used_and_left_running(
    ray_local: Any, plant_policy: Path
) -> None:
    """An executor in a process whose Ray is already initialised uses it and does not shut
    it down."""
    from tailguard.audit.conditions import NOMINAL as nominal

    run_audit(plant_policy, ENV, episodes=2, conditions=[nominal], n_resamples=100, executor="ray")
    assert ray_local.is_initialized()

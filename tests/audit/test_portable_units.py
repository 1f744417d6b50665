"""Work units away from their files: the files a unit reads (policy, fallback, profile files
in every spec form), the same unit pointed at copies, and finished units kept on disk and
read back exactly (the sweep's --resume)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from audit_plants import PERIOD_NS

from tailguard.audit.conditions import NOMINAL, Condition
from tailguard.audit.executor import LocalExecutor
from tailguard.audit.portable import relocate, spec_files, unit_files
from tailguard.audit.unit_cache import CachingExecutor, _same
from tailguard.audit.units import GuardSettings, Target, WorkUnit
from tailguard.firmware_sim.profile_spec import parse_profile

ENV = "py:audit_plants:integrator"


def _profile(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "measured.json"
    path.write_text(json.dumps({"counts": {"1000000": 10, "7000000": 2}}))
    return path


def test_spec_files_in_every_form(tmp_path: Path) -> None:
    """Text, mix terms and JSON objects (nested in a mix) name their files; other kinds none."""
    assert spec_files("empirical:/a/b.json") == ["/a/b.json"]
    assert spec_files("mix:0.9*nominal+0.1*empirical:/a/x.npy") == ["/a/x.npy"]
    assert spec_files("mix:0.5*empirical:/p+0.5*empirical:/q") == ["/p", "/q"]
    nested = {
        "kind": "mix",
        "components": [
            {"weight": 1, "profile": "nominal"},
            {"weight": 1, "profile": {"kind": "empirical", "path": "/j.json"}},
        ],
    }
    assert spec_files(json.dumps(nested)) == ["/j.json"]
    assert spec_files("lognormal:median_ms=3,sigma=1") == [] == spec_files("nominal")


def test_relocated_unit_reads_the_copies_to_the_same_samples(tmp_path: Path) -> None:
    """Pointed at copies elsewhere, every spec draws the same samples as the original."""
    original = _profile(tmp_path / "here")
    specs = [
        f"empirical:{original}",
        f"mix:0.7*nominal+0.3*empirical:{original}",
        json.dumps({"kind": "empirical", "path": str(original)}),
    ]
    copy = tmp_path / "node" / "measured.json"
    copy.parent.mkdir()
    shutil.copy(original, copy)
    for spec in specs:
        unit = WorkUnit(
            Target(ENV, str(tmp_path / "p.onnx")),
            Condition(name="m", dimension="measured", latency=spec),
            1,
            0,
            2,
            guard=GuardSettings({}, fallback=str(tmp_path / "fb.onnx")),
        )
        moved = relocate(unit, {str(original): str(copy), str(tmp_path / "p.onnx"): "/n/p.onnx"})
        assert unit_files(moved) == ["/n/p.onnx", str(tmp_path / "fb.onnx"), str(copy)]
        original.rename(original.with_suffix(".gone"))  # only the copy can be read now
        try:
            a = parse_profile(moved.condition.latency, seed=5).sample(200)
        finally:
            original.with_suffix(".gone").rename(original)
        b = parse_profile(spec, seed=5).sample(200)
        assert np.array_equal(a, b), spec


def test_finished_units_read_back_exactly(
    plant_policy: Path, plant_fallback: Path, tmp_path: Path
) -> None:
    """Guarded and bare units kept by CachingExecutor come back equal, field by field and
    dtype by dtype, and are not run again; a damaged file is ignored and its unit re-run."""
    from tailguard.envelope.model import starter_envelope
    from tailguard.runtime.policy import OnnxPolicy

    env = starter_envelope(
        obs_size=1, action_size=1, period_ns=PERIOD_NS, sha256=OnnxPolicy(plant_policy).sha256
    ).to_dict()
    profile = _profile(tmp_path)
    target = Target(ENV, str(plant_policy), seed=3)
    cond = Condition(name="m", dimension="measured", latency=f"empirical:{profile}")
    units = [
        WorkUnit(target, NOMINAL, 0, 0, 2),
        WorkUnit(target, cond, 1, 0, 2),
        WorkUnit(target, cond, 1, 0, 2, guard=GuardSettings(env, str(plant_fallback), True)),
    ]
    fresh = LocalExecutor().run(units)
    first = CachingExecutor(LocalExecutor(), tmp_path / "units")
    first.run(units)
    files = sorted((tmp_path / "units").glob("*.json"))
    assert first.reused == 0 and len(files) == 3
    again = CachingExecutor(LocalExecutor(), tmp_path / "units")
    back = again.run(units)
    assert again.reused == 3
    for a, b in zip(fresh, back, strict=True):
        assert all(_same(x, y) for x, y in zip(a.episodes, b.episodes, strict=True))
    files[0].write_text("{not json")
    third = CachingExecutor(LocalExecutor(), tmp_path / "units")
    third.run(units)
    assert third.reused == 2
    profile.write_text(json.dumps({"counts": {"2000000": 1}}))  # other content: other key
    fourth = CachingExecutor(LocalExecutor(), tmp_path / "units")
    fourth.run(units)
    assert fourth.reused == 1

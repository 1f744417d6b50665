"""The guard's check appended to a policy's graph: exact against the numpy reference, valid
ONNX, linear in the action size, and bounded at load (sizes, external-data locations)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tg_models import build_external

from tailguard import CallablePolicy, OnnxPolicy, PolicyLoadError
from tailguard.errors import ConfigError
from tailguard.runtime import _onnx_proto as proto
from tailguard.runtime.onnx_build import mlp_bytes
from tailguard.runtime.policy import (
    MAX_ACTION_SIZE,
    MAX_OBS_SIZE,
    OBS_FLAGS,
    ROW_CHECK_MAX_ACTIONS,
    SLACK_FLAGS,
    all_pass,
    check_extension,
)

_F32 = st.floats(width=32, allow_nan=True, allow_infinity=True, allow_subnormal=True)


def _identity_model(path: Path, size: int, *, batch: int | str = 1) -> Path:
    """actions = Identity(obs): whatever the test writes into obs is the action."""
    path.write_bytes(
        proto.model(
            [proto.node("Identity", ["obs"], ["actions"], "id")],
            inputs=[proto.value_info("obs", [batch, size])],
            outputs=[proto.value_info("actions", [batch, size])],
        )
    )
    return path


@pytest.fixture(scope="module")
def policies(tmp_path_factory: pytest.TempPathFactory) -> tuple[OnnxPolicy, OnnxPolicy]:
    """An identity policy with the in-graph check and one with the numpy reference."""
    path = _identity_model(tmp_path_factory.mktemp("chk") / "id.onnx", 4)
    return (
        OnnxPolicy(path, fold_observation=True),
        OnnxPolicy(path, fast_checks=False, fold_observation=True),
    )


def test_extended_model_passes_the_onnx_checker() -> None:
    """The model plus the appended check nodes is a valid ONNX model (full check, shapes)."""
    for sizes in ((17, 64, 64, 6), (48, 512, 256, 128, 12)):
        for fold, tail in ((False, ["Elu", "Gemm", "Gemm"]), (True, ["Gemm", "Abs", "Gemm"])):
            ext = check_extension("obs", "actions", sizes[0], sizes[-1], fold_observation=fold)
            model = onnx.load_from_string(mlp_bytes(sizes) + ext)
            onnx.checker.check_model(model, full_check=True)
            assert [n.op_type for n in model.graph.node][-3:] == tail


@settings(max_examples=200, deadline=None)
@given(
    obs=st.lists(_F32, min_size=4, max_size=4),
    prev=st.lists(st.floats(-2, 2, width=32), min_size=4, max_size=4),
    limits=st.sampled_from([(None, None, None), (-1.0, 1.0, 0.5), (-0.25, 0.5, 1e-3)]),
    slot=st.sampled_from([0, 1]),
)
def test_in_graph_check_equals_reference_on_any_float(policies, obs, prev, limits, slot) -> None:
    """On any float32 input (NaN, +-inf, huge, subnormal, -0) the in-graph check writes the
    same bits as the reference, and its one byte test passes exactly when the observation
    passes the guard's observation rule and the action its bounds and rate."""
    fast, ref = policies
    low, high, rate = limits
    a_size = fast.action_size
    for p in (fast, ref):
        p.set_limits(
            None if low is None else [low] * a_size,
            None if high is None else [high] * a_size,
            None if rate is None else [rate] * a_size,
        )
        p._set_applied(1 - slot, p.clip(np.array(prev, np.float32)))
        p.buffers.obs[:] = obs
        p.run_slot(slot)
    o = fast.obs_size
    mine, theirs = fast._chk[slot].view(np.uint32), ref._chk[slot].view(np.uint32)
    np.testing.assert_array_equal(mine[:o], theirs[:o])
    if np.isfinite(fast._act[slot]).all():  # the row-form Gemm spreads a NaN to every entry
        np.testing.assert_array_equal(mine, theirs)
    x = np.array(obs, np.float32)
    obs_ok = all_pass(memoryview(x).cast("B"), OBS_FLAGS)  # today's separate observation test
    act, last = fast._act[slot], fast._act[1 - slot]
    lo, hi, r = fast.limits
    with np.errstate(invalid="ignore", over="ignore"):
        act_ok = bool(
            np.isfinite(act).all()
            and (act >= lo).all()
            and (act <= hi).all()
            and (act <= last + r).all()
            and (act >= last - r).all()
        )
    assert all_pass(fast._slack_bytes[slot], SLACK_FLAGS) == (obs_ok and act_ok)
    assert all_pass(ref._slack_bytes[slot], SLACK_FLAGS) == (obs_ok and act_ok)
    assert fast.checks_observation and ref.checks_observation


def test_column_form_for_many_actions_equals_reference_bit_for_bit(tmp_path: Path) -> None:
    """Above ROW_CHECK_MAX_ACTIONS the [7, 1] @ [1, A] form is used: element by element
    the same bits as the reference, non-finite actions included, and the same layout."""
    size = ROW_CHECK_MAX_ACTIONS + 1
    path = _identity_model(tmp_path / "id65.onnx", size)
    fast, ref = OnnxPolicy(path), OnnxPolicy(path, fast_checks=False)
    rng = np.random.default_rng(3)
    for p in (fast, ref):
        p.set_limits([-1.0] * size, [1.0] * size, [0.5] * size)
    for slot, special in ((0, None), (1, np.nan), (0, np.inf), (1, -np.inf), (0, 1.5)):
        x = rng.uniform(-0.2, 0.2, size).astype(np.float32)  # within rate of the last
        if special is not None:
            x[7] = special
        for p in (fast, ref):
            p.buffers.obs[:] = x
            p.run_slot(slot)
        np.testing.assert_array_equal(fast._chk.view(np.uint32), ref._chk.view(np.uint32))
        assert all_pass(fast._slack_bytes[slot], SLACK_FLAGS) == (special is None)
        for p in (fast, ref):
            p._set_applied(slot, p.clip(p._act[slot], p._act[1 - slot]))


@pytest.mark.parametrize(
    "value, passes",
    [
        (np.nan, False),
        (-np.nan, False),
        (np.inf, False),
        (-np.inf, False),
        (2.0**127, False),
        (-(2.0**127), False),
        (float(np.nextafter(np.float32(2.0**127), np.float32(0))), True),
        (-0.0, True),
        (1e-45, True),
    ],
)
def test_observation_rule_is_unchanged(tmp_path: Path, value: float, passes: bool) -> None:
    """The folded observation test accepts exactly what the old byte test accepted: finite
    and |x| < 2**127, wherever the element sits (limits wide enough for any action)."""
    (tmp_path / "m.onnx").write_bytes(mlp_bytes((5, 8, 3)))
    p = OnnxPolicy(tmp_path / "m.onnx", fold_observation=True)
    for i in range(5):
        x = np.full(5, 0.1, np.float32)
        x[i] = value
        p.buffers.obs[:] = x
        p.run_slot(0)
        slack_ok = all_pass(p._chk[0, p.obs_size :].data.cast("B"), SLACK_FLAGS)
        verdict = all_pass(p._slack_bytes[0], SLACK_FLAGS)
        assert all_pass(memoryview(x).cast("B"), OBS_FLAGS) == passes
        if passes:
            assert verdict == slack_ok
        else:
            assert not verdict


def test_observation_is_left_to_the_guard_by_default(tmp_path: Path) -> None:
    """Without fold_observation the graph gets only the check Gemm, checks_observation is
    False and the byte test covers the slack alone (a NaN observation element with a
    finite action passes it: the guard's own observation test must run)."""
    weights = [(np.zeros((3, 2), np.float32), np.zeros(2, np.float32))]
    (tmp_path / "z.onnx").write_bytes(mlp_bytes((3, 2), weights=weights))
    p = OnnxPolicy(tmp_path / "z.onnx")
    assert not p.checks_observation and not p.describe()["checks_observation"]
    assert len(p._slack_bytes[0]) == 4 * 5 * p.action_size
    p.buffers.obs[:] = [0.5, 1.0, 2.0]
    p.run_slot(0)
    assert all_pass(p._slack_bytes[0], SLACK_FLAGS)


def test_callable_policy_does_not_call_fn_on_a_bad_observation() -> None:
    """CallablePolicy tests the observation first: fn never sees NaN, the check fails and
    the action of that slot is NaN (never a stale one)."""
    calls = []

    def fn(obs: np.ndarray) -> np.ndarray:
        calls.append(obs.copy())
        return obs[:2] * 2

    p = CallablePolicy(fn, 3, 2)
    p.buffers.obs[:] = [0.1, 0.2, 0.3]
    p.run_slot(0)
    assert len(calls) == 1 and all_pass(p._slack_bytes[0], SLACK_FLAGS)
    p.buffers.obs[:] = [0.1, np.inf, 0.3]
    p.run_slot(1)
    assert len(calls) == 1
    assert not all_pass(p._slack_bytes[1], SLACK_FLAGS) and np.isnan(p._act[1]).all()


def test_check_memory_is_linear_in_the_action_size(tmp_path: Path) -> None:
    """A tiny model declaring a [1, 4000] output loads with buffers linear in the size and
    a small peak RSS (the old check matrix was A x (8A + 2) floats: 512 MB here)."""
    path = _identity_model(tmp_path / "wide.onnx", 4000)
    assert path.stat().st_size < 200
    code = (
        "import sys\n"
        "from tailguard import OnnxPolicy\n"
        f"p = OnnxPolicy({str(path)!r})\n"
        "p.buffers.obs[:] = 0.5\n"
        "p.run_slot(0)\n"
        # VmHWM: this process's own peak (ru_maxrss keeps the parent's across fork+exec)
        "print(p._chk.nbytes, int(next(l.split()[1] for l in open('/proc/self/status') "
        "if l.startswith('VmHWM:'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    chk_bytes, peak_kib = (int(v) for v in out.stdout.split())
    assert chk_bytes == 2 * 4 * (4000 + 12 * 4000)
    assert peak_kib < 400 * 1024, f"peak RSS {peak_kib} KiB"


@pytest.mark.parametrize(
    "obs_size, act_size, fragment",
    [
        (10**12, 4, "observation input 'obs' declares 1000000000000 elements"),
        (MAX_OBS_SIZE + 1, 4, f"accepts 1 to {MAX_OBS_SIZE}"),
        (4, MAX_ACTION_SIZE + 1, f"action output 'actions' declares {MAX_ACTION_SIZE + 1}"),
    ],
)
def test_declared_sizes_are_bounded_at_load(
    tmp_path: Path, obs_size: int, act_size: int, fragment: str
) -> None:
    """A model declaring absurd sizes is refused with PolicyLoadError (not MemoryError)."""
    path = tmp_path / "huge.onnx"
    if obs_size == act_size:
        nodes, inits = [proto.node("Identity", ["obs"], ["actions"], "id")], []
    else:  # actions from a constant: onnxruntime keeps the declared input shape
        const = np.zeros((1, act_size), np.float32)
        nodes, inits = (
            [proto.node("Identity", ["c"], ["actions"], "id")],
            [proto.tensor("c", const)],
        )
    path.write_bytes(
        proto.model(
            nodes,
            inputs=[proto.value_info("obs", [1, obs_size])],
            outputs=[proto.value_info("actions", [1, act_size])],
            initializers=inits,
        )
    )
    with pytest.raises(PolicyLoadError, match=fragment) as info:
        OnnxPolicy(path)
    assert str(path) in str(info.value)


def test_callable_policy_sizes_are_bounded() -> None:
    """CallablePolicy refuses non-positive and absurd sizes with ConfigError (a ValueError)."""
    for sizes in ((0, 3), (3, 0), (MAX_OBS_SIZE + 1, 3), (3, MAX_ACTION_SIZE + 1)):
        with pytest.raises(ConfigError, match="sizes must be"):
            CallablePolicy(lambda o: o, *sizes)


def _relocate_external(src: Path, dst: Path, location: str) -> Path:
    """Copy a model with external data, pointing its initializers at ``location``."""
    model = onnx.load(str(src), load_external_data=False)
    for init in model.graph.initializer:
        for entry in init.external_data:
            if entry.key == "location":
                entry.value = location
    dst.write_bytes(model.SerializeToString())
    return dst


@pytest.mark.parametrize(
    "location, fragment",
    [
        ("/etc/passwd", "absolute path"),
        ("../../../../etc/passwd", r"leaves the model's folder \('\.\.'\)"),
        ("sub/../../x.data", r"leaves the model's folder"),
        ("C:\\weights.data", "absolute path"),
        ("\\\\server\\share\\w.data", "absolute path"),
    ],
)
def test_external_data_outside_the_folder_is_refused(
    tmp_path: Path, location: str, fragment: str
) -> None:
    """External-data locations that are absolute or climb out of the model's folder are
    refused before onnxruntime opens anything (1.17 would follow them)."""
    src = build_external(tmp_path / "ext.onnx")
    bad = _relocate_external(src, tmp_path / "bad.onnx", location)
    with pytest.raises(PolicyLoadError, match=fragment) as info:
        OnnxPolicy(bad)
    assert "refused" in str(info.value) and str(bad) in str(info.value)


def test_external_data_beside_the_model_still_loads(tmp_path: Path) -> None:
    """A plain file name beside the model (the normal case) is accepted and loads."""
    src = build_external(tmp_path / "ext.onnx")
    ok = _relocate_external(src, tmp_path / "ok.onnx", "ext.onnx.data")
    p = OnnxPolicy(ok)
    assert p.fast_checks and np.isfinite(p(np.ones(17, np.float32))).all()


def test_producer_version_is_read_from_the_model(tmp_path: Path) -> None:
    """The producer shown is ModelProto producer_name + producer_version, never the int64
    model_version default (9223372036854775807)."""
    body = [proto.node("Identity", ["obs"], ["actions"], "id")]
    io = {
        "inputs": [proto.value_info("obs", [1, 3])],
        "outputs": [proto.value_info("actions", [1, 3])],
    }
    (tmp_path / "v.onnx").write_bytes(
        proto.model(body, **io, producer="pytorch", producer_version="2.5.1")
    )
    (tmp_path / "nov.onnx").write_bytes(proto.model(body, **io, producer="pytorch"))
    assert OnnxPolicy(tmp_path / "v.onnx").describe()["producer"] == "pytorch 2.5.1"
    assert OnnxPolicy(tmp_path / "nov.onnx").producer == "pytorch"
    header = proto.model_header((tmp_path / "v.onnx").read_bytes())
    assert (header.producer_name, header.producer_version, header.ir_version) == (
        "pytorch",
        "2.5.1",
        8,
    )


def test_malformed_header_raises_policy_load_error() -> None:
    """The proto reader raises tailguard's PolicyLoadError (never a bare ValueError)."""
    for data in (b"\x08", b"\x3a\x05ab", b"\x0f"):
        with pytest.raises(PolicyLoadError):
            proto.model_header(data)


def test_inspect_prints_the_producer_version(tmp_path: Path) -> None:
    """`tailguard inspect`'s text names the exporter and its version as the file says."""
    from tailguard.tools.inspect_policy import format_inspection, inspect_policy

    path = tmp_path / "p.onnx"
    path.write_bytes(
        proto.model(
            [proto.node("Identity", ["obs"], ["actions"], "id")],
            inputs=[proto.value_info("obs", [1, 3])],
            outputs=[proto.value_info("actions", [1, 3])],
            producer="pytorch",
            producer_version="2.5.1",
        )
    )
    text = format_inspection(inspect_policy(path, ticks=20))
    assert "producer pytorch 2.5.1\n" in text
    assert "9223372036854775807" not in text


@settings(max_examples=400, deadline=None)
@given(
    data=st.one_of(
        st.binary(max_size=200),
        st.binary(max_size=40).map(lambda b: mlp_bytes((3, 2))[: len(b) * 3] + b),
    )
)
def test_header_reader_parses_or_raises_its_own_error(data: bytes) -> None:
    """Any bytes either parse as a ModelProto header or raise PolicyLoadError, nothing else
    (random bytes, and truncated or extended real models)."""
    try:
        header = proto.model_header(data)
    except PolicyLoadError:
        return
    assert isinstance(header.opsets, dict) and isinstance(header.producer_name, str)

"""OnnxPolicy: load-time validation, the in-graph check against its numpy reference, state."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tg_models import (
    TensorProto,
    build_custom,
    build_external,
    build_mlp,
    build_recurrent,
    helper,
    numpy_helper,
)

from tailguard import CallablePolicy, OnnxPolicy, PolicyLoadError
from tailguard.runtime.onnx_build import mlp_bytes
from tailguard.runtime.policy import OBS_FLAGS, SLACK_FLAGS, all_pass


def _vi(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def test_describe_reports_interface(mlp_path: Path) -> None:
    """The policy reports names, sizes, hash and that the fast check is active."""
    p = OnnxPolicy(mlp_path)
    d = p.describe()
    assert (d["obs_name"], d["action_name"], d["obs_size"], d["action_size"]) == (
        "obs",
        "actions",
        17,
        6,
    )
    assert d["fast_checks"] is True and len(d["sha256"]) == 64 and d["recurrent"] == []


def test_call_matches_plain_onnxruntime(mlp_path: Path) -> None:
    """__call__ gives the same actions as a plain onnxruntime session."""
    p = OnnxPolicy(mlp_path)
    obs = np.random.default_rng(1).standard_normal((3, 17)).astype(np.float32)
    ref = ort.InferenceSession(str(mlp_path)).run(None, {"obs": obs})[0]
    np.testing.assert_allclose(p(obs), ref, rtol=1e-6, atol=1e-6)


def _run_slot(p, slot: int, obs: np.ndarray) -> np.ndarray:
    p.buffers.obs[:] = obs
    p.run_slot(slot)
    return p.buffers.check[slot].copy()


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    scale=st.floats(0.01, 50.0),
    rate=st.one_of(st.none(), st.floats(0.01, 5.0)),
    bound=st.one_of(st.none(), st.floats(0.05, 3.0)),
)
def test_fast_check_equals_reference(tmp_path_factory, seed, scale, rate, bound) -> None:
    """The nodes folded into the graph compute the numpy reference's check bit for bit, and
    the one byte test passes exactly when the action is in bounds and within the rate."""
    path = tmp_path_factory.getbasetemp() / "ref_mlp.onnx"
    if not path.exists():
        build_mlp(path)
    fast, slow = OnnxPolicy(path), OnnxPolicy(path, fast_checks=False)
    assert fast.fast_checks and not slow.fast_checks
    low = None if bound is None else [-bound] * 6
    high = None if bound is None else [bound] * 6
    delta = None if rate is None else [rate] * 6
    for p in (fast, slow):
        p.set_limits(low, high, delta)
    rng = np.random.default_rng(seed)
    for slot in (0, 1, 0):
        obs = (rng.standard_normal(17) * scale).astype(np.float32)
        a, b = _run_slot(fast, slot, obs), _run_slot(slow, slot, obs)
        np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))
        ok_fast = all_pass(fast._slack_bytes[slot], SLACK_FLAGS)
        act = fast._act[slot]
        prev = fast._act[1 - slot]
        lo, hi, r = fast.limits
        ok_ref = bool(
            np.all(act >= lo)
            and np.all(act <= hi)
            and np.all(act <= prev + r)  # float32 arithmetic, as the check computes it
            and np.all(act >= prev - r)
        )
        assert ok_fast == ok_ref
        fast._set_applied(slot, act)
        slow._set_applied(slot, act)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_action_poisons_the_sentinel(tmp_path: Path, bad: float) -> None:
    """Any non-finite action makes the slack's sentinel NaN, so the byte test fails."""
    # actions = obs @ I (identity) so the action is whatever we feed
    eye = numpy_helper.from_array(np.eye(3, dtype=np.float32), "I")
    path = build_custom(
        tmp_path / "id.onnx",
        [_vi("obs", [1, 3])],
        [_vi("actions", [1, 3])],
        [helper.make_node("MatMul", ["obs", "I"], ["actions"])],
        [eye],
    )
    for fast in (True, False):
        p = OnnxPolicy(path, fast_checks=fast)
        p._obs[:] = [0.1, bad, 0.2]
        p.run_slot(0)
        sentinel = p._rows[0, 2]  # the s0 row: 0 * a + 1
        nonfinite = ~np.isfinite(p._act[0])
        assert nonfinite.any() and (np.isnan(sentinel) == nonfinite).all(), f"fast={fast}"
        assert (sentinel[~nonfinite] == 1.0).all()
        assert not all_pass(p._slack_bytes[0], SLACK_FLAGS)


def test_recurrent_state_is_carried_and_reset(tmp_path: Path) -> None:
    """h_in/h_out are double-buffered across slots like a manual onnxruntime loop; reset zeroes."""
    for kind in ("GRU", "LSTM"):
        path = build_recurrent(tmp_path / f"{kind}.onnx", kind=kind)
        p = OnnxPolicy(path)
        assert p.is_recurrent
        sess = ort.InferenceSession(str(path))
        h = np.zeros((1, 1, 8), np.float32)
        c = np.zeros((1, 1, 8), np.float32)
        rng = np.random.default_rng(0)
        for t in range(12):
            obs = rng.standard_normal(5).astype(np.float32)
            slot = t % 2
            p._obs[:] = obs
            p.run_slot(slot)
            feeds = {"obs": obs[None], "h_in": h}
            if kind == "LSTM":
                feeds["c_in"] = c
            out = sess.run(None, feeds)
            h = out[1]
            if kind == "LSTM":
                c = out[2]
            np.testing.assert_allclose(p._act[slot], out[0][0], rtol=1e-5, atol=1e-6)
        p.reset_state()
        assert all(not buf.any() for buf in p._states.values())


def test_external_data_loads_and_missing_data_is_explained(tmp_path: Path) -> None:
    """A model with an external data file loads; without the file the error names it."""
    path = build_external(tmp_path / "ext.onnx")
    p = OnnxPolicy(path)
    assert p.fast_checks
    ref = OnnxPolicy(tmp_path / "inline_src.onnx")
    obs = np.ones((1, 17), np.float32)
    np.testing.assert_allclose(p(obs), ref(obs), rtol=1e-6)
    (tmp_path / "ext.onnx.data").unlink()
    with pytest.raises(PolicyLoadError, match=r"ext\.onnx\.data.*not found"):
        OnnxPolicy(path)


def _bad_models(tmp: Path) -> list[tuple[str, Path, str]]:
    gemm = [helper.make_node("Identity", ["obs"], ["actions"])]
    cases = [
        ("missing", tmp / "nope.onnx", "cannot read"),
        ("garbage", tmp / "garbage.onnx", "not an ONNX model|cannot load"),
        (
            "double",
            build_custom(
                tmp / "double.onnx",
                [_vi("obs", [1, 4], TensorProto.DOUBLE)],
                [_vi("actions", [1, 4], TensorProto.DOUBLE)],
                gemm,
            ),
            "float32",
        ),
        (
            "rank3",
            build_custom(
                tmp / "rank3.onnx", [_vi("obs", [1, 2, 4])], [_vi("actions", [1, 2, 4])], gemm
            ),
            r"expected \[batch, size\]",
        ),
        (
            "batch4",
            build_custom(tmp / "batch4.onnx", [_vi("obs", [4, 3])], [_vi("actions", [4, 3])], gemm),
            "batch 1 or dynamic",
        ),
        (
            "extra_input",
            build_custom(
                tmp / "extra.onnx",
                [_vi("obs", [1, 3]), _vi("gain", [1, 3])],
                [_vi("actions", [1, 3])],
                [helper.make_node("Mul", ["obs", "gain"], ["actions"])],
            ),
            "extra inputs",
        ),
        (
            "h_in_alone",
            build_custom(
                tmp / "hin.onnx",
                [_vi("obs", [1, 3]), _vi("h_in", [1, 1, 3])],
                [_vi("actions", [1, 3])],
                [helper.make_node("Identity", ["obs"], ["actions"])],
            ),
            "no matching 'h_out'",
        ),
        (
            "two_inputs_no_obs",
            build_custom(
                tmp / "twoin.onnx",
                [_vi("a", [1, 3]), _vi("b", [1, 3])],
                [_vi("actions", [1, 3])],
                [helper.make_node("Add", ["a", "b"], ["actions"])],
            ),
            "which input is the observation",
        ),
    ]
    (tmp / "garbage.onnx").write_bytes(b"\xff\xfe not a protobuf at all" * 10)
    return cases


def test_bad_models_are_refused_with_clear_messages(tmp_path: Path) -> None:
    """Each malformed model raises PolicyLoadError naming the file and the problem."""
    for name, path, fragment in _bad_models(tmp_path):
        with pytest.raises(PolicyLoadError, match=fragment) as info:
            OnnxPolicy(path)
        assert str(path) in str(info.value), name


def test_models_built_without_onnx_package_load(tmp_path: Path) -> None:
    """tailguard.runtime.onnx_build writes models onnxruntime and OnnxPolicy accept."""
    path = tmp_path / "b.onnx"
    path.write_bytes(mlp_bytes((48, 512, 256, 128, 12)))
    p = OnnxPolicy(path)
    assert (p.obs_size, p.action_size) == (48, 12)
    assert np.isfinite(p(np.ones(48, np.float32))).all()


def test_callable_policy_checks_like_onnx(mlp_path: Path) -> None:
    """CallablePolicy (reference check) agrees with OnnxPolicy (in-graph check)."""
    onnx_p = OnnxPolicy(mlp_path)
    call_p = CallablePolicy(lambda o: onnx_p(o)[0], 17, 6)
    for p in (onnx_p, call_p):
        p.set_limits([-0.1] * 6, [0.1] * 6, [0.05] * 6)
    obs = np.linspace(-1, 1, 17).astype(np.float32)
    a = _run_slot(onnx_p, 0, obs)
    b = _run_slot(call_p, 0, obs)
    # the check rows agree; only CallablePolicy also writes |obs| (checks_observation)
    np.testing.assert_allclose(a[17:], b[17:], rtol=1e-5, atol=1e-5)
    assert call_p.checks_observation and not onnx_p.checks_observation
    np.testing.assert_array_equal(b[:17], np.abs(obs))


def test_limits_reject_wrong_lengths(mlp_path: Path) -> None:
    """set_limits refuses vectors of the wrong length and NaN limits."""
    p = OnnxPolicy(mlp_path)
    with pytest.raises(ValueError, match="expected 6 values"):
        p.set_limits([0.0] * 5, None, None)
    with pytest.raises(ValueError, match="NaN"):
        p.set_limits(None, None, [np.nan] * 6)


_F32 = st.floats(width=32, allow_nan=True, allow_infinity=True, allow_subnormal=True)


@settings(max_examples=300, deadline=None)
@given(values=st.lists(_F32, min_size=1, max_size=40))
def test_top_byte_rules_match_numpy(values) -> None:
    """The byte tests equal their float definitions on any float32 vector."""
    x = np.array(values, dtype=np.float32)
    buf = memoryview(x).cast("B")
    slack_ok = bool(np.all((x >= 0) & ~np.signbit(x) & (x < 2.0**127)))
    obs_ok = bool(np.all(np.abs(x) < 2.0**127))
    assert all_pass(buf, SLACK_FLAGS) == slack_ok
    assert all_pass(buf, OBS_FLAGS) == obs_ok


def test_inference_wrapper_replaces_and_is_what_the_guard_calls(mlp_path: Path) -> None:
    """set_inference_wrapper puts one wrapper around the policy's own run function: a
    second call replaces it (never stacks), None removes it, and a Guard built afterwards
    calls the wrapped function every tick."""
    from tailguard import Guard
    from tailguard.envelope.model import Envelope, PolicyBinding, Thresholds, Timing

    p = OnnxPolicy(mlp_path)
    own = p.buffers.run
    calls: list[str] = []

    def wrapper(tag: str):
        def wrap(run):
            def timed(arg):
                calls.append(tag)
                return run(arg)

            return timed

        return wrap

    p.set_inference_wrapper(wrapper("a"))
    p.set_inference_wrapper(wrapper("b"))
    p.run_slot(0)
    assert calls == ["b"]
    p.set_inference_wrapper(None)
    assert p.buffers.run is own
    p.set_inference_wrapper(wrapper("c"))
    assert p.buffers.run_args == p._run_args and p.buffers.obs is p._obs
    calls.clear()
    sec = 10**9
    envelope = Envelope(
        policy=PolicyBinding(sha256=None, obs_size=p.obs_size, action_size=p.action_size),
        timing=Timing(
            period_ns=sec,
            dt=Thresholds(p50_ns=sec, p95_ns=sec, p99_ns=sec, max_ns=10 * sec),
            latency=Thresholds(p50_ns=sec, p95_ns=sec, p99_ns=sec, max_ns=sec),
        ),
    )
    guard = Guard(p, envelope)
    for _ in range(3):
        guard.step(np.zeros(p.obs_size, np.float32))
    assert calls == ["c"] * 3

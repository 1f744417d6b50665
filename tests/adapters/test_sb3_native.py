"""The torch-free SB3 path: the reader equals torch.load, the graph equals torch's export, and
nothing from a hostile policy.pth ever runs."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
sb3 = pytest.importorskip("stable_baselines3")

from test_safe_unpickling import GADGETS, _Evil  # noqa: E402
from test_sb3_export import _model, _observations, _onnx_actions  # noqa: E402

from tailguard.adapters import sb3_native  # noqa: E402
from tailguard.adapters.resolve import resolve_policy  # noqa: E402
from tailguard.adapters.sb3 import export_sb3, torch_state_reader  # noqa: E402
from tailguard.adapters.sb3_native import (  # noqa: E402
    NativeExportUnsupported,
    export_sb3_native,
    read_state_dict,
)
from tailguard.errors import CheckpointError  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def vecnormalize_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A VecNormalize.save file of Pendulum statistics (clip_obs=2 so the clip matters)."""
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    path = tmp_path_factory.mktemp("vn") / "vecnormalize.pkl"
    venv = VecNormalize(make_vec_env("Pendulum-v1", n_envs=2, seed=0), clip_obs=2.0)
    venv.reset()
    rng = np.random.default_rng(0)
    for _ in range(30):
        venv.step(rng.uniform(-2, 2, size=(2, 1)))
    venv.save(str(path))
    venv.close()
    return path


@pytest.mark.parametrize(
    ("algo", "activation", "with_vn"),
    [
        ("PPO", None, False),
        ("PPO", None, True),
        ("PPO", torch.nn.ReLU, False),
        ("A2C", torch.nn.ELU, False),
        ("SAC", None, False),
        ("SAC", torch.nn.Tanh, True),
        ("TD3", None, False),
        ("TD3", torch.nn.LeakyReLU, True),
    ],
)
def test_native_onnx_equals_torch_export(
    tmp_path: Path, vecnormalize_file: Path, algo: str, activation: Any, with_vn: bool
) -> None:
    """Native and torch-exported ONNX give the same actions, and both equal predict()."""
    model = _model(algo, activation)
    model.save(tmp_path / "model.zip")
    vn = vecnormalize_file if with_vn else None
    native = export_sb3_native(tmp_path / "model.zip", tmp_path / "native.onnx", vecnormalize=vn)
    via_torch = export_sb3(
        tmp_path / "model.zip", tmp_path / "torch.onnx", vecnormalize=vn, exporter="legacy"
    )
    obs = _observations(200)
    got = _onnx_actions(native.path, obs)
    np.testing.assert_allclose(got, _onnx_actions(via_torch.path, obs), atol=1e-5, rtol=0)
    if not with_vn:  # predict() on raw observations is the plain model
        expected, _ = model.predict(obs, deterministic=True)
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    assert np.any(np.abs(got) > 1.0)  # the bounds [-2, 2] are in the graph
    assert native.parity.passed and native.parity.reference == "numpy-float64"
    meta = native.metadata
    assert meta["tailguard.exporter"] == "native"
    assert meta["tailguard.parity_reference"] == "numpy-float64"
    shared = {k: v for k, v in via_torch.metadata.items() if not k.startswith("tailguard.parity")}
    for key in set(shared) - {"tailguard.exporter", "tailguard.torch_version"}:
        assert meta[key] == shared[key], key
    session = ort.InferenceSession(str(native.path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == ["batch", 3]
    assert session.get_outputs()[0].shape == ["batch", 1]
    onnx = pytest.importorskip("onnx")
    onnx.checker.check_model(onnx.load(str(native.path)))


def _policy_pth(state: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def _rewrite(
    pth: bytes, change: Callable[[str, bytes], bytes | None], extra: dict[str, bytes] | None = None
) -> bytes:
    """Copy a torch zip archive, member by member through ``change`` (``None`` drops it)."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(pth)) as src, zipfile.ZipFile(out, "w") as dst:
        for name in src.namelist():
            data = change(name, src.read(name))
            if data is not None:
                dst.writestr(name, data)
        for name, data in (extra or {}).items():
            dst.writestr(name, data)
    return out.getvalue()


def _assert_same(native: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> None:
    assert list(native) == list(reference)
    for key, want in reference.items():
        got = native[key]
        assert got.dtype == want.dtype and got.shape == want.shape, key
        assert got.tobytes() == np.ascontiguousarray(want).tobytes(), key


@pytest.mark.parametrize("algo", ["PPO", "SAC", "TD3"])
def test_reader_is_bit_identical_to_torch_load_on_sb3_files(tmp_path: Path, algo: str) -> None:
    """Every array of a real SB3 policy.pth equals torch.load(weights_only=True), bit for bit."""
    _model(algo).save(tmp_path / "model.zip")
    with zipfile.ZipFile(tmp_path / "model.zip") as archive:
        pth = archive.read("policy.pth")
    _assert_same(read_state_dict(pth, tmp_path), torch_state_reader(pth, tmp_path))


def _strided_state() -> dict[str, Any]:
    base = torch.arange(60, dtype=torch.float32) * 0.37 - 3.0
    wide = torch.linspace(-1, 1, 24, dtype=torch.float64)
    return {
        "offset_slice": base[5:17],
        "transposed": base.view(6, 10).t(),
        "window": base.view(6, 10)[1:4, 2:9:3],
        "double": wide.view(4, 6)[:, 1:],
        "scalar": torch.tensor(2.5, dtype=torch.float64),
        "empty": torch.zeros(0, 3),
    }


def test_reader_handles_offsets_strides_and_float64(tmp_path: Path) -> None:
    """Views sharing one storage (offsets, strides, transposes), float64 and 0-d tensors."""
    pth = _policy_pth(_strided_state())
    _assert_same(read_state_dict(pth, tmp_path), torch_state_reader(pth, tmp_path))


def test_reader_honours_a_big_endian_byteorder(tmp_path: Path) -> None:
    """A big-endian archive (storages byte-swapped, byteorder 'big') reads the same values."""
    state = _strided_state()
    pth = _policy_pth(state)
    # storage keys in first-use order: the float32 base, the float64 one, the scalar, empty
    widths = {"0": 4, "1": 8, "2": 8, "3": 4}

    def swap(name: str, data: bytes) -> bytes:
        if name.endswith("/byteorder"):
            return b"big"
        if "/data/" in name and (key := name.rsplit("/", 1)[-1]) in widths:
            w = widths[key]
            return np.frombuffer(data, f"<f{w}").astype(f">f{w}").tobytes()
        return data

    swapped = _rewrite(pth, swap)
    native = read_state_dict(swapped, tmp_path)
    _assert_same(native, torch_state_reader(pth, tmp_path))
    _assert_same(native, torch_state_reader(swapped, tmp_path))  # torch reads it the same


def _with_pickle(tmp_path: Path, body: bytes) -> bytes:
    """A torch archive whose data.pkl is ``body`` (the storages of a real file kept)."""
    pth = _policy_pth({"w": torch.ones(3)})
    return _rewrite(pth, lambda name, data: body if name.endswith("/data.pkl") else data)


def test_policy_pth_naming_os_system_is_refused_and_never_runs(tmp_path: Path) -> None:
    """torch.save of an object reducing to os.system: refused by name, the command never ran."""
    marker = tmp_path / "marker"
    pth = _policy_pth({"action_net.weight": torch.ones(1, 3), "x": _Evil(marker)})
    with pytest.raises(CheckpointError, match=r"refused to load policy\.pth: it names \w+\.system"):
        read_state_dict(pth, tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize("gadget", sorted(GADGETS))
def test_gadget_pickles_are_refused(tmp_path: Path, gadget: str) -> None:
    """Every gadget chain of the VecNormalize tests, as a data.pkl, is refused unresolved."""
    marker = tmp_path / "marker"
    pth = _with_pickle(tmp_path, GADGETS[gadget](marker))
    with pytest.raises(CheckpointError, match=r"refused to load policy\.pth"):
        read_state_dict(pth, tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "target",
    [
        b"ctorch._utils\n_rebuild_tensor_v2\n",
        b"ccollections\nOrderedDict\n",
        b"ctorch\nFloatStorage\n",
    ],
)
def test_build_on_an_allowed_global_is_refused(tmp_path: Path, target: bytes) -> None:
    """BUILD (slot state: setattr) on an allowed global is refused, so no file can change how
    the next one is read; a real file still reads afterwards."""
    name = b"__defaults__"
    body = b"\x80\x02" + target + b"N}X" + len(name).to_bytes(4, "little") + name + b")s\x86b."
    with pytest.raises(CheckpointError, match=r"setting the state of \S+ is not allowed"):
        read_state_dict(_with_pickle(tmp_path, body), tmp_path)
    pth = _policy_pth(_strided_state())
    _assert_same(read_state_dict(pth, tmp_path), torch_state_reader(pth, tmp_path))


def test_evil_zip_through_resolve_policy_is_refused(tmp_path: Path) -> None:
    """The audit's entrance refuses it the same way, and writes no ONNX."""
    marker = tmp_path / "marker"
    model = _model("PPO")
    model.save(tmp_path / "good.zip")
    evil = _policy_pth({"x": _Evil(marker)})
    with (
        zipfile.ZipFile(tmp_path / "good.zip") as src,
        zipfile.ZipFile(tmp_path / "evil.zip", "w") as dst,
    ):
        for name in src.namelist():
            dst.writestr(name, evil if name == "policy.pth" else src.read(name))
    with pytest.raises(CheckpointError, match=r"refused to load policy\.pth"):
        resolve_policy(tmp_path / "evil.zip", tmp_path / "work")
    assert not marker.exists()
    assert not (tmp_path / "work" / "policy.onnx").exists()


def test_truncated_and_oversized_records_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A storage shorter than its tensor, a cut archive, a cut pickle, a record past the bound."""
    pth = _policy_pth({"w": torch.ones(4, 3)})
    short = _rewrite(pth, lambda n, d: d[:-4] if "/data/" in n and n[-1].isdigit() else d)
    with pytest.raises(CheckpointError, match="has 44 bytes; its tensor needs 48"):
        read_state_dict(short, tmp_path)
    with pytest.raises(CheckpointError, match=r"cannot read policy\.pth"):
        read_state_dict(pth[: len(pth) // 2], tmp_path)
    cut = _rewrite(pth, lambda n, d: d[: len(d) // 2] if n.endswith("/data.pkl") else d)
    with pytest.raises(CheckpointError, match=r"cannot read policy\.pth"):
        read_state_dict(cut, tmp_path)
    missing = _rewrite(pth, lambda n, d: None if "/data/" in n and n[-1].isdigit() else d)
    with pytest.raises(CheckpointError, match="has no record"):
        read_state_dict(missing, tmp_path)
    monkeypatch.setattr(sb3_native, "POLICY_PTH_MAX_BYTES", 40)
    with pytest.raises(CheckpointError, match="zip bomb"):
        read_state_dict(pth, tmp_path)


@pytest.mark.parametrize("dtype", [torch.int64, torch.float16, torch.bool])
def test_non_float_tensors_are_refused(tmp_path: Path, dtype: Any) -> None:
    """A state dict holding an integer, half or bool tensor is refused, naming key and dtype."""
    pth = _policy_pth({"ok": torch.ones(2), "counter": torch.zeros(3, dtype=dtype)})
    with pytest.raises(CheckpointError, match=r"tensor 'counter' is \w+; only float32 and float64"):
        read_state_dict(pth, tmp_path)


def test_legacy_serialization_asks_for_the_torch_exporter(tmp_path: Path) -> None:
    """torch's pre-1.6 format is not read natively (resolve then falls back to torch)."""
    buf = io.BytesIO()
    torch.save({"w": torch.ones(2)}, buf, _use_new_zipfile_serialization=False)
    with pytest.raises(NativeExportUnsupported, match="not in torch's zip format"):
        read_state_dict(buf.getvalue(), tmp_path)


def test_gelu_falls_back_to_the_torch_exporter_and_says_so(tmp_path: Path) -> None:
    """An activation with no one-op ONNX form: resolve exports with torch and records why."""
    _model("PPO", torch.nn.GELU).save(tmp_path / "model.zip")
    with pytest.raises(NativeExportUnsupported, match="'gelu' is not available natively"):
        export_sb3_native(tmp_path / "model.zip", tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()
    resolved = resolve_policy(tmp_path / "model.zip", tmp_path / "work")
    assert resolved.source["exporter"] == "torch"
    assert "not available natively" in resolved.source["exporter_fallback"]
    assert resolved.source["parity"]["reference"] == "torch"
    assert resolved.source["parity"]["passed"]


_NO_TORCH = """
import json, sys
from tailguard.adapters.resolve import resolve_policy
resolved = resolve_policy(sys.argv[1], sys.argv[2])
from tailguard.tools.cli import main
code = main(["audit", "--policy", sys.argv[1], "--env", "Pendulum-v1", "--quick",
             "--episodes", "2", "--workers", "1", "--out", sys.argv[3], "--quiet"])
heavy = sorted(m for m in ("torch", "stable_baselines3") if m in sys.modules)
print(json.dumps({"source": resolved.source, "code": code, "heavy": heavy}))
"""


def test_resolving_and_auditing_a_zip_never_imports_torch(tmp_path: Path) -> None:
    """In a fresh process: resolve_policy and a whole `tailguard audit` of a zip, no torch."""
    _model("SAC").save(tmp_path / "model.zip")
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            _NO_TORCH,
            *(str(tmp_path / n) for n in ("model.zip", "w", "audit")),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["heavy"] == []
    assert result["code"] in (0, 1, 2)  # an audit verdict, not a crash
    source = result["source"]
    assert source["exporter"] == "native" and "exporter_fallback" not in source
    assert source["parity"] == {**source["parity"], "passed": True, "reference": "numpy-float64"}
    assert (tmp_path / "audit" / "summary.json").is_file()


def test_export_command_takes_the_native_exporter(tmp_path: Path) -> None:
    """`tailguard export sb3 --exporter native` writes the torch-free graph (a real
    subprocess) with the numpy parity, and it equals the torch-exported one."""
    model = _model("PPO", None)
    model.save(tmp_path / "model.zip")
    out = tmp_path / "native.onnx"
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "tailguard.adapters.cli", "export", "sb3"),
            *(str(tmp_path / "model.zip"), "-o", str(out), "--exporter", "native"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "exported sb3 ppo" in proc.stdout and "parity ok" in proc.stdout
    via_torch = export_sb3(tmp_path / "model.zip", tmp_path / "t.onnx", exporter="legacy")
    obs = _observations(50)
    np.testing.assert_allclose(
        _onnx_actions(out, obs), _onnx_actions(via_torch.path, obs), atol=1e-5, rtol=0
    )

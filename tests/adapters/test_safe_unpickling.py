"""Every unpickling path refuses code: VecNormalize gadget chains, torch checkpoints, SB3 zips."""

from __future__ import annotations

import io
import os
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from tailguard.adapters.rsl_rl_checkpoint import load_rsl_rl_checkpoint  # noqa: E402
from tailguard.adapters.sb3 import load_sb3, read_vecnormalize  # noqa: E402
from tailguard.errors import CheckpointError  # noqa: E402


def _str(text: str) -> bytes:
    """SHORT_BINUNICODE / BINUNICODE opcode for ``text``."""
    raw = text.encode()
    if len(raw) < 256:
        return b"\x8c" + bytes([len(raw)]) + raw
    return b"X" + struct.pack("<I", len(raw)) + raw


def _stack_global(module: str, name: str) -> bytes:
    """Protocol 4 STACK_GLOBAL: a dotted name is followed attribute by attribute."""
    return _str(module) + _str(name) + b"\x93"


def _call(callable_ops: bytes, *args: str) -> bytes:
    """``callable(*args)`` via MARK ... TUPLE REDUCE."""
    return callable_ops + b"(" + b"".join(_str(a) for a in args) + b"tR"


def _proto4(body: bytes) -> bytes:
    return b"\x80\x04" + body + b"."


def _shell(marker: Path) -> str:
    return f"__import__('pathlib').Path({str(marker)!r}).write_text('ran')"


# Each gadget, if any part of it resolved, would write the marker file.
GADGETS: dict[str, Any] = {
    # The reported chain: an allowed-looking module, then attribute hops to eval.
    "numpy.dtypes builtins chain": lambda m: _proto4(
        _call(
            _call(_stack_global("numpy.dtypes", "_add_dtype_helper.__builtins__.get"), "eval"),
            _shell(m),
        )
    ),
    # Dotted hops from classes that are allowed as stand-ins or rebuilt.
    "stub class globals chain": lambda m: _proto4(
        _call(
            _call(
                _stack_global(
                    "stable_baselines3.common.running_mean_std",
                    "RunningMeanStd.__init__.__globals__.get",
                ),
                "__builtins__",
            ),
            _shell(m),
        )
    ),
    "numpy rebuild function chain": lambda m: _proto4(
        _call(_stack_global("numpy._core.multiarray", "_reconstruct.__self__.eval"), _shell(m))
    ),
    "numpy.random ctor chain": lambda m: _proto4(
        _call(
            _stack_global("numpy.random._pickle", "__generator_ctor.__globals__.__builtins__.eval"),
            _shell(m),
        )
    ),
    # Plain globals that were never on any list.
    "builtins.eval": lambda m: _proto4(_call(_stack_global("builtins", "eval"), _shell(m))),
    "builtins.exec (protocol 0 GLOBAL)": lambda m: b"cbuiltins\nexec\n(" + _str(_shell(m)) + b"tR.",
    "os.system": lambda m: _proto4(_call(_stack_global("os", "system"), f"touch {m}")),
    "numpy.load with pickles": lambda m: _proto4(_call(_stack_global("numpy", "load"), str(m))),
    "a name under an allowed module": lambda m: _proto4(
        _call(_stack_global("numpy.dtypes", "__builtins__"), _shell(m))
    ),
    "a name under a stubbed package": lambda m: _proto4(
        _call(_stack_global("stable_baselines3.common.save_util", "load_from_pkl"), str(m))
    ),
    "_codecs.encode bytes trick": lambda m: _proto4(
        _call(_stack_global("_codecs", "encode"), _shell(m), "latin1")
    ),
}


@pytest.mark.parametrize("gadget", sorted(GADGETS))
def test_vecnormalize_gadget_chains_are_refused(tmp_path: Path, gadget: str) -> None:
    """Every gadget chain raises CheckpointError('refused ...') and its payload never runs."""
    marker = tmp_path / "marker"
    path = tmp_path / "vecnormalize.pkl"
    path.write_bytes(GADGETS[gadget](marker))
    with pytest.raises(CheckpointError, match="refused to load the VecNormalize file"):
        read_vecnormalize(path, obs_dim=3)
    assert not marker.exists()


def test_the_reported_chain_is_live_in_plain_pickle(tmp_path: Path) -> None:
    """The chain above really executes code under an unrestricted unpickler (so the test bites)."""
    marker = tmp_path / "marker"
    pickle.loads(GADGETS["numpy.dtypes builtins chain"](marker))
    assert marker.read_text() == "ran"


def test_real_vecnormalize_file_still_reads(tmp_path: Path) -> None:
    """A VecNormalize.save file from the installed SB3 reads through the exact allow-list."""
    pytest.importorskip("stable_baselines3")
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    venv = VecNormalize(make_vec_env("Pendulum-v1", n_envs=1, seed=0))
    venv.reset()
    venv.save(str(tmp_path / "vn.pkl"))
    venv.close()
    module = read_vecnormalize(tmp_path / "vn.pkl", obs_dim=3)
    assert module is not None


@pytest.mark.parametrize(
    ("state", "fragment"),
    [
        ({"obs_rms": None}, "no observation statistics"),
        ({"epsilon": "1e-8"}, "epsilon and clip_obs must be positive finite"),
        ({"clip_obs": float("nan")}, "epsilon and clip_obs must be positive finite"),
        ({"var": -1.0}, "non-finite or negative"),
    ],
)
def test_vecnormalize_values_are_validated(
    tmp_path: Path, state: dict[str, Any], fragment: str
) -> None:
    """Statistics of the wrong kind or value are refused with a message, not a traceback."""
    pytest.importorskip("stable_baselines3")
    import numpy as np
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.running_mean_std import RunningMeanStd
    from stable_baselines3.common.vec_env import VecNormalize

    venv = VecNormalize(make_vec_env("Pendulum-v1", n_envs=1, seed=0))
    if "var" in state:
        venv.obs_rms.var = np.full(3, state.pop("var"))
    if "obs_rms" in state:
        venv.obs_rms = RunningMeanStd(shape=(3,))
        venv.obs_rms.mean = state.pop("obs_rms")
    venv.__dict__.update(state)
    path = tmp_path / "vn.pkl"
    venv.save(str(path))
    venv.close()
    with pytest.raises(CheckpointError, match=fragment):
        read_vecnormalize(path, obs_dim=3)


def test_oversized_vecnormalize_file_is_refused_unread(tmp_path: Path) -> None:
    """A statistics file past the size bound is refused before unpickling."""
    path = tmp_path / "vn.pkl"
    with path.open("wb") as handle:
        handle.truncate(65 << 20)
    with pytest.raises(CheckpointError, match="statistics files are a few KiB"):
        read_vecnormalize(path, obs_dim=3)


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def _sb3_zip(path: Path, policy_pth: bytes, data: bytes = b"{}") -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("data", data)
        archive.writestr("policy.pth", policy_pth)
    return path


def test_torch_refusal_never_echoes_weights_only_false(tmp_path: Path) -> None:
    """A .pt holding os.system is refused, names the global, never advises weights_only=False."""
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    torch.save({"model_state_dict": {}, "x": _Evil(marker)}, path)
    with pytest.raises(CheckpointError) as info:
        load_rsl_rl_checkpoint(path)
    text = str(info.value)
    assert "refused to load the checkpoint" in text and "system" in text
    assert "weights_only=False" not in text and "weights_only` set to `False" not in text
    assert not marker.exists()


def test_sb3_policy_pth_with_code_is_refused(tmp_path: Path) -> None:
    """An SB3 zip whose policy.pth pickles a callable is refused the same way."""
    marker = tmp_path / "marker"
    buf = io.BytesIO()
    torch.save({"x": _Evil(marker)}, buf)
    path = _sb3_zip(tmp_path / "m.zip", buf.getvalue())
    with pytest.raises(CheckpointError, match=r"refused to load policy\.pth") as info:
        load_sb3(path)
    assert "weights_only` set to `False" not in str(info.value)
    assert not marker.exists()


def test_sb3_zip_bomb_member_is_refused_unread(tmp_path: Path) -> None:
    """A 'data' member that inflates past its bound is refused before it is decompressed."""
    path = _sb3_zip(tmp_path / "bomb.zip", b"", data=b" " * (17 << 20))
    assert path.stat().st_size < 1 << 20
    with pytest.raises(CheckpointError, match="zip bomb"):
        load_sb3(path)

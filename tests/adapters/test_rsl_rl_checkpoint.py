"""RSL-RL checkpoint loading: every format, recurrent types, normalizers, and refusals."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ckpt_factory import (  # noqa: E402
    ACTION_DIM,
    HIDDEN,
    OBS_DIM,
    RNN_HIDDEN,
    Case,
    all_cases,
    build,
    reference_rollout,
)

from tailguard.adapters.rsl_rl_checkpoint import (  # noqa: E402
    build_actor_module,
    load_rsl_rl_checkpoint,
    parse_rsl_rl_checkpoint,
)
from tailguard.errors import CheckpointError, MissingExtraError  # noqa: E402

CASES = all_cases()


def _save(tmp_path: Path, ckpt: Any, name: str = "model.pt") -> Path:
    path = tmp_path / name
    torch.save(ckpt, path)
    return path


def _module_rollout(module: Any, case: Case, obs_seq: np.ndarray) -> np.ndarray:
    steps, batch, _ = obs_seq.shape
    states = []
    if case.rnn != "none":
        n_states = 2 if case.rnn == "lstm" else 1
        states = [torch.zeros(case.rnn_layers, batch, RNN_HIDDEN) for _ in range(n_states)]
    out = []
    with torch.no_grad():
        for t in range(steps):
            result = module(torch.from_numpy(obs_seq[t]), *states)
            if case.rnn == "none":
                out.append(result.numpy())
            else:
                out.append(result[0].numpy())
                states = list(result[1:])
    return np.stack(out)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_every_format_loads_and_matches_reference(tmp_path: Path, case: Case) -> None:
    """Each format/memory/normalizer/std combination loads with the right spec and outputs."""
    ckpt, ref = build(case)
    actor = load_rsl_rl_checkpoint(_save(tmp_path, ckpt))
    spec = actor.spec
    assert spec.format_version == case.expected_version
    assert (spec.obs_dim, spec.action_dim, spec.hidden_sizes) == (OBS_DIM, ACTION_DIM, HIDDEN)
    assert spec.recurrent == case.rnn
    assert spec.normalizer == case.normalizer
    assert spec.activation == "elu"
    assert spec.rnn_num_layers == (case.rnn_layers if case.rnn != "none" else 0)
    assert len(spec.sha256) == 64
    obs_seq = np.random.default_rng(1).normal(size=(12, 3, OBS_DIM)).astype(np.float32)
    got = _module_rollout(build_actor_module(actor), case, obs_seq)
    np.testing.assert_allclose(got, reference_rollout(ref, obs_seq), atol=1e-5, rtol=0)


def test_bare_state_dict_is_accepted() -> None:
    """A bare actor state dict (no runner wrapper) is read as its layout."""
    ckpt, _ = build(Case("5", "none", True, "std"))
    actor = parse_rsl_rl_checkpoint(ckpt["actor_state_dict"])
    assert actor.spec.format_version == "5.x"
    assert actor.spec.normalizer


def test_activation_is_configurable() -> None:
    """The activation is taken from the argument, lower-cased, and changes the outputs."""
    ckpt, _ = build(Case("4", "none", False, "std"))
    elu = build_actor_module(parse_rsl_rl_checkpoint(ckpt))
    tanh_actor = parse_rsl_rl_checkpoint(ckpt, activation="Tanh")
    assert tanh_actor.spec.activation == "tanh"
    x = torch.randn(4, OBS_DIM)
    assert not torch.allclose(elu(x), build_actor_module(tanh_actor)(x))


def test_hidden_sizes_override_is_checked() -> None:
    """Giving the right hidden sizes passes; the wrong ones are refused naming both."""
    ckpt, _ = build(Case("1", "none"))
    parse_rsl_rl_checkpoint(ckpt, hidden_sizes=list(HIDDEN))
    with pytest.raises(CheckpointError, match=r"\[64, 64\].*\[8, 6\]"):
        parse_rsl_rl_checkpoint(ckpt, hidden_sizes=[64, 64])


def _mutate(case: Case, fn: Any) -> dict[str, Any]:
    ckpt, _ = build(case)
    fn(ckpt)
    return ckpt


def _set(d: dict[str, Any], key: str, value: Any) -> None:
    d[key] = value


BAD_LAYOUTS = [
    ({"state_dict": {}}, "top-level keys ['state_dict']"),
    ([1, 2, 3], "a list, not a dict"),
    ({"model_state_dict": {"foo.weight": torch.zeros(2)}}, "Known formats"),
    (
        _mutate(
            Case("1"), lambda c: _set(c["model_state_dict"], "student.0.weight", torch.zeros(1))
        ),
        "not understood: ['student.0.weight']",
    ),
    (
        _mutate(Case("1"), lambda c: c["model_state_dict"].pop("std")),
        "exactly one of 'std' / 'log_std'",
    ),
    (
        _mutate(Case("1"), lambda c: _set(c["model_state_dict"], "log_std", torch.zeros(3))),
        "exactly one of 'std' / 'log_std'",
    ),
    (
        _mutate(Case("5"), lambda c: c["actor_state_dict"].pop("distribution.std_param")),
        "other output distributions are not supported",
    ),
    (
        _mutate(Case("4"), lambda c: _set(c["actor_state_dict"], "cnns.0.weight", torch.zeros(1))),
        "not understood: ['cnns.0.weight']",
    ),
    (
        _mutate(Case("4"), lambda c: c["actor_state_dict"].pop("mlp.2.bias")),
        "lacks a weight or a bias",
    ),
    (
        _mutate(
            Case("4"), lambda c: _set(c["actor_state_dict"], "mlp.2.weight", torch.zeros(6, 5))
        ),
        "takes 5 inputs but the previous layer gives 8",
    ),
    (
        _mutate(Case("4"), lambda c: _set(c["actor_state_dict"], "std", torch.ones(4))),
        "'std' has 4 entries but the actor outputs 3",
    ),
    (
        _mutate(
            Case("4", "lstm"),
            lambda c: _set(c["actor_state_dict"], "rnn.rnn.weight_hh_l0", torch.zeros(35, 7)),
        ),
        "expected [4*H, H] (LSTM) or [3*H, H] (GRU)",
    ),
    (
        _mutate(
            Case("5", "gru"),
            lambda c: _set(c["actor_state_dict"], "rnn.rnn.weight_ih_l0_reverse", torch.zeros(1)),
        ),
        "bidirectional or projected",
    ),
    (
        _mutate(
            Case("3", "none", True),
            lambda c: _set(c["model_state_dict"], "actor_obs_normalizer._mean", torch.zeros(1, 4)),
        ),
        "normalizer '",
    ),
    (
        _mutate(Case("2", "none", True), lambda c: _set(c, "obs_norm_state_dict", {"_x": 1})),
        "unexpected normalizer keys",
    ),
    (
        _mutate(
            Case("3", "none", True),
            lambda c: _set(c, "obs_norm_state_dict", c["model_state_dict"] and {}),
        ),
        "refusing to guess",
    ),
]


@pytest.mark.parametrize(("ckpt", "fragment"), BAD_LAYOUTS)
def test_unknown_or_inconsistent_layout_is_refused(
    tmp_path: Path, ckpt: Any, fragment: str
) -> None:
    """Unrecognised or inconsistent layouts raise CheckpointError naming what was found."""
    path = _save(tmp_path, ckpt)
    with pytest.raises(CheckpointError) as info:
        load_rsl_rl_checkpoint(path)
    assert fragment in str(info.value)
    assert str(path) in str(info.value)


def test_unknown_layout_lists_known_formats() -> None:
    """The refusal of a foreign dict names its keys and every known format."""
    with pytest.raises(CheckpointError) as info:
        parse_rsl_rl_checkpoint({"weights": torch.zeros(1), "epoch": 3})
    message = str(info.value)
    assert "'epoch'" in message and "'weights'" in message
    for version in ("1.x", "2.x", "3.x", "4.x", "5.x"):
        assert version in message


class _Evil:
    def __reduce__(self) -> tuple[Any, ...]:
        return (print, ("this must never run",))


def _write_truncated(tmp_path: Path) -> Path:
    ckpt, _ = build(Case("5"))
    full = _save(tmp_path, ckpt, "full.pt")
    path = tmp_path / "truncated.pt"
    path.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    return path


def _write_text(tmp_path: Path) -> Path:
    path = tmp_path / "notes.pt"
    path.write_text("not a checkpoint\n")
    return path


def _write_pickled_code(tmp_path: Path) -> Path:
    return _save(tmp_path, {"model_state_dict": {}, "payload": _Evil()}, "evil.pt")


def _write_empty(tmp_path: Path) -> Path:
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    return path


@pytest.mark.parametrize(
    ("writer", "fragment"),
    [
        (_write_truncated, "truncated, corrupt or not a torch file"),
        (_write_text, "truncated, corrupt or not a torch file"),
        (_write_empty, "truncated, corrupt or not a torch file"),
        (_write_pickled_code, r"refused to load.*\(found print\)"),
        (lambda p: p / "missing.pt", "not found"),
    ],
)
def test_unreadable_files_raise_checkpoint_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], writer: Any, fragment: str
) -> None:
    """Truncated, foreign, empty, missing and pickled-code files raise CheckpointError only."""
    path = writer(tmp_path)
    with pytest.raises(CheckpointError, match=fragment):
        load_rsl_rl_checkpoint(path)
    assert "this must never run" not in capsys.readouterr().out


def test_unknown_activation_is_refused() -> None:
    """An unknown activation name is refused with the valid choices."""
    ckpt, _ = build(Case("5"))
    with pytest.raises(CheckpointError, match=r"unknown activation 'relu6'; valid choices"):
        parse_rsl_rl_checkpoint(ckpt, activation="relu6")


def test_missing_torch_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without torch, loading raises MissingExtraError with the pip command for the extra."""
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'tailguard\[export\]'"):
        load_rsl_rl_checkpoint("whatever.pt")

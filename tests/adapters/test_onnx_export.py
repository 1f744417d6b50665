"""ONNX export: single self-contained file, RSL-RL names, dynamic batch, metadata, parity."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from ckpt_factory import ACTION_DIM, OBS_DIM, RNN_HIDDEN, Case, build, reference_rollout  # noqa: E402
from onnx.external_data_helper import uses_external_data  # noqa: E402

from tailguard.adapters.export import (  # noqa: E402
    RecurrentSpec,
    export_module,
    parity_difference,
)
from tailguard.adapters.rsl_rl_export import export_rsl_rl  # noqa: E402
from tailguard.errors import ExportError, ParityError  # noqa: E402

EXPORT_CASES = [
    Case("5", "none", True, "std"),
    Case("1", "lstm"),
    Case("4", "gru", True, "log_std"),
    Case("3", "lstm", True, "std", rnn_layers=2),
]


def _ort_rollout(path: Path, case: Case, obs_seq: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    steps, batch, _ = obs_seq.shape
    names = {"lstm": ["h_in", "c_in"], "gru": ["h_in"], "none": []}[case.rnn]
    states = [np.zeros((case.rnn_layers, batch, RNN_HIDDEN), np.float32) for _ in names]
    out = []
    for t in range(steps):
        feed = {"obs": obs_seq[t]} | dict(zip(names, states, strict=True))
        result = session.run(None, feed)
        out.append(result[0])
        states = result[1:]
    return np.stack(out)


@pytest.mark.parametrize("case", EXPORT_CASES, ids=[c.id for c in EXPORT_CASES])
def test_exported_checkpoint_is_single_file_and_matches(tmp_path: Path, case: Case) -> None:
    """Export writes one self-contained file whose onnxruntime outputs match the reference."""
    ckpt, ref = build(case)
    source = tmp_path / "ckpt.pt"
    torch.save(ckpt, source)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = export_rsl_rl(source, out_dir / "policy.onnx")
    assert sorted(p.name for p in out_dir.iterdir()) == ["policy.onnx"]
    model = onnx.load(str(result.path), load_external_data=False)
    assert not any(uses_external_data(t) for t in model.graph.initializer)
    assert model.ir_version <= 10
    assert model.graph.input[0].name == "obs"
    assert model.graph.output[0].name == "actions"
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["tailguard.source_format"] == "rsl-rl"
    assert meta["tailguard.source_version"] == case.expected_version
    assert meta["tailguard.obs_dim"] == str(OBS_DIM)
    assert meta["tailguard.action_dim"] == str(ACTION_DIM)
    assert meta["tailguard.activation"] == "elu"
    assert meta["tailguard.recurrent"] == case.rnn
    assert meta["tailguard.parity_passed"] == "true"
    assert float(meta["tailguard.parity_max_abs_diff"]) <= 1e-5
    assert len(meta["tailguard.source_sha256"]) == 64
    assert result.parity.passed
    if case.rnn != "none":
        assert result.parity.sequence_steps >= 10
    for batch in (1, 7):  # dynamic batch axis
        obs_seq = np.random.default_rng(batch).normal(size=(12, batch, OBS_DIM)).astype(np.float32)
        got = _ort_rollout(result.path, case, obs_seq)
        np.testing.assert_allclose(got, reference_rollout(ref, obs_seq), atol=1e-5, rtol=0)


def test_recorded_observations_join_the_parity_check(tmp_path: Path) -> None:
    """Recorded observations are evaluated and counted in the parity report."""
    ckpt, _ = build(Case("5", "gru", True, "std"))
    torch.save(ckpt, tmp_path / "c.pt")
    recorded = np.random.default_rng(0).normal(size=(11, OBS_DIM))
    result = export_rsl_rl(
        tmp_path / "c.pt", tmp_path / "p.onnx", observations=recorded, exporter="legacy"
    )
    assert result.parity.recorded_observations == 11
    assert result.parity.num_observations == 4 * 16 + 11
    assert result.metadata["tailguard.exporter"] == "legacy"


@pytest.mark.parametrize(
    ("observations", "fragment"),
    [
        (np.zeros((4, OBS_DIM + 1)), "expected [n, 5]"),
        (np.zeros((0, OBS_DIM)), "expected [n, 5]"),
        (np.full((3, OBS_DIM), np.nan), "NaN or Inf"),
    ],
)
def test_bad_recorded_observations_are_refused(
    tmp_path: Path, observations: np.ndarray, fragment: str
) -> None:
    """Recorded observations of the wrong shape or non-finite raise ExportError; no file."""
    ckpt, _ = build(Case("4"))
    torch.save(ckpt, tmp_path / "c.pt")
    with pytest.raises(ExportError) as info:
        export_rsl_rl(tmp_path / "c.pt", tmp_path / "p.onnx", observations=observations)
    assert fragment in str(info.value)
    assert not (tmp_path / "p.onnx").exists()


class _DiffersWhenExported(torch.nn.Module):
    """Adds 1e-3 to its output except while being exported: a parity failure on purpose."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(OBS_DIM, ACTION_DIM)

    def forward(self, obs: Any) -> Any:
        out = self.linear(obs)
        if torch.compiler.is_exporting() or torch.jit.is_tracing():
            return out
        return out + 1e-3


def test_parity_failure_raises_and_writes_nothing(tmp_path: Path) -> None:
    """A model whose ONNX export differs by more than the tolerance is not written."""
    target = tmp_path / "bad.onnx"
    with pytest.raises(ParityError, match=r"parity FAILED.*1e-05"):
        export_module(_DiffersWhenExported(), OBS_DIM, target)
    assert list(tmp_path.iterdir()) == []


def test_parity_difference_is_absolute_below_one_and_relative_above() -> None:
    """|diff| / max(1, |reference|): float32 rounding of a large output is not an error."""
    small = np.array([0.5, -0.25])
    assert parity_difference(small, small + 2e-6) == pytest.approx((2e-6, 2e-6))
    large = np.array([30.0, -0.1])
    got = np.array([30.0 + 3e-5, -0.1])
    assert parity_difference(large, got) == pytest.approx((3e-5, 1e-6))
    assert parity_difference(large, np.array([np.nan, -0.1])) == (float("inf"), float("inf"))
    assert parity_difference(np.zeros((0, 2)), np.zeros((0, 2))) == (0.0, 0.0)


class _LargeGains(torch.nn.Module):
    """An unsquashed linear controller with gains up to 30 (outputs in the hundreds)."""

    def __init__(self, wrong_by: float = 0.0) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(OBS_DIM, ACTION_DIM)
        self.wrong_by = wrong_by
        with torch.no_grad():
            gains = torch.linspace(-30.0, 30.0, OBS_DIM * ACTION_DIM).reshape(ACTION_DIM, OBS_DIM)
            self.linear.weight.copy_(gains)

    def forward(self, obs: Any) -> Any:
        out = self.linear(obs * 4.0)
        if torch.compiler.is_exporting() or torch.jit.is_tracing():
            return out
        return out * (1.0 + self.wrong_by)


def test_large_outputs_pass_on_the_scaled_figure_and_real_errors_still_fail(
    tmp_path: Path,
) -> None:
    """A correct export of large outputs passes; a 0.1 % relative error on them does not."""
    result = export_module(_LargeGains(), OBS_DIM, tmp_path / "ok.onnx")
    assert result.parity.passed
    assert result.parity.max_scaled_diff <= min(1e-5, result.parity.max_abs_diff)
    assert result.metadata["tailguard.parity_max_scaled_diff"] == repr(
        result.parity.max_scaled_diff
    )
    with pytest.raises(ParityError, match=r"parity FAILED.*scaled"):
        export_module(_LargeGains(wrong_by=1e-3), OBS_DIM, tmp_path / "bad.onnx")
    assert not (tmp_path / "bad.onnx").exists()


def test_generic_module_export_with_lstm_state(tmp_path: Path) -> None:
    """Any torch module with the RSL-RL recurrent signature exports with h/c state names."""

    class Policy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = torch.nn.LSTM(OBS_DIM, 4, 1)
            self.head = torch.nn.Linear(4, 2)

        def forward(self, obs: Any, h: Any, c: Any) -> Any:
            y, (h2, c2) = self.rnn(obs.unsqueeze(0), (h, c))
            return self.head(y.squeeze(0)), h2, c2

    result = export_module(
        Policy(), OBS_DIM, tmp_path / "p.onnx", recurrent=RecurrentSpec("lstm", 1, 4)
    )
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["obs", "h_in", "c_in"]
    assert [o.name for o in session.get_outputs()] == ["actions", "h_out", "c_out"]
    assert result.metadata["tailguard.action_dim"] == "2"


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"rnn_type": "rnn", "num_layers": 1, "hidden_size": 4}, "unknown recurrent type"),
        ({"rnn_type": "gru", "num_layers": 0, "hidden_size": 4}, "num_layers >= 1"),
    ],
)
def test_bad_recurrent_spec_is_refused(kwargs: dict[str, Any], fragment: str) -> None:
    """RecurrentSpec validates its fields on construction."""
    with pytest.raises(ExportError, match=fragment):
        RecurrentSpec(**kwargs)


def test_missing_output_directory_is_refused(tmp_path: Path) -> None:
    """Exporting into a directory that does not exist raises ExportError naming it."""
    with pytest.raises(ExportError, match="does not exist"):
        export_module(torch.nn.Linear(OBS_DIM, 2), OBS_DIM, tmp_path / "nope" / "p.onnx")


def test_any_module_with_example_input(tmp_path: Path) -> None:
    """A plain torch module plus example observations exports; the examples join parity."""
    module = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    example = torch.randn(6, 4)
    result = export_module(module, example, tmp_path / "p.onnx", exporter="legacy")
    assert result.parity.recorded_observations == 6
    assert result.metadata["tailguard.obs_dim"] == "4"
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = module(example).numpy()
    got = session.run(None, {"obs": example.numpy()})[0]
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_exporter_choice_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    """auto tries legacy, then dynamo when onnxscript is installed; unknown names refused."""
    import importlib.util

    from tailguard.adapters.export import exporter_candidates, resolve_exporter
    from tailguard.errors import MissingExtraError

    assert resolve_exporter("legacy") == "legacy"
    assert exporter_candidates("auto") == ("legacy", "dynamo")
    assert exporter_candidates("dynamo") == ("dynamo",)
    with pytest.raises(ExportError, match="valid choices are"):
        resolve_exporter("fast")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "onnxscript" else real_find_spec(name, *a),
    )
    assert exporter_candidates("auto") == ("legacy",)
    with pytest.raises(MissingExtraError, match="onnxscript"):
        resolve_exporter("dynamo")


def test_auto_falls_back_to_dynamo_when_legacy_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A legacy export failure under auto is retried with dynamo, which is then recorded."""
    from tailguard.adapters import export

    real = export._torch_export
    tried: list[str] = []

    def failing_legacy(module: Any, obs_dim: int, rec: Any, target: Path, name: str, op: int):
        tried.append(name)
        if name == "legacy":
            raise ExportError("torch.onnx.export failed (legacy exporter): simulated")
        return real(module, obs_dim, rec, target, name, op)

    monkeypatch.setattr(export, "_torch_export", failing_legacy)
    module = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    result = export.export_module(module, 4, tmp_path / "p.onnx")
    assert tried == ["legacy", "dynamo"]
    assert result.metadata["tailguard.exporter"] == "dynamo"
    assert result.parity.passed


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_external_data_is_folded_into_one_file(tmp_path: Path) -> None:
    """A model whose weights sit in a side .onnx.data file is read back fully self-contained."""
    from tailguard.adapters.export import _fold_to_single_file

    module = torch.nn.Linear(OBS_DIM, ACTION_DIM)
    path = tmp_path / "split.onnx"
    torch.onnx.export(module, (torch.zeros(1, OBS_DIM),), str(path), dynamo=False)
    model = onnx.load(str(path))
    onnx.save(
        model, str(path), save_as_external_data=True, location="split.onnx.data", size_threshold=0
    )
    assert (tmp_path / "split.onnx.data").is_file()
    assert any(
        uses_external_data(t)
        for t in onnx.load(str(path), load_external_data=False).graph.initializer
    )
    folded = _fold_to_single_file(path, {"tailguard.test": "1"})
    assert not any(uses_external_data(t) for t in folded.graph.initializer)
    assert folded.ir_version <= 10
    (tmp_path / "split.onnx.data").unlink()
    session = ort.InferenceSession(folded.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.ones((1, OBS_DIM), np.float32)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(
        session.run(None, {session.get_inputs()[0].name: x})[0], expected, atol=1e-6
    )


def test_exported_model_carries_no_build_paths(tmp_path) -> None:
    """The exported file holds no stack traces or absolute paths of the exporting machine."""
    import os

    import torch

    from tailguard.adapters.export import export_module

    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ELU(), torch.nn.Linear(8, 2))
    out = tmp_path / "m.onnx"
    export_module(net, 4, out)
    data = out.read_bytes()
    assert os.getcwd().encode() not in data and b"stack_trace" not in data
    assert str(tmp_path).encode() not in data

"""``tailguard chunks``: the chunk execution audit from the command line (real MuJoCo, the
shipped Hopper chunk policy, a couple of paired episodes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tailguard.tools.cli import main

pytest.importorskip("mujoco")
pytest.importorskip("scipy")
POLICY = Path(__file__).resolve().parents[2] / "guard" / "policies" / "hopper_chunk.onnx"


def test_chunks_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "chunks.json"
    args = ["chunks", "--policy", str(POLICY), "--episodes", "2", "--resamples", "100"]
    rc = main([*args, "--profile", "exp_delta_tail_capped", "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "exp_delta_tail_capped/naive_async" in text and "tolerated" in text
    result = json.loads(out.read_text())
    assert result["settings"]["horizon"] == 8 and result["settings"]["execute_horizon"] == 5
    section = result["chunks_sections"]["exp_delta_tail_capped"]
    assert section["max_delay_ticks"] == 2  # d p99 under the capped profile
    assert result["conditions"]["exp_delta_tail_capped/naive_async"]["p_violate"] == 0.0
    assert "nominal/guarded_fallback" not in result["conditions"]  # no --fallback given


def test_chunks_command_refuses_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["chunks", "--policy", str(POLICY), "--profile", "bogus:1"]) == 2
    assert "unknown profile kind" in capsys.readouterr().err
    assert main(["chunks", "--policy", str(tmp_path / "missing.onnx")]) == 2
    per_tick = POLICY.parent / "hopper_nominal.onnx"
    assert main(["chunks", "--policy", str(per_tick), "--episodes", "2"]) == 1
    assert "expected shape [batch, H, A]" in capsys.readouterr().err

"""Optional: checkpoints written by the real rsl-rl-lib give the same actions (skip if absent)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
rsl_rl = pytest.importorskip("rsl_rl")
tensordict = pytest.importorskip("tensordict")

from tailguard.adapters.rsl_rl_checkpoint import build_actor_module, load_rsl_rl_checkpoint  # noqa: E402

OBS_DIM, ACTION_DIM = 6, 2


def _real_actor(kind: str, std_type: str) -> Any:
    from rsl_rl.models import MLPModel, RNNModel

    obs = tensordict.TensorDict({"policy": torch.zeros(3, OBS_DIM)}, batch_size=[3])
    common: dict[str, Any] = {
        "obs": obs,
        "obs_groups": {"actor": ["policy"]},
        "obs_set": "actor",
        "output_dim": ACTION_DIM,
        "hidden_dims": [16, 12],
        "activation": "elu",
        "obs_normalization": True,
        "distribution_cfg": {
            "class_name": "GaussianDistribution",
            "init_std": 0.7,
            "std_type": std_type,
        },
    }
    if kind == "mlp":
        model = MLPModel(**common)
    else:
        model = RNNModel(**common, rnn_type=kind, rnn_hidden_dim=9, rnn_num_layers=2)
    # give the normalizer non-trivial statistics, as training would
    model.train()
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        batch = torch.randn(32, OBS_DIM, generator=gen) * 3 + 1
        model.update_normalization(tensordict.TensorDict({"policy": batch}, batch_size=[32]))
    return model.eval()


@pytest.mark.parametrize("kind", ["mlp", "lstm", "gru"])
@pytest.mark.parametrize("std_type", ["scalar", "log"])
def test_real_rsl_rl_checkpoint_matches(tmp_path: Path, kind: str, std_type: str) -> None:
    """A checkpoint saved the way rsl-rl-lib's runner saves it reproduces its actions."""
    real = _real_actor(kind, std_type)
    path = tmp_path / "model_0.pt"
    torch.save({"actor_state_dict": real.state_dict(), "iter": 0, "infos": None}, path)
    actor = load_rsl_rl_checkpoint(path)
    assert actor.spec.format_version == "5.x"
    assert actor.spec.recurrent == ("none" if kind == "mlp" else kind)
    assert actor.spec.hidden_sizes == (16, 12)
    ours = build_actor_module(actor)
    gen = torch.Generator().manual_seed(1)
    states: list[Any] = []
    if kind != "mlp":
        states = [torch.zeros(2, 4, 9) for _ in range(2 if kind == "lstm" else 1)]
    with torch.no_grad():
        for _ in range(12):
            obs = torch.randn(4, OBS_DIM, generator=gen) * 3 + 1
            expected = real(tensordict.TensorDict({"policy": obs}, batch_size=[4]))
            got = ours(obs, *states)
            if kind != "mlp":
                got, states = got[0], list(got[1:])
            np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=1e-6, rtol=0)

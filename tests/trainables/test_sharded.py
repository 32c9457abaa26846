"""Sharded checkpoints (``torch.distributed.checkpoint``) in one process: a round trip restores
the model and the optimizer exactly, and DCP's pickled metadata is read by an allowlist."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from stagetune.trainables.checkpoint import DCP_DIR, CorruptCheckpointError, is_sharded
from stagetune.trainables.sharded import load_sharded, save_sharded


def _model_and_optimizer(seed: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    # The last layer never steps: like a frozen or inactive block, it has no optimizer state.
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2, foreach=True)


def _step(model: nn.Module, opt: torch.optim.Optimizer, seed: int) -> float:
    torch.manual_seed(seed)
    model[2].weight.requires_grad_(seed > 1)
    loss = model(torch.randn(5, 8)).square().mean()
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach())


def test_round_trip_restores_model_and_optimizer_exactly(tmp_path: Path) -> None:
    model, opt = _model_and_optimizer(0)
    _step(model, opt, 1)
    save_sharded(tmp_path, model, opt)
    assert is_sharded(tmp_path)

    fresh, fresh_opt = _model_and_optimizer(7)
    state = load_sharded(tmp_path, fresh, fresh_opt)
    params = dict(fresh.named_parameters())
    for name, st in state.items():
        fresh_opt.state[params[name]] = st
    assert "2.weight" not in state  # no state was invented for a parameter that never stepped
    for (k, a), b in zip(model.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert [_step(model, opt, s) for s in (2, 3)] == [_step(fresh, fresh_opt, s) for s in (2, 3)]


class _RunsCode:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))

    marker = ""


def test_metadata_pickle_naming_anything_else_is_refused(tmp_path: Path) -> None:
    """DCP's own reader would unpickle this ``.metadata`` and run the command."""
    model, opt = _model_and_optimizer(0)
    _step(model, opt, 1)
    save_sharded(tmp_path, model, opt)
    marker = tmp_path / "pwned"
    _RunsCode.marker = str(marker)
    (tmp_path / DCP_DIR / ".metadata").write_bytes(pickle.dumps(_RunsCode()))
    with pytest.raises(CorruptCheckpointError, match="restricted unpickler"):
        load_sharded(tmp_path, *_model_and_optimizer(1))
    assert not marker.exists()

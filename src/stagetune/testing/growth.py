"""The growth-operator contract, as a pytest suite (subclass it; override ``operator``).

An operator rewrites the new blocks ``[old, new)`` of a staged model in place and nothing else:
old blocks keep their weights bit for bit, no new block shares storage with another block, the
grown model computes finite logits, the result is a pure function of the seed, and depths
outside ``1 <= old < new <= L`` are refused with ``ValueError``. Each test runs on a GPT-2 and a
Llama model (override ``family`` to choose others).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from stagetune.models import GrowthOperator, StagedModel
from stagetune.testing.models import tiny_model, token_batch

__all__ = ["GrowthOperatorSuite", "assert_state_equal", "block_state"]


def block_state(model: StagedModel, i: int) -> dict[str, torch.Tensor]:
    """A copy of block ``i``'s parameters and buffers."""
    return {k: v.clone() for k, v in model.blocks[i].state_dict().items()}


def _storages(module: nn.Module) -> set[int]:
    return {t.untyped_storage().data_ptr() for t in module.state_dict().values()}


def assert_state_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """Two block states are equal bit for bit."""
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


class GrowthOperatorSuite:
    """Tests every growth operator passes. Override :meth:`operator`."""

    @pytest.fixture
    def operator(self) -> GrowthOperator:
        """The operator under test."""
        raise NotImplementedError("override the `operator` fixture with your GrowthOperator")

    @pytest.fixture(params=["gpt2", "llama"])
    def family(self, request: pytest.FixtureRequest) -> str:
        """The model family the operator grows."""
        return str(request.param)

    def test_has_a_name(self, operator: GrowthOperator) -> None:
        assert isinstance(operator, GrowthOperator)
        assert isinstance(operator.name, str) and operator.name

    def test_grows_new_blocks_only(self, operator: GrowthOperator, family: str) -> None:
        m = tiny_model(family, n_layer=6)
        m.set_active_depth(2)
        # Move the old blocks off their initial state, so a copy is told from a re-init.
        with torch.no_grad():
            for p in m.blocks[:2].parameters():
                p.add_(torch.randn_like(p) * 0.01)
        old = [block_state(m, i) for i in range(2)]
        m.grow(5, operator, seed=3)
        assert m.active_depth == 5
        for i in range(2):
            assert_state_equal(block_state(m, i), old[i])
        old_ptrs = set().union(*(_storages(m.blocks[i]) for i in range(2)))
        for i in range(2, 5):
            new_ptrs = _storages(m.blocks[i])
            assert not new_ptrs & old_ptrs, f"block {i} shares storage with an old block"
            for j in range(2, 5):
                if j != i:
                    assert not new_ptrs & _storages(m.blocks[j])
        x, _ = token_batch()
        assert torch.isfinite(m(x).logits).all()
        # Growth resets the phase: every active block trains, inactive ones do not.
        assert m.trainable_from == 0
        assert all(p.requires_grad for p in m.blocks[:5].parameters())
        assert not any(p.requires_grad for p in m.blocks[5].parameters())

    def test_refuses_bad_depths(self, operator: GrowthOperator) -> None:
        m = tiny_model("gpt2", n_layer=4)
        m.set_active_depth(2)
        for bad in (2, 1, 5):
            with pytest.raises(ValueError, match="depth"):
                m.grow(bad, operator, seed=0)
        assert m.active_depth == 2
        with pytest.raises(ValueError):
            operator.apply(m, 3, 3, torch.Generator())
        m.grow(4, operator, seed=0)
        with pytest.raises(ValueError):
            m.grow(5, operator, seed=0)

    def test_is_deterministic_in_seed(self, operator: GrowthOperator, family: str) -> None:
        states = []
        for _ in range(2):
            m = tiny_model(family, n_layer=6)
            m.set_active_depth(3)
            m.grow(6, operator, seed=11)
            states.append(m.state_dict())
        for key in states[0]:
            torch.testing.assert_close(states[0][key], states[1][key], rtol=0, atol=0)

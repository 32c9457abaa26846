"""Growth operators: the conformance suite on every registered operator, plus per-operator facts."""

from __future__ import annotations

import pytest
import torch

from stagetune.errors import ConfigError
from stagetune.models import (
    GrowthOperator,
    StagedModel,
    get_growth_operator,
    register_growth_operator,
)
from stagetune.registry import GROWTH_OPERATORS
from stagetune.testing.growth import GrowthOperatorSuite, assert_state_equal, block_state
from stagetune.testing.models import tiny_model, token_batch


def make(family: str = "gpt2", n_layer: int = 6) -> StagedModel:
    return tiny_model(family, n_layer=n_layer)


# ---------------------------------------------------------------------------------------------
# conformance: every registered operator passes the suite plugin authors run


class TestRegisteredOperators(GrowthOperatorSuite):
    @pytest.fixture(params=GROWTH_OPERATORS.names())
    def operator(self, request: pytest.FixtureRequest) -> GrowthOperator:
        op = get_growth_operator(request.param)
        assert op.name == request.param  # registered under its own name
        return op


def test_registry_and_unknown_name() -> None:
    assert set(GROWTH_OPERATORS) == {"random", "copy_top", "stack", "copy_middle", "zero"}
    assert get_growth_operator("stack") is GROWTH_OPERATORS.get("stack")
    with pytest.raises(ConfigError) as err:
        get_growth_operator("copytop")
    assert err.value.field == "schedule.growth"
    assert "did you mean 'copy_top'" in err.value.fix
    m = make("gpt2")
    m.set_active_depth(2)
    with pytest.raises(ConfigError):
        m.grow(3, "zeros", seed=0)


def test_register_growth_operator() -> None:
    class Noop(GrowthOperator):
        name = "noop"

        def apply(self, model: StagedModel, old: int, new: int, g: torch.Generator) -> None:
            pass

    op = Noop()
    with GROWTH_OPERATORS.isolated():
        assert register_growth_operator(op) is op and get_growth_operator("noop") is op
        with pytest.raises(ConfigError, match="registered already"):
            register_growth_operator(Noop())
        register_growth_operator(Noop(), replace=True)
        with pytest.raises(TypeError, match="not a GrowthOperator instance"):
            GROWTH_OPERATORS.register("bogus", object())
    assert "noop" not in GROWTH_OPERATORS


def test_custom_operator_instance() -> None:
    class Noop(GrowthOperator):
        name = "noop"

        def apply(self, model: StagedModel, old: int, new: int, g: torch.Generator) -> None:
            self.seen = (old, new)

    m = make("gpt2")
    m.set_active_depth(1)
    op = Noop()
    m.grow(3, op, seed=0)
    assert op.seen == (1, 3) and m.active_depth == 3


# ---------------------------------------------------------------------------------------------
# per-operator semantics


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_zero_preserves_the_function(family: str) -> None:
    m = make(family)
    m.set_active_depth(3)
    x, _ = token_batch()
    with torch.no_grad():
        before = m(x).logits
        m.grow(6, "zero", seed=0)
        after = m(x).logits
    torch.testing.assert_close(after, before)
    # The new blocks are not all-zero: only the residual output projections are.
    new = m.blocks[3]
    zeroed = {
        id(p) for proj in m.family.residual_output_projections(new) for p in proj.parameters()
    }
    assert zeroed and all(p.abs().sum() == 0 for p in new.parameters() if id(p) in zeroed)
    assert any(p.abs().sum() > 0 for p in new.parameters() if id(p) not in zeroed)


@pytest.mark.parametrize(
    ("name", "old", "new", "sources"),
    [
        ("copy_top", 3, 5, [1, 2]),
        ("copy_top", 2, 5, [1, 0, 1]),  # Δ > old: the stack repeats cyclically downwards
        ("copy_top", 1, 3, [0, 0]),
        ("stack", 3, 5, [0, 1]),
        ("stack", 3, 6, [0, 1, 2]),
        ("stack", 2, 5, [0, 1, 0]),
        ("copy_middle", 4, 6, [1, 2]),
        ("copy_middle", 5, 6, [2]),
        ("copy_middle", 3, 5, [0, 1]),
        ("copy_middle", 2, 5, [1, 0, 1]),
    ],
)
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_copy_operators_copy_the_documented_blocks(
    family: str, name: str, old: int, new: int, sources: list[int]
) -> None:
    m = make(family)
    m.set_active_depth(old)
    with torch.no_grad():
        for p in m.blocks[:old].parameters():
            p.add_(torch.randn_like(p))
    before = [block_state(m, i) for i in range(old)]
    m.grow(new, name, seed=0)
    for j, src in enumerate(sources):
        assert_state_equal(block_state(m, old + j), before[src])


def test_random_uses_the_family_init_scheme() -> None:
    m = make("gpt2", n_layer=6)
    m.set_active_depth(2)
    with torch.no_grad():
        for p in m.blocks[2:].parameters():
            p.fill_(7.0)
    m.grow(6, "random", seed=5)
    new = m.blocks[2]
    torch.testing.assert_close(new.ln_1.weight, torch.ones(32))
    torch.testing.assert_close(new.attn.c_attn.bias, torch.zeros(96))
    # GPT-2 scales residual projections by 1/sqrt(2L); plain matrices use std 0.02.
    proj = torch.cat([m.blocks[i].attn.c_proj.weight.flatten() for i in range(2, 6)])
    plain = torch.cat([m.blocks[i].attn.c_attn.weight.flatten() for i in range(2, 6)])
    assert abs(plain.std().item() - 0.02) < 0.002
    assert abs(proj.std().item() - 0.02 / (12**0.5)) < 0.001
    # Different seeds, different blocks; new blocks differ from each other.
    other = make("gpt2", n_layer=6)
    other.set_active_depth(2)
    other.grow(6, "random", seed=6)
    assert not torch.equal(other.blocks[2].attn.c_attn.weight, new.attn.c_attn.weight)
    assert not torch.equal(m.blocks[3].attn.c_attn.weight, new.attn.c_attn.weight)

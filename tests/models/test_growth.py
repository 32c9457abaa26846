"""Growth operators: a conformance suite over every registered operator, plus per-operator facts."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from stagetune.config import ModelConfig
from stagetune.errors import ConfigError
from stagetune.models import (
    GROWTH_OPERATORS,
    GrowthOperator,
    StagedModel,
    build_model,
    get_growth_operator,
)

VOCAB = 128
SEQ = 16


def make(family: str = "gpt2", n_layer: int = 6, seed: int = 0, **kw: Any) -> StagedModel:
    extra: dict[str, Any] = {"n_kv_head": 2} if family == "llama" else {}
    extra.update(kw)
    cfg = ModelConfig(
        family=family,
        n_layer=n_layer,
        n_embd=32,
        n_head=4,
        context_length=SEQ,
        attn_implementation="eager",
        **extra,
    )
    return build_model(cfg, vocab_size=VOCAB, seed=seed)


def tokens(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(seed))


def block_state(model: StagedModel, i: int) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.blocks[i].state_dict().items()}


def assert_state_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def storages(module: torch.nn.Module) -> set[int]:
    return {t.untyped_storage().data_ptr() for t in module.state_dict().values()}


# ---------------------------------------------------------------------------------------------
# conformance: every registered operator


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("name", sorted(GROWTH_OPERATORS))
def test_operator_conformance(name: str, family: str) -> None:
    m = make(family)
    m.set_active_depth(2)
    # Simulate training of the old blocks so copies are distinguishable from the initial state.
    with torch.no_grad():
        for p in m.blocks[:2].parameters():
            p.add_(torch.randn_like(p) * 0.01)
    old = [block_state(m, i) for i in range(2)]
    m.grow(5, name, seed=3)
    assert m.active_depth == 5
    for i in range(2):
        assert_state_equal(block_state(m, i), old[i])
    old_ptrs = set().union(*(storages(m.blocks[i]) for i in range(2)))
    for i in range(2, 5):
        new_ptrs = storages(m.blocks[i])
        assert not new_ptrs & old_ptrs, f"block {i} shares storage with an old block"
        for j in range(2, 5):
            if j != i:
                assert not new_ptrs & storages(m.blocks[j])
    out = m(tokens())
    assert torch.isfinite(out.logits).all()
    # Growth resets the phase: every active block trains.
    assert m.trainable_from == 0
    assert all(p.requires_grad for p in m.blocks[:5].parameters())
    assert not any(p.requires_grad for p in m.blocks[5].parameters())


@pytest.mark.parametrize("name", sorted(GROWTH_OPERATORS))
def test_operator_preconditions(name: str) -> None:
    m = make("gpt2", n_layer=4)
    m.set_active_depth(2)
    for bad in (2, 1, 5):
        with pytest.raises(ValueError, match="depth"):
            m.grow(bad, name, seed=0)
    assert m.active_depth == 2
    op = GROWTH_OPERATORS[name]
    assert isinstance(op, GrowthOperator) and op.name == name
    with pytest.raises(ValueError):
        op.apply(m, 3, 3, torch.Generator())
    m.grow(4, name, seed=0)
    with pytest.raises(ValueError):
        m.grow(5, name, seed=0)


@pytest.mark.parametrize("name", sorted(GROWTH_OPERATORS))
def test_operator_is_deterministic_in_seed(name: str) -> None:
    states = []
    for _ in range(2):
        m = make("llama")
        m.set_active_depth(3)
        m.grow(6, name, seed=11)
        states.append(m.state_dict())
    for key in states[0]:
        torch.testing.assert_close(states[0][key], states[1][key], rtol=0, atol=0)


def test_registry_and_unknown_name() -> None:
    assert set(GROWTH_OPERATORS) == {"random", "copy_top", "stack", "copy_middle", "zero"}
    assert get_growth_operator("stack") is GROWTH_OPERATORS["stack"]
    with pytest.raises(ConfigError) as err:
        get_growth_operator("copytop")
    assert err.value.field == "schedule.growth"
    assert "did you mean 'copy_top'" in err.value.fix
    m = make("gpt2")
    m.set_active_depth(2)
    with pytest.raises(ConfigError):
        m.grow(3, "zeros", seed=0)


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
    x = tokens()
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

"""The analytic FLOPs model (compute.py): each step's work, the conventions, and the standard
convention vs FlopCounterMode on the real model.

The models use eager attention on purpose: on CPU, sdpa dispatches to
``aten._scaled_dot_product_flash_attention_for_cpu``, which ``FlopCounterMode`` has no formula
for (torch 2.13), so the attention matmuls would silently count as 0. Eager attention runs them
as ``bmm`` (forward and backward), which the counter does count. The embedding lookup, softmax,
norms and the loss are not matmuls and count 0 on both sides.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from stagetune.compute import ModelDims, StepWork, forward_flops, step_flops, step_work
from stagetune.config import ModelConfig
from stagetune.errors import ConfigError
from stagetune.models import StagedModel, build_model
from stagetune.registry import CONVENTIONS

VOCAB = 128
SEQ = 16
BATCH = 2
TOKENS = BATCH * SEQ

FAMILIES: dict[str, dict[str, Any]] = {
    "gpt2": {"family": "gpt2", "tie_embeddings": True},
    # Grouped-query attention and an untied head exercise the Llama k/v and head terms.
    "llama": {"family": "llama", "n_kv_head": 2, "tie_embeddings": False},
}

# (name, phase, depth, prev_depth, freeze_policy): the model is grown prev_depth -> depth.
CASES = [
    ("baseline", "phase2", 4, 0, "none"),
    ("phase1_new_only", "phase1", 3, 2, "new_only"),
    ("phase1_paper", "phase1", 3, 2, "paper"),
    ("phase1_new_only_top", "phase1", 4, 1, "new_only"),
    ("phase2", "phase2", 3, 2, "new_only"),
    ("continual", "continual", 4, 4, "new_only"),
]


def make(family: str) -> StagedModel:
    cfg = ModelConfig(
        n_layer=4,
        n_embd=32,
        n_head=4,
        context_length=SEQ,
        attn_implementation="eager",
        **FAMILIES[family],
    )
    return build_model(cfg, vocab_size=VOCAB, seed=0)


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    seq = torch.randint(0, VOCAB, (BATCH, SEQ + 1), generator=torch.Generator().manual_seed(0))
    return seq[:, :-1], seq[:, 1:]


def counted(fn: Any) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize(("name", "phase", "depth", "prev", "policy"), CASES)
def test_step_flops_match_counter(
    family: str, name: str, phase: str, depth: int, prev: int, policy: str
) -> None:
    m = make(family)
    if prev and prev < depth:
        m.set_active_depth(prev)
        m.grow(depth, "random", seed=0)
    else:
        m.set_active_depth(depth)
    trainable_from = prev if phase == "phase1" else 0
    m.configure_phase(
        trainable_from=trainable_from, freeze_policy=policy if trainable_from else "none"
    )
    x, y = batch()

    def step() -> None:
        m(x, labels=y).loss.backward()

    measured = counted(step)
    work = step_work(phase=phase, depth=depth, prev_depth=prev, freeze_policy=policy)
    analytic = step_flops(m.dims(SEQ), work, tokens=TOKENS)
    assert measured > 0
    assert analytic == pytest.approx(measured, rel=0.02), (name, analytic, measured)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("depth", [1, 3, 4])
def test_forward_flops_match_counter(family: str, depth: int) -> None:
    m = make(family)
    m.set_active_depth(depth)
    m.eval()
    x, _ = batch()

    def forward() -> None:
        with torch.no_grad():
            m(x)

    measured = counted(forward)
    analytic = forward_flops(m.dims(SEQ), depth=depth, tokens=TOKENS)
    assert analytic == pytest.approx(measured, rel=0.02)


def test_freezing_saves_what_the_model_says() -> None:
    """new_only must measurably cost less than paper, which costs less than no freezing."""
    costs = {}
    for policy in ("new_only", "paper", "none"):
        m = make("gpt2")
        m.set_active_depth(2)
        m.grow(4, "random", seed=0)
        if policy != "none":
            m.configure_phase(trainable_from=2, freeze_policy=policy)
        x, y = batch()
        costs[policy] = counted(lambda m=m, x=x, y=y: m(x, labels=y).loss.backward())
    assert costs["new_only"] < costs["paper"] < costs["none"]


# -- step work and conventions ----------------------------------------------------------------

DIMS = ModelDims(
    n_layer=12,
    n_embd=768,
    block_matmul_params=12 * 768**2,  # GPT-2 124M: 4 d² attention + 8 d² MLP
    vocab_size=50304,
    seq_len=1024,
)
TPS = 524_288


def test_step_work_per_freeze_policy() -> None:
    assert step_work(phase="phase1", depth=8, prev_depth=6, freeze_policy="new_only") == StepWork(
        active_depth=8, forward_only_blocks=6, activation_grad_blocks=0, trainable_blocks=2
    )
    assert (
        step_work(
            phase="phase1", depth=8, prev_depth=6, freeze_policy="paper"
        ).activation_grad_blocks
        == 6
    )
    full = step_work(phase="phase2", depth=8, prev_depth=6, freeze_policy="paper")
    assert full.trainable_blocks == 8
    # new_only saves the backward of the frozen prefix; paper only saves its weight grads.
    f = {
        pol: step_flops(
            DIMS, step_work(phase="phase1", depth=8, prev_depth=6, freeze_policy=pol), tokens=TPS
        )
        for pol in ("new_only", "paper")
    }
    full_f = step_flops(DIMS, full, tokens=TPS)
    assert f["new_only"] < f["paper"] < full_f
    # The paper convention counts frozen backward as 0 for both policies.
    paper_conv = {
        pol: step_flops(
            DIMS,
            step_work(phase="phase1", depth=8, prev_depth=6, freeze_policy=pol),
            tokens=TPS,
            convention="paper",
        )
        for pol in ("new_only", "paper")
    }
    assert paper_conv["new_only"] == paper_conv["paper"]


def test_conventions_are_registered() -> None:
    assert CONVENTIONS.names() == ["paper", "standard"]
    work = step_work(phase="phase1", depth=8, prev_depth=6, freeze_policy="paper")
    with pytest.raises(ConfigError, match=r"budget\.convention") as err:
        step_flops(DIMS, work, tokens=TPS, convention="metric")
    assert "standard" in err.value.fix
    with pytest.raises(ValueError, match="unknown phase"):
        step_work(phase="phase3", depth=8, prev_depth=6, freeze_policy="paper")
    # Every step that does not grow trains every active block, whatever the policy.
    for phase, prev in (("phase2", 6), ("continual", 8), ("phase1", 0)):
        assert step_work(phase=phase, depth=8, prev_depth=prev, freeze_policy="new_only") == (
            StepWork.all_trainable(8)
        )

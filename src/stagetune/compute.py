"""Analytic FLOPs accounting for staged training, in two conventions.

``standard``: every matmul counts 2·m·n·k. Per block and token the forward pass costs the
linear layers plus the attention matmuls (QKᵀ and PV over the full T×T, as the kernels compute
them); the LM head costs 2·d·V per token; the embedding lookup costs nothing. In the backward
pass a trainable linear costs 2× its forward (input and weight gradients), a frozen linear that
autograd runs through costs 1× (input gradient only), attention matmuls cost 2× in any block
autograd runs through (both operands are activations), and blocks run under ``no_grad`` cost
nothing. This is what ``torch.utils.flop_counter.FlopCounterMode`` measures on the real model.

``paper`` (arXiv 2411.18700): a layer's forward counts c, a trainable layer's backward also c,
a frozen layer's backward 0; embeddings and the LM head are ignored. We take c as the block's
standard forward FLOPs so both conventions share a unit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from stagetune.freeze import StepWork, get_freeze_policy
from stagetune.registry import CONVENTIONS

__all__ = [
    "ModelDims",
    "StepWork",
    "block_forward_flops",
    "forward_flops",
    "step_flops",
    "step_work",
]

PHASES = ("phase1", "phase2", "continual")


@dataclass(frozen=True, kw_only=True)
class ModelDims:
    """The shapes that determine a transformer's FLOPs.

    Built by the model family's adapter (:meth:`stagetune.models.FamilyAdapter.dims`), which
    knows what matmuls a block of its family runs; this module needs no model code.
    """

    n_layer: int
    n_embd: int
    block_matmul_params: int
    """Weights of the matmuls one block applies to every token (its linear layers): a block's
    linear forward costs 2 × this per token."""
    vocab_size: int
    seq_len: int


def step_work(*, phase: str, depth: int, prev_depth: int, freeze_policy: str) -> StepWork:
    """The :class:`StepWork` of a step in ``phase`` of a stage growing ``prev_depth`` → ``depth``.

    Phase 1 of a stage that grows is the freeze policy's to describe; every other step trains
    every active block.
    """
    if phase not in PHASES:
        raise ValueError(f"unknown phase {phase!r}; expected one of {PHASES}")
    if phase != "phase1" or prev_depth == 0:
        return StepWork.all_trainable(depth)
    return get_freeze_policy(freeze_policy).phase1_work(depth=depth, prev_depth=prev_depth)


def _linear_flops_per_token(dims: ModelDims) -> float:
    return 2.0 * dims.block_matmul_params


def _attention_flops_per_token(dims: ModelDims) -> float:
    # QKᵀ and PV: each 2·T·d per query token (full T×T, as the kernels compute it).
    return 4.0 * dims.seq_len * dims.n_embd


def block_forward_flops(dims: ModelDims, *, tokens: int) -> float:
    """Forward FLOPs of one transformer block over ``tokens`` tokens (the paper's c)."""
    return tokens * (_linear_flops_per_token(dims) + _attention_flops_per_token(dims))


def _head_flops_per_token(dims: ModelDims) -> float:
    return 2.0 * dims.n_embd * dims.vocab_size


def forward_flops(dims: ModelDims, *, depth: int, tokens: int) -> float:
    """Forward FLOPs (standard convention) of the model at ``depth`` — e.g. an eval pass."""
    return depth * block_forward_flops(dims, tokens=tokens) + tokens * _head_flops_per_token(dims)


def step_flops(
    dims: ModelDims, work: StepWork, *, tokens: int, convention: str = "standard"
) -> float:
    """Training FLOPs of one optimizer step over ``tokens`` tokens, counted by ``convention``
    (a name in :data:`stagetune.registry.CONVENTIONS`)."""
    count: Callable[[ModelDims, StepWork, int], float] = CONVENTIONS.get(convention)
    return count(dims, work, tokens)


@CONVENTIONS.register("standard")
def _standard_step_flops(dims: ModelDims, work: StepWork, tokens: int) -> float:
    lin = _linear_flops_per_token(dims)
    attn = _attention_flops_per_token(dims)
    head = _head_flops_per_token(dims)
    fwd = work.active_depth * (lin + attn) + head
    bwd = (
        work.trainable_blocks * (2 * lin + 2 * attn)
        + work.activation_grad_blocks * (lin + 2 * attn)
        + (2 * head if work.head_trainable else head)
    )
    return tokens * (fwd + bwd)


@CONVENTIONS.register("paper")
def _paper_step_flops(dims: ModelDims, work: StepWork, tokens: int) -> float:
    c = block_forward_flops(dims, tokens=tokens)
    return c * (work.active_depth + work.trainable_blocks)

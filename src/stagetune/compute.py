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

from dataclasses import dataclass

from stagetune.config import ModelConfig
from stagetune.errors import ConfigError

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
    """The shapes that determine a transformer's FLOPs."""

    family: str
    n_layer: int
    n_embd: int
    n_head: int
    n_kv_head: int
    ffn_size: int
    vocab_size: int
    seq_len: int

    @classmethod
    def from_model_config(cls, cfg: ModelConfig, *, vocab_size: int, seq_len: int) -> ModelDims:
        return cls(
            family=cfg.family,
            n_layer=cfg.n_layer,
            n_embd=cfg.n_embd,
            n_head=cfg.n_head,
            n_kv_head=cfg.kv_heads,
            ffn_size=cfg.ffn_size,
            vocab_size=cfg.vocab_size or vocab_size,
            seq_len=seq_len,
        )

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


@dataclass(frozen=True, kw_only=True)
class StepWork:
    """What one training step does to each part of the model.

    The active blocks split, bottom to top, into ``forward_only_blocks`` (run under no_grad),
    ``activation_grad_blocks`` (frozen, but autograd passes through them to trainable
    embeddings) and ``trainable_blocks`` (compute weight gradients).
    """

    active_depth: int
    forward_only_blocks: int
    activation_grad_blocks: int
    trainable_blocks: int
    head_trainable: bool = True

    def __post_init__(self) -> None:
        parts = self.forward_only_blocks + self.activation_grad_blocks + self.trainable_blocks
        if (
            parts != self.active_depth
            or min(self.forward_only_blocks, self.activation_grad_blocks, self.trainable_blocks) < 0
        ):
            raise ValueError(f"inconsistent StepWork: {self}")


def step_work(*, phase: str, depth: int, prev_depth: int, freeze_policy: str) -> StepWork:
    """The :class:`StepWork` of a step in ``phase`` of a stage growing ``prev_depth`` → ``depth``."""
    if phase not in PHASES:
        raise ValueError(f"unknown phase {phase!r}; expected one of {PHASES}")
    if phase != "phase1" or prev_depth == 0:
        return StepWork(
            active_depth=depth,
            forward_only_blocks=0,
            activation_grad_blocks=0,
            trainable_blocks=depth,
        )
    new = depth - prev_depth
    if freeze_policy == "new_only":
        return StepWork(
            active_depth=depth,
            forward_only_blocks=prev_depth,
            activation_grad_blocks=0,
            trainable_blocks=new,
        )
    if freeze_policy == "paper":
        return StepWork(
            active_depth=depth,
            forward_only_blocks=0,
            activation_grad_blocks=prev_depth,
            trainable_blocks=new,
        )
    if freeze_policy == "none":
        raise ValueError("freeze policy 'none' has no phase 1")
    raise ConfigError("schedule.freeze_policy", freeze_policy, "use new_only, paper or none")


def _linear_flops_per_token(dims: ModelDims) -> float:
    d = dims.n_embd
    kv = dims.n_kv_head * dims.head_dim
    if dims.family == "llama":
        # q, k, v, o projections; gated MLP has three matrices.
        params = d * d + 2 * d * kv + d * d + 3 * d * dims.ffn_size
    else:
        params = 3 * d * d + d * d + 2 * d * dims.ffn_size
    return 2.0 * params


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
    """Training FLOPs of one optimizer step over ``tokens`` tokens."""
    if convention == "paper":
        c = block_forward_flops(dims, tokens=tokens)
        return c * (work.active_depth + work.trainable_blocks)
    if convention != "standard":
        raise ConfigError("budget.convention", convention, "use 'standard' or 'paper'")
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

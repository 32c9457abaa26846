"""Small models for the suites: a tiny config of any family, token batches, FLOP counting."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from stagetune.config import ModelConfig
from stagetune.models import StagedModel, build_model

__all__ = ["SEQ", "VOCAB", "count_flops", "tiny_config", "tiny_model", "token_batch"]

VOCAB = 128
"""Vocabulary of the suites' models."""
SEQ = 16
"""Sequence length (and context length) of the suites' models."""


def tiny_config(family: str, **overrides: Any) -> ModelConfig:
    """A 4-block, 32-wide config of ``family`` (grouped-query attention where the family has
    it), with eager attention: ``FlopCounterMode`` counts its matmuls, not sdpa's kernel."""
    kw: dict[str, Any] = {
        "family": family,
        "n_layer": 4,
        "n_embd": 32,
        "n_head": 4,
        "n_kv_head": 2,
        "context_length": SEQ,
        "attn_implementation": "eager",
    }
    kw.update(overrides)
    return ModelConfig(**kw)


def tiny_model(family: str, *, seed: int = 0, **overrides: Any) -> StagedModel:
    """:func:`tiny_config` built at full depth (``vocab_size`` :data:`VOCAB`)."""
    return build_model(tiny_config(family, **overrides), vocab_size=VOCAB, seed=seed)


def token_batch(seed: int = 0, *, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-token targets, shape (batch, :data:`SEQ`), deterministic in ``seed``."""
    g = torch.Generator().manual_seed(seed)
    seq = torch.randint(0, VOCAB, (batch, SEQ + 1), generator=g)
    return seq[:, :-1], seq[:, 1:]


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs ``torch.utils.flop_counter.FlopCounterMode`` measures while ``fn`` runs."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()

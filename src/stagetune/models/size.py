"""A model's parameter counts, total and non-embedding (the count scaling laws use).

The model is built on PyTorch's ``meta`` device: shapes only, no memory and no initialisation
work, so counting GPT-2 124M costs what counting a toy model does.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from stagetune.config import ModelConfig
from stagetune.models.family import get_family

__all__ = ["ParamCounts", "param_counts"]


class ParamCounts(NamedTuple):
    """Parameters of the full-depth model."""

    total: int
    """Every parameter once (a tied LM head shares the token embedding's)."""
    non_embedding: int
    """Without the embedding tables and an untied LM head."""


def param_counts(cfg: ModelConfig, *, vocab_size: int) -> ParamCounts:
    """The parameter counts of the model ``cfg`` describes, with ``vocab_size`` tokens."""
    family = get_family(cfg.family)
    with torch.device("meta"):
        model = family.build(cfg, vocab_size=cfg.vocab_size or vocab_size)
    params = {id(p): p for p in model.parameters()}
    embedding = {
        id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()
    }
    head = model.get_output_embeddings()
    if head is not None:
        embedding |= {id(p) for p in head.parameters()}
    total = sum(p.numel() for p in params.values())
    return ParamCounts(
        total=total, non_embedding=total - sum(params[i].numel() for i in embedding if i in params)
    )

"""The training regime: how long a model trains relative to its size.

Measured in training tokens per **non-embedding** parameter (every parameter but the token and
position embeddings; a tied head is the token embedding). The paper trained GPT-2 124M on
≈ 60 tokens per such parameter, compute-optimal training is ≈ 20 (Hoffmann et al. 2022), and a
laptop study sits near 0.1: incremental training's advantage depends on where a study is.
"""

from __future__ import annotations

from typing import Final

from stagetune.config import ModelConfig

__all__ = [
    "COMPUTE_OPTIMAL_TOKENS_PER_PARAM",
    "PAPER_TOKENS_PER_PARAM",
    "non_embedding_params",
    "tokens_per_param",
]

PAPER_TOKENS_PER_PARAM: Final = 60.0
"""arXiv 2411.18700: GPT-2 124M (≈ 85M non-embedding parameters) on ≈ 5.0B tokens."""
COMPUTE_OPTIMAL_TOKENS_PER_PARAM: Final = 20.0
"""Hoffmann et al. 2022 (Chinchilla)."""


def non_embedding_params(cfg: ModelConfig, *, vocab_size: int) -> int:
    """Parameters of the model ``cfg`` describes, less its embeddings, counted on the model
    itself (built on the meta device: no memory, no initialisation)."""
    import torch

    from stagetune.models.family import get_family

    adapter = get_family(cfg.family)
    with torch.device("meta"):
        model = adapter.model_class()(adapter.build_hf_config(cfg, vocab_size=vocab_size))
    embedded = {id(p) for m in adapter.embedding_modules(model) for p in m.parameters()}
    embedded |= {id(p) for p in adapter.lm_head(model).parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in embedded)


def tokens_per_param(tokens: float, cfg: ModelConfig, *, vocab_size: int) -> float:
    """Training tokens per non-embedding parameter of ``cfg``'s model."""
    return float(tokens) / non_embedding_params(cfg, vocab_size=vocab_size)

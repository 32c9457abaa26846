"""What a causal LM's forward pass returns, and the label value its loss ignores."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

__all__ = ["IGNORE_INDEX", "CausalLMOutput", "next_token_loss"]

IGNORE_INDEX = -100
"""Label value excluded from the loss (the Hugging Face / PyTorch convention)."""


class CausalLMOutput(NamedTuple):
    """Logits and, when labels were given, the mean next-token cross-entropy.

    A named tuple (not transformers' ``ModelOutput``) so DDP finds the tensors in it and the
    model layer needs no transformers import.
    """

    loss: torch.Tensor | None
    logits: torch.Tensor


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``logits`` (..., V) against ``targets`` already aligned with them
    (``targets[..., t]`` follows position ``t``), computed in float32, ignoring
    :data:`IGNORE_INDEX`."""
    return F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX
    )

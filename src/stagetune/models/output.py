"""What a causal LM's forward pass returns, and the label value its loss ignores."""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["IGNORE_INDEX", "CausalLMOutput"]

IGNORE_INDEX = -100
"""Label value excluded from the loss (the Hugging Face / PyTorch convention)."""


class CausalLMOutput(NamedTuple):
    """Logits and, when labels were given, the mean next-token cross-entropy.

    A named tuple (not transformers' ``ModelOutput``) so DDP finds the tensors in it and the
    model layer needs no transformers import.
    """

    loss: torch.Tensor | None
    logits: torch.Tensor

"""Family adapters: everything that differs between Hugging Face model families.

:class:`~stagetune.models.staged.StagedModel` runs its own loop over the active blocks, so it
needs to know, per family, how to build the HF model from a :class:`ModelConfig`, where the
embeddings / blocks / final norm / LM head live, what extra inputs a block takes (causal mask,
rotary position embeddings) and which linear layers write into the residual stream (for the
``zero`` growth operator). A new family is one subclass of :class:`FamilyAdapter` registered in
:data:`FAMILIES`.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.masking_utils import create_causal_mask

from stagetune.config import ModelConfig
from stagetune.errors import ConfigError, suggest

__all__ = ["FAMILIES", "BlockContext", "FamilyAdapter", "get_family", "register_family"]

BlockContext = dict[str, Any]
"""Keyword arguments every block call of one forward pass shares (mask, positions, rotary)."""


class FamilyAdapter(abc.ABC):
    """Family-specific access to a Hugging Face causal LM (stateless; one instance per family)."""

    name: ClassVar[str]
    """The ``model.family`` value this adapter serves."""

    @abc.abstractmethod
    def build_hf_config(self, cfg: ModelConfig, *, vocab_size: int) -> PretrainedConfig:
        """The HF config for ``cfg`` (all ``cfg.n_layer`` blocks, attention kernel from cfg)."""

    @abc.abstractmethod
    def model_class(self) -> type[PreTrainedModel]:
        """The HF causal-LM class (``GPT2LMHeadModel``, ``LlamaForCausalLM``, ...)."""

    @abc.abstractmethod
    def blocks(self, hf: PreTrainedModel) -> nn.ModuleList:
        """The model's ``ModuleList`` of transformer blocks."""

    @abc.abstractmethod
    def set_blocks(self, hf: PreTrainedModel, blocks: nn.ModuleList) -> None:
        """Replace the block list (used to save a truncated model without copying weights)."""

    @abc.abstractmethod
    def embedding_modules(self, hf: PreTrainedModel) -> list[nn.Module]:
        """The input-side modules that run before the first block (token/position embeddings)."""

    @abc.abstractmethod
    def final_norm(self, hf: PreTrainedModel) -> nn.Module:
        """The norm between the last active block and the LM head."""

    @abc.abstractmethod
    def embed(
        self, hf: PreTrainedModel, input_ids: torch.Tensor
    ) -> tuple[torch.Tensor, BlockContext]:
        """Embed ``input_ids`` and prepare the per-forward block inputs.

        Returns the hidden state entering block 0 and the keyword arguments every block call
        needs (causal mask built for the configured attention kernel, position ids, and for
        rotary families the ``(cos, sin)`` position embeddings).
        """

    @abc.abstractmethod
    def residual_output_projections(self, block: nn.Module) -> list[nn.Module]:
        """The linear layers whose outputs are added to the residual stream.

        Zeroing their weights and biases makes the block the identity function.
        """

    def lm_head(self, hf: PreTrainedModel) -> nn.Module:
        """The output projection to vocabulary logits."""
        head = hf.get_output_embeddings()
        assert head is not None  # every causal LM has one
        return head

    def run_block(self, block: nn.Module, hidden: torch.Tensor, ctx: BlockContext) -> torch.Tensor:
        """Run one block; HF 5.x blocks return the hidden state tensor directly."""
        out = block(hidden, **ctx)
        # Older HF versions returned a tuple; keep the adapter robust to either.
        return out[0] if isinstance(out, tuple) else out

    @staticmethod
    def causal_mask(
        hf: PreTrainedModel, inputs_embeds: torch.Tensor, position_ids: torch.Tensor
    ) -> Any:
        """The causal mask HF's own model would build (``None`` for sdpa: it uses is_causal)."""
        return create_causal_mask(
            config=hf.config,
            inputs_embeds=inputs_embeds,
            attention_mask=None,
            cache=None,
            position_ids=position_ids,
        )

    @staticmethod
    def position_ids(input_ids: torch.Tensor) -> torch.Tensor:
        """Positions 0..T-1, shape (1, T), as HF builds them without a cache."""
        return torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)


FAMILIES: dict[str, FamilyAdapter] = {}
"""Registered family adapters by ``model.family`` name (filled by the family modules)."""


def register_family(adapter: FamilyAdapter) -> FamilyAdapter:
    """Register ``adapter`` under its ``name`` (the extension point for new families)."""
    FAMILIES[adapter.name] = adapter
    return adapter


def get_family(name: str) -> FamilyAdapter:
    """The adapter for ``name``; unknown -> :class:`ConfigError` naming ``model.family``."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ConfigError("model.family", name, suggest(name, FAMILIES)) from None

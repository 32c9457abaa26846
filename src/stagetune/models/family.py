"""Family adapters: everything that differs between Hugging Face model families.

:class:`~stagetune.models.staged.StagedModel` runs its own loop over the active blocks, so it
needs to know, per family, how to build the model from a :class:`ModelConfig` (a transformers
class by default; GPT-2 has modules of its own with transformers' layout, so a training process
never imports transformers: :mod:`stagetune.models.gpt2_model`), where the
embeddings / blocks / final norm / LM head live, what extra inputs a block takes (causal mask,
rotary position embeddings), which linear layers write into the residual stream (for the
``zero`` growth operator), its default MLP width and the matmuls a block runs (for the FLOPs
model: :meth:`FamilyAdapter.dims`). A new family is one subclass of :class:`FamilyAdapter`,
registered with :func:`register_family` or as an entry point in ``stagetune.model_families``.
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Any, ClassVar, cast

import torch
from torch import nn

from stagetune.compute import ModelDims
from stagetune.config import ModelConfig
from stagetune.registry import MODEL_FAMILIES

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel

__all__ = [
    "BlockContext",
    "CausalLM",
    "FamilyAdapter",
    "get_family",
    "model_dims",
    "register_family",
]

CausalLM = Any
"""The model :meth:`FamilyAdapter.build` returns: a transformers ``PreTrainedModel`` or a
module with its layout (duck-typed, hence ``Any``)."""

BlockContext = dict[str, Any]
"""Keyword arguments every block call of one forward pass shares (mask, positions, rotary)."""


class FamilyAdapter(abc.ABC):
    """Family-specific access to a causal LM with a Hugging Face layout (stateless; one instance
    per family).

    The methods that take ``hf`` accept the module :meth:`build` returns: a transformers
    ``PreTrainedModel``, or a module with the same layout and the few members stagetune uses
    (``config.vocab_size``, ``config.num_hidden_layers``, ``get_output_embeddings()``,
    ``save_pretrained(path, state_dict=...)``).
    """

    name: ClassVar[str]
    """The ``model.family`` value this adapter serves."""
    blocks_path: ClassVar[str]
    """Dotted path of the ``ModuleList`` of blocks in the HF model (``transformer.h``)."""

    @abc.abstractmethod
    def build_hf_config(self, cfg: ModelConfig, *, vocab_size: int) -> PretrainedConfig:
        """The HF config for ``cfg`` (all ``cfg.n_layer`` blocks, attention kernel from cfg)."""

    @abc.abstractmethod
    def model_class(self) -> type[PreTrainedModel]:
        """The HF causal-LM class (``GPT2LMHeadModel``, ``LlamaForCausalLM``, ...): what an
        exported checkpoint loads as."""

    def build(self, cfg: ModelConfig, *, vocab_size: int) -> CausalLM:
        """The causal LM for ``cfg`` with all ``cfg.n_layer`` blocks, initialised from the
        global generator (the caller seeds it). Default: :meth:`model_class` of
        :meth:`build_hf_config`; a family may return its own modules with the same layout."""
        return self.model_class()(self.build_hf_config(cfg, vocab_size=vocab_size))

    @abc.abstractmethod
    def block_matmul_params(self, cfg: ModelConfig) -> int:
        """Weights of the matmuls one block applies to every token: the family's linear
        layers (attention projections and MLP), without biases, norms or embeddings."""

    def ffn_size(self, cfg: ModelConfig) -> int:
        """The MLP width: ``cfg.intermediate_size``, or the family's default (4 × n_embd)."""
        if cfg.intermediate_size is not None:
            return cfg.intermediate_size
        return 4 * cfg.n_embd

    def dims(self, cfg: ModelConfig, *, vocab_size: int, seq_len: int) -> ModelDims:
        """The shapes :mod:`stagetune.compute` counts FLOPs with, for sequences of ``seq_len``
        tokens (``cfg.vocab_size`` wins over ``vocab_size``, the tokenizer's)."""
        return ModelDims(
            n_layer=cfg.n_layer,
            n_embd=cfg.n_embd,
            block_matmul_params=self.block_matmul_params(cfg),
            vocab_size=cfg.vocab_size or vocab_size,
            seq_len=seq_len,
        )

    def blocks(self, hf: CausalLM) -> nn.ModuleList:
        """The model's ``ModuleList`` of transformer blocks."""
        return cast(nn.ModuleList, hf.get_submodule(self.blocks_path))

    def set_blocks(self, hf: CausalLM, blocks: nn.ModuleList) -> None:
        """Replace the block list (used to save a truncated model without copying weights)."""
        parent, _, attr = self.blocks_path.rpartition(".")
        setattr(hf.get_submodule(parent), attr, blocks)

    def block_index(self, key: str) -> int | None:
        """The block a state-dict key of the HF model belongs to; ``None`` outside the blocks."""
        prefix = f"{self.blocks_path}."
        if not key.startswith(prefix):
            return None
        index = key[len(prefix) :].split(".", 1)[0]
        return int(index) if index.isdigit() else None

    @abc.abstractmethod
    def embedding_modules(self, hf: CausalLM) -> list[nn.Module]:
        """The input-side modules that run before the first block (token/position embeddings)."""

    @abc.abstractmethod
    def final_norm(self, hf: CausalLM) -> nn.Module:
        """The norm between the last active block and the LM head."""

    @abc.abstractmethod
    def embed(self, hf: CausalLM, input_ids: torch.Tensor) -> tuple[torch.Tensor, BlockContext]:
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

    def lm_head(self, hf: CausalLM) -> nn.Module:
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
    def causal_mask(hf: CausalLM, inputs_embeds: torch.Tensor, position_ids: torch.Tensor) -> Any:
        """The causal mask HF's own model would build (``None`` for sdpa: it uses is_causal)."""
        from transformers.masking_utils import create_causal_mask

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


def register_family(adapter: FamilyAdapter, *, replace: bool = False) -> FamilyAdapter:
    """Register ``adapter`` under its ``name`` (the extension point for new families;
    ``replace`` to overwrite a registered one)."""
    return MODEL_FAMILIES.register(adapter.name, adapter, replace=replace)


def get_family(name: str) -> FamilyAdapter:
    """The adapter for ``name``; unknown -> :class:`ConfigError` naming ``model.family``."""
    adapter: FamilyAdapter = MODEL_FAMILIES.get(name)
    return adapter


def model_dims(cfg: ModelConfig, *, vocab_size: int, seq_len: int) -> ModelDims:
    """The FLOPs shapes of the model ``cfg`` describes (its family's :meth:`FamilyAdapter.dims`)."""
    return get_family(cfg.family).dims(cfg, vocab_size=vocab_size, seq_len=seq_len)

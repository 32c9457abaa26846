"""GPT-2 family adapter (``GPT2LMHeadModel``: learned positions, LayerNorm, Conv1D linears)."""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel, PretrainedConfig, PreTrainedModel

from stagetune.config import ModelConfig
from stagetune.models.family import BlockContext, FamilyAdapter, register_family

__all__ = ["GPT2Adapter"]


def _base(hf: PreTrainedModel) -> Any:
    # Any: HF declares submodules loosely (``Tensor | Module``) for type checkers.
    return hf.transformer


def _attn_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    return {"attn_implementation": cfg.attn_implementation}


class GPT2Adapter(FamilyAdapter):
    """GPT-2: ``transformer.{wte,wpe,drop,h,ln_f}`` and ``lm_head``."""

    name = "gpt2"
    blocks_path = "transformer.h"

    def build_hf_config(self, cfg: ModelConfig, *, vocab_size: int) -> PretrainedConfig:
        return GPT2Config(
            vocab_size=vocab_size,
            n_positions=cfg.context_length,
            n_embd=cfg.n_embd,
            n_layer=cfg.n_layer,
            n_head=cfg.n_head,
            n_inner=self.ffn_size(cfg),
            resid_pdrop=cfg.dropout,
            embd_pdrop=cfg.dropout,
            attn_pdrop=cfg.dropout,
            tie_word_embeddings=cfg.tie_embeddings,
            # GPT-2's default special ids (50256) lie outside small vocabularies.
            bos_token_id=None,
            eos_token_id=None,
            use_cache=False,
            # Passed through **kwargs to PreTrainedConfig (not in the typed signature).
            **_attn_kwargs(cfg),
        )

    def model_class(self) -> type[PreTrainedModel]:
        return GPT2LMHeadModel

    def block_matmul_params(self, cfg: ModelConfig) -> int:
        # c_attn (d → 3d) and c_proj (d → d); the MLP's c_fc (d → ffn) and c_proj (ffn → d).
        d = cfg.n_embd
        return 4 * d * d + 2 * d * self.ffn_size(cfg)

    def embedding_modules(self, hf: PreTrainedModel) -> list[nn.Module]:
        base = _base(hf)
        return [cast(nn.Module, base.wte), cast(nn.Module, base.wpe)]

    def final_norm(self, hf: PreTrainedModel) -> nn.Module:
        return cast(nn.Module, _base(hf).ln_f)

    def embed(
        self, hf: PreTrainedModel, input_ids: torch.Tensor
    ) -> tuple[torch.Tensor, BlockContext]:
        base = _base(hf)
        position_ids = self.position_ids(input_ids)
        inputs_embeds = base.wte(input_ids)
        # Same order as GPT2Model.forward: token + position embeddings, then embedding dropout.
        hidden = base.drop(inputs_embeds + base.wpe(position_ids))
        mask = self.causal_mask(hf, inputs_embeds, position_ids)
        return hidden, {"attention_mask": mask, "position_ids": position_ids}

    def residual_output_projections(self, block: nn.Module) -> list[nn.Module]:
        b: Any = block
        return [cast(nn.Module, b.attn.c_proj), cast(nn.Module, b.mlp.c_proj)]


register_family(GPT2Adapter())

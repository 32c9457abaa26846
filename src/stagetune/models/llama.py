"""Llama family adapter (``LlamaForCausalLM``: RoPE, RMSNorm, gated MLP, grouped-query attn)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from stagetune.config import ModelConfig
from stagetune.models.family import BlockContext, CausalLM, FamilyAdapter, register_family

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel

__all__ = ["LlamaAdapter"]


def _base(hf: CausalLM) -> Any:
    # Any: HF declares submodules loosely (``Tensor | Module``) for type checkers.
    return hf.model


def _attn_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    return {"attn_implementation": cfg.attn_implementation}


class LlamaAdapter(FamilyAdapter):
    """Llama: ``model.{embed_tokens,layers,norm,rotary_emb}`` and ``lm_head``."""

    name = "llama"
    blocks_path = "model.layers"

    def build_hf_config(self, cfg: ModelConfig, *, vocab_size: int) -> PretrainedConfig:
        # transformers is imported where a Llama is built, never by a GPT-2 run's workers.
        from transformers import LlamaConfig

        return LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=cfg.n_embd,
            intermediate_size=self.ffn_size(cfg),
            num_hidden_layers=cfg.n_layer,
            num_attention_heads=cfg.n_head,
            num_key_value_heads=cfg.kv_heads,
            max_position_embeddings=cfg.context_length,
            attention_dropout=cfg.dropout,
            tie_word_embeddings=cfg.tie_embeddings,
            # Llama's default special ids may lie outside small vocabularies.
            bos_token_id=None,
            eos_token_id=None,
            use_cache=False,
            # Passed through **kwargs to PreTrainedConfig (not in the typed signature).
            **_attn_kwargs(cfg),
        )

    def model_class(self) -> type[PreTrainedModel]:
        from transformers import LlamaForCausalLM

        return LlamaForCausalLM

    def ffn_size(self, cfg: ModelConfig) -> int:
        """``cfg.intermediate_size``, or Llama's rule: 8/3 × n_embd rounded up to 32."""
        if cfg.intermediate_size is not None:
            return cfg.intermediate_size
        hidden = int(8 * cfg.n_embd / 3)
        return 32 * ((hidden + 31) // 32)

    def block_matmul_params(self, cfg: ModelConfig) -> int:
        # q and o (d → d), k and v (d → kv heads × head dim); the gated MLP's three matrices.
        d = cfg.n_embd
        kv = cfg.kv_heads * (d // cfg.n_head)
        return 2 * d * d + 2 * d * kv + 3 * d * self.ffn_size(cfg)

    def embedding_modules(self, hf: CausalLM) -> list[nn.Module]:
        return [cast(nn.Module, _base(hf).embed_tokens)]

    def final_norm(self, hf: CausalLM) -> nn.Module:
        return cast(nn.Module, _base(hf).norm)

    def embed(self, hf: CausalLM, input_ids: torch.Tensor) -> tuple[torch.Tensor, BlockContext]:
        base = _base(hf)
        position_ids = self.position_ids(input_ids)
        hidden = base.embed_tokens(input_ids)
        mask = self.causal_mask(hf, hidden, position_ids)
        # transformers 5.x blocks do not compute RoPE themselves: the model computes (cos, sin)
        # once per forward and passes it to every block as ``position_embeddings``.
        position_embeddings = base.rotary_emb(hidden, position_ids=position_ids)
        return hidden, {
            "attention_mask": mask,
            "position_ids": position_ids,
            "position_embeddings": position_embeddings,
        }

    def residual_output_projections(self, block: nn.Module) -> list[nn.Module]:
        b: Any = block
        return [cast(nn.Module, b.self_attn.o_proj), cast(nn.Module, b.mlp.down_proj)]


register_family(LlamaAdapter())

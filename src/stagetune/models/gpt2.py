"""GPT-2 family adapter (learned positions, LayerNorm, Conv1D linears).

Training builds :class:`~stagetune.models.gpt2_model.GPT2LMHeadModel`, our torch-only copy of
transformers' ``GPT2LMHeadModel`` (same layout, weights, numerics and checkpoint format), so a
Ray Train worker never imports transformers; transformers' own class is what an exported
checkpoint loads as (:meth:`GPT2Adapter.model_class`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from stagetune.config import ModelConfig
from stagetune.models.family import BlockContext, CausalLM, FamilyAdapter, register_family
from stagetune.models.gpt2_model import GPT2LMHeadModel, GPT2Settings

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel

__all__ = ["GPT2Adapter"]


def _base(hf: CausalLM) -> Any:
    # Any: HF declares submodules loosely (``Tensor | Module``) for type checkers.
    return hf.transformer


class GPT2Adapter(FamilyAdapter):
    """GPT-2: ``transformer.{wte,wpe,drop,h,ln_f}`` and ``lm_head``."""

    name = "gpt2"
    blocks_path = "transformer.h"

    def settings(self, cfg: ModelConfig, *, vocab_size: int) -> GPT2Settings:
        """The GPT-2 shape ``cfg`` describes, with ``vocab_size`` embedding rows."""
        return GPT2Settings(
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
            attn_implementation=cfg.attn_implementation,
        )

    def build(self, cfg: ModelConfig, *, vocab_size: int) -> GPT2LMHeadModel:
        return GPT2LMHeadModel(self.settings(cfg, vocab_size=vocab_size))

    def build_hf_config(self, cfg: ModelConfig, *, vocab_size: int) -> PretrainedConfig:
        from transformers import GPT2Config

        config: dict[str, Any] = self.settings(cfg, vocab_size=vocab_size).to_hf_dict()
        for key in ("architectures", "model_type", "dtype"):
            del config[key]
        # Passed through **kwargs to PreTrainedConfig (not in GPT2Config's typed signature).
        config["attn_implementation"] = cfg.attn_implementation
        return GPT2Config(**config)

    def model_class(self) -> type[PreTrainedModel]:
        from transformers import GPT2LMHeadModel as HFGPT2LMHeadModel

        return HFGPT2LMHeadModel

    def block_matmul_params(self, cfg: ModelConfig) -> int:
        # c_attn (d → 3d) and c_proj (d → d); the MLP's c_fc (d → ffn) and c_proj (ffn → d).
        d = cfg.n_embd
        return 4 * d * d + 2 * d * self.ffn_size(cfg)

    def embedding_modules(self, hf: CausalLM) -> list[nn.Module]:
        base = _base(hf)
        return [cast(nn.Module, base.wte), cast(nn.Module, base.wpe)]

    def final_norm(self, hf: CausalLM) -> nn.Module:
        return cast(nn.Module, _base(hf).ln_f)

    def embed(self, hf: CausalLM, input_ids: torch.Tensor) -> tuple[torch.Tensor, BlockContext]:
        hidden, mask = _base(hf).embed(input_ids)
        return hidden, {"attention_mask": mask}

    def residual_output_projections(self, block: nn.Module) -> list[nn.Module]:
        b: Any = block
        return [cast(nn.Module, b.attn.c_proj), cast(nn.Module, b.mlp.c_proj)]


register_family(GPT2Adapter())

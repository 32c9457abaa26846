"""GPT-2 in plain PyTorch, laid out and computing exactly as transformers' ``GPT2LMHeadModel``.

Why our own modules: every Ray Train worker is a fresh process per trial, and importing
transformers' modeling code costs each of them about 2 s of CPU (it pulls fp8 kernels,
DTensor, dynamo, sympy) before the first step, which Ray Train's own per-trial cost does not
leave room for. These modules need torch only. Their module names, parameter shapes (``Conv1D``
stores ``(in, out)``), initialisation draws, operations and the order of those operations are
transformers' (5.x), so:

* a state dict moves between the two unchanged, in both directions;
* the same seed gives the same weights, bit for bit;
* the same batch gives the same logits, loss, gradients and FLOPs (dropout included, under the
  same generator state);
* :meth:`GPT2LMHeadModel.save_pretrained` writes a directory that
  ``transformers.AutoModelForCausalLM.from_pretrained`` loads as a GPT-2.

``tests/models/test_gpt2_model.py`` checks each of these against transformers itself.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from stagetune.config import ATTN_IMPLEMENTATIONS
from stagetune.models.output import IGNORE_INDEX, CausalLMOutput, next_token_loss

__all__ = [
    "GPT2MLP",
    "Conv1D",
    "GPT2Attention",
    "GPT2Block",
    "GPT2LMHeadModel",
    "GPT2Model",
    "GPT2Settings",
    "causal_mask",
]

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


@dataclasses.dataclass
class GPT2Settings:
    """The shape and regularisation of a GPT-2 (the fields of transformers' ``GPT2Config``
    that stagetune sets; the rest keep GPT-2's defaults, which these modules hard-wire:
    ``gelu_new`` activation, attention scaled by 1/√head_dim, no cross-attention)."""

    vocab_size: int
    n_positions: int
    n_embd: int
    n_layer: int
    """Blocks (``num_hidden_layers``); lowered only while a truncated copy is saved."""
    n_head: int
    n_inner: int
    """The MLP width."""
    resid_pdrop: float = 0.0
    embd_pdrop: float = 0.0
    attn_pdrop: float = 0.0
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    tie_word_embeddings: bool = True
    attn_implementation: str = "sdpa"

    def __post_init__(self) -> None:
        if self.attn_implementation not in ATTN_IMPLEMENTATIONS:
            raise ValueError(
                f"attn_implementation={self.attn_implementation!r}: use one of "
                f"{', '.join(ATTN_IMPLEMENTATIONS)}"
            )
        if self.n_embd % self.n_head:
            raise ValueError(
                f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}; choose a head "
                "count that divides the width"
            )

    @property
    def num_hidden_layers(self) -> int:
        """transformers' name for :attr:`n_layer`."""
        return self.n_layer

    @num_hidden_layers.setter
    def num_hidden_layers(self, value: int) -> None:
        self.n_layer = value

    @property
    def _attn_implementation(self) -> str:
        # transformers' attribute name, so code written against a PretrainedConfig reads it too.
        return self.attn_implementation

    def to_hf_dict(self) -> dict[str, Any]:
        """The ``config.json`` of this model as transformers writes a ``GPT2Config``'s."""
        return {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "activation_function": "gelu_new",
            "vocab_size": self.vocab_size,
            "n_positions": self.n_positions,
            "n_embd": self.n_embd,
            "n_layer": self.n_layer,
            "n_head": self.n_head,
            "n_inner": self.n_inner,
            "resid_pdrop": self.resid_pdrop,
            "embd_pdrop": self.embd_pdrop,
            "attn_pdrop": self.attn_pdrop,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "initializer_range": self.initializer_range,
            "tie_word_embeddings": self.tie_word_embeddings,
            "scale_attn_weights": True,
            "scale_attn_by_inverse_layer_idx": False,
            "reorder_and_upcast_attn": False,
            # GPT-2's default special ids (50256) lie outside small vocabularies.
            "bos_token_id": None,
            "eos_token_id": None,
            "use_cache": False,
            "dtype": "float32",
        }


def causal_mask(settings: GPT2Settings, inputs_embeds: torch.Tensor) -> torch.Tensor | None:
    """The mask transformers builds for an unpadded batch: ``None`` for sdpa (it runs with
    ``is_causal``), else an additive (1, 1, T, T) mask of 0 and the dtype's minimum."""
    if settings.attn_implementation == "sdpa":
        return None
    t = inputs_embeds.shape[1]
    lowest = torch.finfo(inputs_embeds.dtype).min
    mask = torch.full((t, t), lowest, dtype=inputs_embeds.dtype, device=inputs_embeds.device)
    return mask.triu(1)[None, None]


class Conv1D(nn.Module):
    """GPT-2's linear layer: ``x @ weight + bias`` with ``weight`` stored as (in, out)."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf = nf
        self.nx = nx
        self.weight = nn.Parameter(torch.empty(nx, nf))
        self.bias = nn.Parameter(torch.zeros(nf))
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size_out = (*x.size()[:-1], self.nf)
        x = torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight)
        return x.view(size_out)

    def extra_repr(self) -> str:
        return f"nf={self.nf}, nx={self.nx}"


def gelu_new(x: torch.Tensor) -> torch.Tensor:
    """GPT-2's tanh approximation of GELU, written as transformers writes it (same rounding)."""
    return (
        0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))
    )


class GPT2Attention(nn.Module):
    """Causal multi-head self-attention: fused qkv projection, output projection."""

    def __init__(self, settings: GPT2Settings) -> None:
        super().__init__()
        self.embed_dim = settings.n_embd
        self.num_heads = settings.n_head
        self.head_dim = self.embed_dim // self.num_heads
        self.scaling = self.head_dim**-0.5
        self.eager = settings.attn_implementation == "eager"
        self.c_attn = Conv1D(3 * self.embed_dim, self.embed_dim)
        self.c_proj = Conv1D(self.embed_dim, self.embed_dim)
        self.attn_dropout = nn.Dropout(settings.attn_pdrop)
        self.resid_dropout = nn.Dropout(settings.resid_pdrop)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        query, key, value = self.c_attn(hidden).split(self.embed_dim, dim=2)
        shape = (*key.shape[:-1], -1, self.head_dim)
        query = query.view(shape).transpose(1, 2)
        key = key.view(shape).transpose(1, 2)
        value = value.view(shape).transpose(1, 2)
        dropout = self.attn_dropout.p if self.training else 0.0
        if self.eager:
            weights = torch.matmul(query, key.transpose(-1, -2)) * self.scaling
            if attention_mask is not None:
                weights = weights + attention_mask
            weights = F.softmax(weights, dim=-1).type(value.dtype)
            weights = F.dropout(weights, p=dropout, training=self.training)
            out = torch.matmul(weights, value).transpose(1, 2)
        else:
            q_len = query.shape[2]
            out = F.scaled_dot_product_attention(
                query,
                key,
                value,
                attn_mask=attention_mask,
                dropout_p=dropout,
                scale=self.scaling,
                is_causal=q_len > 1 and attention_mask is None,
            )
            out = out.reshape(out.shape[0], -1, q_len, value.shape[-1]).transpose(1, 2).contiguous()
        out = out.reshape(*out.shape[:-2], -1).contiguous()
        return self.resid_dropout(self.c_proj(out))


class GPT2MLP(nn.Module):
    """Position-wise feed-forward: ``c_fc`` (d → n_inner), GELU, ``c_proj`` (n_inner → d)."""

    def __init__(self, settings: GPT2Settings) -> None:
        super().__init__()
        self.c_fc = Conv1D(settings.n_inner, settings.n_embd)
        self.c_proj = Conv1D(settings.n_embd, settings.n_inner)
        self.dropout = nn.Dropout(settings.resid_pdrop)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(gelu_new(self.c_fc(hidden))))


class GPT2Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``."""

    def __init__(self, settings: GPT2Settings) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(settings.n_embd, eps=settings.layer_norm_epsilon)
        self.attn = GPT2Attention(settings)
        self.ln_2 = nn.LayerNorm(settings.n_embd, eps=settings.layer_norm_epsilon)
        self.mlp = GPT2MLP(settings)

    def forward(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None, **_: Any
    ) -> torch.Tensor:
        # ``**_``: the per-forward context every family's blocks receive (position ids).
        hidden = self.attn(self.ln_1(hidden), attention_mask) + hidden
        return hidden + self.mlp(self.ln_2(hidden))


class GPT2Model(nn.Module):
    """Embeddings, blocks and final norm (transformers' ``GPT2Model``, the ``transformer``)."""

    def __init__(self, settings: GPT2Settings) -> None:
        super().__init__()
        self.settings = settings
        self.wte = nn.Embedding(settings.vocab_size, settings.n_embd)
        self.wpe = nn.Embedding(settings.n_positions, settings.n_embd)
        self.drop = nn.Dropout(settings.embd_pdrop)
        self.h = nn.ModuleList(GPT2Block(settings) for _ in range(settings.n_layer))
        self.ln_f = nn.LayerNorm(settings.n_embd, eps=settings.layer_norm_epsilon)

    def embed(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The hidden state entering block 0 and the attention mask every block takes."""
        position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        inputs_embeds = self.wte(input_ids)
        hidden = self.drop(inputs_embeds + self.wpe(position_ids))
        return hidden, causal_mask(self.settings, inputs_embeds)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        hidden, mask = self.embed(input_ids)
        for block in self.h:
            hidden = block(hidden, mask)
        return self.ln_f(hidden)


class GPT2LMHeadModel(nn.Module):
    """GPT-2 with its language-model head (tied to the token embedding unless configured not
    to be). Built as transformers builds it, so the same global RNG state gives the same
    weights: every module constructed, the ``transformer`` initialised children first, then
    the head constructed and initialised, then tied."""

    def __init__(self, settings: GPT2Settings) -> None:
        super().__init__()
        self.config = settings
        self.transformer = GPT2Model(settings)
        with torch.no_grad():
            for module in _children_first(self.transformer):
                self._init_weights(module)
            self.lm_head = nn.Linear(settings.n_embd, settings.vocab_size, bias=False)
            self._init_weights(self.lm_head)
        if settings.tie_word_embeddings:
            self.lm_head.weight = self.transformer.wte.weight

    def _init_weights(self, module: nn.Module) -> None:
        """GPT-2's initialisation of one module (transformers' ``_init_weights``): normal(0,
        0.02) matrices and embeddings, zero biases, unit norms, and the residual output
        projections at 0.02/√(2L). Draws from the global generator."""
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, Conv1D)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        if isinstance(module, (GPT2Attention, GPT2MLP)):
            scaled = std / math.sqrt(2 * self.config.n_layer)
            nn.init.normal_(module.c_proj.weight, mean=0.0, std=scaled)

    def get_input_embeddings(self) -> nn.Embedding:
        """The token embedding (transformers' accessor, as code written against it expects)."""
        return self.transformer.wte

    def get_output_embeddings(self) -> nn.Linear:
        """The LM head (transformers' accessor)."""
        return self.lm_head

    def forward(
        self, input_ids: torch.Tensor, labels: torch.Tensor | None = None
    ) -> CausalLMOutput:
        """Logits and, with ``labels`` (unshifted, as transformers takes them), the loss."""
        logits = self.lm_head(self.transformer(input_ids))
        loss = None
        if labels is not None:
            loss = next_token_loss(logits, F.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:])
        return CausalLMOutput(loss=loss, logits=logits)

    def save_pretrained(
        self, path: str | os.PathLike[str], *, state_dict: dict[str, torch.Tensor] | None = None
    ) -> None:
        """Write ``config.json`` and ``model.safetensors`` as transformers' ``save_pretrained``
        does (a tied head is not stored), so ``AutoModelForCausalLM.from_pretrained`` loads it.
        ``state_dict`` replaces the module's own tensors (e.g. gathered from FSDP shards)."""
        from safetensors.torch import save_file

        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        state = self.state_dict() if state_dict is None else state_dict
        if self.config.tie_word_embeddings:
            state = {k: v for k, v in state.items() if k != "lm_head.weight"}
        tensors = {k: v.detach().contiguous() for k, v in state.items()}
        save_file(tensors, str(out / WEIGHTS_NAME), metadata={"format": "pt"})
        text = json.dumps(self.config.to_hf_dict(), indent=2, sort_keys=True) + "\n"
        (out / CONFIG_NAME).write_text(text)


def _children_first(module: nn.Module) -> list[nn.Module]:
    """``module`` and its descendants, each after its children (transformers' init order)."""
    order: list[nn.Module] = []
    for child in module.children():
        order.extend(_children_first(child))
    order.append(module)
    return order

"""The staged-model adapter: a causal LM whose active depth grows stage by stage.

:class:`StagedModel` wraps a causal LM with a Hugging Face layout built with all L blocks (for
GPT-2 our torch-only copy of transformers' model, for other families transformers' own). Only
the bottom ``active_depth`` blocks run; :meth:`StagedModel.grow` activates more of them,
initialised by a growth operator; :meth:`StagedModel.configure_phase` decides which parameters
train and whether the frozen prefix runs without autograd. The forward pass is our own loop
over the HF modules (embeddings, active blocks, final norm, LM head) so that depth and freezing
are under our control; at full depth it computes exactly what the HF model computes.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from stagetune.compute import ModelDims
from stagetune.config import ModelConfig
from stagetune.errors import ConfigError
from stagetune.freeze import FreezePolicy, ModelParts, get_freeze_policy
from stagetune.models.family import CausalLM, FamilyAdapter, get_family
from stagetune.models.growth import GrowthOperator, get_growth_operator
from stagetune.models.output import IGNORE_INDEX, CausalLMOutput, next_token_loss

__all__ = ["IGNORE_INDEX", "CausalLMOutput", "StagedModel", "build_model"]


def build_model(cfg: ModelConfig, *, vocab_size: int, seed: int) -> StagedModel:
    """Build the target model from ``cfg`` (no hub download), all L blocks, deterministic in seed.

    Args:
        cfg: the model config; ``cfg.vocab_size`` (if set) overrides ``vocab_size`` but must be at
            least as large, so every token id the tokenizer emits has an embedding row.
        vocab_size: the tokenizer's vocabulary size.
        seed: seeds the weight initialisation (the global RNG state is restored afterwards).

    Returns:
        A :class:`StagedModel` at full depth (call :meth:`StagedModel.set_active_depth` for the
        first stage), on the CPU, in float32, in training mode.
    """
    family = get_family(cfg.family)
    if vocab_size < 2:
        raise ConfigError("data.vocab_size", vocab_size, "use a vocabulary of at least 2 tokens")
    if cfg.vocab_size is not None and cfg.vocab_size < vocab_size:
        raise ConfigError(
            "model.vocab_size",
            cfg.vocab_size,
            f"smaller than the tokenizer's vocabulary ({vocab_size}); raise it or use null",
        )
    vocab = cfg.vocab_size or vocab_size
    # Seed a private copy of the RNG state: HF initialises weights with the global generator.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        hf = family.build(cfg, vocab_size=vocab)
    hf.train()
    return StagedModel(hf, family=family, config=cfg)


class StagedModel(nn.Module):
    """A causal LM with an active depth, growth and per-phase freezing.

    Attributes:
        hf_model: the wrapped model with a Hugging Face layout (all L blocks, active or not).
        config: the :class:`ModelConfig` it was built from.
        family: the family adapter that knows the HF module layout.
    """

    def __init__(self, hf_model: CausalLM, *, family: FamilyAdapter, config: ModelConfig):
        super().__init__()
        self.hf_model = hf_model
        self.family = family
        self.config = config
        self._active_depth = self.num_layers
        self._trainable_from = 0
        self._freeze_policy = "none"
        self._prefix_without_grad = False
        self.configure_phase(trainable_from=0, freeze_policy="none")

    # ---------------------------------------------------------------------------------------
    # structure

    @property
    def blocks(self) -> nn.ModuleList:
        """The HF ``ModuleList`` of all L blocks (active and inactive)."""
        return self.family.blocks(self.hf_model)

    @property
    def num_layers(self) -> int:
        """The target depth L (number of blocks that exist)."""
        return len(self.blocks)

    @property
    def active_depth(self) -> int:
        """How many of the bottom blocks currently run."""
        return self._active_depth

    @property
    def trainable_from(self) -> int:
        """Index of the lowest trainable block (0: all active blocks train)."""
        return self._trainable_from

    @property
    def freeze_policy(self) -> str:
        """The freeze policy of the current phase."""
        return self._freeze_policy

    @property
    def vocab_size(self) -> int:
        """The model's vocabulary size (rows of the embedding matrix)."""
        return int(self.hf_model.config.vocab_size)

    @property
    def tied_embeddings(self) -> bool:
        """Whether the LM head shares its weight with the token embedding."""
        head = self.family.lm_head(self.hf_model)
        return any(head.weight is m.weight for m in self.family.embedding_modules(self.hf_model))

    def dims(self, seq_len: int) -> ModelDims:
        """The shapes :mod:`stagetune.compute` needs, for sequences of ``seq_len`` tokens."""
        return self.family.dims(self.config, vocab_size=self.vocab_size, seq_len=seq_len)

    # ---------------------------------------------------------------------------------------
    # depth

    def set_active_depth(self, depth: int) -> None:
        """Set the depth of the first stage (1..L); blocks above it stay as initialised.

        Resets the phase to "all active blocks train" (``trainable_from=0``); call
        :meth:`configure_phase` afterwards for anything else.
        """
        self._check_depth(depth, "depth", low=1)
        self._active_depth = depth
        self.configure_phase(trainable_from=0, freeze_policy="none")

    def grow(self, new_depth: int, operator: str | GrowthOperator, *, seed: int) -> None:
        """Activate blocks ``[active_depth, new_depth)``, initialised by the growth ``operator``.

        Args:
            new_depth: the depth after growth; must exceed the current depth and be at most L.
            operator: a registered operator name (``random``, ``copy_top``, ``stack``,
                ``copy_middle``, ``zero``) or a :class:`GrowthOperator` instance.
            seed: seeds the operator's randomness (``random`` and ``zero`` initialisation).

        Raises:
            ValueError: if ``new_depth`` is not in ``(active_depth, L]``.
            ConfigError: if ``operator`` names no registered operator.

        Afterwards the phase is reset to "all active blocks train" (``trainable_from=0``).
        """
        op = get_growth_operator(operator) if isinstance(operator, str) else operator
        old = self._active_depth
        if isinstance(new_depth, bool) or not isinstance(new_depth, int):
            raise ValueError(f"new_depth must be an int, got {new_depth!r}")
        if not old < new_depth <= self.num_layers:
            raise ValueError(
                f"cannot grow from depth {old} to {new_depth}: the new depth must be greater "
                f"than the active depth {old} and at most the model depth {self.num_layers}"
            )
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            op.apply(self, old, new_depth, generator)
        self._active_depth = new_depth
        self.configure_phase(trainable_from=0, freeze_policy="none")

    def _check_depth(self, depth: int, name: str, *, low: int) -> None:
        if isinstance(depth, bool) or not isinstance(depth, int):
            raise ValueError(f"{name} must be an int, got {depth!r}")
        if not low <= depth <= self.num_layers:
            raise ValueError(f"{name}={depth} must be in [{low}, {self.num_layers}]")

    # ---------------------------------------------------------------------------------------
    # freezing

    def configure_phase(self, *, trainable_from: int, freeze_policy: str | FreezePolicy) -> None:
        """Choose which parameters train in the coming phase (sets ``requires_grad``).

        Blocks ``[trainable_from, active_depth)`` train; blocks below are frozen; blocks at or
        above ``active_depth`` never train (and never run). The final norm and LM head always
        train. The embeddings train when ``trainable_from == 0`` (phase 2, continual, baseline),
        and otherwise as ``freeze_policy`` says, which also says whether the frozen prefix
        (embeddings and ``blocks[:trainable_from]``) runs under ``torch.no_grad()``: see
        :mod:`stagetune.freeze`. ``freeze_policy`` is a registered name or a
        :class:`~stagetune.freeze.FreezePolicy`.

        Raises:
            ValueError: if ``trainable_from`` is not in ``[0, active_depth)``, or is above 0
                for a policy without phase 1 (``none``).
            ConfigError: unknown ``freeze_policy`` (field ``schedule.freeze_policy``).
        """
        policy = (
            get_freeze_policy(freeze_policy) if isinstance(freeze_policy, str) else freeze_policy
        )
        if isinstance(trainable_from, bool) or not isinstance(trainable_from, int):
            raise ValueError(f"trainable_from must be an int, got {trainable_from!r}")
        if not 0 <= trainable_from < self._active_depth:
            raise ValueError(
                f"trainable_from={trainable_from} must be in [0, {self._active_depth}) "
                f"(the active depth is {self._active_depth}; at least one block must train)"
            )
        hf = self.hf_model
        parts = ModelParts(
            model=hf,
            blocks=list(self.blocks),
            embeddings=self.family.embedding_modules(hf),
            head=[self.family.final_norm(hf), self.family.lm_head(hf)],
        )
        self._prefix_without_grad = policy.configure(
            parts, trainable_from=trainable_from, active_depth=self._active_depth
        )
        self._trainable_from = trainable_from
        self._freeze_policy = policy.name

    # ---------------------------------------------------------------------------------------
    # forward

    def forward(
        self, input_ids: torch.Tensor, labels: torch.Tensor | None = None
    ) -> CausalLMOutput:
        """Logits and (with ``labels``) the mean next-token cross-entropy over active blocks.

        Args:
            input_ids: token ids, shape (batch, T).
            labels: targets of the same shape, **already shifted** by the data layer
                (``labels[:, t]`` is the token that follows ``input_ids[:, t]``); unlike HF's
                own loss they are not shifted again here. Positions equal to ``-100`` are
                ignored.

        Returns:
            A ``CausalLMOutput`` with ``logits`` (batch, T, V) and ``loss`` (or ``None``).
        """
        hf = self.hf_model
        family = self.family
        blocks = self.blocks
        split = self._trainable_from if self._prefix_without_grad else 0
        prefix_ctx = torch.no_grad() if split > 0 else contextlib.nullcontext()
        with prefix_ctx:
            hidden, ctx = family.embed(hf, input_ids)
            for i in range(split):
                hidden = family.run_block(blocks[i], hidden, ctx)
        if split > 0:
            # Already graph-free under no_grad; detach makes the cut explicit and robust.
            hidden = hidden.detach()
        for i in range(split, self._active_depth):
            hidden = family.run_block(blocks[i], hidden, ctx)
        hidden = family.final_norm(hf)(hidden)
        logits = family.lm_head(hf)(hidden)
        loss = None
        if labels is not None:
            if labels.shape != input_ids.shape:
                raise ValueError(
                    f"labels shape {tuple(labels.shape)} != input_ids shape "
                    f"{tuple(input_ids.shape)}; pass targets already shifted by one position"
                )
            loss = next_token_loss(logits, labels)
        return CausalLMOutput(loss=loss, logits=logits)

    # ---------------------------------------------------------------------------------------
    # optimisation

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters with ``requires_grad`` (each shared parameter once)."""
        return [p for p in self.hf_model.parameters() if p.requires_grad]

    def parameter_groups(
        self, weight_decay: float, *, trainable_only: bool = True, decay_embeddings: bool = False
    ) -> list[dict[str, Any]]:
        """AdamW parameter groups: decay on matrices, none on biases, norms and (unless
        ``decay_embeddings``) embeddings.

        Args:
            weight_decay: decay of the first group.
            trainable_only: only parameters with ``requires_grad`` (default); ``False`` takes
                every parameter (for an optimizer built once across phases).
            decay_embeddings: decay every ≥ 2-D tensor, embeddings and a tied head included
                (the paper's code).

        Returns:
            Non-empty groups among ``{"params": [...], "weight_decay": weight_decay}`` and
            ``{"params": [...], "weight_decay": 0.0}``. A tied LM head counts as an embedding.
        """
        no_decay_ids = set() if decay_embeddings else {id(p) for p in self._no_decay_parameters()}
        decay: list[nn.Parameter] = []
        no_decay: list[nn.Parameter] = []
        for p in self.hf_model.parameters():
            if trainable_only and not p.requires_grad:
                continue
            (no_decay if id(p) in no_decay_ids or p.ndim < 2 else decay).append(p)
        groups = [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        return [g for g in groups if g["params"]]

    def _no_decay_parameters(self) -> Iterator[torch.Tensor]:
        for module in self.hf_model.modules():
            if isinstance(module, nn.Embedding):
                yield module.weight

    # ---------------------------------------------------------------------------------------
    # export

    def save_pretrained(
        self, path: str | os.PathLike[str], *, state_dict: dict[str, torch.Tensor] | None = None
    ) -> None:
        """Save the model truncated to the active depth as an HF checkpoint (safetensors).

        ``AutoModelForCausalLM.from_pretrained(path)`` loads a model with ``active_depth``
        layers that computes the same logits as this model at its current depth.
        ``state_dict`` (keys of ``hf_model``, e.g. gathered from FSDP2 shards) replaces the
        module's own tensors; blocks beyond the active depth are dropped from it.
        """
        hf = self.hf_model
        family = self.family
        full = family.blocks(hf)
        n_full = hf.config.num_hidden_layers
        # Swap in a shorter list of the same block modules (no weight copy) and restore after.
        family.set_blocks(hf, nn.ModuleList(list(full)[: self._active_depth]))
        hf.config.num_hidden_layers = self._active_depth
        try:
            if state_dict is not None:
                keep = set(hf.state_dict().keys())
                state_dict = {k: v for k, v in state_dict.items() if k in keep}
                hf.save_pretrained(os.fspath(path), state_dict=state_dict)
            else:
                hf.save_pretrained(os.fspath(path))  # safetensors is the only format in 5.x
        finally:
            family.set_blocks(hf, full)
            hf.config.num_hidden_layers = n_full

    def extra_repr(self) -> str:
        return (
            f"family={self.config.family}, num_layers={self.num_layers}, "
            f"active_depth={self._active_depth}, trainable_from={self._trainable_from}, "
            f"freeze_policy={self._freeze_policy}"
        )

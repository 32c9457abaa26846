"""Growth operators: how the Δ new blocks of a stage start.

A growth operator initialises blocks ``[old_depth, new_depth)`` of a
:class:`~stagetune.models.staged.StagedModel` in place (the blocks always exist; growth only
rewrites their weights). Copies go through ``copy_`` into the target block's own tensors, so a
new block never shares storage with its source. With ``old`` the current depth,
``Δ = new - old`` and ``j = 0..Δ-1`` indexing the new blocks bottom-up (new block ``old + j``):

=============== ================================================================================
``random``      fresh init with the model family's own HF init scheme (``_init_weights``, e.g.
                GPT-2's 1/√(2L)-scaled residual projections), seeded by the generator and
                drawn on the CPU, so a seed gives the same weights on every device.
``copy_top``    copy of block ``(old - Δ + j) mod old``: the top Δ blocks in order (gradual
                stacking). If Δ > old the stack is repeated cyclically downwards, e.g. old=2,
                Δ=3 copies blocks 1, 0, 1.
``stack``       copy of block ``j mod old`` (G_stack): the whole current stack repeated from the
                bottom, e.g. old=2, Δ=3 copies blocks 0, 1, 0.
``copy_middle`` copy of block ``(s + j) mod old`` with ``s = (old - Δ) // 2`` (floor): the Δ
                middle blocks in order (MIDAS-like), lower middle when the split is uneven,
                e.g. old=4, Δ=2 copies blocks 1, 2; old=5, Δ=2 copies 1, 2; old=2, Δ=3 copies
                1, 0, 1.
``zero``        ``random``, then every residual output projection of the new block (attention
                out-projection and MLP down-projection, weights and biases) set to zero, so the
                block adds nothing to the residual stream: the grown model computes exactly the
                same function at the moment of growth.
=============== ================================================================================

New operators subclass :class:`GrowthOperator` and are added with :func:`register_growth_operator`
(or, for every process of an environment, as an entry point in ``stagetune.growth_operators``
naming an instance); :data:`stagetune.registry.GROWTH_OPERATORS` is the one list of names.
"""

from __future__ import annotations

import abc
import copy
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from stagetune.registry import GROWTH_OPERATORS

if TYPE_CHECKING:
    from stagetune.models.staged import StagedModel

__all__ = [
    "CopyMiddle",
    "CopyTop",
    "GrowthOperator",
    "RandomInit",
    "Stack",
    "ZeroInit",
    "get_growth_operator",
    "register_growth_operator",
]


class GrowthOperator(abc.ABC):
    """Initialises the new blocks ``[old_depth, new_depth)`` of a staged model in place."""

    name: ClassVar[str]
    """Registry name (the ``schedule.growth`` value)."""

    @abc.abstractmethod
    def apply(
        self, model: StagedModel, old_depth: int, new_depth: int, generator: torch.Generator
    ) -> None:
        """Rewrite the weights of blocks ``old_depth .. new_depth-1`` of ``model``.

        Called by :meth:`StagedModel.grow` under ``torch.no_grad()`` after the depths have been
        checked (``1 <= old_depth < new_depth <= L``); must not touch blocks below
        ``old_depth``. ``generator`` is the only source of randomness.
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def register_growth_operator(op: GrowthOperator, *, replace: bool = False) -> GrowthOperator:
    """Register ``op`` under ``op.name`` (``replace`` to overwrite a registered operator)."""
    return GROWTH_OPERATORS.register(op.name, op, replace=replace)


def get_growth_operator(name: str) -> GrowthOperator:
    """The registered operator ``name``; unknown -> ConfigError for ``schedule.growth``."""
    op: GrowthOperator = GROWTH_OPERATORS.get(name)
    return op


def _check_depths(model: StagedModel, old_depth: int, new_depth: int) -> None:
    if not 1 <= old_depth < new_depth <= model.num_layers:
        raise ValueError(
            f"growth needs 1 <= old_depth < new_depth <= {model.num_layers}, "
            f"got old_depth={old_depth}, new_depth={new_depth}"
        )


def _copy_block(src: nn.Module, dst: nn.Module) -> None:
    """Copy ``src``'s parameters and buffers into ``dst``'s own tensors (deep, no sharing)."""
    dst_state = dst.state_dict()
    for key, value in src.state_dict().items():
        dst_state[key].copy_(value)


def _reinit_block(model: StagedModel, block: nn.Module, generator: torch.Generator) -> None:
    """Re-initialise ``block`` with the HF model's own ``_init_weights`` scheme.

    HF init functions draw from the global RNG, so we seed a forked copy of the CPU RNG from
    ``generator`` (the caller's RNG state is left untouched). The values are drawn on the CPU
    (a CPU copy of the block when it lives elsewhere) so a seed gives the same weights on any
    device. Modules are visited children first, as HF's ``initialize_weights`` does, so
    parent-level overrides (GPT-2's scaled ``c_proj``) win.
    """
    seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    hf: Any = model.hf_model
    on_cpu = all(t.device.type == "cpu" for t in block.state_dict().values())
    work = block if on_cpu else copy.deepcopy(block).cpu()
    params = list(work.parameters())
    # A loaded checkpoint marks tensors as initialised, which makes HF's init functions no-ops.
    flags = [getattr(p, "_is_hf_initialized", None) for p in params]
    for p in params:
        if hasattr(p, "_is_hf_initialized"):
            setattr(p, "_is_hf_initialized", False)  # noqa: B010
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for module in reversed(list(work.modules())):
                hf._init_weights(module)
    finally:
        for p, flag in zip(params, flags):
            if flag is not None:
                setattr(p, "_is_hf_initialized", flag)  # noqa: B010
    if work is not block:
        _copy_block(work, block)


class RandomInit(GrowthOperator):
    """``random``: fresh init of each new block with the family's own scheme (the paper)."""

    name = "random"

    def apply(
        self, model: StagedModel, old_depth: int, new_depth: int, generator: torch.Generator
    ) -> None:
        _check_depths(model, old_depth, new_depth)
        for i in range(old_depth, new_depth):
            _reinit_block(model, model.blocks[i], generator)


register_growth_operator(RandomInit())


class ZeroInit(GrowthOperator):
    """``zero``: random init, then residual output projections zeroed (function-preserving)."""

    name = "zero"

    def apply(
        self, model: StagedModel, old_depth: int, new_depth: int, generator: torch.Generator
    ) -> None:
        RandomInit().apply(model, old_depth, new_depth, generator)
        for i in range(old_depth, new_depth):
            for proj in model.family.residual_output_projections(model.blocks[i]):
                weight: torch.Tensor = getattr(proj, "weight")  # noqa: B009
                weight.zero_()
                bias = getattr(proj, "bias", None)
                if bias is not None:
                    bias.zero_()


register_growth_operator(ZeroInit())


class _CopyOperator(GrowthOperator):
    """Base of the copy operators: new block ``old + j`` is a copy of ``source(old, Δ, j)``."""

    @staticmethod
    @abc.abstractmethod
    def source(old_depth: int, delta: int, j: int) -> int:
        """Index of the (old) block copied into new block ``old_depth + j``."""

    def sources(self, old_depth: int, new_depth: int) -> list[int]:
        """Source block of each new block, bottom-up."""
        delta = new_depth - old_depth
        return [self.source(old_depth, delta, j) for j in range(delta)]

    def apply(
        self, model: StagedModel, old_depth: int, new_depth: int, generator: torch.Generator
    ) -> None:
        _check_depths(model, old_depth, new_depth)
        blocks = model.blocks
        for j, src in enumerate(self.sources(old_depth, new_depth)):
            _copy_block(blocks[src], blocks[old_depth + j])


class CopyTop(_CopyOperator):
    """``copy_top``: copies of the top Δ blocks, in order (cyclic if Δ > old)."""

    name = "copy_top"

    @staticmethod
    def source(old_depth: int, delta: int, j: int) -> int:
        return (old_depth - delta + j) % old_depth


register_growth_operator(CopyTop())


class Stack(_CopyOperator):
    """``stack`` (G_stack): new block ``old + j`` copies block ``j mod old``."""

    name = "stack"

    @staticmethod
    def source(old_depth: int, delta: int, j: int) -> int:
        return j % old_depth


register_growth_operator(Stack())


class CopyMiddle(_CopyOperator):
    """``copy_middle`` (MIDAS-like): copies of the Δ middle blocks, in order (cyclic if Δ > old)."""

    name = "copy_middle"

    @staticmethod
    def source(old_depth: int, delta: int, j: int) -> int:
        return ((old_depth - delta) // 2 + j) % old_depth


register_growth_operator(CopyMiddle())

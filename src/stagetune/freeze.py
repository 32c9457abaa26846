"""Freeze policies: what trains in phase 1 of a stage, and what work the frozen blocks do.

Phase 1 of a stage trains the blocks the stage added; the blocks below them are frozen. A
:class:`FreezePolicy` decides the rest, and both consequences of that decision live here, so
they cannot disagree:

* its ``requires_grad`` rules (:meth:`FreezePolicy.configure`): the new blocks, the final norm
  and the LM head train; the embeddings train or not per policy; and whether the frozen prefix
  (embeddings and older blocks) runs under ``torch.no_grad()``;
* the work one training step does (:meth:`FreezePolicy.phase1_work`, a :class:`StepWork`),
  which :mod:`stagetune.compute` turns into FLOPs. Autograd runs through a frozen block exactly
  when something below it trains, so the work follows from the rules.

=============== =================================================================================
``new_only``    embeddings frozen and the prefix run under ``no_grad`` and detached: no backward
                pass through it at all (with tied embeddings the shared weight still trains,
                through the LM head only).
``paper``       embeddings stay trainable (arXiv 2411.18700's code), so autograd runs through
                the frozen blocks to reach them (activation gradients only).
``none``        no phase 1: every active block trains throughout (the paper's ablation).
=============== =================================================================================

Policies are stateless; a new one subclasses :class:`FreezePolicy` and is registered with
:func:`register_freeze_policy` (or an entry point in ``stagetune.freeze_policies``). This module
needs no torch: it sets ``requires_grad`` through the modules it is handed.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from stagetune.registry import FREEZE_POLICIES

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "FreezePolicy",
    "ModelParts",
    "NewOnly",
    "NoFreezing",
    "PaperFreezing",
    "StepWork",
    "get_freeze_policy",
    "register_freeze_policy",
]


@dataclass(frozen=True, kw_only=True)
class StepWork:
    """What one training step does to each part of the model.

    The active blocks split, bottom to top, into ``forward_only_blocks`` (run under no_grad, or
    with nothing below them that trains), ``activation_grad_blocks`` (frozen, but autograd
    passes through them to trainable embeddings) and ``trainable_blocks`` (compute weight
    gradients).
    """

    active_depth: int
    forward_only_blocks: int
    activation_grad_blocks: int
    trainable_blocks: int
    head_trainable: bool = True

    def __post_init__(self) -> None:
        parts = self.forward_only_blocks + self.activation_grad_blocks + self.trainable_blocks
        if (
            parts != self.active_depth
            or min(self.forward_only_blocks, self.activation_grad_blocks, self.trainable_blocks) < 0
        ):
            raise ValueError(f"inconsistent StepWork: {self}")

    @classmethod
    def all_trainable(cls, depth: int) -> StepWork:
        """Every active block trains (phase 2, continual, the first stage, the baseline)."""
        return cls(
            active_depth=depth,
            forward_only_blocks=0,
            activation_grad_blocks=0,
            trainable_blocks=depth,
        )


@dataclass(frozen=True, kw_only=True)
class ModelParts:
    """The modules a policy sets ``requires_grad`` on (a family adapter knows where they are)."""

    model: nn.Module
    """The whole model: everything not named below is frozen."""
    blocks: Sequence[nn.Module]
    """All blocks, bottom to top (active and inactive)."""
    embeddings: Sequence[nn.Module]
    """The modules before the first block (token and position embeddings)."""
    head: Sequence[nn.Module]
    """The final norm and the LM head: they always train."""


class FreezePolicy(abc.ABC):
    """What trains in phase 1 of a stage, and what work the frozen blocks do (stateless)."""

    name: ClassVar[str]
    """Registry name (the ``schedule.freeze_policy`` value)."""
    has_phase1: ClassVar[bool] = True
    """False: no phase 1 (every active block trains throughout; a schedule gives phase 1 no
    steps)."""

    @property
    @abc.abstractmethod
    def embeddings_train(self) -> bool:
        """Whether the embeddings train in phase 1 (they always do when every block trains)."""

    @property
    @abc.abstractmethod
    def prefix_without_grad(self) -> bool:
        """Whether the embeddings and the frozen blocks run under ``no_grad`` in phase 1."""

    def phase1_work(self, *, depth: int, prev_depth: int) -> StepWork:
        """The work of a phase-1 step of a stage growing ``prev_depth`` → ``depth``.

        Raises:
            ValueError: the policy has no phase 1, or the depths are not ``0 < prev < depth``.
        """
        self._check_phase1(prev_depth)
        if not 0 < prev_depth < depth:
            raise ValueError(f"phase 1 needs 0 < prev_depth < depth, got {prev_depth}, {depth}")
        # Autograd runs through a frozen block exactly when something below it trains.
        through = self.embeddings_train and not self.prefix_without_grad
        return StepWork(
            active_depth=depth,
            forward_only_blocks=0 if through else prev_depth,
            activation_grad_blocks=prev_depth if through else 0,
            trainable_blocks=depth - prev_depth,
        )

    def configure(self, parts: ModelParts, *, trainable_from: int, active_depth: int) -> bool:
        """Set ``requires_grad`` for a phase in which blocks ``[trainable_from, active_depth)``
        train (``trainable_from`` 0: every active block, e.g. phase 2 or continual training).

        Blocks at or above ``active_depth`` never train (they do not run). Returns whether the
        frozen prefix (embeddings and ``blocks[:trainable_from]``) is to run under ``no_grad``.

        Raises:
            ValueError: ``trainable_from > 0`` for a policy without phase 1.
        """
        phase1 = trainable_from > 0
        if phase1:
            self._check_phase1(trainable_from)
        parts.model.requires_grad_(False)
        for block in parts.blocks[trainable_from:active_depth]:
            block.requires_grad_(True)
        for module in parts.embeddings:
            module.requires_grad_(not phase1 or self.embeddings_train)
        # Head path last: with tied embeddings this re-enables the shared weight.
        for module in parts.head:
            module.requires_grad_(True)
        return phase1 and self.prefix_without_grad

    def _check_phase1(self, trainable_from: int) -> None:
        if not self.has_phase1:
            raise ValueError(
                f"freeze_policy={self.name!r} trains every active block: trainable_from must be "
                f"0, got {trainable_from} (the policy has no phase 1)"
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def register_freeze_policy(policy: FreezePolicy, *, replace: bool = False) -> FreezePolicy:
    """Register ``policy`` under ``policy.name`` (``replace`` to overwrite a registered one)."""
    return FREEZE_POLICIES.register(policy.name, policy, replace=replace)


def get_freeze_policy(name: str) -> FreezePolicy:
    """The registered policy ``name``; unknown -> ConfigError for ``schedule.freeze_policy``."""
    policy: FreezePolicy = FREEZE_POLICIES.get(name)
    return policy


class NewOnly(FreezePolicy):
    """``new_only``: only the new blocks (and the head path) train; no backward through the
    frozen prefix."""

    name = "new_only"
    embeddings_train = False
    prefix_without_grad = True


register_freeze_policy(NewOnly())


class PaperFreezing(FreezePolicy):
    """``paper``: embeddings stay trainable, so autograd runs through the frozen blocks."""

    name = "paper"
    embeddings_train = True
    prefix_without_grad = False


register_freeze_policy(PaperFreezing())


class NoFreezing(FreezePolicy):
    """``none``: no phase 1; every active block trains throughout."""

    name = "none"
    has_phase1 = False
    embeddings_train = True
    prefix_without_grad = False


register_freeze_policy(NoFreezing())

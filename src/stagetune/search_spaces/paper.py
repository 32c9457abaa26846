"""The paper's search space (arXiv 2411.18700): how many uniform stages, how long to continue."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any, ClassVar

from stagetune.search_spaces.base import SearchSpace
from stagetune.search_spaces.context import SpaceContext
from stagetune.search_spaces.registry import register_search_space
from stagetune.search_spaces.trial import TrialLike
from stagetune.trial import TrialDescription

__all__ = ["PaperSpace"]

CONTINUAL_MULTIPLES = (0.0, 0.5, 1.0, 1.5, 2.0)
"""Continual length as multiples of the budget-matched length: the paper studied continual
training well past equal compute, so the space reaches 2×."""
PAPER_T = "T"
"""The ``continual_multiple`` choice of the paper's own continual length: T steps, as many as
the baseline trains (more than 2× the budget-matched length for small S)."""
CONTINUAL_CHOICES: tuple[float | str, ...] = (*CONTINUAL_MULTIPLES, PAPER_T)


class PaperSpace(SearchSpace):
    """S over the divisors of L, L/S layers a stage, the paper's recipe for everything else.

    Random growth, the ``paper`` freeze policy (embeddings and head stay trainable in
    phase 1), each phase T/(2S) steps, AdamW's state kept through growth and unfreezing and a
    fresh optimizer for continual training (``carry_then_reset``), the config's lr and warmup.
    Steps are spread by largest remainder, so the stages always spend exactly T steps (when 2S
    divides T, each phase is exactly T/(2S) steps, as in the paper). Continual training is a
    multiple of the budget-matched length or the paper's own T steps (:data:`PAPER_T`).
    """

    name: ClassVar[str] = "paper"
    max_continual_multiple: ClassVar[float] = max(CONTINUAL_MULTIPLES)
    preferred_sampler: ClassVar[str] = "bruteforce"
    """A small finite grid: TPE would resample points already run, brute force walks each once."""

    def stage_choices(self, ctx: SpaceContext) -> list[int]:
        """Divisors S of L with both paper phases at least one step long (2S ≤ T)."""
        return [
            s
            for s in range(1, ctx.num_layers + 1)
            if ctx.num_layers % s == 0 and (s == 1 or 2 * s <= ctx.baseline_steps)
        ]

    def sample(self, trial: TrialLike, ctx: SpaceContext) -> None:
        if trial.suggest_categorical("num_stages", self.stage_choices(ctx)) > 1:
            trial.suggest_categorical("continual_multiple", CONTINUAL_CHOICES)

    def baseline_point(self, ctx: SpaceContext) -> dict[str, Any]:
        return {"num_stages": 1}

    def grid(self, ctx: SpaceContext) -> list[dict[str, Any]] | None:
        staged = [s for s in self.stage_choices(ctx) if s > 1]
        return [self.baseline_point(ctx)] + [
            {"num_stages": s, "continual_multiple": m}
            for s, m in itertools.product(staged, CONTINUAL_CHOICES)
        ]

    def trial_from(self, params: Mapping[str, Any], ctx: SpaceContext) -> TrialDescription:
        num_stages = int(params["num_stages"])
        continual = params.get("continual_multiple", 0.0)
        paper_t = continual == PAPER_T
        return self.make_trial(
            params,
            ctx,
            increments=[ctx.num_layers // num_stages] * num_stages,
            continual_multiple=0.0 if paper_t else float(continual),
            continual_steps=ctx.baseline_steps if paper_t else None,
            growth="random",
            freeze_policy="paper",
            phase1_fraction=0.5,
            step_spread="uniform",
            optimizer_policy="carry_then_reset",
        )


register_search_space(PaperSpace())

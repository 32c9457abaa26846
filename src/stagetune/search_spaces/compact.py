"""A small finite space for benchmarks and smoke studies: a dozen points, enumerable."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any, ClassVar

from stagetune.schedule import even_increments
from stagetune.search_spaces.base import SearchSpace
from stagetune.search_spaces.context import SpaceContext
from stagetune.search_spaces.registry import register_search_space
from stagetune.search_spaces.trial import TrialLike
from stagetune.trial import TrialDescription

__all__ = ["CompactSpace"]

STAGE_COUNTS = (1, 2, 4)
GROWTHS = ("random", "copy_top", "zero")
"""The paper's operator, stacking-style copying and the function-preserving one."""
CONTINUAL_MULTIPLES = (0.5, 1.0)


class CompactSpace(SearchSpace):
    """S ∈ {1, 2, 4}, growth and continual multiple when S > 1; the rest from the config.

    Uniform increments (L/S, remainder on top); freeze policy, phase split, step spread,
    optimizer policy, lr and warmup all from the config. 13 points for L ≥ 4 and T ≥ 4.
    """

    name: ClassVar[str] = "compact"
    max_continual_multiple: ClassVar[float] = max(CONTINUAL_MULTIPLES)

    def stage_choices(self, ctx: SpaceContext) -> list[int]:
        """The stage counts that fit: at most one stage per layer and per step."""
        return [s for s in STAGE_COUNTS if s <= min(ctx.num_layers, ctx.baseline_steps)]

    def sample(self, trial: TrialLike, ctx: SpaceContext) -> None:
        if trial.suggest_categorical("num_stages", self.stage_choices(ctx)) > 1:
            trial.suggest_categorical("growth", GROWTHS)
            trial.suggest_categorical("continual_multiple", CONTINUAL_MULTIPLES)

    def baseline_point(self, ctx: SpaceContext) -> dict[str, Any]:
        return {"num_stages": 1}

    def grid(self, ctx: SpaceContext) -> list[dict[str, Any]] | None:
        staged = [s for s in self.stage_choices(ctx) if s > 1]
        return [self.baseline_point(ctx)] + [
            {"num_stages": s, "growth": g, "continual_multiple": m}
            for s, g, m in itertools.product(staged, GROWTHS, CONTINUAL_MULTIPLES)
        ]

    def trial_from(self, params: Mapping[str, Any], ctx: SpaceContext) -> TrialDescription:
        num_stages = int(params["num_stages"])
        return self.make_trial(
            params,
            ctx,
            increments=even_increments(ctx.num_layers, num_stages),
            continual_multiple=float(params.get("continual_multiple", 0.0)),
            growth=params.get("growth"),
        )


register_search_space(CompactSpace())

"""A finite space of a few dozen points that a search has to work for: the benchmark's space.

The ``compact`` space has 13 points of which several tie for best, so any search finds one
by luck. Here stage counts, where the first stage ends, growth, continual length and lr
combine into 68 points (for L ≥ 4 layers and T ≥ 4 steps), and lr decides most of a
point's loss, so a sampler that learns from what it ran has something to learn.
"""

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

__all__ = ["LatticeSpace"]

STAGE_COUNTS = (1, 2, 4)
FIRST_DEPTH_FRACTIONS = (0.25, 0.5, 0.75)
"""Where a two-stage schedule's first stage ends, as fractions of the depth L."""
GROWTHS = ("random", "copy_top")
"""The paper's operator and stacking-style copying (``zero`` trains like ``random`` here)."""
CONTINUAL_MULTIPLES = (0.5, 1.0)
LR_FACTORS = (0.5, 1.0, 2.0, 4.0)
"""lr = the config's lr × one of these, for every stage count (the baseline: × 1)."""


class LatticeSpace(SearchSpace):
    """S ∈ {1, 2, 4} × (S = 2: first stage at L/4, L/2 or 3L/4) × growth × continual
    multiple × lr factor; freeze policy, phase split, step spread, warmup from the config.

    Four stages grow uniformly (L/4 each, remainder on top).
    """

    name: ClassVar[str] = "lattice"
    max_continual_multiple: ClassVar[float] = max(CONTINUAL_MULTIPLES)

    def stage_choices(self, ctx: SpaceContext) -> list[int]:
        """The stage counts that fit: at most one stage per layer and per step."""
        return [s for s in STAGE_COUNTS if s <= min(ctx.num_layers, ctx.baseline_steps)]

    def first_depths(self, ctx: SpaceContext) -> list[int]:
        """The first stage's depths a two-stage schedule may take (1 … L − 1, distinct)."""
        n = ctx.num_layers
        return sorted({min(n - 1, max(1, round(n * f))) for f in FIRST_DEPTH_FRACTIONS})

    def sample(self, trial: TrialLike, ctx: SpaceContext) -> None:
        num_stages = trial.suggest_categorical("num_stages", self.stage_choices(ctx))
        if num_stages > 1:
            if num_stages == 2:
                trial.suggest_categorical("first_depth", self.first_depths(ctx))
            trial.suggest_categorical("growth", GROWTHS)
            trial.suggest_categorical("continual_multiple", CONTINUAL_MULTIPLES)
        trial.suggest_categorical("lr_factor", LR_FACTORS)

    def baseline_point(self, ctx: SpaceContext) -> dict[str, Any]:
        return {"num_stages": 1, "lr_factor": 1.0}

    def grid(self, ctx: SpaceContext) -> list[dict[str, Any]] | None:
        points = [self.baseline_point(ctx)]
        points += [{"num_stages": 1, "lr_factor": f} for f in LR_FACTORS if f != 1.0]
        for s in self.stage_choices(ctx):
            if s == 1:
                continue
            shapes = [{"first_depth": d} for d in self.first_depths(ctx)] if s == 2 else [{}]
            for shape, g, m, f in itertools.product(
                shapes, GROWTHS, CONTINUAL_MULTIPLES, LR_FACTORS
            ):
                points.append(
                    {"num_stages": s, **shape, "growth": g, "continual_multiple": m, "lr_factor": f}
                )
        return points

    def trial_from(self, params: Mapping[str, Any], ctx: SpaceContext) -> TrialDescription:
        num_stages = int(params["num_stages"])
        if num_stages == 2:
            first = int(params["first_depth"])
            increments = [first, ctx.num_layers - first]
        else:
            increments = even_increments(ctx.num_layers, num_stages)
        return self.make_trial(
            params,
            ctx,
            increments=increments,
            continual_multiple=float(params.get("continual_multiple", 0.0)),
            lr=ctx.base_lr * float(params["lr_factor"]),
            growth=params.get("growth"),
        )


register_search_space(LatticeSpace())

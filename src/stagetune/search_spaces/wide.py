"""The wide space: non-uniform growth, every operator and freeze policy, lr and warmup."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from stagetune.freeze import get_freeze_policy
from stagetune.schedule import even_increments
from stagetune.search_spaces.base import SearchSpace, suggest_increments
from stagetune.search_spaces.context import SpaceContext
from stagetune.search_spaces.registry import register_search_space
from stagetune.search_spaces.trial import ParamsTrial, TrialLike
from stagetune.trial import TrialDescription

__all__ = ["WideSpace"]

MAX_STAGES = 6
GROWTHS = ("random", "copy_top", "stack", "copy_middle", "zero")
"""The growth operators the space searches: the built-ins, in a fixed order. A space's choices
are part of its definition (Optuna refuses a study whose categorical choices change, and the
order decides what a seeded sampler draws), so an installed plugin does not join them: a
plugin operator is chosen with ``schedule.growth`` or searched by a space of its own."""
POLICIES = ("new_only", "paper", "none")
"""The freeze policies the space searches (the built-ins, fixed like :data:`GROWTHS`)."""
PHASE1_RANGE = (0.1, 0.9)
STEP_SPREADS = ("uniform", "depth")
LR_FACTOR = 4.0
"""lr is searched log-uniformly in [base / 4, base × 4]."""
WARMUP_FRACTION = 0.1
"""Warmup is searched in [0, T / 10] steps (widened to include the config's warmup)."""


class WideSpace(SearchSpace):
    """Stage count 1…min(L, 6), any composition of L, and the knobs the paper fixed.

    With S = 1 only lr and warmup are sampled: TPE returning there with another lr gives a
    legitimate lr-tuned full-depth competitor to the baseline.
    """

    name: ClassVar[str] = "wide"
    max_continual_multiple: ClassVar[float] = 1.0

    def max_stages(self, ctx: SpaceContext) -> int:
        """At most 6 stages, one layer and one step each."""
        return min(ctx.num_layers, MAX_STAGES, ctx.baseline_steps)

    def warmup_high(self, ctx: SpaceContext) -> int:
        # Widened to the config's warmup so the baseline point is always inside the space.
        return max(int(ctx.baseline_steps * WARMUP_FRACTION), ctx.base_warmup)

    def increments(self, trial: TrialLike, ctx: SpaceContext, num_stages: int) -> list[int]:
        """Uniform (flag) or any composition; no flag where only one composition exists."""
        if num_stages == 1:
            return [ctx.num_layers]
        if num_stages == ctx.num_layers:
            return [1] * num_stages
        if trial.suggest_categorical("uniform_increments", (True, False)):
            return even_increments(ctx.num_layers, num_stages)
        return suggest_increments(trial, ctx.num_layers, num_stages)

    def sample(self, trial: TrialLike, ctx: SpaceContext) -> None:
        num_stages = trial.suggest_int("num_stages", 1, self.max_stages(ctx))
        if num_stages > 1:
            self.increments(trial, ctx, num_stages)
            freeze = trial.suggest_categorical("freeze_policy", POLICIES)
            if get_freeze_policy(freeze).has_phase1:  # else there is no split to choose
                trial.suggest_float("phase1_fraction", *PHASE1_RANGE)
            trial.suggest_categorical("step_spread", STEP_SPREADS)
            trial.suggest_categorical("growth", GROWTHS)
            trial.suggest_float("continual_multiple", 0.0, self.max_continual_multiple)
        trial.suggest_float("lr", ctx.base_lr / LR_FACTOR, ctx.base_lr * LR_FACTOR, log=True)
        trial.suggest_int("warmup_steps", 0, self.warmup_high(ctx))

    def baseline_point(self, ctx: SpaceContext) -> dict[str, Any]:
        return {"num_stages": 1, "lr": ctx.base_lr, "warmup_steps": ctx.base_warmup}

    def trial_from(self, params: Mapping[str, Any], ctx: SpaceContext) -> TrialDescription:
        num_stages = int(params["num_stages"])
        return self.make_trial(
            params,
            ctx,
            # Replaying the validated params reuses the sampling code: one rule, not two.
            increments=self.increments(ParamsTrial(params), ctx, num_stages),
            continual_multiple=float(params.get("continual_multiple", 0.0)),
            lr=float(params["lr"]),
            warmup_steps=int(params["warmup_steps"]),
            growth=params.get("growth"),
            freeze_policy=params.get("freeze_policy"),
            phase1_fraction=params.get("phase1_fraction"),
            step_spread=params.get("step_spread"),
        )


register_search_space(WideSpace())

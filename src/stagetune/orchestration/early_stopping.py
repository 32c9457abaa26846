"""A study's early stopping: ASHA with rungs at fractions of the compute budget, in one unit.

ASHA reads one cumulative-FLOPs metric (its ``time_attr``) and places its rungs at
``grace_period × reduction_factor^k`` of it, up to ``max_t``. All three are in the FLOPs
convention the study matches budgets in (``budget.convention``): ``flops`` for ``standard``,
``flops_paper`` for ``paper``. That unit rather than always ``flops``, because:

- A rung compares schedules at equal compute, and the matching convention is what "equal
  compute" means in the study: every schedule's continual length is chosen so that it spends
  the budget in that convention.
- ``max_t`` caps the rungs. In the matching convention every schedule's total is bounded by
  construction (budget × (1 + the space's largest continual multiple)), so the rungs span what
  schedules can spend. The other convention's total is not bounded by it: the two conventions'
  ratio differs between schedules (the paper's leaves out embeddings, attention and the head,
  which weigh most in shallow stages, and any backward through frozen blocks).
"""

from __future__ import annotations

from stagetune.config import SearchConfig
from stagetune.metrics import FLOPS_BY_CONVENTION
from stagetune.orchestration.searcher import BaselineKeepingASHA
from stagetune.search_spaces import SearchSpace, SpaceContext

__all__ = ["MAX_T_MARGIN", "make_asha", "rung_metric"]

MAX_T_MARGIN = 1.05
"""``max_t`` over the longest schedule's planned compute: room for the rounding of step counts."""


def rung_metric(ctx: SpaceContext) -> str:
    """The cumulative-FLOPs metric ASHA's rungs are placed on: the matching convention's."""
    return FLOPS_BY_CONVENTION[ctx.convention]


def make_asha(
    search: SearchConfig, space: SearchSpace, ctx: SpaceContext, *, metric: str
) -> BaselineKeepingASHA | None:
    """The study's ASHA on ``metric`` (minimised), or None when early stopping is off.

    Multi-objective studies are never stopped early (ASHA ranks by one metric).
    """
    if not search.early_stopping or search.multi_objective:
        return None
    budget = ctx.budget_flops  # in ctx.convention, the unit of time_attr below
    max_t = budget * (1.0 + space.max_continual_multiple) * MAX_T_MARGIN + 1.0
    return BaselineKeepingASHA(
        time_attr=rung_metric(ctx),
        metric=metric,
        mode="min",
        max_t=int(max_t),
        grace_period=max(1, int(search.grace_fraction * budget)),
        reduction_factor=search.reduction_factor,
        stop_last_trials=False,
    )

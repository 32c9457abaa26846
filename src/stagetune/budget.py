"""The budget rule: the compute budget must hold the baseline and a schedule's stages.

The budget is the baseline's training FLOPs × ``budget.factor``. Every comparison is at equal
compute against the baseline (T steps at full depth), and a schedule's continual phase spends
what its stages left of the budget. A budget that the baseline itself exceeds (a factor below 1)
or that a schedule's stages alone exceed makes "equal compute" false for that run, and the
continual phase would have a negative length. Such a configuration is refused, naming the
smallest factor that fits: by the config (the baseline part), and by budget matching (the
stages part), which ``estimate``, ``train``, the search spaces and the study all go through.
A schedule may still spend *more* than the budget on purpose: a continual phase the user set
(``schedule.continual_steps``, or a ``continual_multiple`` above 1) is shown with its total
cost, never trimmed.
"""

from __future__ import annotations

import math

from stagetune.errors import ConfigError

__all__ = [
    "MAX_BUDGET_FACTOR",
    "MAX_CONTINUAL_MULTIPLE",
    "MIN_BUDGET_FACTOR",
    "check_budget_factor",
    "smallest_budget_factor",
]

_FIELD = "budget.factor"
MIN_BUDGET_FACTOR = 1.0
"""The baseline spends exactly 1 × its own compute: no smaller budget holds it."""
MAX_BUDGET_FACTOR = 100.0
"""A larger budget trains a continual phase of more than 99 × the baseline's steps: that is a
longer baseline (``schedule.baseline_steps``), not a bigger budget."""
MAX_CONTINUAL_MULTIPLE = 10.0
"""Most multiples of the budget-matched continual length: beyond that, raise the budget."""
# Two FLOP totals computed along different paths may differ in the last bits.
_REL_TOL = 1e-9


def smallest_budget_factor(stages_ratio: float = 0.0) -> float:
    """The smallest budget factor holding the baseline and stages costing ``stages_ratio`` ×
    the baseline's compute."""
    return max(MIN_BUDGET_FACTOR, stages_ratio)


def check_budget_factor(
    factor: float, *, stages_ratio: float | None = None, schedule_label: str = ""
) -> None:
    """Refuse a budget factor that does not hold the baseline (and, when ``stages_ratio`` is
    given, the stages of ``schedule_label``), or that is past :data:`MAX_BUDGET_FACTOR`."""
    if factor > MAX_BUDGET_FACTOR:
        raise ConfigError(
            _FIELD,
            factor,
            f"a budget above {MAX_BUDGET_FACTOR:g}× the baseline's compute would train a "
            f"continual phase of more than {MAX_BUDGET_FACTOR - 1:g}× its steps; to train "
            "longer, raise schedule.baseline_steps instead",
        )
    need = smallest_budget_factor(stages_ratio or 0.0)
    if factor >= need * (1 - _REL_TOL):
        return
    # Rounded up, so the factor the message names really fits.
    fits = math.ceil(need * 10_000 * (1 - _REL_TOL)) / 10_000
    if stages_ratio is not None and stages_ratio > MIN_BUDGET_FACTOR:
        label = f" ({schedule_label})" if schedule_label else ""
        why = (
            f"the schedule's stages{label} alone spend {stages_ratio:.4f}× the baseline's "
            "compute, over the budget"
        )
    else:
        why = (
            "a budget below the baseline's own compute leaves the baseline (the reference every "
            "schedule is compared with) over budget"
        )
    raise ConfigError(_FIELD, factor, f"{why}; the smallest factor that fits is {fits:g}")

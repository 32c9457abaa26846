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

:class:`Budget` is budget matching: the baseline's FLOPs, the budget, and the continual length
that spends what a schedule's stages saved. Its tests are the paper's closed forms
(``tests/test_budget.py``). The schedule built from a budget is
:func:`stagetune.schedule.budgeted_schedule`, the one recipe of ``train``, ``estimate`` and every
search space.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Final

from stagetune.compute import ModelDims, StepWork, step_flops
from stagetune.errors import ConfigError

__all__ = [
    "FLOPS_REL_TOL",
    "MAX_BUDGET_FACTOR",
    "MAX_CONTINUAL_MULTIPLE",
    "MIN_BUDGET_FACTOR",
    "Budget",
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
FLOPS_REL_TOL: Final = 1e-9
"""Two FLOP totals computed along different paths (a sum of steps, a product) may differ in
their last bits: comparisons of FLOPs, and step counts derived from them, allow this much."""


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
    if factor >= need * (1 - FLOPS_REL_TOL):
        return
    # Rounded up, so the factor the message names really fits.
    fits = math.ceil(need * 10_000 * (1 - FLOPS_REL_TOL)) / 10_000
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


@dataclass(frozen=True, kw_only=True)
class Budget:
    """A study's compute budget in one FLOPs convention: the baseline (``baseline_steps`` steps
    at depth ``num_layers``, every block training) × ``factor``."""

    num_layers: int
    """Target depth L."""
    baseline_steps: int
    """T: steps of the full-depth baseline."""
    dims: ModelDims
    tokens_per_step: int
    convention: str = "standard"
    """FLOPs convention the budget is counted in (a name in :data:`stagetune.registry.CONVENTIONS`)."""
    factor: float = 1.0
    """``budget.factor``: the budget as a multiple of the baseline's compute."""

    def in_convention(self, convention: str) -> Budget:
        """The same budget counted in ``convention``."""
        return replace(self, convention=convention)

    @property
    def full_step_flops(self) -> float:
        """FLOPs of one full-depth step with every block training (a baseline or continual
        step; the same for every freeze policy)."""
        work = StepWork.all_trainable(self.num_layers)
        return step_flops(self.dims, work, tokens=self.tokens_per_step, convention=self.convention)

    @property
    def baseline_flops(self) -> float:
        """Training FLOPs of the full-depth baseline: T full-depth steps."""
        return self.baseline_steps * self.full_step_flops

    @property
    def budget_flops(self) -> float:
        """The compute every schedule is matched to: baseline × factor."""
        return self.baseline_flops * self.factor

    def continual_steps(self, stages_flops: float, *, schedule_label: str = "") -> int:
        """Full-depth steps that bring stages costing ``stages_flops`` up to the budget.

        Floors, so the schedule never spends more than the budget. A budget that the baseline
        or the stages alone exceed is refused (:func:`check_budget_factor`, naming
        ``schedule_label``).
        """
        base = self.baseline_flops
        check_budget_factor(
            self.factor, stages_ratio=stages_flops / base, schedule_label=schedule_label
        )
        # The exact-equality case must not lose a step to float rounding.
        steps = (self.factor * base - stages_flops) / self.full_step_flops + FLOPS_REL_TOL
        return max(0, math.floor(steps))

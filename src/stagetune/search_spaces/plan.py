"""What one trial trains: the schedule, its optimiser knobs, and the params that chose them."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from stagetune.schedule import Schedule

__all__ = ["TrialPlan", "recipe_key"]


def recipe_key(schedule: Schedule, *, lr: float, warmup_steps: int) -> str:
    """A stable id of (schedule, lr, warmup): equal for the same training recipe on any seed.

    A digest of canonical JSON, so it is the same across processes and Python versions
    (unlike ``hash``) and ignores ``Schedule.meta`` (provenance, not recipe).
    """
    recipe = schedule.to_dict()
    recipe.pop("meta", None)
    payload = json.dumps(
        {"schedule": recipe, "lr": float(lr), "warmup_steps": int(warmup_steps)},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True, kw_only=True)
class TrialPlan:
    """A search space's answer to one set of params (see ``SearchSpace.build``)."""

    schedule: Schedule
    lr: float
    """Peak learning rate."""
    warmup_steps: int
    params: dict[str, Any]
    """The flat Optuna params the plan was built from (only those the space used)."""
    is_baseline: bool
    """The study's reference run: one stage at the config's lr and warmup."""
    schedule_key: str
    """Groups the seeds of one recipe: :func:`recipe_key` of (schedule, lr, warmup)."""

    @property
    def label(self) -> str:
        """Short human-readable name, e.g. ``S2[2-2] copy_top/new_only +40c lr=0.003``."""
        if self.is_baseline:
            return "baseline"
        return f"{self.schedule.label()} lr={self.lr:.3g} wu={self.warmup_steps}"

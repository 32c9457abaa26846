"""One trial's description: what it trains, on which seed, and which search point chose it.

A :class:`TrialDescription` is built once per trial — by a search space from the searcher's
params (in orchestration, at the Tune trainable's edge), or from the config for
``stagetune train`` — and handed to the trainable as a typed value. It is plain data: it goes
to Ray Train workers as JSON (:meth:`TrialDescription.to_dict`) and into Tune's pickled state.
Its :attr:`~TrialDescription.key` groups the seeds of one recipe and its
:attr:`~TrialDescription.label` names it in MLflow, the report and the progress line.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from stagetune.config import ExperimentConfig
from stagetune.schedule import BASELINE_LABEL, Schedule

__all__ = [
    "PHASES",
    "PHASE_CONFIRMATION",
    "PHASE_REFERENCE",
    "PHASE_SEARCH",
    "TrialDescription",
    "recipe_key",
]

PHASE_SEARCH = "search"
"""A trial the searcher sampled (the configured baseline included)."""
PHASE_REFERENCE = "reference"
"""A trial of the reference sweep: the full-depth schedule at another learning rate."""
PHASE_CONFIRMATION = "confirmation"
"""A trial of the confirmation round: a chosen recipe again, on a further seed."""
PHASES = (PHASE_SEARCH, PHASE_REFERENCE, PHASE_CONFIRMATION)


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
class TrialDescription:
    """Everything that distinguishes one trial of a study from another.

    What the study shares (the config, the tokenizer's vocabulary) travels beside it.
    """

    schedule: Schedule
    lr: float
    """Peak learning rate."""
    warmup_steps: int
    seed: int
    """Seeds the model's initialisation, the data order and growth."""
    is_baseline: bool = False
    """The study's reference run: one stage at the config's lr and warmup."""
    params: dict[str, Any] = field(default_factory=dict)
    """The flat search params the trial was built from (only those its space used)."""
    name: str = "trial"
    """The trial's name (Tune's trial name, or the config's name for ``stagetune train``)."""
    phase: str = PHASE_SEARCH
    """Which part of a study ran it: :data:`PHASE_SEARCH`, :data:`PHASE_REFERENCE` or
    :data:`PHASE_CONFIRMATION` (a tag, not part of the recipe: :attr:`key` ignores it)."""

    @property
    def is_full_depth(self) -> bool:
        """One stage at full depth: the baseline, a reference-sweep lr, or a sampled one."""
        return self.schedule.is_baseline

    @property
    def key(self) -> str:
        """Groups the seeds of one recipe: :func:`recipe_key` of (schedule, lr, warmup)."""
        return recipe_key(self.schedule, lr=self.lr, warmup_steps=self.warmup_steps)

    @property
    def label(self) -> str:
        """Short human-readable name, e.g. ``S2[2-2] copy_top/new_only +40c lr=0.003``."""
        if self.is_baseline:
            return BASELINE_LABEL
        if self.schedule.is_baseline:
            return f"full-depth lr={self.lr:.3g} wu={self.warmup_steps}"
        return f"{self.schedule.label()} lr={self.lr:.3g}"

    @classmethod
    def from_config(cls, cfg: ExperimentConfig, *, schedule: Schedule) -> TrialDescription:
        """Training ``schedule`` with the config's own lr, warmup and seed (``stagetune train``;
        a search builds its trials from the sampled params instead)."""
        return cls(
            schedule=schedule,
            lr=cfg.train.lr,
            warmup_steps=cfg.train.warmup_steps,
            seed=cfg.train.seed,
            is_baseline=schedule.is_baseline,
            name=cfg.name,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types only (:meth:`from_dict` reads it back)."""
        return {
            "schedule": self.schedule.to_dict(),
            "lr": self.lr,
            "warmup_steps": self.warmup_steps,
            "seed": self.seed,
            "is_baseline": self.is_baseline,
            "params": dict(self.params),
            "name": self.name,
            "phase": self.phase,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrialDescription:
        return cls(
            schedule=Schedule.from_dict(data["schedule"]),
            lr=float(data["lr"]),
            warmup_steps=int(data["warmup_steps"]),
            seed=int(data["seed"]),
            is_baseline=bool(data.get("is_baseline", False)),
            params=dict(data.get("params", {})),
            name=str(data.get("name", "trial")),
            phase=str(data.get("phase", PHASE_SEARCH)),
        )

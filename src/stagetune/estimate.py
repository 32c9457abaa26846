"""What a configured schedule costs, without training: ``stagetune estimate``'s numbers.

The schedule is the one ``stagetune train`` would run (:func:`stagetune.schedule.build_schedule`);
its cost is shown phase by phase in every FLOPs convention, next to the baseline's and the
budget's, with the continual length that would match the budget exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from stagetune.budget import Budget
from stagetune.config import ExperimentConfig
from stagetune.registry import CONVENTIONS
from stagetune.schedule import Schedule, build_schedule, config_budget

__all__ = ["ConventionEstimate", "Estimate", "PhaseCost", "estimate"]


@dataclass(frozen=True, kw_only=True)
class PhaseCost:
    """One phase of the schedule and its total training FLOPs."""

    stage: int
    phase: str
    depth: int
    steps: int
    flops: float


@dataclass(frozen=True, kw_only=True)
class ConventionEstimate:
    """The schedule's cost against the baseline's and the budget's, in one convention."""

    baseline_flops: float
    budget_flops: float
    incremental_flops: float
    """The stages alone (no continual phase)."""
    ratio: float
    """Stages ÷ baseline."""
    continual_steps_matched: int
    """Continual steps that bring the stages up to the budget."""
    total_flops: float
    total_ratio: float
    phases: tuple[PhaseCost, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "baseline_flops": self.baseline_flops,
            "budget_flops": self.budget_flops,
            "incremental_flops": self.incremental_flops,
            "ratio": self.ratio,
            "continual_steps_matched": self.continual_steps_matched,
            "total_flops": self.total_flops,
            "total_ratio": self.total_ratio,
            "phases": [vars(ph) for ph in self.phases],
        }


@dataclass(frozen=True, kw_only=True)
class Estimate:
    """``stagetune estimate``: the schedule ``train`` runs and its cost in every convention."""

    model: str
    tokens_per_step: int
    baseline_steps: int
    schedule: Schedule
    budget_factor: float
    convention: str
    """The convention budgets are matched in (``budget.convention``)."""
    continual_source: str
    """Where the schedule's continual length comes from, for the reader."""
    conventions: dict[str, ConventionEstimate]
    """Every convention, the matching one first."""

    @property
    def chosen(self) -> ConventionEstimate:
        return self.conventions[self.convention]

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` document: every convention, and the matching one's numbers on top."""
        chosen = self.chosen.to_dict()
        chosen.pop("phases")
        return {
            "model": self.model,
            "tokens_per_step": self.tokens_per_step,
            "baseline_steps": self.baseline_steps,
            "schedule": self.schedule.to_dict(),
            "continual_steps": self.schedule.continual_steps,
            "budget_factor": self.budget_factor,
            "conventions": {name: c.to_dict() for name, c in self.conventions.items()},
            "convention": self.convention,
            **chosen,
        }


def estimate(cfg: ExperimentConfig, *, vocab_size: int | None = None) -> Estimate:
    """The cost of the schedule ``cfg`` describes (``vocab_size``: default the config's own, as
    no tokenizer is trained for an estimate; it moves FLOPs a little)."""
    vocab = vocab_size or cfg.model.vocab_size or cfg.data.vocab_size
    sched = build_schedule(cfg, vocab_size=vocab)
    stages_only = sched.with_continual(0)
    order = [cfg.budget.convention] + [c for c in CONVENTIONS.names() if c != cfg.budget.convention]
    conventions: dict[str, ConventionEstimate] = {}
    for conv in order:
        budget = config_budget(cfg, vocab_size=vocab, convention=conv)
        phases = tuple(
            PhaseCost(stage=ph.stage, phase=ph.kind, depth=ph.depth, steps=ph.steps, flops=f)
            for ph, f in sched.phase_flops(
                budget.dims, tokens_per_step=budget.tokens_per_step, convention=conv
            )
        )
        base, stages = budget.baseline_flops, _flops(stages_only, budget)
        total = _flops(sched, budget)
        conventions[conv] = ConventionEstimate(
            baseline_flops=base,
            budget_flops=budget.budget_flops,
            incremental_flops=stages,
            ratio=stages / base,
            continual_steps_matched=budget.continual_steps(
                stages, schedule_label=stages_only.label()
            ),
            total_flops=total,
            total_ratio=total / base,
            phases=phases,
        )
    m = cfg.model
    return Estimate(
        model=f"{m.family} L={m.n_layer} d={m.n_embd} V={vocab}",
        tokens_per_step=cfg.train.batch_size * cfg.data.seq_len,
        baseline_steps=cfg.schedule.baseline_steps,
        schedule=sched,
        budget_factor=cfg.budget.factor,
        convention=cfg.budget.convention,
        continual_source=_continual_source(cfg, sched),
        conventions=conventions,
    )


def _flops(schedule: Schedule, budget: Budget) -> float:
    return schedule.flops(
        budget.dims, tokens_per_step=budget.tokens_per_step, convention=budget.convention
    )


def _continual_source(cfg: ExperimentConfig, sched: Schedule) -> str:
    sc = cfg.schedule
    if sc.continual_steps is not None:
        return "schedule.continual_steps"
    if sched.num_stages == 1:
        return "the baseline has none"
    if sc.continual_multiple != 1.0:
        return f"{sc.continual_multiple:g}× the budget-matched length"
    return "budget-matched"

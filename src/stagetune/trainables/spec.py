"""The typed description of one trial, converted once from Ray's config dict at the trainable's edge."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from stagetune.compute import ModelDims
from stagetune.config import ExperimentConfig, config_from_dict, config_to_dict
from stagetune.models import model_dims
from stagetune.schedule import Schedule, baseline_schedule

__all__ = ["TrialSpec"]


@dataclass(frozen=True, kw_only=True)
class TrialSpec:
    """Everything a worker needs to train one schedule; plain-dict round-trippable for Ray."""

    config: ExperimentConfig
    schedule: Schedule
    lr: float
    warmup_steps: int
    seed: int
    vocab_size: int
    is_baseline: bool = False
    trial_name: str = "trial"
    params: dict[str, Any] = field(default_factory=dict)
    """The search parameters that produced the schedule (for tracking)."""

    @property
    def dims(self) -> ModelDims:
        return model_dims(
            self.config.model, vocab_size=self.vocab_size, seq_len=self.config.data.seq_len
        )

    @property
    def tokens_per_step(self) -> int:
        return self.config.train.batch_size * self.config.data.seq_len

    @property
    def baseline_flops(self) -> float:
        base = baseline_schedule(self.config.model.n_layer, self.config.schedule.baseline_steps)
        return base.flops(self.dims, tokens_per_step=self.tokens_per_step)

    @property
    def budget_flops(self) -> float:
        """The study's budget (standard convention): baseline compute × budget factor."""
        return self.baseline_flops * self.config.budget.factor

    @property
    def eval_interval_flops(self) -> float:
        """Evaluations sit at multiples of this, identical for every schedule of a study."""
        return self.budget_flops / self.config.train.eval_points

    @classmethod
    def from_config(
        cls, cfg: ExperimentConfig, *, schedule: Schedule, vocab_size: int
    ) -> TrialSpec:
        """The spec of training ``schedule`` with the config's own lr, warmup and seed
        (``stagetune train``; a search builds its specs from the sampled params instead)."""
        return cls(
            config=cfg,
            schedule=schedule,
            lr=cfg.train.lr,
            warmup_steps=cfg.train.warmup_steps,
            seed=cfg.train.seed,
            vocab_size=vocab_size,
            is_baseline=schedule.is_baseline,
            trial_name=cfg.name,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": config_to_dict(self.config),
            "schedule": self.schedule.to_dict(),
            "lr": self.lr,
            "warmup_steps": self.warmup_steps,
            "seed": self.seed,
            "vocab_size": self.vocab_size,
            "is_baseline": self.is_baseline,
            "trial_name": self.trial_name,
            "params": dict(self.params),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrialSpec:
        return cls(
            config=config_from_dict(data["config"], check_names=False),
            schedule=Schedule.from_dict(data["schedule"]),
            lr=float(data["lr"]),
            warmup_steps=int(data["warmup_steps"]),
            seed=int(data["seed"]),
            vocab_size=int(data["vocab_size"]),
            is_baseline=bool(data.get("is_baseline", False)),
            trial_name=str(data.get("trial_name", "trial")),
            params=dict(data.get("params", {})),
        )

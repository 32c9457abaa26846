"""The study-wide facts every search space needs: depth, step budget, FLOPs model, defaults."""

from __future__ import annotations

from dataclasses import dataclass

from stagetune.budget import Budget, check_budget_factor
from stagetune.compute import ModelDims
from stagetune.config import ExperimentConfig
from stagetune.errors import ConfigError, suggest
from stagetune.registry import (
    CONVENTIONS,
    FREEZE_POLICIES,
    GROWTH_OPERATORS,
    OPTIMIZER_POLICIES,
)
from stagetune.schedule import config_budget

__all__ = ["SpaceContext"]


@dataclass(frozen=True, kw_only=True)
class SpaceContext:
    """Everything a :class:`~stagetune.search_spaces.SearchSpace` reads besides the params.

    One context per study: spaces are stateless, so the same space object serves studies of
    different models. The ``growth`` … ``optimizer_policy`` fields are the config's schedule
    knobs, used wherever a space does not search that knob itself.
    """

    num_layers: int
    """Target depth L."""
    baseline_steps: int
    """T: steps of the full-depth baseline; the stages of every schedule share them."""
    dims: ModelDims
    tokens_per_step: int
    convention: str = "standard"
    """FLOPs convention used for budget matching (``standard`` or ``paper``)."""
    budget_factor: float = 1.0
    base_lr: float
    base_warmup: int = 0
    base_seed: int = 0
    """The config's seed: the seed of every trial the space builds (a seed repeat replaces it)."""
    growth: str = "random"
    freeze_policy: str = "new_only"
    phase1_fraction: float = 0.5
    step_spread: str = "uniform"
    optimizer_policy: str = "reset"

    def __post_init__(self) -> None:
        # Contexts are also built by hand (tests, notebooks): check what the config would.
        checks: list[tuple[bool, str, object, str]] = [
            (self.num_layers >= 1, "model.n_layer", self.num_layers, "use a depth of at least 1"),
            (
                self.dims.n_layer == self.num_layers,
                "model.n_layer",
                self.dims.n_layer,
                f"dims.n_layer must equal num_layers={self.num_layers}",
            ),
            (self.baseline_steps >= 1, "schedule.baseline_steps", self.baseline_steps, "use >= 1"),
            (self.tokens_per_step >= 1, "train.batch_size", self.tokens_per_step, "use >= 1"),
            (self.base_lr > 0, "train.lr", self.base_lr, "use a positive learning rate"),
            (self.base_warmup >= 0, "train.warmup_steps", self.base_warmup, "use >= 0"),
            (
                0.0 <= self.phase1_fraction < 1.0,
                "schedule.phase1_fraction",
                self.phase1_fraction,
                "use a fraction in [0, 1)",
            ),
        ]
        for ok, field_name, value, fix in checks:
            if not ok:
                raise ConfigError(field_name, value, fix)
        # The budget holds the baseline, so it holds every point's stages (no stage count or
        # split spends more than T steps at full depth): no space samples an over-budget point.
        check_budget_factor(self.budget_factor)
        for registry, name in (
            (CONVENTIONS, self.convention),
            (GROWTH_OPERATORS, self.growth),
            (FREEZE_POLICIES, self.freeze_policy),
        ):
            registry.check(name)
        choices: list[tuple[str, str, tuple[str, ...]]] = [
            ("schedule.step_spread", self.step_spread, ("uniform", "depth")),
            ("schedule.optimizer_policy", self.optimizer_policy, OPTIMIZER_POLICIES),
        ]
        for field_name, value, options in choices:
            if value not in options:
                raise ConfigError(field_name, value, suggest(value, options))

    @classmethod
    def from_config(cls, cfg: ExperimentConfig, *, vocab_size: int) -> SpaceContext:
        """The context of the study ``cfg`` describes (``vocab_size``: the tokenizer's)."""
        sc = cfg.schedule
        # The budget `train` matches schedules to, so budgets agree with `train`.
        budget = config_budget(cfg, vocab_size=vocab_size)
        return cls(
            num_layers=budget.num_layers,
            baseline_steps=budget.baseline_steps,
            dims=budget.dims,
            tokens_per_step=budget.tokens_per_step,
            convention=budget.convention,
            budget_factor=budget.factor,
            base_lr=cfg.train.lr,
            base_warmup=cfg.train.warmup_steps,
            base_seed=cfg.train.seed,
            growth=sc.growth,
            freeze_policy=sc.freeze_policy,
            phase1_fraction=sc.phase1_fraction,
            step_spread=sc.step_spread,
            optimizer_policy=sc.optimizer_policy,
        )

    @property
    def budget(self) -> Budget:
        """The study's budget, in the convention budgets are matched in."""
        return Budget(
            num_layers=self.num_layers,
            baseline_steps=self.baseline_steps,
            dims=self.dims,
            tokens_per_step=self.tokens_per_step,
            convention=self.convention,
            factor=self.budget_factor,
        )

    @property
    def baseline_flops(self) -> float:
        """Training FLOPs of the full-depth baseline (T steps at depth L)."""
        return self.budget.baseline_flops

    @property
    def budget_flops(self) -> float:
        """The compute budget every schedule is matched to: baseline × budget factor."""
        return self.budget.budget_flops

    @property
    def full_step_flops(self) -> float:
        """FLOPs of one full-depth, all-trainable step (a continual step)."""
        return self.budget.full_step_flops

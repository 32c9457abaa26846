"""Schedules: stages of growing depth, their phases, the baseline, and the one recipe that
turns layer increments into a schedule within the budget.

A :class:`Schedule` is an ordered tuple of :class:`Stage` (stage i ends at depth d_i, with
``phase1_steps`` training the new blocks and ``phase2_steps`` training all active blocks) plus
``continual_steps`` at full depth. The baseline is the one-stage schedule d_1 = L.
:func:`budgeted_schedule` is the recipe ``stagetune train``, ``stagetune estimate`` and every
search space build schedules with; :func:`build_schedule` feeds it a config. One cohesive thing:
the schedule, its views, and how one is built.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Final

from stagetune.budget import Budget
from stagetune.compute import ModelDims, step_flops, step_work
from stagetune.config import ExperimentConfig
from stagetune.errors import ConfigError, suggest
from stagetune.freeze import get_freeze_policy
from stagetune.registry import FREEZE_POLICIES, GROWTH_OPERATORS, OPTIMIZER_POLICIES

__all__ = [
    "BASELINE_LABEL",
    "Phase",
    "Schedule",
    "Stage",
    "baseline_schedule",
    "budgeted_schedule",
    "build_schedule",
    "config_budget",
    "even_increments",
    "from_increments",
    "split_steps",
]

BASELINE_LABEL: Final = "baseline"
"""The label of the full-depth baseline, in schedules, trials, tracking and reports."""


@dataclass(frozen=True, kw_only=True)
class Stage:
    """One stage: grow to ``depth``, train new blocks, then all active blocks."""

    depth: int
    phase1_steps: int
    phase2_steps: int

    @property
    def steps(self) -> int:
        return self.phase1_steps + self.phase2_steps


@dataclass(frozen=True, kw_only=True)
class Phase:
    """A contiguous run of optimizer steps with one active depth and one trainable set."""

    kind: str
    """``phase1``, ``phase2`` or ``continual``."""
    stage: int
    """1-based stage index; continual training is stage ``num_stages + 1``."""
    depth: int
    prev_depth: int
    """Depth before this stage grew (phase 1 trains blocks [prev_depth, depth))."""
    steps: int
    start_step: int
    """Global index of the phase's first optimizer step."""

    @property
    def end_step(self) -> int:
        return self.start_step + self.steps

    @property
    def trainable_from(self) -> int:
        """Lowest block that computes weight gradients in this phase."""
        return self.prev_depth if self.kind == "phase1" else 0


@dataclass(frozen=True, kw_only=True)
class Schedule:
    """A full training schedule (validated on construction)."""

    num_layers: int
    stages: tuple[Stage, ...]
    continual_steps: int = 0
    growth: str = "random"
    freeze_policy: str = "new_only"
    optimizer_policy: str = "reset"
    meta: dict[str, Any] = field(default_factory=dict, compare=False)
    """Free-form provenance (e.g. the search parameters that produced it)."""

    def __post_init__(self) -> None:
        if not self.stages:
            raise ConfigError("schedule.stages", [], "give at least one stage")
        prev = 0
        for i, st in enumerate(self.stages):
            if st.depth <= prev:
                raise ConfigError(
                    f"schedule.stages[{i}].depth",
                    st.depth,
                    f"depths must rise strictly (previous depth {prev})",
                )
            if st.phase1_steps < 0 or st.phase2_steps < 0 or st.steps < 1:
                raise ConfigError(
                    f"schedule.stages[{i}]",
                    (st.phase1_steps, st.phase2_steps),
                    "phase steps must be >= 0 and each stage needs at least one step",
                )
            if st.phase1_steps and prev and not get_freeze_policy(self.freeze_policy).has_phase1:
                raise ConfigError(
                    f"schedule.stages[{i}].phase1_steps",
                    st.phase1_steps,
                    f"freeze policy {self.freeze_policy!r} has no phase 1; set it to 0",
                )
            prev = st.depth
        if prev != self.num_layers:
            raise ConfigError(
                "schedule.stages[-1].depth",
                prev,
                f"the last stage must reach the model depth {self.num_layers}",
            )
        if self.continual_steps < 0:
            raise ConfigError("schedule.continual_steps", self.continual_steps, "use >= 0")
        GROWTH_OPERATORS.check(self.growth)
        FREEZE_POLICIES.check(self.freeze_policy)
        if self.optimizer_policy not in OPTIMIZER_POLICIES:
            raise ConfigError(
                "schedule.optimizer_policy",
                self.optimizer_policy,
                suggest(self.optimizer_policy, OPTIMIZER_POLICIES),
            )

    # -- derived views ----------------------------------------------------------------------
    @property
    def num_stages(self) -> int:
        return len(self.stages)

    @property
    def depths(self) -> list[int]:
        return [s.depth for s in self.stages]

    @property
    def increments(self) -> list[int]:
        out, prev = [], 0
        for s in self.stages:
            out.append(s.depth - prev)
            prev = s.depth
        return out

    @property
    def is_baseline(self) -> bool:
        return self.num_stages == 1 and self.continual_steps == 0

    @property
    def stage_steps(self) -> int:
        return sum(s.steps for s in self.stages)

    @property
    def total_steps(self) -> int:
        return self.stage_steps + self.continual_steps

    def phases(self) -> list[Phase]:
        """Non-empty phases in training order."""
        out: list[Phase] = []
        step, prev = 0, 0
        for i, st in enumerate(self.stages, start=1):
            for kind, n in (("phase1", st.phase1_steps), ("phase2", st.phase2_steps)):
                if n:
                    # Without older blocks, "phase 1" trains everything: same as phase 2.
                    k = kind if prev else "phase2"
                    out.append(
                        Phase(
                            kind=k,
                            stage=i,
                            depth=st.depth,
                            prev_depth=prev,
                            steps=n,
                            start_step=step,
                        )
                    )
                    step += n
            prev = st.depth
        if self.continual_steps:
            out.append(
                Phase(
                    kind="continual",
                    stage=self.num_stages + 1,
                    depth=self.num_layers,
                    prev_depth=self.num_layers,
                    steps=self.continual_steps,
                    start_step=step,
                )
            )
        return out

    def phase_flops(
        self, dims: ModelDims, *, tokens_per_step: int, convention: str = "standard"
    ) -> list[tuple[Phase, float]]:
        """Each phase with its total training FLOPs."""
        out = []
        for ph in self.phases():
            work = step_work(
                phase=ph.kind,
                depth=ph.depth,
                prev_depth=ph.prev_depth,
                freeze_policy=self.freeze_policy,
            )
            out.append(
                (
                    ph,
                    ph.steps
                    * step_flops(dims, work, tokens=tokens_per_step, convention=convention),
                )
            )
        return out

    def flops(
        self,
        dims: ModelDims,
        *,
        tokens_per_step: int,
        convention: str = "standard",
        include_continual: bool = True,
    ) -> float:
        """Total training FLOPs of the schedule."""
        return sum(
            f
            for ph, f in self.phase_flops(
                dims, tokens_per_step=tokens_per_step, convention=convention
            )
            if include_continual or ph.kind != "continual"
        )

    def with_continual(self, steps: int) -> Schedule:
        return replace(self, continual_steps=steps)

    # -- serialisation --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["stages"] = [asdict(s) for s in self.stages]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Schedule:
        d = dict(data)
        d["stages"] = tuple(Stage(**s) for s in d["stages"])
        d.setdefault("meta", {})
        return cls(**d)

    def flat_params(self) -> dict[str, Any]:
        """A flat, human-readable view for MLflow params and tables."""
        return {
            "num_stages": self.num_stages,
            "increments": "-".join(map(str, self.increments)),
            "phase1_steps": "-".join(str(s.phase1_steps) for s in self.stages),
            "phase2_steps": "-".join(str(s.phase2_steps) for s in self.stages),
            "continual_steps": self.continual_steps,
            "growth": self.growth,
            "freeze_policy": self.freeze_policy,
            "optimizer_policy": self.optimizer_policy,
            "total_steps": self.total_steps,
        }

    def label(self) -> str:
        """Short name, e.g. ``S2[2-2] copy_top/new_only +40c``."""
        if self.is_baseline:
            return BASELINE_LABEL
        inc = "-".join(map(str, self.increments))
        return (
            f"S{self.num_stages}[{inc}] {self.growth}/{self.freeze_policy} +{self.continual_steps}c"
        )


# -- builders -------------------------------------------------------------------------------


def split_steps(total: int, weights: Sequence[float]) -> list[int]:
    """Split ``total`` into integers proportional to ``weights`` (largest remainder, exact sum)."""
    wsum = float(sum(weights))
    raw = [total * w / wsum for w in weights]
    out = [math.floor(r) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: (out[i] - raw[i], i))
    for i in order[: total - sum(out)]:
        out[i] += 1
    return out


def even_increments(num_layers: int, num_stages: int) -> list[int]:
    """L/S layers per stage; when S does not divide L the extra layers go to the last stages."""
    if not 1 <= num_stages <= num_layers:
        raise ConfigError(
            "schedule.num_stages", num_stages, f"use between 1 and model.n_layer={num_layers}"
        )
    base, extra = divmod(num_layers, num_stages)
    return [base + (1 if i >= num_stages - extra else 0) for i in range(num_stages)]


def from_increments(
    increments: Sequence[int],
    *,
    stage_steps: int,
    phase1_fraction: float = 0.5,
    step_spread: str = "uniform",
    continual_steps: int = 0,
    growth: str = "random",
    freeze_policy: str = "new_only",
    optimizer_policy: str = "reset",
    stage_step_weights: Sequence[float] | None = None,
) -> Schedule:
    """A schedule from layer increments, spreading ``stage_steps`` across the stages."""
    incs = [int(x) for x in increments]
    if not incs or any(x < 1 for x in incs):
        raise ConfigError("schedule.increments", incs, "list positive layer counts, e.g. [2, 2]")
    depths, d = [], 0
    for x in incs:
        d += x
        depths.append(d)
    if stage_steps < len(incs):
        raise ConfigError(
            "schedule.baseline_steps",
            stage_steps,
            f"need at least one step per stage ({len(incs)} stages)",
        )
    if stage_step_weights is not None:
        weights = list(stage_step_weights)
    elif step_spread == "depth":
        weights = [float(x) for x in depths]
    elif step_spread == "uniform":
        weights = [1.0] * len(incs)
    else:
        raise ConfigError("schedule.step_spread", step_spread, "use 'uniform' or 'depth'")
    per_stage = split_steps(stage_steps, weights)
    if min(per_stage) < 1:
        per_stage = split_steps(stage_steps - len(incs), weights)
        per_stage = [n + 1 for n in per_stage]
    policy_has_phase1 = get_freeze_policy(freeze_policy).has_phase1
    stages = []
    for i, n in enumerate(per_stage):
        has_phase1 = i > 0 and policy_has_phase1
        p1 = min(n - 1, round(n * phase1_fraction)) if has_phase1 else 0
        stages.append(Stage(depth=depths[i], phase1_steps=max(p1, 0), phase2_steps=n - max(p1, 0)))
    return Schedule(
        num_layers=depths[-1],
        stages=tuple(stages),
        continual_steps=continual_steps,
        growth=growth,
        freeze_policy=freeze_policy,
        optimizer_policy=optimizer_policy,
    )


def baseline_schedule(num_layers: int, steps: int) -> Schedule:
    """Full-depth training for ``steps`` steps: the reference of every comparison."""
    return Schedule(
        num_layers=num_layers,
        stages=(Stage(depth=num_layers, phase1_steps=0, phase2_steps=steps),),
        growth="random",
        freeze_policy="none",
    )


def budgeted_schedule(
    increments: Sequence[int],
    *,
    budget: Budget,
    continual_multiple: float = 1.0,
    continual_steps: int | None = None,
    phase1_fraction: float = 0.5,
    step_spread: str = "uniform",
    growth: str = "random",
    freeze_policy: str = "new_only",
    optimizer_policy: str = "reset",
) -> Schedule:
    """The schedule of ``increments`` within ``budget``: the one recipe of ``stagetune train``,
    ``stagetune estimate`` and every search space.

    The stages share the baseline's T steps (:func:`from_increments`). The continual phase is
    ``continual_steps`` when given, else ``continual_multiple`` × the budget-matched length
    ("spend what the stages saved", :meth:`Budget.continual_steps`), rounded; either way the
    stages must fit in the budget. One increment without continual steps is the baseline
    itself: it *is* the reference compute.
    """
    if _is_baseline(increments, continual_steps):
        return baseline_schedule(budget.num_layers, budget.baseline_steps)
    staged = from_increments(
        increments,
        stage_steps=budget.baseline_steps,
        phase1_fraction=phase1_fraction,
        step_spread=step_spread,
        growth=growth,
        freeze_policy=freeze_policy,
        optimizer_policy=optimizer_policy,
    )
    stages_flops = staged.flops(
        budget.dims, tokens_per_step=budget.tokens_per_step, convention=budget.convention
    )
    matched = budget.continual_steps(stages_flops, schedule_label=staged.label())
    if continual_steps is not None:
        return staged.with_continual(continual_steps)
    return staged.with_continual(round(continual_multiple * matched))


def _is_baseline(increments: Sequence[int], continual_steps: int | None) -> bool:
    return len(increments) == 1 and not continual_steps


def config_budget(
    cfg: ExperimentConfig, *, vocab_size: int, convention: str | None = None
) -> Budget:
    """The budget of the study ``cfg`` describes, in ``convention`` (default: the config's
    ``budget.convention``); ``vocab_size`` is the tokenizer's."""
    from stagetune.models import model_dims  # torch: only where FLOPs are counted

    return Budget(
        num_layers=cfg.model.n_layer,
        baseline_steps=cfg.schedule.baseline_steps,
        dims=model_dims(cfg.model, vocab_size=vocab_size, seq_len=cfg.data.seq_len),
        tokens_per_step=cfg.train.batch_size * cfg.data.seq_len,
        convention=convention or cfg.budget.convention,
        factor=cfg.budget.factor,
    )


def build_schedule(cfg: ExperimentConfig, *, vocab_size: int) -> Schedule:
    """The schedule described by ``cfg.schedule``, through :func:`budgeted_schedule`.

    ``stagetune train`` trains it and ``stagetune estimate`` shows it. Refuses a budget the
    stages do not fit in, and a step count too small for the phases the config asks for
    (rather than dropping a phase).
    """
    sc = cfg.schedule
    L = cfg.model.n_layer
    incs = sc.increments if sc.increments is not None else even_increments(L, sc.num_stages)
    if _is_baseline(incs, sc.continual_steps):
        # No FLOPs model needed: `_load` validates every command's config without torch.
        return baseline_schedule(L, sc.baseline_steps)
    sched = budgeted_schedule(
        incs,
        budget=config_budget(cfg, vocab_size=vocab_size),
        continual_multiple=sc.continual_multiple,
        continual_steps=sc.continual_steps,
        **_stage_knobs(cfg),
    )
    _require_phase1(sched, cfg)
    return sched


def _stage_knobs(cfg: ExperimentConfig) -> dict[str, Any]:
    sc = cfg.schedule
    return {
        "phase1_fraction": sc.phase1_fraction,
        "step_spread": sc.step_spread,
        "growth": sc.growth,
        "freeze_policy": sc.freeze_policy,
        "optimizer_policy": sc.optimizer_policy,
    }


def _require_phase1(sched: Schedule, cfg: ExperimentConfig) -> None:
    """Every stage that grows gets a phase 1 when the config asks for one.

    :func:`from_increments` gives a stage too short for both phases no phase 1 at all; for a
    configured schedule that silently drops what the config asked for, so it is refused.
    """
    sc = cfg.schedule
    if not get_freeze_policy(sc.freeze_policy).has_phase1 or sc.phase1_fraction == 0:
        return
    short = [i for i, st in enumerate(sched.stages, start=1) if i > 1 and not st.phase1_steps]
    if not short:
        return
    # Enough steps: each growing stage gets more than 0.5 / phase1_fraction steps (so its
    # phase 1 rounds to at least one step) even after losing one step to rounding.
    per_stage = max(2, math.floor(0.5 / sc.phase1_fraction) + 1)
    incs = sched.increments
    depths = sched.depths
    weights = depths if sc.step_spread == "depth" else [1] * len(incs)
    enough = math.ceil(per_stage * sum(weights) / min(weights[1:])) + len(incs)
    while any(
        not st.phase1_steps
        for st in from_increments(incs, stage_steps=enough, **_stage_knobs(cfg)).stages[1:]
    ):
        enough += 1
    stage = short[0]
    raise ConfigError(
        "schedule.baseline_steps",
        sc.baseline_steps,
        f"stage {stage} of {len(incs)} gets {sched.stages[stage - 1].steps} step(s), too few "
        f"for a phase 1 at schedule.phase1_fraction={sc.phase1_fraction}; use more steps "
        f"({enough} are enough), fewer stages, or schedule.phase1_fraction=0",
    )

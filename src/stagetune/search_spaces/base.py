"""The search-space contract: define-by-run sampling, the baseline point, params → trial."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, ClassVar

from stagetune.schedule import budgeted_schedule
from stagetune.search_spaces.context import SpaceContext
from stagetune.search_spaces.trial import ParamsTrial, RecordingTrial, TrialLike
from stagetune.trial import TrialDescription

__all__ = ["DefineByRun", "SearchSpace", "suggest_increments"]


class SearchSpace(ABC):
    """A family of schedules (plus optimiser knobs) that Optuna samples from.

    Spaces are stateless: every method takes the study's :class:`SpaceContext`. Subclasses
    implement :meth:`sample`, :meth:`baseline_point` and :meth:`trial_from`; finite spaces
    also :meth:`grid`, and a space whose points a sampler other than TPE walks better says so
    in :attr:`preferred_sampler`. Contract (checked for every registered space by the test suite):

    - every point ``define`` can produce builds a valid schedule within the budget, by
      construction (nothing is sampled and then rejected);
    - ``build`` is a pure function of the params;
    - ``baseline_point`` is a point of the space and builds the full-depth baseline.
    """

    name: ClassVar[str]
    """Registry name (``search.space`` in the config)."""
    max_continual_multiple: ClassVar[float]
    """Largest multiple of the budget-matched continual length the space can sample; a
    trial's FLOPs stay within stages + max(this × (budget − stages), the baseline's FLOPs)
    + one step of rounding (the baseline's: a continual phase of T steps, the paper's)."""
    preferred_sampler: ClassVar[str] = "tpe"
    """The sampler ``search.sampler: auto`` uses for a single-objective study of this space (a
    name in :data:`stagetune.registry.SAMPLERS`)."""

    # -- to implement ----------------------------------------------------------------------
    @abstractmethod
    def sample(self, trial: TrialLike, ctx: SpaceContext) -> None:
        """Suggest one point's params on ``trial`` (Optuna define-by-run).

        Suggest only the params that apply to this point (e.g. increments only when S > 1),
        with ranges that make every combination valid. Param names must not contain ``/``
        (Ray un-flattens such keys into nested dicts).
        """

    @abstractmethod
    def baseline_point(self, ctx: SpaceContext) -> dict[str, Any]:
        """The params of the full-depth baseline (S = 1, the config's lr and warmup).

        It must be a point of the space: it goes into ``points_to_evaluate`` and Optuna
        replays it through :meth:`define`.
        """

    @abstractmethod
    def trial_from(self, params: Mapping[str, Any], ctx: SpaceContext) -> TrialDescription:
        """The trial of already validated ``params`` (exactly the ones ``define`` asked for);
        :meth:`make_trial` assembles it."""

    def grid(self, ctx: SpaceContext) -> list[dict[str, Any]] | None:
        """All points of a finite space, baseline first; ``None`` for an infinite one."""
        return None

    # -- provided ------------------------------------------------------------------------------
    def define(self, trial: TrialLike, ctx: SpaceContext) -> dict[str, Any] | None:
        """Sample one point on ``trial`` and return its params (flat ``{name: value}``).

        Returning the sampled values is harmless for Ray (it merges them with what its
        captor saw) and handy for direct ``study.ask()`` use.
        """
        recorder = RecordingTrial(trial)
        self.sample(recorder, ctx)
        return recorder.params

    def build(self, params: Mapping[str, Any], ctx: SpaceContext) -> TrialDescription:
        """The :class:`~stagetune.trial.TrialDescription` of ``params`` (on the context's seed):
        pure, so every process derives the same trial.

        The params are replayed through :meth:`define` (a :class:`ParamsTrial`), which raises
        :class:`~stagetune.errors.ConfigError` for a missing or out-of-range value. Keys the
        space does not ask for at this point (e.g. constants Tune merged into the trial
        config, such as a seed) are ignored and left out of ``TrialDescription.params``.
        """
        replay = ParamsTrial(params)
        self.sample(replay, ctx)
        return self.trial_from(replay.params, ctx)

    def as_define_by_run(self, ctx: SpaceContext) -> DefineByRun:
        """The ``fn(trial) -> dict | None`` that ``OptunaSearch(space=fn)`` wants."""
        return DefineByRun(self, ctx)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"

    # -- helpers for subclasses -------------------------------------------------------------------
    def make_trial(
        self,
        params: Mapping[str, Any],
        ctx: SpaceContext,
        *,
        increments: Sequence[int],
        continual_multiple: float = 0.0,
        continual_steps: int | None = None,
        lr: float | None = None,
        warmup_steps: int | None = None,
        growth: str | None = None,
        freeze_policy: str | None = None,
        phase1_fraction: float | None = None,
        step_spread: str | None = None,
        optimizer_policy: str | None = None,
    ) -> TrialDescription:
        """Assemble a trial; every knob left ``None`` comes from the context (the config).

        The schedule is :func:`~stagetune.schedule.budgeted_schedule`'s, the recipe
        ``stagetune train`` uses too: the stages share the baseline's T steps, continual length
        is ``continual_multiple`` × the budget-matched length (or ``continual_steps``), and one
        stage is the baseline.
        """
        lr = ctx.base_lr if lr is None else float(lr)
        warmup = ctx.base_warmup if warmup_steps is None else int(warmup_steps)
        schedule = budgeted_schedule(
            increments,
            budget=ctx.budget,
            continual_multiple=continual_multiple,
            continual_steps=continual_steps,
            phase1_fraction=ctx.phase1_fraction if phase1_fraction is None else phase1_fraction,
            step_spread=step_spread or ctx.step_spread,
            growth=growth or ctx.growth,
            freeze_policy=freeze_policy or ctx.freeze_policy,
            optimizer_policy=optimizer_policy or ctx.optimizer_policy,
        )
        # Provenance travels with the schedule (Schedule.meta is excluded from equality).
        schedule = replace(schedule, meta={"space": self.name, "params": dict(params)})
        return TrialDescription(
            schedule=schedule,
            lr=lr,
            warmup_steps=warmup,
            seed=ctx.base_seed,
            is_baseline=(
                schedule.num_stages == 1 and lr == ctx.base_lr and warmup == ctx.base_warmup
            ),
            params=dict(params),
        )


class DefineByRun:
    """``space.define`` bound to a context, as a picklable callable.

    A class rather than a closure because ``OptunaSearch.save`` pickles its ``space`` with
    the standard ``pickle`` (Tune checkpoints the searcher for resume), and closures do not
    pickle.
    """

    def __init__(self, space: SearchSpace, ctx: SpaceContext) -> None:
        self.space = space
        self.ctx = ctx

    def __call__(self, trial: TrialLike) -> dict[str, Any] | None:
        return self.space.define(trial, self.ctx)

    def __repr__(self) -> str:
        return f"DefineByRun({self.space!r})"


def suggest_increments(
    trial: TrialLike, num_layers: int, num_stages: int, *, prefix: str = "inc_"
) -> list[int]:
    """Sample any composition of ``num_layers`` into ``num_stages`` positive parts.

    Δ_i is drawn from [1, remaining − stages_left] so the later stages always keep at least
    one layer each: every draw is valid, none is rejected. The last part is what remains,
    so only ``inc_1`` … ``inc_{S−1}`` are params (and none when S = L: all parts are 1).
    """
    if num_stages >= num_layers:
        return [1] * num_layers
    out: list[int] = []
    remaining = num_layers
    for i in range(1, num_stages):
        stages_left = num_stages - i
        inc = trial.suggest_int(f"{prefix}{i}", 1, remaining - stages_left)
        out.append(inc)
        remaining -= inc
    out.append(remaining)
    return out

"""ASHA's rungs sit at the intended fractions of the budget, in the unit of the metric it reads."""

from __future__ import annotations

import math
from typing import Any

import pytest
from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler

from stagetune.metrics import FLOPS, FLOPS_PAPER
from stagetune.orchestration.early_stopping import make_asha
from stagetune.schedule import baseline_schedule
from stagetune.search_spaces import SpaceContext, get_search_space

VOCAB = 512  # the smoke preset's tokenizer size: no data needs preparing for a context
GRACE = 0.25
CONVENTION_OF = {FLOPS: "standard", FLOPS_PAPER: "paper"}


def _asha(fast_config: Any, convention: str, space: str = "wide") -> tuple[Any, Any, Any]:
    cfg = fast_config(
        f"budget.convention={convention}",
        f"search.space={space}",
        f"search.grace_fraction={GRACE}",
        "search.reduction_factor=2",
    )
    ctx = SpaceContext.from_config(cfg, vocab_size=VOCAB)
    asha = make_asha(cfg.search, get_search_space(space), ctx, metric="eval_loss")
    assert asha is not None
    return asha, ctx, cfg


@pytest.mark.parametrize("convention", ["standard", "paper"])
def test_first_rung_stops_at_the_grace_fraction_of_the_budget(
    fast_config: Any, convention: str
) -> None:
    """Two full-depth trials report after every step, each record carrying both FLOPs metrics
    as the trainer reports them; the worse one is stopped at the first rung, which must be at
    grace_fraction of its steps: for the baseline schedule that is the same fraction of its
    compute in either convention. (With the budget in paper FLOPs read against standard
    ones, it stopped after 4 of 24 steps.)"""
    asha, ctx, cfg = _asha(fast_config, convention)
    steps = cfg.schedule.baseline_steps
    base = baseline_schedule(ctx.num_layers, steps)
    per_step = {
        key: base.flops(ctx.dims, tokens_per_step=ctx.tokens_per_step, convention=conv) / steps
        for key, conv in CONVENTION_OF.items()
    }
    good, bad = Trial("stub", stub=True), Trial("stub", stub=True)
    for trial in (good, bad):
        asha.on_trial_add(None, trial)  # type: ignore[arg-type]

    def report(trial: Trial, step: int, loss: float) -> str:
        result = {key: step * f for key, f in per_step.items()}
        return asha.on_trial_result(None, trial, {**result, "eval_loss": loss})  # type: ignore[arg-type]

    for step in range(1, steps + 1):
        assert report(good, step, 1.0) == TrialScheduler.CONTINUE
    actions = [report(bad, step, 2.0) for step in range(1, steps + 1)]
    stopped_at = actions.index(TrialScheduler.STOP) + 1
    assert stopped_at == math.ceil(GRACE * steps), actions


@pytest.mark.parametrize("convention", ["standard", "paper"])
def test_rungs_and_max_t_are_in_the_unit_asha_reads(fast_config: Any, convention: str) -> None:
    asha, ctx, _ = _asha(fast_config, convention, space="paper")
    unit = CONVENTION_OF[asha._time_attr]
    assert unit == convention, "ASHA reads the FLOPs of the convention budgets are matched in"
    budget = ctx.budget_flops  # in `convention`
    milestones = sorted(m for m, _ in asha._brackets[0]._rungs)
    assert milestones == pytest.approx([GRACE * budget * 2**k for k in range(len(milestones))])
    # max_t bounds what schedules spend, in the same unit: every schedule of the space ends
    # within it (Ray places no rung above it).
    space = get_search_space("paper")
    grid = space.grid(ctx)
    assert grid
    totals = [
        space.build(p, ctx).schedule.flops(
            ctx.dims, tokens_per_step=ctx.tokens_per_step, convention=unit
        )
        for p in grid
    ]
    assert max(totals) <= asha._max_t and milestones[-1] <= asha._max_t


def test_no_asha_without_early_stopping_or_with_two_objectives(fast_config: Any) -> None:
    for override in ("search.early_stopping=false", "search.multi_objective=true"):
        cfg = fast_config(override)
        ctx = SpaceContext.from_config(cfg, vocab_size=VOCAB)
        space = get_search_space(cfg.search.space)
        assert make_asha(cfg.search, space, ctx, metric="eval_loss") is None


def test_seeded_rungs_compare_with_the_reference_sweep(fast_config: Any) -> None:
    """The reference sweep runs before the search, in a Tune experiment of its own: its
    full-depth curves are entered in ASHA's rungs, so a trial worse than the sweep's best at
    the first rung is stopped although no trial of the search itself reached it yet; and a
    full-depth trial of the search is never stopped (a candidate for the reference)."""
    asha, _, _ = _asha(fast_config, "standard")
    grace = asha._brackets[0]._rungs[-1][0]  # rungs are stored last-first
    asha.seed_rungs({"sweep": [(grace * 0.5, 3.0), (grace * 1.01, 2.0), (grace * 4, 1.5)]})
    assert asha._brackets[0]._rungs[-1][1] == {"seeded:sweep": -2.0}
    worse, full_depth = Trial("stub", stub=True), Trial("stub", stub=True)
    for trial in (worse, full_depth):
        asha.on_trial_add(None, trial)  # type: ignore[arg-type]
    at_grace = {FLOPS: grace * 1.02, "eval_loss": 2.5}
    assert asha.on_trial_result(None, worse, at_grace) == TrialScheduler.STOP  # type: ignore[arg-type]
    kept = asha.on_trial_result(None, full_depth, {**at_grace, "full_depth": True})  # type: ignore[arg-type]
    assert kept == TrialScheduler.CONTINUE

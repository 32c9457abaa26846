"""Budget matching against the paper's closed forms: the baseline's FLOPs, the budget, the
continual length that spends what the stages saved, and the over-budget rule."""

from __future__ import annotations

import pytest

from stagetune.budget import Budget
from stagetune.compute import block_forward_flops
from stagetune.errors import ConfigError
from stagetune.schedule import (
    Schedule,
    baseline_schedule,
    budgeted_schedule,
    even_increments,
    from_increments,
)
from tests.test_compute import DIMS, TPS  # GPT-2 124M, the paper's 524,288 tokens a step

T = 9600
"""Baseline steps: 2S divides T for every divisor S of 12, so every paper phase is T/(2S)."""


def _budget(
    baseline_steps: int = T, *, convention: str = "standard", factor: float = 1.0
) -> Budget:
    return Budget(
        num_layers=12,
        baseline_steps=baseline_steps,
        dims=DIMS,
        tokens_per_step=TPS,
        convention=convention,
        factor=factor,
    )


def _paper(num_layers: int, num_stages: int, *, baseline_steps: int) -> Schedule:
    """The paper's schedule: L/S layers a stage, each phase T/(2S) steps, its freeze policy."""
    return from_increments(
        even_increments(num_layers, num_stages),
        stage_steps=baseline_steps,
        freeze_policy="paper",
        growth="random",
    )


def _stages(schedule: Schedule, convention: str = "standard") -> float:
    return schedule.flops(DIMS, tokens_per_step=TPS, convention=convention, include_continual=False)


def matched_continual_steps(
    schedule: Schedule,
    *,
    baseline_steps: int,
    convention: str = "standard",
    budget_factor: float = 1.0,
) -> int:
    budget = _budget(baseline_steps, convention=convention, factor=budget_factor)
    return budget.continual_steps(_stages(schedule, convention), schedule_label=schedule.label())


# -- the paper's closed forms (paper convention: forward c per block, backward c per
# trainable block, frozen blocks' backward 0; embeddings and head ignored) -------------------


@pytest.mark.parametrize("num_stages", [2, 3, 4, 6, 12])
def test_paper_stages_cost_3s_plus_5_over_8s_of_the_baseline(num_stages: int) -> None:
    """Stage 1 costs 2Δ per step over both phases; stage i > 1 costs (d_i + Δ) in phase 1 and
    2·d_i in phase 2, each phase T/(2S) steps; the baseline costs 2L per step. With d_i = iΔ
    and L = SΔ the stages cost (3S + 5) / (8S) of the baseline."""
    s = _paper(12, num_stages, baseline_steps=T)
    budget = _budget(convention="paper")
    ratio = _stages(s, "paper") / budget.baseline_flops
    assert ratio == pytest.approx((3 * num_stages + 5) / (8 * num_stages))
    if num_stages == 4:
        # Per stage: (d_i + Δ) + 2·d_i per pair of phases, over the baseline's 2L × 2S.
        assert ratio == pytest.approx((12 + 21 + 30 + 39) / 192)


@pytest.mark.parametrize("factor", [1.0, 1.5, 2.0])
@pytest.mark.parametrize("num_stages", [2, 4, 12])
def test_paper_continual_length_is_t_times_factor_minus_ratio(
    num_stages: int, factor: float
) -> None:
    """A continual step costs a baseline step (2L), so spending what the stages saved takes
    T × (factor − (3S + 5) / (8S)) steps — whole here, as 8S divides T."""
    s = _paper(12, num_stages, baseline_steps=T)
    want = T * factor - T * (3 * num_stages + 5) // (8 * num_stages)
    assert (
        matched_continual_steps(s, baseline_steps=T, convention="paper", budget_factor=factor)
        == want
    )
    # The one recipe uses exactly that length, and a multiple of it.
    budget = _budget(convention="paper", factor=factor)
    incs = even_increments(12, num_stages)
    knobs = {"freeze_policy": "paper", "growth": "random"}
    assert budgeted_schedule(incs, budget=budget, **knobs).continual_steps == want
    half = budgeted_schedule(incs, budget=budget, continual_multiple=0.5, **knobs)
    assert half.continual_steps == round(0.5 * want)
    assert budgeted_schedule(incs, budget=budget, continual_steps=7, **knobs).continual_steps == 7


def test_baseline_and_budget_flops() -> None:
    for conv in ("standard", "paper"):
        budget = _budget(convention=conv, factor=1.5)
        base = baseline_schedule(12, T).flops(DIMS, tokens_per_step=TPS, convention=conv)
        assert budget.baseline_flops == base == T * budget.full_step_flops
        assert budget.budget_flops == 1.5 * base
        assert budget.in_convention("standard") == _budget(factor=1.5)
    # Paper convention: a full-depth step is L forwards and L backwards of c each.
    paper = _budget(convention="paper")
    standard = _budget()
    assert paper.full_step_flops == 2 * 12 * block_forward_flops(DIMS, tokens=TPS)
    assert paper.full_step_flops < standard.full_step_flops
    # One increment is the baseline itself, whatever the multiple.
    assert budgeted_schedule([12], budget=standard, continual_multiple=2.0) == baseline_schedule(
        12, T
    )


# -- budget matching ---------------------------------------------------------------------------


def test_budget_matching_spends_the_budget_and_no_more() -> None:
    s = _paper(12, 4, baseline_steps=1000)
    base = baseline_schedule(12, 1000)
    for conv in ("standard", "paper"):
        for factor in (1.0, 1.5):
            n = matched_continual_steps(
                s,
                baseline_steps=1000,
                convention=conv,
                budget_factor=factor,
            )
            budget = factor * base.flops(DIMS, tokens_per_step=TPS, convention=conv)
            spent = s.with_continual(n).flops(DIMS, tokens_per_step=TPS, convention=conv)
            one_more = s.with_continual(n + 1).flops(DIMS, tokens_per_step=TPS, convention=conv)
            assert spent <= budget < one_more
    # A schedule that already spends the budget gets no continual steps.
    assert matched_continual_steps(base, baseline_steps=1000) == 0


def test_budget_matching_refuses_stages_over_budget() -> None:
    """Stages that alone spend more than the budget are refused, naming the smallest factor
    that fits (it used to answer 0 continual steps: a run at twice its budget)."""
    base = baseline_schedule(12, 1000)
    with pytest.raises(ConfigError) as err:
        matched_continual_steps(base, baseline_steps=500)
    assert err.value.field == "budget.factor"
    assert "alone spend 2.0000× the baseline's compute" in str(err.value)
    assert str(err.value).endswith("the smallest factor that fits is 2")
    # That factor fits, exactly.
    assert matched_continual_steps(base, baseline_steps=500, budget_factor=2.0) == 0
    # A budget below the baseline's own compute is refused for any schedule.
    staged = _paper(12, 4, baseline_steps=1000)
    with pytest.raises(ConfigError, match=r"leaves the baseline .* over budget; the smallest "
                       r"factor that fits is 1$"):  # fmt: skip
        matched_continual_steps(staged, baseline_steps=1000, budget_factor=0.3)

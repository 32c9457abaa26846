"""Schedules, budget matching and the analytic compute model's conventions."""

from __future__ import annotations

import pytest

from stagetune.compute import ModelDims
from stagetune.config import load_config
from stagetune.errors import ConfigError
from stagetune.schedule import (
    Schedule,
    Stage,
    baseline_schedule,
    build_schedule,
    even_increments,
    from_increments,
    matched_continual_steps,
    split_steps,
    uniform_schedule,
)

DIMS = ModelDims(
    n_layer=12,
    n_embd=768,
    block_matmul_params=12 * 768**2,  # GPT-2 124M: 4 d² attention + 8 d² MLP
    vocab_size=50304,
    seq_len=1024,
)
TPS = 524_288


def _paper(num_layers: int, num_stages: int, *, baseline_steps: int) -> Schedule:
    """The paper's schedule: L/S layers a stage, each phase T/(2S) steps, its freeze policy."""
    return uniform_schedule(
        num_layers, num_stages, stage_steps=baseline_steps, freeze_policy="paper", growth="random"
    )


def test_paper_schedule_shape_and_paper_convention_ratio() -> None:
    s = _paper(12, 4, baseline_steps=9536)
    assert s.depths == [3, 6, 9, 12] and s.increments == [3, 3, 3, 3]
    assert s.freeze_policy == "paper" and s.growth == "random"
    # Each phase T/(2S) steps; stage 1 has no older blocks, so both its phases train everything.
    assert [st.steps for st in s.stages] == [2384] * 4
    assert all(st.phase1_steps == 1192 for st in s.stages[1:])
    base = baseline_schedule(12, 9536)
    # Paper convention: stage i costs (d_i + Δ) in phase 1 and 2·d_i in phase 2, per step.
    ratio = s.flops(DIMS, tokens_per_step=TPS, convention="paper") / base.flops(
        DIMS, tokens_per_step=TPS, convention="paper"
    )
    assert ratio == pytest.approx((12 + 21 + 30 + 39) / 192)


def test_budget_matching_spends_the_budget_and_no_more() -> None:
    s = _paper(12, 4, baseline_steps=1000)
    base = baseline_schedule(12, 1000)
    for conv in ("standard", "paper"):
        for factor in (1.0, 1.5):
            n = matched_continual_steps(
                s,
                baseline_steps=1000,
                dims=DIMS,
                tokens_per_step=TPS,
                convention=conv,
                budget_factor=factor,
            )
            budget = factor * base.flops(DIMS, tokens_per_step=TPS, convention=conv)
            spent = s.with_continual(n).flops(DIMS, tokens_per_step=TPS, convention=conv)
            one_more = s.with_continual(n + 1).flops(DIMS, tokens_per_step=TPS, convention=conv)
            assert spent <= budget < one_more
    # A schedule that already spends the budget gets no continual steps.
    assert matched_continual_steps(base, baseline_steps=1000, dims=DIMS, tokens_per_step=TPS) == 0


def test_budget_matching_refuses_stages_over_budget() -> None:
    """Stages that alone spend more than the budget are refused, naming the smallest factor
    that fits (it used to answer 0 continual steps: a run at twice its budget)."""
    base = baseline_schedule(12, 1000)
    with pytest.raises(ConfigError) as err:
        matched_continual_steps(base, baseline_steps=500, dims=DIMS, tokens_per_step=TPS)
    assert err.value.field == "budget.factor"
    assert "alone spend 2.0000× the baseline's compute" in str(err.value)
    assert str(err.value).endswith("the smallest factor that fits is 2")
    # That factor fits, exactly.
    assert (
        matched_continual_steps(
            base, baseline_steps=500, dims=DIMS, tokens_per_step=TPS, budget_factor=2.0
        )
        == 0
    )
    # A budget below the baseline's own compute is refused for any schedule.
    staged = _paper(12, 4, baseline_steps=1000)
    with pytest.raises(ConfigError, match=r"leaves the baseline .* over budget; the smallest "
                       r"factor that fits is 1$"):  # fmt: skip
        matched_continual_steps(
            staged, baseline_steps=1000, dims=DIMS, tokens_per_step=TPS, budget_factor=0.3
        )


def test_builders_validate_and_split_exactly() -> None:
    assert split_steps(10, [1, 1, 1]) == [4, 3, 3] or sum(split_steps(10, [1, 1, 1])) == 10
    assert sum(split_steps(97, [2, 4, 6, 8])) == 97
    assert even_increments(12, 5) == [2, 2, 2, 3, 3]
    s = from_increments([2, 2, 4, 4], stage_steps=100, phase1_fraction=0.25, step_spread="depth")
    assert s.depths == [2, 4, 8, 12] and s.stage_steps == 100
    assert s.stages[0].phase1_steps == 0
    with pytest.raises(ConfigError, match=r"schedule\.stages"):
        Schedule(num_layers=4, stages=(Stage(depth=2, phase1_steps=0, phase2_steps=5),))
    with pytest.raises(ConfigError, match="rise strictly"):
        Schedule(
            num_layers=4,
            stages=(
                Stage(depth=2, phase1_steps=0, phase2_steps=5),
                Stage(depth=2, phase1_steps=1, phase2_steps=1),
            ),
        )
    with pytest.raises(ConfigError, match="at least one step"):
        Schedule(num_layers=2, stages=(Stage(depth=2, phase1_steps=0, phase2_steps=0),))
    with pytest.raises(ConfigError, match=r"schedule\.growth"):
        Schedule(
            num_layers=2, stages=(Stage(depth=2, phase1_steps=0, phase2_steps=1),), growth="clone"
        )


def test_phases_and_serialisation_round_trip() -> None:
    s = from_increments(
        [1, 3], stage_steps=10, continual_steps=3, growth="zero", freeze_policy="new_only"
    )
    kinds = [(p.kind, p.depth, p.prev_depth, p.steps) for p in s.phases()]
    assert kinds == [
        ("phase2", 1, 0, 5),
        ("phase1", 4, 1, 2),
        ("phase2", 4, 1, 3),
        ("continual", 4, 4, 3),
    ]
    assert Schedule.from_dict(s.to_dict()) == s
    assert s.phases()[1].trainable_from == 1 and s.phases()[2].trainable_from == 0


def test_build_schedule_from_config() -> None:
    cfg = load_config(
        overrides=[
            "model.n_layer=4",
            "schedule.increments=[1, 3]",
            "schedule.continual_multiple=0.5",
        ]
    )
    s = build_schedule(cfg, vocab_size=2048)
    assert s.increments == [1, 3]
    full = build_schedule(
        load_config(overrides=["model.n_layer=4", "schedule.increments=[1, 3]"]), vocab_size=2048
    ).continual_steps
    assert s.continual_steps == round(0.5 * full)
    assert build_schedule(load_config(), vocab_size=2048).is_baseline

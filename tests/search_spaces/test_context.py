"""SpaceContext: the study-wide facts every space reads, checked like the config checks them."""

from __future__ import annotations

import dataclasses

import pytest

from stagetune.config import ExperimentConfig, ModelConfig, ScheduleConfig
from stagetune.errors import ConfigError
from stagetune.schedule import build_schedule
from stagetune.search_spaces import CompactSpace, SpaceContext
from stagetune.testing.search_spaces import CONTEXTS


def test_context_from_config() -> None:
    cfg = ExperimentConfig(
        model=ModelConfig(n_layer=6),
        schedule=ScheduleConfig(baseline_steps=50, growth="zero", freeze_policy="paper"),
    )
    ctx = SpaceContext.from_config(cfg, vocab_size=1000)
    assert (ctx.num_layers, ctx.baseline_steps, ctx.dims.n_layer) == (6, 50, 6)
    assert ctx.dims.vocab_size == 1000 and ctx.dims.seq_len == cfg.data.seq_len
    assert ctx.tokens_per_step == cfg.train.batch_size * cfg.data.seq_len
    assert (ctx.growth, ctx.freeze_policy, ctx.base_lr) == ("zero", "paper", cfg.train.lr)
    assert ctx.baseline_flops == pytest.approx(50 * ctx.full_step_flops)
    doubled = dataclasses.replace(ctx, budget_factor=2.0)
    assert doubled.budget_flops == 2 * ctx.baseline_flops


def test_context_rejects_inconsistent_values() -> None:
    with pytest.raises(ConfigError, match=r"dims\.n_layer"):
        dataclasses.replace(CONTEXTS["default"], num_layers=5)
    with pytest.raises(ConfigError, match="did you mean 'copy_top'"):
        dataclasses.replace(CONTEXTS["default"], growth="copytop")


@pytest.mark.parametrize("factor", [0.3, 0.8, 0.999])
def test_context_refuses_a_budget_below_the_baseline(factor: float) -> None:
    """Below the baseline's compute the reference itself is over budget, and so are the
    stages of some points (S = 3 costs 0.6 × the baseline): no space may sample those."""
    with pytest.raises(ConfigError, match=r"smallest factor that fits is 1$") as err:
        dataclasses.replace(CONTEXTS["default"], budget_factor=factor)
    assert err.value.field == "budget.factor"


def test_plans_match_the_train_command() -> None:
    # The same knobs through config → build_schedule and through a space: same schedule.
    cfg = ExperimentConfig(
        schedule=ScheduleConfig(num_stages=2, growth="copy_top", continual_multiple=0.5)
    )
    ctx = SpaceContext.from_config(cfg, vocab_size=2048)
    plan = CompactSpace().build(
        {"num_stages": 2, "growth": "copy_top", "continual_multiple": 0.5}, ctx
    )
    assert plan.schedule == build_schedule(cfg, vocab_size=2048)

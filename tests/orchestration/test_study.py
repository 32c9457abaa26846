"""The study's pieces that need no cluster: the compute it plans to spend."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from stagetune.orchestration.study import planned_flops
from stagetune.search_spaces import SpaceContext


@pytest.mark.parametrize("convention", ["standard", "paper"])
def test_planned_compute_is_counted_like_the_progress_line(
    fast_config: Any, convention: str
) -> None:
    """The progress line sums each trial's standard ``flops``; the plan it is compared with is
    in the same convention whichever one budgets are matched in (it used to be the matching
    convention's: a ``paper`` study reported far more than 100 % of its plan)."""
    cfg = fast_config(f"budget.convention={convention}", "search.num_trials=5")
    ctx = SpaceContext.from_config(cfg, vocab_size=512)
    standard = dataclasses.replace(ctx, convention="standard")
    assert planned_flops(cfg, ctx) == 5 * standard.budget_flops
    if convention == "paper":
        assert planned_flops(cfg, ctx) > 5 * ctx.budget_flops

"""Per-space facts: the paper space is the paper's schedule, the wide space's conditionals,
the compact space's size. What every space must do is the suite's (test_registry.py)."""

from __future__ import annotations

import optuna

from stagetune.schedule import Stage
from stagetune.search_spaces import CompactSpace, LatticeSpace, PaperSpace, WideSpace
from stagetune.testing.search_spaces import CONTEXTS, drive_study, space_context

optuna.logging.set_verbosity(optuna.logging.WARNING)


# -- the paper space ----------------------------------------------------------------------------


def test_paper_space_is_the_papers_schedule() -> None:
    ctx = CONTEXTS["deep-paper"]  # L = 12, T = 120: 2S divides T for every divisor S
    space = PaperSpace()
    assert space.stage_choices(ctx) == [1, 2, 3, 4, 6, 12]
    assert space.max_continual_multiple == 2.0
    for s in (2, 3, 4, 6, 12):
        plan = space.build({"num_stages": s, "continual_multiple": 0.0}, ctx)
        # Each phase T/(2S) steps; stage 1 has no older blocks, so it trains all of them.
        phase = 120 // (2 * s)
        assert plan.schedule.stages == tuple(
            Stage(depth=12 // s * (i + 1), phase1_steps=phase if i else 0,
                  phase2_steps=phase if i else 2 * phase)
            for i in range(s)
        )  # fmt: skip
        assert (plan.schedule.growth, plan.schedule.freeze_policy) == ("random", "paper")
        # The paper's code keeps AdamW's state through growth, fresh for continual training.
        assert plan.schedule.optimizer_policy == "carry_then_reset"
        assert plan.lr == ctx.base_lr and plan.warmup_steps == ctx.base_warmup
        # The paper's own continual length: T steps, whatever S.
        paper_t = space.build({"num_stages": s, "continual_multiple": "T"}, ctx).schedule
        assert paper_t.continual_steps == 120
    one = space.build({"num_stages": 4, "continual_multiple": 1.0}, ctx).schedule
    two = space.build({"num_stages": 4, "continual_multiple": 2.0}, ctx).schedule
    assert one.continual_steps > 0 and abs(two.continual_steps - 2 * one.continual_steps) <= 1
    assert len(space.grid(ctx) or []) == 1 + 5 * 6


def test_paper_space_keeps_both_phases_when_steps_are_short() -> None:
    space = PaperSpace()
    assert space.stage_choices(space_context(12, 10)) == [1, 2, 3, 4]  # 2S <= T
    assert space.stage_choices(CONTEXTS["tight"]) == [1]
    for params in space.grid(space_context(6, 25)) or []:
        sched = space.build(params, space_context(6, 25)).schedule
        assert all(st.phase1_steps >= 1 for st in sched.stages[1:])


# -- the wide space -------------------------------------------------------------------------------


def test_wide_space_conditionals() -> None:
    ctx = CONTEXTS["default"]  # L = 4, T = 120
    space = WideSpace()
    seen: set[str] = set()
    for params, plan in drive_study(WideSpace(), ctx, seed=0):
        seen.update(params)
        s = params["num_stages"]
        assert 1 <= s <= 4
        staged_keys = {"freeze_policy", "step_spread", "growth", "continual_multiple"}
        assert staged_keys <= set(params) if s > 1 else not staged_keys & set(params)
        assert ("uniform_increments" in params) == (1 < s < ctx.num_layers)
        assert ("phase1_fraction" in params) == (s > 1 and params["freeze_policy"] != "none")
        assert ctx.base_lr / 4 <= params["lr"] <= ctx.base_lr * 4
        assert 0 <= params["warmup_steps"] <= 12
        if params.get("uniform_increments") is False:
            assert plan.schedule.increments[:-1] == [params[f"inc_{i}"] for i in range(1, s)]
    assert {"inc_1", "phase1_fraction", "uniform_increments"} <= seen
    assert space.max_stages(CONTEXTS["deep-paper"]) == 6


def test_wide_space_lr_tuned_full_depth_is_not_the_baseline() -> None:
    ctx = CONTEXTS["default"]
    other_lr = ctx.base_lr * 2  # any lr but the configured one
    plan = WideSpace().build({"num_stages": 1, "lr": other_lr, "warmup_steps": 0}, ctx)
    assert plan.schedule.is_baseline and not plan.is_baseline
    assert plan.key != WideSpace().build(WideSpace().baseline_point(ctx), ctx).key


def test_wide_space_includes_a_long_configured_warmup() -> None:
    ctx = CONTEXTS["deep-paper"]  # warmup 20 > T/10 = 12
    assert WideSpace().warmup_high(ctx) == 20
    assert WideSpace().build(WideSpace().baseline_point(ctx), ctx).is_baseline


# -- the compact space ----------------------------------------------------------------------------


def test_compact_space_size() -> None:
    space = CompactSpace()
    grid = space.grid(CONTEXTS["default"]) or []
    assert len(grid) == 13
    assert {p.get("growth") for p in grid} == {None, "random", "copy_top", "zero"}
    assert len(space.grid(CONTEXTS["tight"]) or []) == 1 + 3 * 2  # L = 3: S in {1, 2}
    assert space.max_continual_multiple == 1.0
    # Everything it does not search comes from the config.
    ctx = CONTEXTS["odd-steps"]
    sched = space.build({"num_stages": 2, "growth": "zero", "continual_multiple": 1.0}, ctx)
    assert sched.schedule.freeze_policy == "paper" and sched.lr == ctx.base_lr
    assert sched.schedule.stages[1].steps > sched.schedule.stages[0].steps  # depth spread


# -- the lattice space (the search-efficiency benchmark's) -----------------------------------------


def test_lattice_space_size_and_points() -> None:
    space = LatticeSpace()
    ctx = CONTEXTS["default"]
    grid = space.grid(ctx) or []
    assert ctx.num_layers >= 4 and len(grid) == 4 + 3 * 2 * 2 * 4 + 2 * 2 * 4 == 68
    assert len({tuple(sorted(p.items())) for p in grid}) == len(grid)
    increments = {tuple(space.build(p, ctx).schedule.increments) for p in grid}
    n = ctx.num_layers
    assert {(n,), (1, n - 1), (n // 2, n - n // 2)} <= increments
    lrs = {space.build(p, ctx).lr / ctx.base_lr for p in grid}
    assert lrs == {0.5, 1.0, 2.0, 4.0}
    assert [space.build(p, ctx).is_baseline for p in grid].count(True) == 1
    # L = 3: S ∈ {1, 2} and two first depths
    assert len(space.grid(CONTEXTS["tight"]) or []) == 4 + 2 * 2 * 2 * 4

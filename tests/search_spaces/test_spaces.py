"""Search spaces: one conformance suite every registered space passes, then per-space facts.

Modelled on optuna's shared sampler tests: each property is checked for every space in the
registry and several study contexts, on real studies with seeded samplers. No training.
"""

from __future__ import annotations

import dataclasses
import functools
import pickle
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
from optuna.samplers import BruteForceSampler, TPESampler

from stagetune import config as config_mod
from stagetune.compute import ModelDims
from stagetune.config import ExperimentConfig, ModelConfig, ScheduleConfig
from stagetune.errors import ConfigError
from stagetune.schedule import Stage, baseline_schedule, build_schedule
from stagetune.search_spaces import (
    SEARCH_SPACES,
    CompactSpace,
    PaperSpace,
    ParamsTrial,
    SearchSpace,
    SpaceContext,
    TrialPlan,
    WideSpace,
    get_search_space,
    recipe_key,
    suggest_increments,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)

N_TRIALS = 40


def _dims(n_layer: int, family: str = "gpt2") -> ModelDims:
    return ModelDims(
        family=family,
        n_layer=n_layer,
        n_embd=64,
        n_head=4,
        n_kv_head=2 if family == "llama" else 4,
        ffn_size=256,
        vocab_size=512,
        seq_len=32,
    )


def _ctx(n_layer: int, steps: int, **kw: Any) -> SpaceContext:
    kw.setdefault("base_lr", 3e-3)
    return SpaceContext(
        num_layers=n_layer,
        baseline_steps=steps,
        dims=_dims(n_layer, kw.pop("family", "gpt2")),
        tokens_per_step=256,
        **kw,
    )


# Study shapes that stress different corners: the default config, a deep model with the
# paper convention and a bigger budget, steps that no stage count divides with the tightest
# budget there is (the baseline's own compute), and one with barely a step per layer.
CONTEXTS = {
    # Pinned (not the package defaults) so the expectations below stay put: L = 4, T = 120.
    "default": SpaceContext.from_config(
        ExperimentConfig(model=ModelConfig(n_layer=4), schedule=ScheduleConfig(baseline_steps=120)),
        vocab_size=2048,
    ),
    "deep-paper": _ctx(
        12, 120, convention="paper", budget_factor=1.5, base_warmup=20, family="llama"
    ),
    "odd-steps": _ctx(6, 25, budget_factor=1.0, freeze_policy="paper", step_spread="depth"),
    "tight": _ctx(3, 3, freeze_policy="none", base_warmup=1),
}

SPACES = sorted(SEARCH_SPACES)


@pytest.fixture(params=SPACES)
def space(request: pytest.FixtureRequest) -> SearchSpace:
    return SEARCH_SPACES[request.param]


@pytest.fixture(params=sorted(CONTEXTS))
def ctx(request: pytest.FixtureRequest) -> SpaceContext:
    return CONTEXTS[request.param]


def _objective(plan: TrialPlan) -> float:
    # Deterministic but uninformative, so TPE wanders the whole space.
    return random.Random(plan.schedule_key).random()


def _drive_study(name: str, ctx: SpaceContext, seed: int) -> tuple[tuple[dict, TrialPlan], ...]:
    """(params, plan) of N_TRIALS ask/define/build/tell rounds of a seeded TPE study."""
    space = SEARCH_SPACES[name]
    study = optuna.create_study(sampler=TPESampler(seed=seed, n_startup_trials=8))
    out = []
    for _ in range(N_TRIALS):
        trial = study.ask()
        params = space.define(trial, ctx)
        assert params is not None
        # define returns exactly what it suggested: nothing more, nothing less.
        assert params == trial.params
        plan = space.build(params, ctx)
        study.tell(trial, _objective(plan))
        out.append((params, plan))
    return tuple(out)


# Several tests read the same studies; run each once.
_run_study = functools.cache(_drive_study)


def _assert_valid_plan(
    space: SearchSpace, ctx: SpaceContext, params: dict, plan: TrialPlan
) -> None:
    sched = plan.schedule
    depths = sched.depths
    assert depths == sorted(set(depths)) and depths[0] >= 1 and depths[-1] == ctx.num_layers
    assert all(stage.steps >= 1 for stage in sched.stages)
    assert sched.stage_steps == ctx.baseline_steps
    assert sched.continual_steps >= 0

    # Within budget by construction: rounding the continual length costs at most one step.
    def flops(include_continual: bool) -> float:
        return sched.flops(
            ctx.dims,
            tokens_per_step=ctx.tokens_per_step,
            convention=ctx.convention,
            include_continual=include_continual,
        )

    stage_flops = flops(include_continual=False)
    # No point is over budget: the stages alone always fit (the budget holds the baseline).
    assert stage_flops <= ctx.budget_flops * (1 + 1e-12)
    allowed = (
        stage_flops
        + space.max_continual_multiple * max(0.0, ctx.budget_flops - stage_flops)
        + ctx.full_step_flops
    )
    assert flops(include_continual=True) <= allowed * (1 + 1e-12)
    if sched.num_stages == 1:
        assert sched == baseline_schedule(ctx.num_layers, ctx.baseline_steps)
    assert plan.params == params
    assert all("/" not in key for key in params)  # Ray would un-flatten such keys
    assert plan.lr > 0 and plan.warmup_steps >= 0
    assert plan.is_baseline == (
        sched.num_stages == 1 and plan.lr == ctx.base_lr and plan.warmup_steps == ctx.base_warmup
    )
    assert plan.schedule_key == recipe_key(sched, lr=plan.lr, warmup_steps=plan.warmup_steps)
    assert sched.meta == {"space": space.name, "params": params}


# -- conformance: every registered space ------------------------------------------------------


def test_sampled_plans_are_valid_and_within_budget(space: SearchSpace, ctx: SpaceContext) -> None:
    plans = _run_study(space.name, ctx, seed=0)
    for params, plan in plans:
        _assert_valid_plan(space, ctx, params, plan)
    # The study really explores: it reaches staged schedules wherever the context allows.
    if ctx.num_layers > 1 and ctx.baseline_steps >= 2 * ctx.num_layers:
        assert any(plan.schedule.num_stages > 1 for _, plan in plans)


def test_same_sampler_seed_same_params(space: SearchSpace) -> None:
    ctx = CONTEXTS["deep-paper"]
    first = [params for params, _ in _drive_study(space.name, ctx, seed=7)]
    again = [params for params, _ in _drive_study(space.name, ctx, seed=7)]
    assert first == again
    other = [params for params, _ in _drive_study(space.name, ctx, seed=8)]
    assert other != first


def test_build_is_pure(space: SearchSpace, ctx: SpaceContext) -> None:
    for params, plan in _run_study(space.name, ctx, seed=0)[:: N_TRIALS // 8]:
        frozen = dict(params)
        reordered = dict(reversed(list(params.items())))
        assert space.build(reordered, ctx) == plan == space.build(params, ctx)
        assert params == frozen  # not mutated
        # Plans are values: they survive the trip to a Tune worker.
        assert pickle.loads(pickle.dumps(plan)) == plan


def test_build_ignores_keys_the_point_does_not_use(space: SearchSpace, ctx: SpaceContext) -> None:
    # Tune merges constants (a seed, a data path) into the trial config beside the params.
    point = space.baseline_point(ctx)
    plan = space.build({**point, "seed": 3, "inc_1": 1}, ctx)
    assert plan == space.build(point, ctx)
    assert plan.params == point


def test_build_rejects_invalid_points(space: SearchSpace, ctx: SpaceContext) -> None:
    with pytest.raises(ConfigError, match="num_stages") as err:
        space.build({}, ctx)
    assert err.value.field == "search.params.num_stages"
    with pytest.raises(ConfigError, match="num_stages"):
        space.build({**space.baseline_point(ctx), "num_stages": ctx.num_layers + 1}, ctx)


def test_baseline_point_builds_the_baseline(space: SearchSpace, ctx: SpaceContext) -> None:
    plan = space.build(space.baseline_point(ctx), ctx)
    assert plan.is_baseline
    assert plan.schedule.num_stages == 1 and plan.schedule.is_baseline
    assert plan.schedule == baseline_schedule(ctx.num_layers, ctx.baseline_steps)
    assert (plan.lr, plan.warmup_steps) == (ctx.base_lr, ctx.base_warmup)
    flops = plan.schedule.flops(
        ctx.dims, tokens_per_step=ctx.tokens_per_step, convention=ctx.convention
    )
    assert flops == ctx.baseline_flops
    # Every space agrees on the baseline's identity, so results group across spaces.
    assert plan.schedule_key == recipe_key(
        baseline_schedule(ctx.num_layers, ctx.baseline_steps),
        lr=ctx.base_lr,
        warmup_steps=ctx.base_warmup,
    )


def test_enqueued_baseline_point_is_replayed_exactly(space: SearchSpace, ctx: SpaceContext) -> None:
    point = space.baseline_point(ctx)
    study = optuna.create_study(sampler=TPESampler(seed=1))
    study.enqueue_trial(point)
    trial = study.ask()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an out-of-range fixed param only warns in optuna
        params = space.define(trial, ctx)
    assert params == point == trial.params


def test_grid_lists_valid_distinct_points_baseline_first(
    space: SearchSpace, ctx: SpaceContext
) -> None:
    grid = space.grid(ctx)
    if grid is None:
        pytest.skip(f"{space.name} is not finite")
    assert grid[0] == space.baseline_point(ctx)
    keys = [tuple(sorted(p.items())) for p in grid]
    assert len(set(keys)) == len(keys)
    for point in grid:
        _assert_valid_plan(space, ctx, point, space.build(point, ctx))


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_grid_is_exactly_what_define_can_reach(space: SearchSpace) -> None:
    # Brute force over the define-by-run space (conditionals included) must find the grid:
    # the two descriptions of a finite space cannot drift apart.
    ctx = CONTEXTS["default"]
    grid = space.grid(ctx)
    if grid is None:
        pytest.skip(f"{space.name} is not finite")
    study = optuna.create_study(sampler=BruteForceSampler(seed=0))
    study.optimize(lambda t: _objective(space.build(space.define(t, ctx) or {}, ctx)))
    found = sorted(tuple(sorted(t.params.items())) for t in study.trials)
    assert found == sorted(tuple(sorted(p.items())) for p in grid)


def test_define_by_run_is_picklable(space: SearchSpace) -> None:
    ctx = CONTEXTS["default"]
    fn = pickle.loads(pickle.dumps(space.as_define_by_run(ctx)))
    study = optuna.create_study(sampler=TPESampler(seed=0))
    study.enqueue_trial(space.baseline_point(ctx))
    assert fn(study.ask()) == space.baseline_point(ctx)


def test_ray_optuna_search_suggests_baseline_first_then_valid_configs(
    space: SearchSpace, tmp_path: Path
) -> None:
    ray = pytest.importorskip("ray")
    from ray.tune.search.optuna import OptunaSearch

    ray_was_up = ray.is_initialized()  # another test may have started the shared instance
    ctx = CONTEXTS["default"]
    baseline = space.baseline_point(ctx)
    searcher = OptunaSearch(
        space=space.as_define_by_run(ctx),
        metric="eval_loss",
        mode="min",
        points_to_evaluate=[baseline],
        sampler=TPESampler(seed=0),
    )
    configs = []
    for i in range(1, 9):
        config = searcher.suggest(f"t{i}")
        assert config is not None
        configs.append(config)
        plan = space.build(config, ctx)
        _assert_valid_plan(space, ctx, config, plan)
        searcher.on_trial_complete(f"t{i}", {"eval_loss": _objective(plan)})
    assert configs[0] == baseline
    assert space.build(configs[0], ctx).is_baseline
    # Tune checkpoints the searcher with plain pickle (resume): the space must survive it.
    searcher.save(str(tmp_path / "searcher.pkl"))
    assert ray.is_initialized() == ray_was_up  # all of the above needs no cluster


# -- registry and context -------------------------------------------------------------------


def test_registry_names_and_lookup() -> None:
    assert set(SEARCH_SPACES) == {"paper", "wide", "compact"}
    for name, space in SEARCH_SPACES.items():
        assert space.name == name and get_search_space(name) is space
        assert space.max_continual_multiple >= 1.0
    # Every space name the config accepts resolves.
    assert set(config_mod.SEARCH_SPACES) <= set(SEARCH_SPACES)
    with pytest.raises(ConfigError, match="did you mean 'wide'") as err:
        get_search_space("wdie")
    assert err.value.field == "search.space"
    with pytest.raises(TypeError):
        SEARCH_SPACES["mine"] = WideSpace()  # type: ignore[index]


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


def test_recipe_key_ignores_meta_and_seeds_but_not_lr() -> None:
    sched = baseline_schedule(4, 10)
    tagged = dataclasses.replace(sched, meta={"seed": 1})
    assert recipe_key(sched, lr=1e-3, warmup_steps=0) == recipe_key(tagged, lr=1e-3, warmup_steps=0)
    assert recipe_key(sched, lr=1e-3, warmup_steps=0) != recipe_key(sched, lr=2e-3, warmup_steps=0)
    assert recipe_key(sched, lr=1e-3, warmup_steps=0) != recipe_key(sched, lr=1e-3, warmup_steps=1)


def test_params_trial_is_strict() -> None:
    trial = ParamsTrial({"a": 3.0, "b": True, "c": 0.5})
    assert trial.suggest_int("a", 1, 4) == 3 and isinstance(trial.params["a"], int)
    assert trial.suggest_categorical("b", (True, False)) is True
    with pytest.raises(ConfigError, match="use a number in"):
        trial.suggest_float("c", 0.6, 1.0)
    with pytest.raises(ConfigError, match="use one of"):
        ParamsTrial({"b": 1}).suggest_categorical("b", (True, False))
    with pytest.raises(ConfigError, match="expected an integer"):
        ParamsTrial({"a": "3"}).suggest_int("a", 1, 4)
    with pytest.raises(ConfigError, match="expected an integer"):
        ParamsTrial({"a": 2.5}).suggest_int("a", 1, 4)
    assert ParamsTrial({"a": np.int64(2)}).suggest_int("a", 1, 4) == 2


@pytest.mark.parametrize("num_layers,num_stages", [(4, 1), (4, 2), (6, 3), (5, 5), (12, 6)])
def test_suggest_increments_always_composes_the_depth(num_layers: int, num_stages: int) -> None:
    study = optuna.create_study(sampler=TPESampler(seed=0, n_startup_trials=3))
    for _ in range(15):
        trial = study.ask()
        incs = suggest_increments(trial, num_layers, num_stages)
        assert len(incs) == num_stages and min(incs) >= 1 and sum(incs) == num_layers
        assert len(trial.params) == (0 if num_stages == num_layers else num_stages - 1)
        study.tell(trial, float(incs[0]))


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
        assert plan.lr == ctx.base_lr and plan.warmup_steps == ctx.base_warmup
    one = space.build({"num_stages": 4, "continual_multiple": 1.0}, ctx).schedule
    two = space.build({"num_stages": 4, "continual_multiple": 2.0}, ctx).schedule
    assert one.continual_steps > 0 and abs(two.continual_steps - 2 * one.continual_steps) <= 1
    assert len(space.grid(ctx) or []) == 1 + 5 * 5


def test_paper_space_keeps_both_phases_when_steps_are_short() -> None:
    space = PaperSpace()
    assert space.stage_choices(_ctx(12, 10)) == [1, 2, 3, 4]  # 2S <= T
    assert space.stage_choices(CONTEXTS["tight"]) == [1]
    for params in space.grid(_ctx(6, 25)) or []:
        sched = space.build(params, _ctx(6, 25)).schedule
        assert all(st.phase1_steps >= 1 for st in sched.stages[1:])


# -- the wide space -------------------------------------------------------------------------------


def test_wide_space_conditionals() -> None:
    ctx = CONTEXTS["default"]  # L = 4, T = 120
    space = WideSpace()
    seen: set[str] = set()
    for params, plan in _run_study("wide", ctx, seed=0):
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
    assert plan.schedule_key != WideSpace().build(WideSpace().baseline_point(ctx), ctx).schedule_key


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

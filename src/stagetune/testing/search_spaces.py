"""The search-space contract, as a pytest suite (subclass it; override ``space``).

Modelled on optuna's shared sampler tests: each property is checked on several study contexts
(:data:`CONTEXTS`: the default config, a deep Llama with the paper convention and a bigger
budget, steps that no stage count divides at the tightest budget, barely a step per layer), on
real Optuna studies with seeded samplers. No training. A space must: build a valid schedule
within the budget from every point it samples (nothing sampled and then rejected), build purely
from the params, refuse invalid points, contain its baseline point, list exactly what it can
reach when finite, and survive pickling (Tune checkpoints the searcher).
"""

from __future__ import annotations

import functools
import pickle
import random
import warnings
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.samplers import BruteForceSampler, TPESampler

from stagetune.compute import ModelDims
from stagetune.config import ExperimentConfig, ModelConfig, ScheduleConfig
from stagetune.errors import ConfigError
from stagetune.models import get_family
from stagetune.schedule import baseline_schedule
from stagetune.search_spaces import SearchSpace, SpaceContext
from stagetune.trial import TrialDescription, recipe_key

__all__ = ["CONTEXTS", "N_TRIALS", "SearchSpaceSuite", "assert_valid_trial", "space_context"]

N_TRIALS = 40
"""Trials of each seeded study the suite drives."""


def _dims(n_layer: int, family: str) -> ModelDims:
    cfg = ModelConfig(
        family=family,
        n_layer=n_layer,
        n_embd=64,
        n_head=4,
        n_kv_head=2 if family == "llama" else None,
        intermediate_size=256,
    )
    return get_family(family).dims(cfg, vocab_size=512, seq_len=32)


def space_context(n_layer: int, steps: int, **kw: Any) -> SpaceContext:
    """A study context of ``n_layer`` blocks and ``steps`` baseline steps (``family``, and
    any :class:`SpaceContext` field, as keywords)."""
    kw.setdefault("base_lr", 3e-3)
    return SpaceContext(
        num_layers=n_layer,
        baseline_steps=steps,
        dims=_dims(n_layer, kw.pop("family", "gpt2")),
        tokens_per_step=256,
        **kw,
    )


CONTEXTS: dict[str, SpaceContext] = {
    # Pinned (not the package defaults) so expectations stay put: L = 4, T = 120.
    "default": SpaceContext.from_config(
        ExperimentConfig(model=ModelConfig(n_layer=4), schedule=ScheduleConfig(baseline_steps=120)),
        vocab_size=2048,
    ),
    "deep-paper": space_context(
        12, 120, convention="paper", budget_factor=1.5, base_warmup=20, family="llama"
    ),
    "odd-steps": space_context(
        6, 25, budget_factor=1.0, freeze_policy="paper", step_spread="depth"
    ),
    "tight": space_context(3, 3, freeze_policy="none", base_warmup=1),
}
"""Study shapes that stress different corners of a space."""


def objective(trial: TrialDescription) -> float:
    """Deterministic but uninformative, so TPE wanders the whole space."""
    return random.Random(trial.key).random()


def drive_study(
    space: SearchSpace, ctx: SpaceContext, seed: int
) -> tuple[tuple[dict[str, Any], TrialDescription], ...]:
    """(params, trial) of :data:`N_TRIALS` ask/define/build/tell rounds of a seeded TPE study."""
    study = optuna.create_study(sampler=TPESampler(seed=seed, n_startup_trials=8))
    out = []
    for _ in range(N_TRIALS):
        trial = study.ask()
        params = space.define(trial, ctx)
        assert params is not None
        # define returns exactly what it suggested: nothing more, nothing less.
        assert params == trial.params
        plan = space.build(params, ctx)
        study.tell(trial, objective(plan))
        out.append((params, plan))
    return tuple(out)


# Several tests read the same studies; run each once (spaces and contexts are hashable values).
_cached_study = functools.cache(drive_study)


def assert_valid_trial(
    space: SearchSpace, ctx: SpaceContext, params: dict[str, Any], plan: TrialDescription
) -> None:
    """``plan`` (built by ``space`` from ``params``) is a valid trial within the budget."""
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
        + max(
            space.max_continual_multiple * max(0.0, ctx.budget_flops - stage_flops),
            ctx.baseline_steps * ctx.full_step_flops,  # T continual steps (the paper's)
        )
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
    assert plan.key == recipe_key(sched, lr=plan.lr, warmup_steps=plan.warmup_steps)
    assert plan.seed == ctx.base_seed
    assert sched.meta == {"space": space.name, "params": params}


class SearchSpaceSuite:
    """Tests every search space passes. Override :meth:`space`."""

    @pytest.fixture
    def space(self) -> SearchSpace:
        """The space under test."""
        raise NotImplementedError("override the `space` fixture with your SearchSpace")

    @pytest.fixture(params=sorted(CONTEXTS))
    def ctx(self, request: pytest.FixtureRequest) -> SpaceContext:
        """A study context from :data:`CONTEXTS`."""
        return CONTEXTS[request.param]

    def test_has_a_name(self, space: SearchSpace) -> None:
        assert isinstance(space, SearchSpace)
        assert isinstance(space.name, str) and space.name
        assert space.max_continual_multiple >= 1.0

    def test_sampled_plans_are_valid_and_within_budget(
        self, space: SearchSpace, ctx: SpaceContext
    ) -> None:
        plans = _cached_study(space, ctx, 0)
        for params, plan in plans:
            assert_valid_trial(space, ctx, params, plan)
        # The study really explores: it reaches staged schedules wherever the context allows.
        if ctx.num_layers > 1 and ctx.baseline_steps >= 2 * ctx.num_layers:
            assert any(plan.schedule.num_stages > 1 for _, plan in plans)

    def test_same_sampler_seed_same_params(self, space: SearchSpace) -> None:
        ctx = CONTEXTS["deep-paper"]
        first = [params for params, _ in drive_study(space, ctx, seed=7)]
        again = [params for params, _ in drive_study(space, ctx, seed=7)]
        assert first == again
        other = [params for params, _ in drive_study(space, ctx, seed=8)]
        assert other != first

    def test_build_is_pure(self, space: SearchSpace, ctx: SpaceContext) -> None:
        for params, plan in _cached_study(space, ctx, 0)[:: N_TRIALS // 8]:
            frozen = dict(params)
            reordered = dict(reversed(list(params.items())))
            assert space.build(reordered, ctx) == plan == space.build(params, ctx)
            assert params == frozen  # not mutated
            # Plans are values: they survive the trip to a Tune worker.
            assert pickle.loads(pickle.dumps(plan)) == plan

    def test_build_ignores_keys_the_point_does_not_use(
        self, space: SearchSpace, ctx: SpaceContext
    ) -> None:
        # Tune merges constants (a seed, a data path) into the trial config beside the params.
        point = space.baseline_point(ctx)
        plan = space.build({**point, "seed": 3, "inc_1": 1}, ctx)
        assert plan == space.build(point, ctx)
        assert plan.params == point

    def test_build_rejects_invalid_points(self, space: SearchSpace, ctx: SpaceContext) -> None:
        with pytest.raises(ConfigError, match="num_stages") as err:
            space.build({}, ctx)
        assert err.value.field == "search.params.num_stages"
        with pytest.raises(ConfigError, match="num_stages"):
            space.build({**space.baseline_point(ctx), "num_stages": ctx.num_layers + 1}, ctx)

    def test_baseline_point_builds_the_baseline(
        self, space: SearchSpace, ctx: SpaceContext
    ) -> None:
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
        assert plan.key == recipe_key(
            baseline_schedule(ctx.num_layers, ctx.baseline_steps),
            lr=ctx.base_lr,
            warmup_steps=ctx.base_warmup,
        )

    def test_enqueued_baseline_point_is_replayed_exactly(
        self, space: SearchSpace, ctx: SpaceContext
    ) -> None:
        point = space.baseline_point(ctx)
        study = optuna.create_study(sampler=TPESampler(seed=1))
        study.enqueue_trial(point)
        trial = study.ask()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # an out-of-range fixed param only warns in optuna
            params = space.define(trial, ctx)
        assert params == point == trial.params

    def test_grid_lists_valid_distinct_points_baseline_first(
        self, space: SearchSpace, ctx: SpaceContext
    ) -> None:
        grid = space.grid(ctx)
        if grid is None:
            pytest.skip(f"{space.name} is not finite")
        assert grid[0] == space.baseline_point(ctx)
        keys = [tuple(sorted(p.items())) for p in grid]
        assert len(set(keys)) == len(keys)
        for point in grid:
            assert_valid_trial(space, ctx, point, space.build(point, ctx))

    @pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
    def test_grid_is_exactly_what_define_can_reach(self, space: SearchSpace) -> None:
        # Brute force over the define-by-run space (conditionals included) must find the grid:
        # the two descriptions of a finite space cannot drift apart.
        ctx = CONTEXTS["default"]
        grid = space.grid(ctx)
        if grid is None:
            pytest.skip(f"{space.name} is not finite")
        study = optuna.create_study(sampler=BruteForceSampler(seed=0))
        study.optimize(lambda t: objective(space.build(space.define(t, ctx) or {}, ctx)))
        # Ordered by text: a categorical's choices may mix types (the paper space's "T").
        found = sorted((tuple(sorted(t.params.items())) for t in study.trials), key=str)
        assert found == sorted((tuple(sorted(p.items())) for p in grid), key=str)

    def test_define_by_run_is_picklable(self, space: SearchSpace) -> None:
        ctx = CONTEXTS["default"]
        fn = pickle.loads(pickle.dumps(space.as_define_by_run(ctx)))
        study = optuna.create_study(sampler=TPESampler(seed=0))
        study.enqueue_trial(space.baseline_point(ctx))
        assert fn(study.ask()) == space.baseline_point(ctx)

    def test_ray_optuna_search_suggests_baseline_first_then_valid_configs(
        self, space: SearchSpace, tmp_path: Path
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
            assert_valid_trial(space, ctx, config, plan)
            searcher.on_trial_complete(f"t{i}", {"eval_loss": objective(plan)})
        assert configs[0] == baseline
        assert space.build(configs[0], ctx).is_baseline
        # Tune checkpoints the searcher with plain pickle (resume): the space must survive it.
        searcher.save(str(tmp_path / "searcher.pkl"))
        assert ray.is_initialized() == ray_was_up  # all of the above needs no cluster

"""The seed-repeat phase: after the search, the baseline and the best schedules train again on
further seeds, so the report can give confidence intervals.

It is a Tune experiment of its own (``<study>-seeds``: a grid over whole points, each with its
seed), signed and resumed like the search's, and tracked through the same callbacks.
"""

from __future__ import annotations

import math
from typing import Any

from stagetune.config import ExperimentConfig
from stagetune.metrics import EVAL_LOSS, STATUS_FINISHED
from stagetune.orchestration.integrity import TuneStateSigner
from stagetune.orchestration.resume import experiment_uri, restore_tuner, snapshot_trials
from stagetune.orchestration.trainable import (
    POINT_PARAM,
    SEED_PARAM,
    StudyContext,
    make_trainable,
    point_of,
)
from stagetune.search_spaces import SearchSpace, SpaceContext

__all__ = ["SEEDS_SIGNED", "repeat_points", "run_seed_repeats", "seeds_name"]

SEEDS_SIGNED = "seeds"
"""Under ``tune_signed``: the signatures of the seed-repeat phase's Tune experiment."""


def seeds_name(cfg: ExperimentConfig) -> str:
    """The phase's Tune experiment name."""
    return f"{cfg.name}-seeds"


def repeat_points(
    cfg: ExperimentConfig, space: SearchSpace, ctx: SpaceContext, grid: Any
) -> list[dict[str, Any]]:
    """The params of every repeat: the baseline and the ``search.repeat_top_k`` best finished
    points of the search (``grid``: its Tune results), each on seeds ``train.seed + 1`` …
    ``train.seed + search.seeds - 1``."""
    finished = []
    for res in grid:
        if res.metrics and res.metrics.get("status") == STATUS_FINISHED:
            finished.append(
                (
                    float(res.metrics.get(EVAL_LOSS, math.inf)),
                    point_of(res.config),
                    bool(res.metrics.get("is_baseline")),
                )
            )
    finished.sort(key=lambda r: r[0])
    points = [space.baseline_point(ctx)]
    for _, point, is_base in finished:
        if len(points) > cfg.search.repeat_top_k:
            break
        if not is_base and point not in points:
            points.append(point)
    return [
        {**p, SEED_PARAM: cfg.train.seed + s} for p in points for s in range(1, cfg.search.seeds)
    ]


def run_seed_repeats(
    cfg: ExperimentConfig,
    repeats: list[dict[str, Any]],
    *,
    study: StudyContext,
    concurrency: int,
    callbacks: list[Any],
    storage_root: str,
    signer: TuneStateSigner,
    restorable: bool,
) -> None:
    """Run ``repeats`` (:func:`repeat_points`) as the phase's Tune experiment.

    ``restorable``: the phase's own Tune state verified against ``signer`` (a resume); an
    interrupted phase then continues, and its finished repeats are not run again.
    """
    from ray import tune

    if not repeats:
        return
    uri = experiment_uri(storage_root, seeds_name(cfg))
    if restorable and snapshot_trials(uri) is not None:
        tuner = restore_tuner(uri, make_trainable(study, cfg), [*callbacks, signer])
    else:
        tuner = tune.Tuner(
            make_trainable(study, cfg),
            param_space={POINT_PARAM: tune.grid_search(repeats)},
            tune_config=tune.TuneConfig(max_concurrent_trials=concurrency, reuse_actors=True),
            run_config=tune.RunConfig(
                name=seeds_name(cfg),
                storage_path=storage_root,
                failure_config=tune.FailureConfig(max_failures=cfg.resources.max_failures),
                callbacks=[*callbacks, signer],
                verbose=0,
            ),
        )
        signer.sign_tuner()
    tuner.fit()

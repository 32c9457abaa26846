"""The study's grid phases: the reference sweep before the search and the confirmation round
after it, each a Tune experiment of its own (a grid over whole points, each with its seed and
phase), signed and resumed like the search's, and tracked through the same callbacks.

* **Reference sweep** (``<study>-reference``): the full-depth schedule at ``train.lr`` × each
  of ``search.reference_lr_factors`` other than 1 (× 1 is the configured baseline, the search's
  first trial). No scheduler: never stopped early.
* **Confirmation round** (``<study>-seeds``, the name the seed-repeat phase had, so older
  studies resume): the reference and the ``search.repeat_top_k`` best schedules again, on seeds
  ``train.seed + 1`` … ``train.seed + search.seeds − 1``, so the verdict can give 95 %
  intervals over seeds.

Both are ordinary trials to Tune, MLflow (child runs tagged ``stagetune.phase``) and the study's
compute, but not Optuna trials: they are not samples of the search space (the sweep's lr is not
a point of the ``paper`` or ``compact`` spaces), and telling Optuna about them would bias its
sampler towards points it did not choose.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from stagetune.config import ExperimentConfig
from stagetune.metrics import EVAL_LOSS, STATUS_FINISHED
from stagetune.orchestration.integrity import TuneStateSigner
from stagetune.orchestration.resume import experiment_uri, restore_tuner, snapshot_trials
from stagetune.orchestration.trainable import (
    LR_PARAM,
    PHASE_PARAM,
    POINT_PARAM,
    SEED_PARAM,
    StudyContext,
    describe_trial,
    make_trainable,
    point_of,
)
from stagetune.results.reference import ReferenceCandidate, choose_reference
from stagetune.search_spaces import SearchSpace, SpaceContext
from stagetune.trial import PHASE_CONFIRMATION, PHASE_REFERENCE

__all__ = [
    "REFERENCE_SIGNED",
    "SEEDS_SIGNED",
    "phase_curves",
    "phase_trial_count",
    "reference_name",
    "reference_point",
    "repeat_points",
    "run_grid_phase",
    "seeds_name",
    "sweep_points",
]

SEEDS_SIGNED = "seeds"
"""Under ``tune_signed``: the signatures of the confirmation round's Tune experiment."""
REFERENCE_SIGNED = "reference"
"""Under ``tune_signed``: the signatures of the reference sweep's Tune experiment."""


def seeds_name(cfg: ExperimentConfig) -> str:
    """The confirmation round's Tune experiment name."""
    return f"{cfg.name}-seeds"


def reference_name(cfg: ExperimentConfig) -> str:
    """The reference sweep's Tune experiment name."""
    return f"{cfg.name}-reference"


def _sweep_lrs(cfg: ExperimentConfig) -> list[float]:
    """The sweep's learning rates other than the configured one, in the config's order."""
    out: list[float] = []
    for f in cfg.search.reference_lr_factors:
        lr = cfg.train.lr * float(f)
        if not math.isclose(f, 1.0) and all(not math.isclose(lr, o) for o in out):
            out.append(lr)
    return out


def sweep_points(
    cfg: ExperimentConfig, space: SearchSpace, ctx: SpaceContext
) -> list[dict[str, Any]]:
    """The reference sweep's trials: the baseline point at each lr of :func:`_sweep_lrs`."""
    base = space.baseline_point(ctx)
    return [{**base, LR_PARAM: lr, PHASE_PARAM: PHASE_REFERENCE} for lr in _sweep_lrs(cfg)]


def phase_trial_count(cfg: ExperimentConfig) -> int:
    """Trials of the study beyond the search's: the sweep's, and the confirmation round's at
    most (the reference and ``repeat_top_k`` schedules on ``seeds − 1`` further seeds)."""
    return len(_sweep_lrs(cfg)) + (cfg.search.repeat_top_k + 1) * (cfg.search.seeds - 1)


def _finished(res: Any) -> bool:
    return bool(res.metrics) and res.metrics.get("status") == STATUS_FINISHED


def phase_curves(grid: Any, time_attr: str) -> dict[str, list[tuple[float, float]]]:
    """Each finished trial's ``(time_attr, eval loss)`` reports, in order (for ASHA's rungs:
    :meth:`~stagetune.orchestration.searcher.BaselineKeepingASHA.seed_rungs`)."""
    out: dict[str, list[tuple[float, float]]] = {}
    for res in grid or []:
        df = res.metrics_dataframe
        if not _finished(res) or df is None or time_attr not in df or EVAL_LOSS not in df:
            continue
        rows = df[[time_attr, EVAL_LOSS]].dropna()
        tid = str(res.metrics.get("trial_id", len(out)))
        out[tid] = [(float(t), float(v)) for t, v in rows.itertuples(index=False)]
    return out


def reference_point(study: StudyContext, grids: Iterable[Any]) -> dict[str, Any] | None:
    """The point of the reference (:func:`stagetune.results.reference.choose_reference`) among
    the full-depth trials of ``grids`` (Tune results of the sweep and the search, all on the
    study's seed); ``None`` when no full-depth trial finished."""
    points: dict[str, dict[str, Any]] = {}
    candidates = []
    for grid in grids:
        for res in grid:
            if not res.metrics or not res.metrics.get("full_depth", res.metrics.get("is_baseline")):
                continue
            trial = describe_trial(res.config, study, name="reference")
            points.setdefault(trial.key, point_of(res.config))
            loss = res.metrics.get(EVAL_LOSS)
            candidates.append(
                ReferenceCandidate(
                    key=trial.key,
                    final_eval_loss=None if loss is None else float(loss),
                    finished=_finished(res),
                    is_baseline=trial.is_baseline,
                )
            )
    key = choose_reference(candidates)
    return None if key is None else points[key]


def repeat_points(
    cfg: ExperimentConfig,
    space: SearchSpace,
    ctx: SpaceContext,
    grid: Any,
    *,
    reference: dict[str, Any] | None,
) -> list[dict[str, Any]]:
    """The confirmation round's params: ``reference`` (the baseline point when ``None``) and the
    ``search.repeat_top_k`` incremental schedules of the search (``grid``: its Tune results)
    with the lowest final eval loss among those that finished, each on seeds ``train.seed + 1``
    … ``train.seed + search.seeds − 1``.

    Final eval loss ranks them because every schedule of a study ends at (about) the budget's
    compute; full-depth trials are candidates for the reference, not schedules.
    """
    finished = []
    for res in grid:
        if _finished(res) and not res.metrics.get("full_depth", res.metrics.get("is_baseline")):
            finished.append((float(res.metrics.get(EVAL_LOSS, math.inf)), point_of(res.config)))
    finished.sort(key=lambda r: r[0])
    ref = dict(reference) if reference is not None else space.baseline_point(ctx)
    ref.pop(PHASE_PARAM, None)
    points = [ref]
    for _, point in finished:
        if len(points) > cfg.search.repeat_top_k:
            break
        if point not in points:
            points.append(point)
    return [
        {**p, SEED_PARAM: cfg.train.seed + s, PHASE_PARAM: PHASE_CONFIRMATION}
        for p in points
        for s in range(1, cfg.search.seeds)
    ]


def run_grid_phase(
    cfg: ExperimentConfig,
    points: list[dict[str, Any]],
    *,
    name: str,
    study: StudyContext,
    concurrency: int,
    callbacks: list[Any],
    storage_root: str,
    signer: TuneStateSigner,
    restorable: bool,
) -> Any:
    """Run ``points`` as the Tune experiment ``name`` (no scheduler: every trial runs to its
    end) and return its results (``None`` when there are no points).

    ``restorable``: the phase's own Tune state verified against ``signer`` (a resume); an
    interrupted phase then continues, and its finished trials are not run again.
    """
    from ray import tune

    if not points:
        return None
    uri = experiment_uri(storage_root, name)
    if restorable and snapshot_trials(uri) is not None:
        tuner = restore_tuner(uri, make_trainable(study, cfg), [*callbacks, signer])
    else:
        tuner = tune.Tuner(
            make_trainable(study, cfg),
            param_space={POINT_PARAM: tune.grid_search(points)},
            tune_config=tune.TuneConfig(max_concurrent_trials=concurrency, reuse_actors=True),
            run_config=tune.RunConfig(
                name=name,
                storage_path=storage_root,
                failure_config=tune.FailureConfig(max_failures=cfg.resources.max_failures),
                callbacks=[*callbacks, signer],
                verbose=0,
            ),
        )
        signer.sign_tuner()
    return tuner.fit()

"""The study's Tune trainable: a trial's search params become a typed
:class:`~stagetune.trial.TrialDescription` once, here, and the launcher trains it.

Ray hands a trial its params as a plain dict; :func:`describe_trial` turns them into the
trial's description through the study's search space (the same code the searcher samples
with), and everything downstream — the launcher, the loop on every rank, MLflow's params and
tags (:func:`tracking_info`) — reads that one value.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from stagetune.config import ExperimentConfig, config_from_dict, config_to_dict
from stagetune.data import PreparedData
from stagetune.results.naming import (
    PARAM_NON_EMBEDDING_PARAMS,
    PARAM_SCHEDULE_KEY,
    PARAM_SCHEDULE_LABEL,
    TAG_FULL_DEPTH,
    TAG_IS_BASELINE,
    TAG_LABEL,
    TAG_PHASE,
    TAG_RUN_NAME,
    TAG_SCHEDULE_KEY,
    TAG_SEED,
    TAG_SPACE,
)
from stagetune.search_spaces import SpaceContext, get_search_space
from stagetune.trainables.launcher import TrainRun, launch
from stagetune.trainables.session import TuneSession
from stagetune.trial import PHASE_SEARCH, TrialDescription

__all__ = [
    "LR_PARAM",
    "PHASE_PARAM",
    "SEED_PARAM",
    "StudyContext",
    "TrialLabeler",
    "describe_trial",
    "make_trainable",
    "point_of",
    "run_name",
    "tracking_info",
    "train_trial",
]

SEED_PARAM = "seed"
"""The param a seed repeat adds to its point (see :mod:`.seed_repeats`)."""
LR_PARAM = "reference_lr"
"""The param a reference-sweep trial adds to the baseline point: the learning rate it trains
with instead of the space's (the ``paper`` and ``compact`` spaces have no lr param)."""
PHASE_PARAM = "phase"
"""The param a phase's trial adds to its point: :data:`stagetune.trial.PHASE_REFERENCE` or
:data:`~stagetune.trial.PHASE_CONFIRMATION` (search trials have none)."""
POINT_PARAM = "point"
"""A seed repeat's params wrap its point: ``{"point": {...params, "seed": s}}`` (Tune's grid
search runs over whole points)."""


@dataclass(frozen=True, kw_only=True)
class StudyContext:
    """What every trial of a study shares (shipped once through the object store)."""

    config: dict[str, Any]
    vocab_size: int
    train_storage: str
    """Where multi-worker trials keep their Ray Train runs (checkpoints for worker restarts)."""
    data: PreparedData | None = None
    """The study's tokens as the driver prepared them (paths and fingerprint): a trial
    memory-maps them instead of preparing the data again."""

    @classmethod
    def create(
        cls,
        cfg: ExperimentConfig,
        *,
        vocab_size: int,
        train_storage: str,
        data: PreparedData | None = None,
    ) -> StudyContext:
        return cls(
            config=config_to_dict(cfg),
            vocab_size=vocab_size,
            train_storage=train_storage,
            data=data,
        )

    def experiment(self) -> ExperimentConfig:
        """The study's config (its names were checked when the study was prepared)."""
        return config_from_dict(self.config, check_names=False)


def point_of(params: dict[str, Any]) -> dict[str, Any]:
    """The search point of a trial's params (a seed repeat's included, with its seed)."""
    return dict(params.get(POINT_PARAM, params))


def describe_trial(params: dict[str, Any], study: StudyContext, *, name: str) -> TrialDescription:
    """The description of the trial Tune started with ``params`` (pure)."""
    cfg = study.experiment()
    point = point_of(params)
    seed = int(point.pop(SEED_PARAM, cfg.train.seed))
    phase = str(point.pop(PHASE_PARAM, PHASE_SEARCH))
    lr = point.pop(LR_PARAM, None)
    space = get_search_space(cfg.search.space)
    trial = space.build(point, SpaceContext.from_config(cfg, vocab_size=study.vocab_size))
    trial = replace(trial, seed=seed, name=name, phase=phase)
    if lr is not None:
        # A reference-sweep lr: the configured baseline only at the configured lr.
        base = trial.is_baseline and float(lr) == cfg.train.lr
        trial = replace(trial, lr=float(lr), is_baseline=base)
    return trial


@dataclass(frozen=True)
class TrialLabeler:
    """A trial's schedule label from its Tune params (a picklable callable: the searcher that
    holds it is saved with the study)."""

    study: StudyContext

    def __call__(self, params: dict[str, Any]) -> str:
        return describe_trial(params, self.study, name="label").label


def run_name(trial: TrialDescription, *, seed_repeat: bool = False) -> str:
    """The MLflow run name of ``trial``: its schedule label (``baseline`` for the baseline), and
    its seed when it is one of several (a seed repeat), so the runs table reads by schedule."""
    return f"{trial.label} · seed {trial.seed}" if seed_repeat else trial.label


def tracking_info(
    trial: TrialDescription,
    *,
    space: str,
    seed_repeat: bool = False,
    model_params: int | None = None,
) -> dict[str, Any]:
    """The MLflow params and tags of ``trial``'s run (``space``: the study's search space;
    ``seed_repeat``: the trial repeats a schedule on another seed; ``model_params``: the target
    model's non-embedding parameters, for the tokens-per-parameter summary)."""
    params = {
        **trial.schedule.flat_params(),
        **trial.params,
        SEED_PARAM: trial.seed,
        PARAM_SCHEDULE_KEY: trial.key,
        "lr": trial.lr,
        "warmup_steps": trial.warmup_steps,
        "schedule_json": trial.schedule.to_json(),
        PARAM_SCHEDULE_LABEL: trial.label,
    }
    if model_params is not None:
        params[PARAM_NON_EMBEDDING_PARAMS] = model_params
    tags = {
        TAG_IS_BASELINE: str(trial.is_baseline).lower(),
        TAG_SEED: str(trial.seed),
        TAG_SCHEDULE_KEY: trial.key,
        TAG_LABEL: trial.label,
        TAG_SPACE: space,
        TAG_PHASE: trial.phase,
        TAG_FULL_DEPTH: str(trial.is_full_depth).lower(),
        TAG_RUN_NAME: run_name(trial, seed_repeat=seed_repeat),
    }
    return {"params": params, "tags": tags}


def train_trial(
    config: dict[str, Any], study: StudyContext, replay: dict[str, dict[str, Any]] | None = None
) -> None:
    """The study's Tune function trainable (``tune.with_parameters(study=..., replay=...)``).

    On resume, a trial that had already ended when the driver died (Optuna and MLflow hold its
    end, Tune's snapshot did not) reports its last record again (``replay``) instead of
    training anew. The name stays ``train_trial``: ``Tuner.restore`` finds the trainable by it.
    """
    from ray import tune

    ctx = tune.get_context()
    record = (replay or {}).get(ctx.get_trial_id())
    if record is not None:
        tune.report({**record, "replayed": True})
        return
    trial = describe_trial(config, study, name=ctx.get_trial_name())
    launch(
        trial,
        config=study.experiment(),
        vocab_size=study.vocab_size,
        run=TrainRun.for_study_trial(study.train_storage, ctx.get_trial_id()),
        session=TuneSession,
        data=study.data,
    )


def make_trainable(
    study: StudyContext, cfg: ExperimentConfig, replay: dict[str, dict[str, Any]] | None = None
) -> Any:
    """:func:`train_trial` bound to the study, with the resources each trial holds."""
    from ray import tune

    res = cfg.resources
    fn = tune.with_parameters(train_trial, study=study, replay=replay or {})
    if res.workers_per_trial == 1:
        resources: dict[str, float] = {"CPU": res.cpus_per_worker}
        if res.gpus_per_worker:
            resources["GPU"] = res.gpus_per_worker
    else:
        # The trial is only the Train driver; its workers ask for their own resources. Tune
        # refuses an all-zero request, and any CPU share would keep the last worker from
        # fitting, so the driver holds a token amount of memory (1 byte) instead.
        resources = {"CPU": 0, "memory": 1}
    return tune.with_resources(fn, resources)

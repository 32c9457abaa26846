"""Build and run a study: Ray Tune + OptunaSearch + ASHA-on-FLOPs, tracked in MLflow.

The order matters for the "nothing half-written" rule: everything that can be refused (config,
data, work directory, cluster shape) is checked before the first file or run is created.
"""

from __future__ import annotations

import contextlib
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stagetune import __version__
from stagetune.config import ExperimentConfig, config_from_dict, config_to_dict
from stagetune.data import prepare_data
from stagetune.errors import ConfigError
from stagetune.metrics import FLOPS, STATUS_DIVERGED, STATUS_FINISHED
from stagetune.orchestration.callbacks import MlflowCallback, ProgressCallback, TrialLedger
from stagetune.orchestration.cluster import check_placeable, connect, max_concurrent_trials
from stagetune.orchestration.searcher import ResumableOptunaSearch
from stagetune.orchestration.storage import StudyPaths, check_writable
from stagetune.results import MlflowTracker
from stagetune.search_spaces import SearchSpace, SpaceContext, get_search_space
from stagetune.trainables.tune_trainable import StudyContext, make_trial_spec, train_trial

__all__ = ["PreparedStudy", "StudyRun", "prepare_study", "run_study"]

METRIC = "eval_loss"


@dataclass(kw_only=True)
class PreparedStudy:
    """A validated study, ready to launch (nothing started yet)."""

    config: ExperimentConfig
    paths: StudyPaths
    vocab_size: int
    space: SearchSpace
    ctx: SpaceContext
    resume: bool


@dataclass(kw_only=True)
class StudyRun:
    """What a finished (or interrupted) study produced."""

    config: ExperimentConfig
    paths: StudyPaths
    tracking_uri: str
    experiment: str
    parent_run_id: str
    trial_status: dict[str, str] = field(default_factory=dict)
    pareto: list[dict[str, Any]] = field(default_factory=list)


def prepare_study(
    cfg: ExperimentConfig | None, *, workdir: str | None = None, resume: bool = False
) -> PreparedStudy:
    """Validate everything that can be refused; returns without creating anything."""
    if resume:
        base = Path(workdir or (cfg.workdir if cfg else "stagetune-work")).expanduser().resolve()
        paths = StudyPaths(base)
        cfg = config_from_dict(paths.load_study())
        if not paths.optuna_db.is_file():
            raise ConfigError(
                "--resume",
                str(base),
                "the study has no Optuna storage; start it again without --resume",
            )
    else:
        assert cfg is not None
        if workdir:
            cfg = config_from_dict({**config_to_dict(cfg), "workdir": workdir})
        paths = StudyPaths(cfg.workdir_path)
    check_writable(paths.workdir, "workdir")
    if cfg.resources.storage_path and "://" not in cfg.resources.storage_path:
        check_writable(Path(cfg.resources.storage_path).expanduser(), "resources.storage_path")
    prepared = prepare_data(cfg.data)
    vocab = cfg.model.vocab_size or prepared.vocab_size
    if vocab < prepared.vocab_size:
        raise ConfigError(
            "model.vocab_size",
            vocab,
            f"the tokenizer has {prepared.vocab_size} tokens; raise it or leave it null",
        )
    space = get_search_space(cfg.search.space)
    ctx = SpaceContext.from_config(cfg, vocab_size=vocab)
    return PreparedStudy(
        config=cfg, paths=paths, vocab_size=vocab, space=space, ctx=ctx, resume=resume
    )


def make_sampler(cfg: ExperimentConfig, space: SearchSpace, ctx: SpaceContext) -> Any:
    """The seeded Optuna sampler for ``cfg.search.sampler`` (``auto`` picks by space/objectives)."""
    import optuna

    seed = cfg.train.seed
    choice = cfg.search.sampler
    if choice == "auto":
        if cfg.search.multi_objective:
            choice = "nsga2"
        elif cfg.search.space == "paper":
            # The paper's space is a small finite grid: TPE would resample the same points.
            choice = "bruteforce"
        else:
            choice = "tpe"
    if choice == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if choice == "bruteforce":
        return optuna.samplers.BruteForceSampler(seed=seed)
    if choice == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=max(2, cfg.search.num_trials // 3)
    )


def _label(spec: Any) -> str:
    if spec.is_baseline:
        return "baseline"
    if spec.schedule.is_baseline:
        return f"full-depth lr={spec.lr:.3g} wu={spec.warmup_steps}"
    return f"{spec.schedule.label()} lr={spec.lr:.3g}"


def _describe_factory(study: StudyContext) -> Any:
    def describe(params: dict[str, Any], trial_id: str) -> dict[str, Any]:
        spec = make_trial_spec(params, study, trial_name=trial_id)
        flat = {
            **spec.schedule.flat_params(),
            **spec.params,
            "lr": spec.lr,
            "warmup_steps": spec.warmup_steps,
        }
        flat["schedule_json"] = spec.schedule.to_json()
        flat["schedule_label"] = _label(spec)
        return {
            "params": flat,
            "tags": {
                "stagetune.is_baseline": str(spec.is_baseline).lower(),
                "stagetune.seed": str(spec.seed),
                "stagetune.schedule_key": str(spec.params.get("schedule_key", "")),
                "stagetune.label": _label(spec),
            },
        }

    return describe


def _mark_optuna(searcher: Any, trial_id: str, status: str) -> None:
    """Record stagetune's status on the Optuna trial (Optuna only knows COMPLETE/FAIL/PRUNED)."""
    ot_trial = getattr(searcher, "_ot_trials", {}).get(trial_id)
    if ot_trial is None:
        return
    # The trial may already be finished in storage; the tag is best-effort.
    with contextlib.suppress(Exception):
        ot_trial.set_user_attr("stagetune_status", status)


def _trainable(study: StudyContext, cfg: ExperimentConfig) -> Any:
    from ray import tune

    res = cfg.resources
    fn = tune.with_parameters(train_trial, study=study)
    if res.workers_per_trial == 1:
        resources: dict[str, float] = {"CPU": res.cpus_per_worker}
        if res.gpus_per_worker:
            resources["GPU"] = res.gpus_per_worker
    else:
        # The trial is only the Train driver; its workers ask for their own resources.
        resources = {"CPU": 0}
    return tune.with_resources(fn, resources)


def run_study(prep: PreparedStudy, *, quiet: bool = False, address: str | None = None) -> StudyRun:
    """Launch (or resume) the search, then the seed repeats; returns where results are."""
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    cfg, paths = prep.config, prep.paths
    info = connect(address or cfg.resources.address)
    check_placeable(cfg.resources, info)

    paths.workdir.mkdir(parents=True, exist_ok=True)
    if not prep.resume:
        paths.save_study(config_to_dict(cfg))

    tracking_uri = cfg.resolved_tracking_uri()
    tracker = MlflowTracker(tracking_uri, cfg.experiment_name, spool_dir=paths.spool_dir)
    tracker.sync_spool()
    parent = tracker.start_study(
        study_name=cfg.name,
        params={
            "space": cfg.search.space,
            "num_trials": cfg.search.num_trials,
            "budget_factor": cfg.budget.factor,
            "convention": cfg.budget.convention,
            "seeds": cfg.search.seeds,
            "model": f"{cfg.model.family}-L{cfg.model.n_layer}-d{cfg.model.n_embd}",
            "baseline_steps": cfg.schedule.baseline_steps,
            "batch_size": cfg.train.batch_size,
            "seq_len": cfg.data.seq_len,
            "lr": cfg.train.lr,
            "multi_objective": cfg.search.multi_objective,
            "early_stopping": cfg.search.early_stopping,
        },
        tags={
            "stagetune.version": __version__,
            "stagetune.python": sys.version.split()[0],
            "stagetune.budget_flops": f"{prep.ctx.budget_flops:.6g}",
            "stagetune.baseline_flops": f"{prep.ctx.baseline_flops:.6g}",
        },
    )

    study = StudyContext.create(
        cfg, vocab_size=prep.vocab_size, train_storage=str(paths.train_storage)
    )
    ledger = TrialLedger()
    multi = cfg.search.multi_objective
    metric: str | list[str] = [METRIC, FLOPS] if multi else METRIC
    mode: str | list[str] = ["min", "min"] if multi else "min"
    sampler = make_sampler(cfg, prep.space, prep.ctx)
    storage = optuna.storages.RDBStorage(paths.optuna_url)

    def make_searcher() -> ResumableOptunaSearch:
        # Enqueue the baseline only into a fresh study: a resumed one already holds it.
        try:
            existing = optuna.load_study(study_name=cfg.name, storage=storage).trials
        except KeyError:
            existing = []
        return ResumableOptunaSearch(
            space=prep.space.as_define_by_run(prep.ctx),
            metric=metric,
            mode=mode,
            points_to_evaluate=[] if existing else [prep.space.baseline_point(prep.ctx)],
            sampler=sampler,
            study_name=cfg.name,
            storage=storage,
        )

    searcher: Any = None
    max_flops = prep.ctx.budget_flops * (1.0 + prep.space.max_continual_multiple) * 1.05 + 1.0
    scheduler = None
    if cfg.search.early_stopping and not multi:
        scheduler = ASHAScheduler(
            time_attr=FLOPS,
            metric=METRIC,
            mode="min",
            max_t=max_flops,
            grace_period=cfg.search.grace_fraction * prep.ctx.budget_flops,
            reduction_factor=cfg.search.reduction_factor,
            stop_last_trials=False,
        )
    concurrency = cfg.search.max_concurrent or max_concurrent_trials(cfg.resources, info)
    planned = cfg.search.num_trials * prep.ctx.budget_flops

    def on_complete(trial_id: str, status: str, last: dict[str, Any]) -> None:
        _mark_optuna(searcher, trial_id, status)

    callbacks = [
        MlflowCallback(tracker, ledger, describe=_describe_factory(study), on_complete=on_complete),
        ProgressCallback(
            ledger, planned_flops=planned, total_trials=cfg.search.num_trials, quiet=quiet
        ),
    ]
    trainable = _trainable(study, cfg)
    run_config = tune.RunConfig(
        name=cfg.name,
        storage_path=str(cfg.resources.storage_path or paths.ray_storage),
        failure_config=tune.FailureConfig(max_failures=cfg.resources.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        callbacks=callbacks,
        verbose=0,
    )
    storage_root = cfg.resources.storage_path or str(paths.ray_storage)
    exp_uri = f"{storage_root.rstrip('/')}/{cfg.name}"
    if prep.resume and tune.Tuner.can_restore(exp_uri):
        tuner = tune.Tuner.restore(
            exp_uri, trainable=trainable, resume_unfinished=True, resume_errored=True
        )
        # Callbacks hold live clients (MLflow, locks): fresh ones replace the pickled copies.
        tuner._local_tuner.get_run_config().callbacks = callbacks  # type: ignore[union-attr]
        searcher = tuner._local_tuner._tune_config.search_alg  # type: ignore[union-attr]
    else:
        searcher = make_searcher()
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                scheduler=scheduler,
                num_samples=cfg.search.num_trials,
                max_concurrent_trials=concurrency,
            ),
            run_config=run_config,
        )
    grid = tuner.fit()

    trial_status = dict(ledger.status)
    if cfg.search.seeds > 1:
        trial_status.update(
            _run_seed_repeats(
                prep, study, grid, tracker, ledger, concurrency, callbacks, storage_root
            )
        )
    pareto = _pareto_from_optuna(cfg.name, paths.optuna_url) if multi else []
    tracker.end_study("finished")
    return StudyRun(
        config=cfg,
        paths=paths,
        tracking_uri=tracking_uri,
        experiment=cfg.experiment_name,
        parent_run_id=parent,
        trial_status=trial_status,
        pareto=pareto,
    )


def _run_seed_repeats(
    prep: PreparedStudy,
    study: StudyContext,
    grid: Any,
    tracker: MlflowTracker,
    ledger: TrialLedger,
    concurrency: int,
    callbacks: list[Any],
    storage_root: str,
) -> dict[str, str]:
    """Rerun the baseline and the best schedules on the other seeds (for confidence intervals)."""
    from ray import tune

    cfg = prep.config
    finished = []
    for res in grid:
        if res.metrics and res.metrics.get("status") == STATUS_FINISHED:
            point = dict(res.config.get("point", res.config))
            finished.append(
                (
                    float(res.metrics.get(METRIC, math.inf)),
                    point,
                    bool(res.metrics.get("is_baseline")),
                )
            )
    finished.sort(key=lambda r: r[0])
    points = [prep.space.baseline_point(prep.ctx)]
    for _, point, is_base in finished:
        if len(points) > cfg.search.repeat_top_k:
            break
        if not is_base and point not in points:
            points.append(point)
    repeats = [
        {**p, "seed": cfg.train.seed + s} for p in points for s in range(1, cfg.search.seeds)
    ]
    if not repeats:
        return {}
    tuner = tune.Tuner(
        _trainable(study, cfg),
        param_space={"point": tune.grid_search(repeats)},
        tune_config=tune.TuneConfig(max_concurrent_trials=concurrency),
        run_config=tune.RunConfig(
            name=f"{cfg.name}-seeds",
            storage_path=storage_root,
            failure_config=tune.FailureConfig(max_failures=cfg.resources.max_failures),
            callbacks=callbacks,
            verbose=0,
        ),
    )
    tuner.fit()
    return dict(ledger.status)


def _pareto_from_optuna(study_name: str, url: str) -> list[dict[str, Any]]:
    import optuna

    st = optuna.load_study(study_name=study_name, storage=url)
    return [
        {"number": t.number, "eval_loss": t.values[0], "flops": t.values[1], "params": t.params}
        for t in st.best_trials
    ]


def divergence_count(run: StudyRun) -> int:
    return sum(1 for s in run.trial_status.values() if s == STATUS_DIVERGED)

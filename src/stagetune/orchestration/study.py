"""Build and run a study: Ray Tune + OptunaSearch + ASHA-on-FLOPs, tracked in MLflow.

The order matters for the "nothing half-written" rule: everything that can be refused (config,
work directory, tracking store, data, cluster shape) is checked before the first file or run
is created. A work directory holds one study, driven by one process at a time: a new study
needs a directory of its own (empty, or new), and the driver holds the directory's lock from
before its first write until it ends (:func:`hold_workdir`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stagetune import __version__
from stagetune.config import ExperimentConfig, config_from_dict, config_to_dict
from stagetune.data import prepare_data
from stagetune.data.prepare import model_vocab_size
from stagetune.diskspace import listening
from stagetune.errors import ConfigError
from stagetune.metrics import FLOPS, STATUS_DIVERGED, STATUS_FINISHED
from stagetune.orchestration.callbacks import (
    MlflowCallback,
    ProgressCallback,
    StopCallback,
    TrialLedger,
)
from stagetune.orchestration.cluster import check_placeable, connect, max_concurrent_trials
from stagetune.orchestration.early_stopping import make_asha
from stagetune.orchestration.integrity import SIGNED_DIR, TuneStateSigner, load_key
from stagetune.orchestration.interrupt import StudyStopper, as_interruption, mark_interrupted
from stagetune.orchestration.lock import DirectoryLock, check_unlocked
from stagetune.orchestration.resume import (
    TAG_INTERRUPTED,
    reconcile_stores,
    snapshot_trials,
    unfinished_trials_quiet,
)
from stagetune.orchestration.searcher import (
    ResumableOptunaSearch,
)
from stagetune.orchestration.storage import (
    StudyPaths,
    check_fresh_workdir,
    check_own_directory,
    check_writable,
)
from stagetune.results import MlflowTracker, naming
from stagetune.results.store import check_tracking_uri, sqlite_path
from stagetune.search_spaces import SearchSpace, SpaceContext, get_search_space
from stagetune.trainables.tune_trainable import StudyContext, make_trial_spec
from stagetune.trainables.tune_trainable import train_trial as _train_trial

__all__ = [
    "TAG_INTERRUPTED",
    "PreparedStudy",
    "StudyRun",
    "hold_workdir",
    "prepare_study",
    "run_study",
    "train_trial",
]

log = logging.getLogger(__name__)

METRIC = "eval_loss"
WORKDIR_FIELD = "workdir"
SEEDS_SIGNED = "seeds"
"""Under ``tune_signed``: the signatures of the seed-repeat phase's Tune experiment."""


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
    pending_events: int = 0
    """Tracking events MLflow did not take (kept in the spool; ``report --sync`` delivers)."""
    interrupted: list[str] = field(default_factory=list)
    """Trials a resume found orphaned by the dead driver (Tune ids, or Optuna numbers)."""


def prepare_study(
    cfg: ExperimentConfig | None,
    *,
    workdir: str | None = None,
    resume: bool = False,
    tracking_uri: str | None = None,
) -> PreparedStudy:
    """Validate everything that can be refused; returns without creating anything.

    The work directory must be a directory of its own (not ``/``, a top-level directory or the
    home directory) that no live driver holds; a new study's must hold no study and nothing
    foreign. On ``resume`` the config is the study's own (``study.json``); only
    ``tracking_uri`` (a tracking server that moved) may replace the stored one.
    """
    if resume:
        base = Path(workdir or (cfg.workdir if cfg else "stagetune-work")).expanduser().resolve()
        paths = StudyPaths(base)
        _check_workdir(paths, fresh=False)
        stored = paths.load_study()
        if tracking_uri:
            tracking = {**(stored.get("tracking") or {}), "tracking_uri": tracking_uri}
            stored = {**stored, "tracking": tracking}
        cfg = config_from_dict(stored)
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
        _check_workdir(paths, fresh=True)
    check_tracking_uri(cfg.resolved_tracking_uri())
    check_writable(paths.workdir, WORKDIR_FIELD)
    if cfg.resources.storage_path and "://" not in cfg.resources.storage_path:
        check_writable(Path(cfg.resources.storage_path).expanduser(), "resources.storage_path")
    db = sqlite_path(cfg.resolved_tracking_uri())
    if db is not None and db.parent != paths.workdir:
        check_writable(db.parent, "tracking.tracking_uri")
    vocab = model_vocab_size(cfg, prepare_data(cfg.data))
    space = get_search_space(cfg.search.space)
    ctx = SpaceContext.from_config(cfg, vocab_size=vocab)
    # The baseline is every study's first point: a config it cannot be built from is refused
    # here, not as a failed first trial.
    space.build(space.baseline_point(ctx), ctx)
    for i, point in enumerate(cfg.search.points_to_evaluate):
        _check_point(space, ctx, point, i)
    return PreparedStudy(
        config=cfg, paths=paths, vocab_size=vocab, space=space, ctx=ctx, resume=resume
    )


def _check_workdir(paths: StudyPaths, *, fresh: bool) -> None:
    check_own_directory(paths.workdir, WORKDIR_FIELD)
    # A directory in use is named as such first: its holder explains what else is there.
    check_unlocked(paths.workdir, field=WORKDIR_FIELD)
    if fresh:
        check_fresh_workdir(paths, WORKDIR_FIELD)


def _check_point(space: SearchSpace, ctx: SpaceContext, point: dict[str, Any], i: int) -> None:
    """A point to evaluate must be a complete point of the space, other than the baseline."""
    where = f"search.points_to_evaluate[{i}]"
    try:
        plan = space.build(point, ctx)
    except ConfigError as exc:
        name = exc.field.rsplit(".", 1)[-1]
        raise ConfigError(f"{where}.{name}", exc.value, exc.fix) from None
    if plan.is_baseline:
        raise ConfigError(where, point, "is the baseline, which every study runs anyway; drop it")


@contextlib.contextmanager
def hold_workdir(prep: PreparedStudy) -> Iterator[DirectoryLock]:
    """Hold the study's work directory for the driver's whole life (see :mod:`.lock`).

    A new study's directory is checked once more under the lock: another driver may have
    started a study there since :func:`prepare_study` looked.
    """
    with DirectoryLock(prep.paths.workdir, field=WORKDIR_FIELD, command="stagetune run") as lock:
        if not prep.resume:
            check_fresh_workdir(prep.paths, WORKDIR_FIELD)
        yield lock


def make_sampler(cfg: ExperimentConfig, space: SearchSpace, ctx: SpaceContext) -> Any:
    """The seeded Optuna sampler for ``cfg.search.sampler`` (``auto`` picks by space/objectives)."""
    import optuna

    seed = cfg.search.sampler_seed if cfg.search.sampler_seed is not None else cfg.train.seed
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
    # constant_liar: concurrent trials should not all be drawn next to the same running one.
    return optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=max(2, cfg.search.num_trials // 3), constant_liar=True
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
        flat[naming.PARAM_SCHEDULE_LABEL] = _label(spec)
        return {
            "params": flat,
            "tags": {
                naming.TAG_IS_BASELINE: str(spec.is_baseline).lower(),
                naming.TAG_SEED: str(spec.seed),
                naming.TAG_SCHEDULE_KEY: str(spec.params.get("schedule_key", "")),
                naming.TAG_LABEL: _label(spec),
                naming.TAG_SPACE: spec.config.search.space,
            },
        }

    return describe


def train_trial(
    config: dict[str, Any], study: StudyContext, replay: dict[str, dict[str, Any]] | None = None
) -> None:
    """The study's Tune trainable: :func:`stagetune.trainables.tune_trainable.train_trial`,
    except that on resume a trial that had already ended when the driver died (Optuna and
    MLflow hold its end, Tune's snapshot did not) reports its last record again instead of
    training anew. Same name as the trainable it wraps, so ``Tuner.restore`` accepts either."""
    from ray import tune

    record = (replay or {}).get(tune.get_context().get_trial_id())
    if record is not None:
        tune.report({**record, "replayed": True})
        return
    _train_trial(config, study)


def _trainable(
    study: StudyContext,
    cfg: ExperimentConfig,
    replay: dict[str, dict[str, Any]] | None = None,
) -> Any:
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


def run_study(
    prep: PreparedStudy,
    *,
    quiet: bool = False,
    address: str | None = None,
    stopper: StudyStopper | None = None,
) -> StudyRun:
    """Launch (or resume) the search, then the seed repeats; returns where results are.

    Raises:
        StudyInterrupted: a signal (``stopper`` installed) or a full disk stopped the study;
            every store marks it interrupted (see :mod:`stagetune.orchestration.interrupt`)
            and ``--resume`` continues it.
    """
    stopper = stopper or StudyStopper()
    stores = _Stores()
    stopper.on_stop = lambda: mark_interrupted(
        optuna_storage=stores.optuna_storage,
        study_name=prep.config.name,
        tracker=stores.tracker,
        study_finished=stores.finished,
    )
    # A stop takes effect at the phase boundaries (stopper.check) or, while Tune's loop runs,
    # through Tune's graceful stop (StopCallback): never in the middle of a write.
    with listening(stopper.request_stop), stopper.deferred():
        try:
            return _run_study(prep, quiet=quiet, address=address, stopper=stopper, stores=stores)
        except BaseException as exc:
            stop = as_interruption(exc, stopper)
            if stop is None:
                raise
            stopper.on_stop()  # (again, if Tune's loop did: what opened since is marked too)
            raise stop from None


@dataclass
class _Stores:
    """What a study has opened so far: a stop marks it interrupted."""

    optuna_storage: Any = None
    tracker: MlflowTracker | None = None
    finished: bool = False


def _watched_paths(cfg: ExperimentConfig, paths: StudyPaths) -> list[Path]:
    """The local file systems a study writes to: a full one stops it."""
    out = [paths.workdir]
    if cfg.resources.storage_path and "://" not in cfg.resources.storage_path:
        out.append(Path(cfg.resources.storage_path).expanduser())
    db = sqlite_path(cfg.resolved_tracking_uri())
    if db is not None:
        out.append(db.parent)
    return out


def _run_study(
    prep: PreparedStudy,
    *,
    quiet: bool,
    address: str | None,
    stopper: StudyStopper,
    stores: _Stores,
) -> StudyRun:
    import optuna
    import ray
    from ray import tune

    cfg, paths = prep.config, prep.paths
    stopper.workdir, stopper.study_started = paths.workdir, prep.resume
    stopper.watched = _watched_paths(cfg, paths)
    stopper.ray_started = not ray.is_initialized() and not (
        address or cfg.resources.address or os.environ.get("RAY_ADDRESS")
    )
    storage_root = cfg.resources.storage_path or str(paths.ray_storage)
    exp_uri = _experiment_uri(storage_root, cfg.name)
    key = load_key(workdir=paths.workdir, create=True)
    signer = TuneStateSigner(experiment_uri=exp_uri, workdir=paths.workdir, name=cfg.name, key=key)
    # The seed-repeat phase is a Tune experiment of its own, with signatures of its own.
    seeds_signer = TuneStateSigner(
        experiment_uri=_experiment_uri(storage_root, _seeds_name(cfg)),
        workdir=paths.workdir,
        name=_seeds_name(cfg),
        key=key,
        signed_dir=paths.workdir / SIGNED_DIR / SEEDS_SIGNED,
    )
    # Before Ray, MLflow or Tune read anything: Tune's restore (and reading its snapshot)
    # unpickles the experiment's files, so they are verified first.
    verified = prep.resume and signer.restore_verified()
    seeds_verified = prep.resume and seeds_signer.restore_verified()
    info = connect(address or cfg.resources.address)
    stopper.rearm()
    stopper.check()
    check_placeable(cfg.resources, info)

    paths.workdir.mkdir(parents=True, exist_ok=True)
    if not prep.resume:
        paths.save_study(config_to_dict(cfg))
    stopper.study_started = True

    tracking_uri = cfg.resolved_tracking_uri()
    tracker = MlflowTracker(tracking_uri, cfg.experiment_name, spool_dir=paths.spool_dir)
    stores.tracker = tracker
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
    stores.optuna_storage = storage

    def make_searcher() -> ResumableOptunaSearch:
        # The baseline is enqueued by _reconcile (once), never through points_to_evaluate.
        return ResumableOptunaSearch(
            space=prep.space.as_define_by_run(prep.ctx),
            metric=metric,
            mode=mode,
            points_to_evaluate=[],
            sampler=sampler,
            study_name=cfg.name,
            storage=storage,
            max_trials=cfg.search.num_trials,
        )

    searcher: Any = None
    scheduler = make_asha(cfg.search, prep.space, prep.ctx, metric=METRIC)
    concurrency = cfg.search.max_concurrent or max_concurrent_trials(cfg.resources, info)
    planned = cfg.search.num_trials * prep.ctx.budget_flops

    # The searcher records each trial's status in Optuna itself (before telling Optuna).
    callbacks = [
        StopCallback(stopper),
        MlflowCallback(tracker, ledger, describe=_describe_factory(study)),
        ProgressCallback(
            ledger, planned_flops=planned, total_trials=cfg.search.num_trials, quiet=quiet
        ),
    ]
    run_config = tune.RunConfig(
        name=cfg.name,
        storage_path=str(cfg.resources.storage_path or paths.ray_storage),
        failure_config=tune.FailureConfig(max_failures=cfg.resources.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        callbacks=[*callbacks, signer],
        verbose=0,
    )
    main = snapshot_trials(exp_uri) if verified else None
    # Tune's experiment can be restored once it has a snapshot (not only its tuner.pkl).
    restore = main is not None
    snapshot = dict(main or {})
    if seeds_verified:
        # Trials of an interrupted seed-repeat phase are known to that phase's snapshot.
        snapshot.update(snapshot_trials(_experiment_uri(storage_root, _seeds_name(cfg))) or {})
    interrupted, replay = reconcile_stores(
        prep, storage=storage, directions=mode, tracker=tracker, snapshot=snapshot
    )
    trainable = _trainable(study, cfg, replay)
    # num_trials is the study's budget over its first run and all its resumes.
    if restore:
        tuner = _restore(exp_uri, trainable, [*callbacks, signer])
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
                # A fresh trial process costs seconds of imports; trials share one shape.
                reuse_actors=True,
            ),
            run_config=run_config,
        )
        signer.sign_tuner()
    stopper.check()
    grid = tuner.fit()
    stopper.check()

    trial_status = dict(ledger.status)
    if cfg.search.seeds > 1:
        trial_status.update(
            _run_seed_repeats(
                prep,
                study,
                grid,
                ledger,
                concurrency,
                callbacks,
                storage_root,
                signer=seeds_signer,
                restorable=seeds_verified,
            )
        )
        stopper.check()
    pareto = _pareto_from_optuna(cfg.name, paths.optuna_url) if multi else []
    tracker.end_study("finished")
    stores.finished = True
    return StudyRun(
        pending_events=tracker.pending(),
        interrupted=interrupted,
        config=cfg,
        paths=paths,
        tracking_uri=tracking_uri,
        experiment=cfg.experiment_name,
        parent_run_id=parent,
        trial_status=trial_status,
        pareto=pareto,
    )


def _experiment_uri(storage_root: str, name: str) -> str:
    return f"{storage_root.rstrip('/')}/{name}"


def _seeds_name(cfg: ExperimentConfig) -> str:
    return f"{cfg.name}-seeds"


def _restore(exp_uri: str, trainable: Any, callbacks: list[Any]) -> Any:
    """``Tuner.restore`` of an interrupted experiment: errored trials stay errored (Optuna holds
    them as FAIL), unfinished ones continue from their newest valid checkpoint."""
    from ray import tune

    with unfinished_trials_quiet():
        tuner = tune.Tuner.restore(
            exp_uri, trainable=trainable, resume_unfinished=True, resume_errored=False
        )
    # Callbacks hold live clients (MLflow, the stopper): fresh ones replace the pickled copies.
    tuner._local_tuner.get_run_config().callbacks = callbacks  # type: ignore[union-attr]
    return tuner


def _run_seed_repeats(
    prep: PreparedStudy,
    study: StudyContext,
    grid: Any,
    ledger: TrialLedger,
    concurrency: int,
    callbacks: list[Any],
    storage_root: str,
    *,
    signer: TuneStateSigner,
    restorable: bool,
) -> dict[str, str]:
    """Rerun the baseline and the best schedules on the other seeds (for confidence intervals).

    ``restorable``: the phase's own Tune state verified against ``signer`` (a resume).
    """
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
    seeds_uri = _experiment_uri(storage_root, _seeds_name(cfg))
    if restorable and snapshot_trials(seeds_uri) is not None:
        # An interrupted repeat phase continues; its finished repeats are not run again.
        tuner = _restore(seeds_uri, _trainable(study, cfg), [*callbacks, signer])
    else:
        tuner = tune.Tuner(
            _trainable(study, cfg),
            param_space={"point": tune.grid_search(repeats)},
            tune_config=tune.TuneConfig(max_concurrent_trials=concurrency, reuse_actors=True),
            run_config=tune.RunConfig(
                name=_seeds_name(cfg),
                storage_path=storage_root,
                failure_config=tune.FailureConfig(max_failures=cfg.resources.max_failures),
                callbacks=[*callbacks, signer],
                verbose=0,
            ),
        )
        signer.sign_tuner()
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

"""Run a prepared study (:mod:`.prepare`): the reference sweep, then Ray Tune + OptunaSearch +
ASHA-on-FLOPs, then the confirmation round (:mod:`.seed_repeats`), all tracked in MLflow.

A stop (a signal, a full disk) ends it gracefully at any moment, with every store marked
(:mod:`.interrupt`); ``--resume`` makes the stores agree first (:mod:`.resume`).

One cohesive module (over 400 lines): a study's phases, in the order they run.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stagetune import __version__
from stagetune.config import ExperimentConfig, config_to_dict
from stagetune.diskspace import listening
from stagetune.metrics import EVAL_LOSS, FLOPS
from stagetune.models.size import param_counts
from stagetune.orchestration.callbacks import (
    CheckpointRetention,
    MlflowCallback,
    ProgressCallback,
    StopCallback,
    TrialLedger,
)
from stagetune.orchestration.cluster import check_placeable, connect, max_concurrent_trials
from stagetune.orchestration.early_stopping import make_asha, rung_metric
from stagetune.orchestration.integrity import SIGNED_DIR, TuneStateSigner, load_key
from stagetune.orchestration.interrupt import StudyStopper, as_interruption, mark_interrupted
from stagetune.orchestration.prepare import PreparedStudy, tune_storage
from stagetune.orchestration.resume import (
    experiment_uri,
    reconcile_stores,
    restore_tuner,
    snapshot_trials,
)
from stagetune.orchestration.samplers import sampler_seed
from stagetune.orchestration.searcher import ResumableOptunaSearch
from stagetune.orchestration.seed_repeats import (
    REFERENCE_SIGNED,
    SEEDS_SIGNED,
    phase_curves,
    phase_trial_count,
    reference_name,
    reference_point,
    repeat_points,
    run_grid_phase,
    seeds_name,
    sweep_points,
)
from stagetune.orchestration.storage import (
    StudyPaths,
)
from stagetune.orchestration.trainable import (
    SEED_PARAM,
    StudyContext,
    TrialLabeler,
    describe_trial,
    make_trainable,
    point_of,
    tracking_info,
)
from stagetune.results import MlflowTracker
from stagetune.results.naming import TAG_PARENT_RUN
from stagetune.results.store import sqlite_path
from stagetune.search_spaces import SpaceContext

__all__ = ["StudyRun", "planned_flops", "planned_trials", "run_study"]


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


def planned_trials(cfg: ExperimentConfig) -> int:
    """Every trial a study plans: the search's, the reference sweep's and the confirmation
    round's (at most)."""
    return cfg.search.num_trials + phase_trial_count(cfg)


def planned_flops(cfg: ExperimentConfig, ctx: SpaceContext) -> float:
    """The compute a study plans to spend, in the standard convention the progress line counts
    (``flops``): every planned trial (:func:`planned_trials`) at the budget."""
    return planned_trials(cfg) * ctx.budget.in_convention("standard").budget_flops


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

    cfg, paths = prep.config, prep.paths
    stopper.workdir, stopper.study_started = paths.workdir, prep.resume
    stopper.watched = _watched_paths(cfg, paths)
    stopper.ray_started = not ray.is_initialized() and not (
        address or cfg.resources.address or os.environ.get("RAY_ADDRESS")
    )
    storage_root = tune_storage(prep)
    exp_uri = experiment_uri(storage_root, cfg.name)
    seeds_uri = experiment_uri(storage_root, seeds_name(cfg))
    ref_uri = experiment_uri(storage_root, reference_name(cfg))
    key = load_key(workdir=paths.workdir, create=True)
    signer = TuneStateSigner(experiment_uri=exp_uri, workdir=paths.workdir, name=cfg.name, key=key)
    # The reference sweep and the confirmation round are Tune experiments of their own, with
    # signatures of their own.
    ref_signer = TuneStateSigner(
        experiment_uri=ref_uri,
        workdir=paths.workdir,
        name=reference_name(cfg),
        key=key,
        signed_dir=paths.workdir / SIGNED_DIR / REFERENCE_SIGNED,
    )
    seeds_signer = TuneStateSigner(
        experiment_uri=seeds_uri,
        workdir=paths.workdir,
        name=seeds_name(cfg),
        key=key,
        signed_dir=paths.workdir / SIGNED_DIR / SEEDS_SIGNED,
    )
    # Before Ray, MLflow or Tune read anything: Tune's restore (and reading its snapshot)
    # unpickles the experiment's files, so they are verified first.
    verified = prep.resume and signer.restore_verified()
    seeds_verified = prep.resume and seeds_signer.restore_verified()
    ref_verified = prep.resume and ref_signer.restore_verified()
    info = connect(address or cfg.resources.address)
    stopper.rearm()
    stopper.check()
    check_placeable(cfg.resources, info)
    # The regime before anything trains (after every refusal: bad input stays one line): a
    # study that repeats its data, or trains far below compute-optimal, should know at once.
    if not quiet:
        print(f"[stagetune] {prep.regime.line()}", flush=True)
    for warning in prep.regime.warnings():
        print(f"stagetune: warning: {warning}", file=sys.stderr, flush=True)

    paths.workdir.mkdir(parents=True, exist_ok=True)
    if not prep.resume:
        paths.save_study(config_to_dict(cfg))
    stopper.study_started = True

    tracker, parent = _open_tracking(prep)
    stores.tracker = tracker
    study = StudyContext.create(
        cfg, vocab_size=prep.vocab_size, train_storage=str(paths.train_storage), data=prep.data
    )
    ledger = TrialLedger()
    multi = cfg.search.multi_objective
    mode: str | list[str] = ["min", "min"] if multi else "min"
    storage = optuna.storages.RDBStorage(paths.optuna_url)
    stores.optuna_storage = storage
    concurrency = cfg.search.max_concurrent or max_concurrent_trials(cfg.resources, info)

    # The searcher records each trial's status in Optuna itself (before telling Optuna).
    callbacks = [
        StopCallback(stopper),
        MlflowCallback(
            tracker, ledger, describe=_describe(study), rung_metric=rung_metric(prep.ctx)
        ),
        ProgressCallback(
            ledger,
            planned_flops=planned_flops(cfg, prep.ctx),
            total_trials=planned_trials(cfg),
            quiet=quiet,
        ),
        CheckpointRetention(),
    ]
    main = snapshot_trials(exp_uri) if verified else None
    snapshot = dict(main or {})
    if seeds_verified:
        # Trials of an interrupted phase are known to that phase's snapshot.
        snapshot.update(snapshot_trials(seeds_uri) or {})
    if ref_verified:
        snapshot.update(snapshot_trials(ref_uri) or {})
    interrupted, replay = reconcile_stores(
        prep,
        storage=storage,
        directions=mode,
        tracker=tracker,
        snapshot=snapshot,
        describe=_describe(study),
    )
    # The reference sweep runs first, whole: the reference is known before any schedule is
    # compared with it (ASHA keeps every full-depth trial anyway).
    ref_grid = run_grid_phase(
        cfg,
        sweep_points(cfg, prep.space, prep.ctx),
        name=reference_name(cfg),
        study=study,
        concurrency=concurrency,
        callbacks=callbacks,
        storage_root=storage_root,
        signer=ref_signer,
        restorable=ref_verified,
    )
    stopper.check()
    trainable = make_trainable(study, cfg, replay)
    # Tune's experiment can be restored once it has a snapshot (not only its tuner.pkl).
    if main is not None:
        tuner = restore_tuner(exp_uri, trainable, [*callbacks, signer])
    else:
        seeded = phase_curves(ref_grid, rung_metric(prep.ctx))
        tuner = _new_tuner(
            prep, study, trainable, storage, mode, concurrency, [*callbacks, signer], seeded=seeded
        )
        signer.sign_tuner()
    stopper.check()
    grid = tuner.fit()
    stopper.check()

    reference = reference_point(study, [g for g in (ref_grid, grid) if g is not None])
    if cfg.search.seeds > 1:
        run_grid_phase(
            cfg,
            repeat_points(cfg, prep.space, prep.ctx, grid, reference=reference),
            name=seeds_name(cfg),
            study=study,
            concurrency=concurrency,
            callbacks=callbacks,
            storage_root=storage_root,
            signer=seeds_signer,
            restorable=seeds_verified,
        )
        stopper.check()
    if "://" not in storage_root:  # local storage: every trial's process has ended
        for name in (reference_name(cfg), cfg.name, seeds_name(cfg)):
            CheckpointRetention.sweep(Path(storage_root).expanduser() / name)
    pareto = _pareto_from_optuna(cfg.name, paths.optuna_url) if multi else []
    tracker.end_study("finished")
    stores.finished = True
    return StudyRun(
        pending_events=tracker.pending(),
        interrupted=interrupted,
        config=cfg,
        paths=paths,
        tracking_uri=cfg.resolved_tracking_uri(),
        experiment=cfg.experiment_name,
        parent_run_id=parent,
        trial_status=dict(ledger.status),
        pareto=pareto,
    )


def _open_tracking(prep: PreparedStudy) -> tuple[MlflowTracker, str]:
    """The study's tracker (its spool delivered first) and its parent run's id."""
    cfg = prep.config
    tracker = MlflowTracker(
        cfg.resolved_tracking_uri(), cfg.experiment_name, spool_dir=prep.paths.spool_dir
    )
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
            "reference_lr_factors": cfg.search.reference_lr_factors,
            "repeat_top_k": cfg.search.repeat_top_k,
            **prep.regime.to_params(),
        },
        tags={
            **({TAG_PARENT_RUN: cfg.tracking.parent_run_id} if cfg.tracking.parent_run_id else {}),
            "stagetune.version": __version__,
            "stagetune.python": sys.version.split()[0],
            "stagetune.budget_flops": f"{prep.ctx.budget_flops:.6g}",
            "stagetune.baseline_flops": f"{prep.ctx.baseline_flops:.6g}",
        },
    )
    return tracker, parent


def _describe(study: StudyContext) -> Any:
    """MLflow's view of a trial from its Tune params (for :class:`MlflowCallback`)."""

    cfg = study.experiment()
    n_params = param_counts(cfg.model, vocab_size=study.vocab_size).non_embedding

    def describe(params: dict[str, Any], trial_id: str) -> dict[str, Any]:
        return tracking_info(
            describe_trial(params, study, name=trial_id),
            space=cfg.search.space,
            seed_repeat=SEED_PARAM in point_of(params),
            model_params=n_params,
        )

    return describe


def _new_tuner(
    prep: PreparedStudy,
    study: StudyContext,
    trainable: Any,
    storage: Any,
    mode: str | list[str],
    concurrency: int,
    callbacks: list[Any],
    *,
    seeded: dict[str, list[tuple[float, float]]],
) -> Any:
    """A fresh search: OptunaSearch over the space, ASHA on FLOPs, ``num_trials`` trials (the
    study's budget over its first run and all its resumes). ``seeded``: the reference sweep's
    curves, entered in ASHA's rungs so its comparisons include every full-depth lr."""
    from ray import tune

    cfg = prep.config
    metric: str | list[str] = [EVAL_LOSS, FLOPS] if cfg.search.multi_objective else EVAL_LOSS
    # The baseline is enqueued by reconcile_stores (once), never through points_to_evaluate.
    searcher = ResumableOptunaSearch(
        space=prep.space.as_define_by_run(prep.ctx),
        metric=metric,
        mode=mode,
        points_to_evaluate=[],
        sampler=prep.sampler,
        study_name=cfg.name,
        storage=storage,
        max_trials=cfg.search.num_trials,
        label_of=TrialLabeler(study),
        # A finite space's points are each trained once: a repeat would only retrain it.
        grid=prep.space.grid(prep.ctx),
        grid_seed=sampler_seed(cfg),
    )
    asha = make_asha(cfg.search, prep.space, prep.ctx, metric=EVAL_LOSS)
    if asha is not None:
        asha.seed_rungs(seeded)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=asha,
            num_samples=cfg.search.num_trials,
            max_concurrent_trials=concurrency,
            # A fresh trial process costs seconds of imports; trials share one shape.
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=cfg.name,
            storage_path=str(cfg.resources.storage_path or prep.paths.ray_storage),
            failure_config=tune.FailureConfig(max_failures=cfg.resources.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            callbacks=callbacks,
            verbose=0,
        ),
    )


def _pareto_from_optuna(study_name: str, url: str) -> list[dict[str, Any]]:
    import optuna

    st = optuna.load_study(study_name=study_name, storage=url)
    return [
        {"number": t.number, "eval_loss": t.values[0], "flops": t.values[1], "params": t.params}
        for t in st.best_trials
    ]

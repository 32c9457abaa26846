"""Resuming a study: Tune's experiment snapshot, Optuna's storage and MLflow made to agree.

Tune snapshots its experiment every few seconds (and once more when it stops gracefully);
Optuna and MLflow record at once. After a driver that died, or a stop whose last snapshot could
not be written (a full disk), the three disagree; :func:`reconcile_stores` settles every trial
before Tune resumes, by one rule: what Tune's snapshot holds as unfinished, Tune continues;
what it does not know can never be continued and is closed as ``interrupted``; what Optuna
holds as over keeps Optuna's status everywhere. See ``tests/faults/README.md``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Final

from stagetune.errors import ConfigError
from stagetune.metrics import STATUS_INTERRUPTED
from stagetune.orchestration.searcher import (
    ensure_baseline,
    reconcile_optuna,
    trial_params,
)
from stagetune.results import MlflowTracker

if TYPE_CHECKING:
    from stagetune.orchestration.prepare import PreparedStudy

__all__ = [
    "TAG_INTERRUPTED",
    "experiment_uri",
    "reconcile_stores",
    "restore_tuner",
    "snapshot_trials",
    "unfinished_trials_quiet",
]

log = logging.getLogger(__name__)

TAG_INTERRUPTED: Final = "stagetune.interrupted"
"""MLflow tag on a trial run the driver's death left unfinished and Tune could not continue
(status ``interrupted``, final)."""


@contextlib.contextmanager
def unfinished_trials_quiet() -> Iterator[None]:
    """Loading an experiment (``ExperimentAnalysis``, ``Tuner.restore``) warns about every
    trial that had not reported yet: on resume that is the expected state, no news."""
    from ray.tune import ExperimentAnalysis

    quiet = logging.getLogger(ExperimentAnalysis.__module__)
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        yield
    finally:
        quiet.setLevel(level)


def experiment_uri(storage_root: str, name: str) -> str:
    """Where Tune keeps the experiment ``name`` (its snapshot and pickled state)."""
    return f"{storage_root.rstrip('/')}/{name}"


def restore_tuner(exp_uri: str, trainable: Any, callbacks: list[Any]) -> Any:
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


def snapshot_trials(exp_uri: str) -> dict[str, str] | None:
    """Tune trial id -> status in the experiment snapshot a restore resumes from; ``None``
    when there is none (a study stopped before Tune's first snapshot: Tune starts afresh)."""
    from ray import tune
    from ray.tune import ExperimentAnalysis

    if not tune.Tuner.can_restore(exp_uri):
        return None
    try:
        with unfinished_trials_quiet():
            return {t.trial_id: str(t.status) for t in ExperimentAnalysis(exp_uri).trials}
    except Exception as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        log.info("no Tune snapshot in %s (%s): Tune starts afresh", exp_uri, first)
        return None


def reconcile_stores(
    prep: PreparedStudy,
    *,
    storage: Any,
    directions: str | list[str],
    tracker: MlflowTracker,
    snapshot: dict[str, str],
    describe: Callable[[dict[str, Any], str], dict[str, Any]],
) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """Make Optuna and MLflow agree with the Tune experiment that is about to run.

    A fresh study is created in Optuna with the baseline enqueued, then the config's
    ``search.points_to_evaluate``. On resume, trials that ran
    when the driver died but are unknown to Tune's ``snapshot`` are closed: their Optuna trial
    becomes FAIL and their MLflow run KILLED, both with status ``interrupted`` (MLflow also
    tags ``stagetune.interrupted=true``), or the status Optuna recorded when the trial finished
    but its end never reached MLflow. A trial Optuna had handed out whose run MLflow never got
    (the driver died between the two) gets one there, closed as ``interrupted`` too
    (``describe(params, trial_id)``: its MLflow params and tags), so both stores name the same
    trials. The baseline is enqueued again only if no attempt of it is waiting, running or over.

    Returns the interrupted trials' ids, and the last records of trials Tune's snapshot holds
    as unfinished although they ended before the driver died (Optuna and MLflow have their
    end): those are replayed with Optuna's status, not retrained (see
    :func:`stagetune.orchestration.trainable.train_trial`).
    """
    import optuna

    space, ctx = prep.space, prep.ctx

    def is_baseline(params: dict[str, Any]) -> bool:
        if not params:
            return False
        try:
            return bool(space.build(params, ctx).is_baseline)
        except ConfigError:
            return False

    dirs: list[Any]
    if isinstance(directions, list):
        dirs = ["minimize" if m == "min" else "maximize" for m in directions]
    else:
        dirs = ["minimize" if directions == "min" else "maximize"]
    ot_study = optuna.create_study(
        storage=storage, study_name=prep.config.name, directions=dirs, load_if_exists=True
    )
    interrupted: list[str] = []
    ended: dict[str, str] = {}
    replay: dict[str, dict[str, Any]] = {}
    known = set(snapshot)
    if prep.resume:
        res = reconcile_optuna(ot_study, known, is_baseline=is_baseline)
        ended = res.ended
        interrupted = [tid or f"optuna#{number}" for number, tid in res.interrupted]
        for trial_id in sorted(set(tracker.open_trials()) - known):
            status = ended.get(trial_id, STATUS_INTERRUPTED)
            if status == STATUS_INTERRUPTED:
                tracker.end_trial(trial_id, status, tags={TAG_INTERRUPTED: "true"})
                if trial_id not in interrupted:
                    interrupted.append(trial_id)
            else:
                tracker.end_trial(trial_id, status)
        trials = ot_study.get_trials(deepcopy=False)
        for number, asked in res.interrupted:
            if not asked or tracker.has_trial_run(asked) is not False:
                continue
            params = trial_params(trials[number])
            info: dict[str, Any] = {"params": params, "tags": {}}
            with contextlib.suppress(ConfigError):
                info = describe(params, asked)
            tracker.start_trial(trial_id=asked, params=info["params"], tags=info["tags"])
            tracker.end_trial(asked, STATUS_INTERRUPTED, tags={TAG_INTERRUPTED: "true"})
        for trial_id, tune_status in snapshot.items():
            if tune_status in ("TERMINATED", "ERROR") or trial_id not in ended:
                continue
            record = tracker.last_record(trial_id)
            if record is not None:
                # Optuna's status is the one recorded first: MLflow and the report take it.
                replay[trial_id] = {**record, "status": ended[trial_id]}
                log.info("trial %s ended before the driver died: replayed", trial_id)
    if ensure_baseline(ot_study, space.baseline_point(ctx), is_baseline=is_baseline):
        log.info("baseline enqueued in Optuna study %s", prep.config.name)
    if not prep.resume:
        for point in prep.config.search.points_to_evaluate:
            # As the space reads it (types normalised, keys it does not use left out).
            ot_study.enqueue_trial(space.build(point, ctx).params)
    return interrupted, replay

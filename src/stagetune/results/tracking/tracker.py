"""Logging a study to MLflow: one parent run per study, one child run per trial.

The tracker is called from the Ray Tune driver (a ``tune.Callback``), possibly from several
threads at once. Its contract is that training never notices MLflow: every call is retried with
a short bounded backoff, and whatever still cannot be delivered is appended to a JSONL spool
(``spool_dir/<trial_id>.jsonl``, :mod:`~stagetune.results.tracking.spool`) that
:meth:`MlflowTracker.sync_spool` delivers later. Delivery is idempotent
(:mod:`~stagetune.results.tracking.runs`): runs are found again by their tags, and a metric step
that MLflow already holds is never logged twice (a trial restored from a checkpoint re-reports
steps). This module holds the public API: it checks the caller's arguments and turns each call
into an event for :mod:`~stagetune.results.tracking.delivery`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final

from stagetune.config import validate_name
from stagetune.errors import ConfigError, StagetuneError, suggest
from stagetune.metrics import FLOPS_PAPER, STATUS_STOPPED, STATUSES
from stagetune.results.naming import (
    MLFLOW_STATUS,
    TAG_ASHA_RUNG,
    TAG_IS_BASELINE,
    TAG_SEED,
    TAG_STATUS,
)
from stagetune.results.tracking.delivery import Delivery, SyncResult, TrackerStats
from stagetune.results.tracking.runs import STEP_KEY, Event, MlflowRuns, mlflow_step, now_ms
from stagetune.results.tracking.spool import STUDY_KEY, Op, Spool

__all__ = ["MlflowTracker", "SyncResult", "TrackerStats"]

_log = logging.getLogger(__name__)

# Keys Ray Tune adds to every result: bookkeeping, not measurements.
_TUNE_BOOKKEEPING: Final = frozenset(
    {
        "done",
        "pid",
        "timestamp",
        "training_iteration",
        "time_this_iter_s",
        "time_total_s",
        "time_since_restore",
        "iterations_since_restore",
        "timesteps_since_restore",
        "timesteps_total",
        "episodes_total",
        "should_checkpoint",
    }
)


def _as_float(v: Any) -> float | None:
    """The value as a metric, or None for non-numbers (bool is an int, but not a measurement)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        return float(v)
    except OverflowError:  # an int beyond float range
        return math.inf if v > 0 else -math.inf


def _str_dict(d: Mapping[str, Any] | None) -> dict[str, str]:
    return {str(k): str(v) for k, v in (d or {}).items()}


def _bool_tag(v: Any) -> str:
    if isinstance(v, str):
        return "true" if v.strip().lower() in ("1", "true", "yes") else "false"
    return "true" if bool(v) else "false"


class MlflowTracker:
    """Logs a study (parent run) and its trials (child runs) to MLflow, never raising on outages.

    Args:
        tracking_uri: ``sqlite:///<workdir>/mlflow.db`` (default store) or an HTTP server.
        experiment: MLflow experiment name; created on first use (SQLite stores keep its
            artifacts in ``mlartifacts/`` beside the database).
        spool_dir: where undeliverable events wait (``<trial_id>.jsonl``; study-level events in
            ``_study.jsonl``).
        retry_seconds: total backoff budget per event before it is spooled.
        offline_cooldown: after a failed delivery, events go straight to the spool for this long
            instead of each waiting out the retry budget; then delivery is tried again.

    Invalid *arguments* (unknown status, bad trial id, no study started) raise
    :class:`~stagetune.errors.StagetuneError`: those are bugs of the caller, not outages.
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        *,
        spool_dir: Path,
        retry_seconds: float = 3.0,
        offline_cooldown: float = 30.0,
    ) -> None:
        validate_name(experiment, "tracking.experiment")
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.spool_dir = Path(spool_dir)
        self.retry_seconds = float(retry_seconds)
        self.offline_cooldown = float(offline_cooldown)
        self.stats = TrackerStats()
        self._study: str | None = None
        self._init_runtime()

    # -- pickling: Tune may pickle callbacks; locks and clients are rebuilt ------------------------
    def _init_runtime(
        self,
        parents: dict[str, str] | None = None,
        runs: dict[tuple[str, str], str] | None = None,
        trial_study: dict[str, str] | None = None,
    ) -> None:
        self._mlflow = MlflowRuns(
            self.tracking_uri,
            self.experiment,
            parents=parents or {},  # study -> parent run id
            runs=runs or {},  # (study, trial id) -> run id
            on_duplicate_step=self._count_duplicate_step,
        )
        self._delivery = Delivery(
            self._mlflow,
            Spool(self.spool_dir),
            stats=self.stats,
            retry_seconds=self.retry_seconds,
            offline_cooldown=self.offline_cooldown,
        )
        self._trial_study: dict[str, str] = trial_study or {}
        self._warned_no_flops: set[str] = set()

    def _count_duplicate_step(self) -> None:
        self._delivery.count_duplicate_step()

    _PICKLED: Final = ("tracking_uri", "experiment", "spool_dir", "retry_seconds",
                       "offline_cooldown", "_study")  # fmt: skip

    def __getstate__(self) -> dict[str, Any]:
        state = {k: self.__dict__[k] for k in self._PICKLED}
        # Run ids stay valid: they save searching for the runs again.
        state["_parents"] = self._mlflow.parents
        state["_runs"] = self._mlflow.runs
        state["_trial_study"] = self._trial_study
        state["stats"] = TrackerStats()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        caches = {k: state.pop(k, None) for k in ("_parents", "_runs", "_trial_study")}
        self.__dict__.update(state)
        self._init_runtime(caches["_parents"], caches["_runs"], caches["_trial_study"])

    # -- public API ------------------------------------------------------------------------------
    @property
    def parent_run_id(self) -> str | None:
        """The current study's parent run id, once MLflow has it."""
        return self._mlflow.parents.get(self._study) if self._study else None

    def run_id(self, trial_id: str) -> str | None:
        """The trial's MLflow run id, once MLflow has it."""
        study = self._trial_study.get(trial_id, self._study)
        return self._mlflow.runs.get((study, trial_id)) if study else None

    def start_study(
        self, *, study_name: str, params: Mapping[str, Any], tags: Mapping[str, Any]
    ) -> str:
        """Open (or, on resume, reopen) the study's parent run; returns its id.

        The parent of an earlier run of the same study (tags ``stagetune.study=<name>``,
        ``stagetune.role=parent``) is reused, so ``--resume`` continues it. Returns ``""`` when
        MLflow is unreachable: the start is spooled and the run appears on :meth:`sync_spool`.
        """
        validate_name(study_name, "study_name")
        self._study = study_name
        event = {
            "op": Op.START_STUDY,
            "study": study_name,
            "params": _str_dict(params),
            "tags": _str_dict(tags),
            "time": now_ms(),
        }
        return self._delivery.submit(STUDY_KEY, event) or ""

    def end_study(self, status: str = "finished") -> None:
        """Close the parent run (``finished`` / ``failed``); a later resume reopens it."""
        study = self._require_study()
        mlflow_status = self._mlflow_status(status)
        # Last chance for events spooled during an outage to reach MLflow while we run.
        self.sync_spool()
        event = {
            "op": Op.END_STUDY,
            "study": study,
            "status": status,
            "mlflow_status": mlflow_status,
            "time": now_ms(),
        }
        self._delivery.submit(STUDY_KEY, event)

    def start_trial(
        self, *, trial_id: str, params: Mapping[str, Any], tags: Mapping[str, Any]
    ) -> str:
        """Open the trial's child run (or continue it: idempotent per ``trial_id``).

        ``stagetune.is_baseline`` and ``stagetune.seed`` come from ``tags`` or, failing that,
        from ``params["is_baseline"]`` / ``params["seed"]``. Returns the run id, or ``""`` when
        the start was spooled.
        """
        study = self._require_study()
        self._check_trial_id(trial_id)
        self._trial_study[trial_id] = study
        tag_d = _str_dict(tags)
        baseline = tags.get(TAG_IS_BASELINE, params.get("is_baseline", False))
        tag_d[TAG_IS_BASELINE] = _bool_tag(baseline)
        seed = tags.get(TAG_SEED, params.get("seed"))
        if seed is not None:
            tag_d[TAG_SEED] = str(seed)
        event = {
            "op": Op.START_TRIAL,
            "study": study,
            "trial_id": trial_id,
            "params": _str_dict(params),
            "tags": tag_d,
            "time": now_ms(),
        }
        return self._delivery.submit(trial_id, event) or ""

    def log_report(self, trial_id: str, record: Mapping[str, Any]) -> None:
        """Log one metric record (see :mod:`stagetune.metrics`) at the step of its compute
        (:func:`~stagetune.results.tracking.runs.mlflow_step`: standard FLOPs in MFLOPs).

        Every numeric key goes into one ``log_batch`` call, so ``flops`` and ``flops_paper`` sit
        at the same step as the losses. A step MLflow already holds for this run is skipped.
        Non-numeric values and Ray Tune's bookkeeping keys are left out.
        """
        study = self._trial_study.get(trial_id) or self._require_study()
        self._check_trial_id(trial_id)
        metrics = {
            str(k): f
            for k, v in record.items()
            if k not in _TUNE_BOOKKEEPING and (f := _as_float(v)) is not None
        }
        event: Event = {
            "op": Op.REPORT,
            "study": study,
            "trial_id": trial_id,
            "metrics": metrics,
            "time": now_ms(),
        }
        step = mlflow_step(metrics)
        if step is None:
            # Without a step the record cannot be placed; keep it rather than drop it.
            self._delivery.reject(trial_id, event, f"record has no finite {STEP_KEY!r}")
            return
        event["step"] = step
        if FLOPS_PAPER not in metrics and trial_id not in self._warned_no_flops:
            self._warned_no_flops.add(trial_id)
            _log.warning(
                "trial %s reported a record without %r: its paper compute axis has gaps",
                trial_id,
                FLOPS_PAPER,
            )
        self._delivery.submit(trial_id, event)

    def end_trial(
        self, trial_id: str, status: str, *, tags: Mapping[str, Any] | None = None
    ) -> None:
        """Close the trial's run with a stagetune status.

        ``finished`` -> FINISHED, ``stopped`` -> KILLED, ``diverged`` / ``failed`` -> FAILED; the
        exact status is kept in tag ``stagetune.status``. For ``stopped`` pass the ASHA rung as
        ``tags={TAG_ASHA_RUNG: rung}`` (:data:`stagetune.results.naming.TAG_ASHA_RUNG`).
        """
        study = self._trial_study.get(trial_id) or self._require_study()
        self._check_trial_id(trial_id)
        mlflow_status = self._mlflow_status(status)
        tag_d = _str_dict(tags)
        tag_d[TAG_STATUS] = status
        if status == STATUS_STOPPED and TAG_ASHA_RUNG not in tag_d:
            _log.debug("trial %s stopped without an ASHA rung tag", trial_id)
        event = {
            "op": Op.END_TRIAL,
            "study": study,
            "trial_id": trial_id,
            "mlflow_status": mlflow_status,
            "tags": tag_d,
            "time": now_ms(),
        }
        self._delivery.submit(trial_id, event)

    def log_trial_artifacts(
        self, trial_id: str, files: Iterable[Path | str], *, artifact_path: str | None = None
    ) -> None:
        """Upload files (or directories) to the trial's run."""
        study = self._trial_study.get(trial_id) or self._require_study()
        self._check_trial_id(trial_id)
        self._delivery.submit(trial_id, _artifacts_event(study, trial_id, files, artifact_path))

    def log_study_artifacts(
        self, files: Iterable[Path | str], *, artifact_path: str | None = None
    ) -> None:
        """Upload files (or directories) to the study's parent run."""
        study = self._require_study()
        self._delivery.submit(STUDY_KEY, _artifacts_event(study, None, files, artifact_path))

    def open_trials(self) -> list[str]:
        """Trial ids of the current study whose runs were started but never ended.

        Looks in MLflow (runs still tagged ``stagetune.status=running``) and in the spool
        (a start whose end is still waiting there). ``--resume`` closes the ones Tune will not
        resume. When MLflow is unreachable only the spool is read (and a warning is logged).
        """
        study = self._require_study()
        open_ids = self._delivery.spool.open_trials()
        if self._delivery.offline:
            _log.warning("MLflow is unreachable: only spooled trial runs can be closed")
            return sorted(open_ids)
        try:
            open_ids |= self._delivery.ask(lambda runs: runs.open_trial_ids(study))
        except Exception as exc:
            _log.warning("could not list open trial runs in MLflow (%s)", str(exc)[:200])
        return sorted(open_ids)

    def has_trial_run(self, trial_id: str) -> bool | None:
        """Whether MLflow (or the spool) holds a run of the trial; ``None``: MLflow cannot say."""
        study = self._trial_study.get(trial_id) or self._require_study()
        self._check_trial_id(trial_id)
        if trial_id in self._delivery.spool.open_trials():
            return True
        if self._delivery.offline:
            return None
        try:
            return self._delivery.ask(lambda runs: runs.trial_run(study, trial_id)) is not None
        except Exception:
            return None

    def last_record(self, trial_id: str) -> dict[str, Any] | None:
        """The trial's last logged record as MLflow holds it: the newest value of every metric
        plus ``status`` / ``is_baseline`` from its tags; ``None`` if MLflow cannot say."""
        study = self._trial_study.get(trial_id) or self._require_study()
        self._check_trial_id(trial_id)
        if self._delivery.offline:
            return None
        try:
            run = self._delivery.ask(lambda runs: runs.trial_run(study, trial_id))
        except Exception:
            return None
        if run is None or STEP_KEY not in run.data.metrics:
            return None
        rec: dict[str, Any] = dict(run.data.metrics)
        tags = run.data.tags
        if tags.get(TAG_STATUS) in STATUSES:
            rec["status"] = tags[TAG_STATUS]
        rec["is_baseline"] = tags.get(TAG_IS_BASELINE) == "true"
        return rec

    def sync_spool(self) -> SyncResult:
        """Deliver spooled events (study first, then each trial, in order); never raises.

        Safe to repeat and safe against steps MLflow already holds. Works from any process
        that points at the same ``spool_dir`` (e.g. ``stagetune report`` after the driver died).
        """
        return self._delivery.sync()

    def pending(self) -> int:
        """Number of spooled events waiting for delivery."""
        return self._delivery.pending()

    # -- argument checks ---------------------------------------------------------------------
    def _require_study(self) -> str:
        if self._study is None:
            raise StagetuneError("MlflowTracker: call start_study() before logging trials")
        return self._study

    @staticmethod
    def _check_trial_id(trial_id: str) -> None:
        # Trial ids name spool files and appear in MLflow filter strings.
        validate_name(trial_id, "trial_id")
        if trial_id.startswith("_"):
            raise ConfigError("trial_id", trial_id, "trial ids must not start with '_'")

    @staticmethod
    def _mlflow_status(status: str) -> str:
        if status not in MLFLOW_STATUS:
            raise ConfigError("status", status, suggest(status, STATUSES))
        return MLFLOW_STATUS[status]


def _artifacts_event(
    study: str, trial_id: str | None, files: Iterable[Path | str], artifact_path: str | None
) -> Event:
    """An upload to the trial's run (``trial_id``) or to the study's parent run (``None``)."""
    return {
        "op": Op.ARTIFACTS,
        "study": study,
        "trial_id": trial_id,
        "files": [str(Path(f).resolve()) for f in files],
        "artifact_path": artifact_path,
    }

"""Logging a study to MLflow: one parent run per study, one child run per trial.

The tracker is called from the Ray Tune driver (a ``tune.Callback``), possibly from several
threads at once. Its contract is that training never notices MLflow: every call is retried with
a short bounded backoff, and whatever still cannot be delivered is appended to a JSONL spool
(``spool_dir/<trial_id>.jsonl``) that :meth:`MlflowTracker.sync_spool` delivers later. Delivery
is idempotent: runs are found again by their tags, and a metric step that MLflow already holds
is never logged twice (a trial restored from a checkpoint re-reports steps).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import shutil
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

from stagetune.config import validate_name
from stagetune.errors import ConfigError, StagetuneError, suggest
from stagetune.metrics import FLOPS, FLOPS_PAPER, STATUS_STOPPED, STATUSES
from stagetune.results.naming import (
    MLFLOW_STATUS,
    ROLE_PARENT,
    ROLE_TRIAL,
    STATUS_RUNNING,
    TAG_ASHA_RUNG,
    TAG_IS_BASELINE,
    TAG_PARENT_RUN,
    TAG_ROLE,
    TAG_RUN_NAME,
    TAG_SEED,
    TAG_STATUS,
    TAG_STUDY,
    TAG_TRIAL_ID,
)
from stagetune.results.store import artifact_location, is_http, is_permanent, make_client

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

__all__ = ["MlflowTracker", "SyncResult", "TrackerStats"]

_log = logging.getLogger(__name__)
T = TypeVar("T")

STEP_KEY: Final = "tokens"
"""The record key that becomes MLflow's step; its metric history also tells which steps exist."""

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
_STUDY_KEY: Final = "_study"  # spool name of study-level events (trial ids never start with "_")
_MAX_PARAM_LEN: Final = 6000  # MLflow's limit on a param value
_BATCH_PARAMS: Final = 100  # MLflow's limits per log_batch call
_BATCH_TAGS: Final = 100
_BATCH_METRICS: Final = 1000


@dataclass
class TrackerStats:
    """Counters for observability and tests (read them, do not write them)."""

    delivered: int = 0
    """Events (study/trial starts, reports, ends, artifact uploads) that reached MLflow."""
    retries: int = 0
    spooled: int = 0
    rejected: int = 0
    """Events MLflow refused as invalid; kept in ``spool_dir/<key>.rejected.jsonl``."""
    duplicate_steps: int = 0
    """Reports skipped because MLflow already held their step."""
    last_error: str | None = None


@dataclass(frozen=True)
class SyncResult:
    """What :meth:`MlflowTracker.sync_spool` achieved."""

    delivered: int
    pending: int
    """Events still in the spool (MLflow still unreachable)."""


class _Unreachable(Exception):
    """MLflow did not answer within the retry budget."""


class _Rejected(Exception):
    """MLflow (or our own validation) refused the event: it can never be delivered."""


def _now_ms() -> int:
    return int(time.time() * 1000)


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


def _chunks(items: list[T], n: int) -> Iterator[list[T]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


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
    def _init_runtime(self) -> None:
        self._client: MlflowClient | None = None
        self._experiment_id: str | None = None
        self._parents: dict[str, str] = {}  # study -> parent run id
        self._runs: dict[tuple[str, str], str] = {}  # (study, trial id) -> run id
        self._trial_study: dict[str, str] = {}
        self._steps: dict[str, set[int]] = {}  # run id -> steps MLflow holds
        self._warned_no_flops: set[str] = set()
        self._offline_until = 0.0
        self._state_lock = threading.Lock()
        # Lock order: a key lock, then the I/O lock, then the parent lock; never the reverse.
        self._parent_lock = threading.Lock()
        self._key_locks: dict[str, threading.RLock] = {}
        # A local SQL store is one file: serialising our writes avoids "database is locked"
        # between driver threads. A server handles concurrency itself.
        self._io_lock: contextlib.AbstractContextManager[Any] = (
            contextlib.nullcontext() if is_http(self.tracking_uri) else threading.Lock()
        )

    _PICKLED: Final = ("tracking_uri", "experiment", "spool_dir", "retry_seconds",
                       "offline_cooldown", "_study")  # fmt: skip
    _PICKLED_CACHES: Final = ("_parents", "_runs", "_trial_study")

    def __getstate__(self) -> dict[str, Any]:
        state = {k: self.__dict__[k] for k in (*self._PICKLED, *self._PICKLED_CACHES)}
        state["stats"] = TrackerStats()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        caches: dict[str, Any] = {k: state.pop(k) for k in self._PICKLED_CACHES if k in state}
        self.__dict__.update(state)
        self._init_runtime()
        self.__dict__.update(caches)  # run ids stay valid: saves searching for them again

    # -- public API ------------------------------------------------------------------------------
    @property
    def parent_run_id(self) -> str | None:
        """The current study's parent run id, once MLflow has it."""
        return self._parents.get(self._study) if self._study else None

    def run_id(self, trial_id: str) -> str | None:
        """The trial's MLflow run id, once MLflow has it."""
        study = self._trial_study.get(trial_id, self._study)
        return self._runs.get((study, trial_id)) if study else None

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
            "op": "start_study",
            "study": study_name,
            "params": _str_dict(params),
            "tags": _str_dict(tags),
            "time": _now_ms(),
        }
        return self._submit(_STUDY_KEY, event) or ""

    def end_study(self, status: str = "finished") -> None:
        """Close the parent run (``finished`` / ``failed``); a later resume reopens it."""
        study = self._require_study()
        mlflow_status = self._mlflow_status(status)
        # Last chance for events spooled during an outage to reach MLflow while we run.
        self.sync_spool()
        event = {
            "op": "end_study",
            "study": study,
            "status": status,
            "mlflow_status": mlflow_status,
            "time": _now_ms(),
        }
        self._submit(_STUDY_KEY, event)

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
            "op": "start_trial",
            "study": study,
            "trial_id": trial_id,
            "params": _str_dict(params),
            "tags": tag_d,
            "time": _now_ms(),
        }
        return self._submit(trial_id, event) or ""

    def log_report(self, trial_id: str, record: Mapping[str, Any]) -> None:
        """Log one metric record (see :mod:`stagetune.metrics`) at step ``int(record["tokens"])``.

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
        event: dict[str, Any] = {
            "op": "report",
            "study": study,
            "trial_id": trial_id,
            "metrics": metrics,
            "time": _now_ms(),
        }
        tokens = metrics.get(STEP_KEY)
        if tokens is None or not math.isfinite(tokens):
            # Without a step the record cannot be placed; keep it rather than drop it.
            self._reject(trial_id, event, f"record has no finite {STEP_KEY!r}")
            return
        event["step"] = int(tokens)
        if (FLOPS not in metrics or FLOPS_PAPER not in metrics) and (
            trial_id not in self._warned_no_flops
        ):
            self._warned_no_flops.add(trial_id)
            _log.warning(
                "trial %s reported a record without %r/%r: its compute axis has gaps",
                trial_id,
                FLOPS,
                FLOPS_PAPER,
            )
        self._submit(trial_id, event)

    def end_trial(
        self, trial_id: str, status: str, *, tags: Mapping[str, Any] | None = None
    ) -> None:
        """Close the trial's run with a stagetune status.

        ``finished`` -> FINISHED, ``stopped`` -> KILLED, ``diverged`` / ``failed`` -> FAILED; the
        exact status is kept in tag ``stagetune.status``. For ``stopped`` pass the ASHA rung as
        ``tags={"stagetune.asha_rung": rung}``.
        """
        study = self._trial_study.get(trial_id) or self._require_study()
        self._check_trial_id(trial_id)
        mlflow_status = self._mlflow_status(status)
        tag_d = _str_dict(tags)
        tag_d[TAG_STATUS] = status
        if status == STATUS_STOPPED and TAG_ASHA_RUNG not in tag_d:
            _log.debug("trial %s stopped without an ASHA rung tag", trial_id)
        event = {
            "op": "end_trial",
            "study": study,
            "trial_id": trial_id,
            "mlflow_status": mlflow_status,
            "tags": tag_d,
            "time": _now_ms(),
        }
        self._submit(trial_id, event)

    def log_trial_artifacts(
        self, trial_id: str, files: Iterable[Path | str], *, artifact_path: str | None = None
    ) -> None:
        """Upload files (or directories) to the trial's run."""
        study = self._trial_study.get(trial_id) or self._require_study()
        self._check_trial_id(trial_id)
        event = {
            "op": "artifacts",
            "study": study,
            "trial_id": trial_id,
            "files": [str(Path(f).resolve()) for f in files],
            "artifact_path": artifact_path,
        }
        self._submit(trial_id, event)

    def log_study_artifacts(
        self, files: Iterable[Path | str], *, artifact_path: str | None = None
    ) -> None:
        """Upload files (or directories) to the study's parent run."""
        study = self._require_study()
        event = {
            "op": "artifacts",
            "study": study,
            "trial_id": None,
            "files": [str(Path(f).resolve()) for f in files],
            "artifact_path": artifact_path,
        }
        self._submit(_STUDY_KEY, event)

    def open_trials(self) -> list[str]:
        """Trial ids of the current study whose runs were started but never ended.

        Looks in MLflow (runs still tagged ``stagetune.status=running``) and in the spool
        (a start whose end is still waiting there). ``--resume`` closes the ones Tune will not
        resume. When MLflow is unreachable only the spool is read (and a warning is logged).
        """
        study = self._require_study()
        open_ids = set()
        for key in self._spooled_trials():
            events = self._read_spool(self._spool_path(key))
            ops = [e.get("op") for e in events]
            if "start_trial" in ops and "end_trial" not in ops[ops.index("start_trial") :]:
                open_ids.add(key)
        if self._is_offline():
            _log.warning("MLflow is unreachable: only spooled trial runs can be closed")
            return sorted(open_ids)
        query = (
            f"tags.`{TAG_STUDY}` = '{study}' and tags.`{TAG_ROLE}` = '{ROLE_TRIAL}' "
            f"and tags.`{TAG_STATUS}` = '{STATUS_RUNNING}'"
        )
        try:
            with self._io_lock:
                client = self._get_client()
                exp_id = self._get_experiment_id()
                token = None
                while True:
                    page = client.search_runs(
                        [exp_id], filter_string=query, max_results=1000, page_token=token
                    )
                    open_ids.update(
                        r.data.tags[TAG_TRIAL_ID] for r in page if TAG_TRIAL_ID in r.data.tags
                    )
                    token = page.token
                    if not token:
                        break
        except Exception as exc:
            if not is_permanent(exc):
                self._mark_offline(exc)
            _log.warning("could not list open trial runs in MLflow (%s)", str(exc)[:200])
        return sorted(open_ids)

    def last_record(self, trial_id: str) -> dict[str, Any] | None:
        """The trial's last logged record as MLflow holds it: the newest value of every metric
        plus ``status`` / ``is_baseline`` from its tags; ``None`` if MLflow cannot say."""
        study = self._trial_study.get(trial_id) or self._require_study()
        self._check_trial_id(trial_id)
        if self._is_offline():
            return None
        try:
            with self._io_lock:
                run_id = self._find_trial(study, trial_id)
                if run_id is None:
                    return None
                run = self._get_client().get_run(run_id)
        except Exception as exc:
            if not is_permanent(exc):
                self._mark_offline(exc)
            return None
        if STEP_KEY not in run.data.metrics:
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
        try:
            delivered, pending, ok = self._sync_key(_STUDY_KEY)
            for key in self._spooled_trials():
                if not ok:
                    # MLflow is down: one failed wait is enough, count the rest as pending.
                    pending += len(self._read_spool(self._spool_path(key)))
                    continue
                d, p, ok = self._sync_key(key)
                delivered += d
                pending += p
        except Exception:  # never let a tracking bug reach training
            _log.exception("stagetune tracking: unexpected error while syncing the spool")
            return SyncResult(delivered=0, pending=self.pending())
        return SyncResult(delivered=delivered, pending=pending)

    def _spooled_trials(self) -> list[str]:
        if not self.spool_dir.is_dir():
            return []
        keys = (p.name[: -len(".jsonl")] for p in sorted(self.spool_dir.glob("*.jsonl")))
        return [k for k in keys if k != _STUDY_KEY and not k.endswith(".rejected")]

    def pending(self) -> int:
        """Number of spooled events waiting for delivery."""
        if not self.spool_dir.is_dir():
            return 0
        total = 0
        for path in self.spool_dir.glob("*.jsonl"):
            if not path.name.endswith(".rejected.jsonl"):
                total += len(self._read_spool(path))
        return total

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

    # -- delivery -----------------------------------------------------------------------------
    def _key_lock(self, key: str) -> threading.RLock:
        with self._state_lock:
            lock = self._key_locks.get(key)
            if lock is None:
                lock = self._key_locks[key] = threading.RLock()
            return lock

    def _is_offline(self) -> bool:
        return time.monotonic() < self._offline_until

    def _mark_offline(self, exc: BaseException) -> None:
        with self._state_lock:
            first = self._offline_until == 0.0
            self._offline_until = time.monotonic() + self.offline_cooldown
            self.stats.last_error = str(exc)
        if first:
            _log.warning(
                "MLflow at %s is unreachable (%s); spooling to %s until it answers",
                self.tracking_uri,
                (str(exc).splitlines() or [repr(exc)])[0][:200],
                self.spool_dir,
            )

    def _mark_online(self) -> None:
        with self._state_lock:
            was_offline = self._offline_until != 0.0
            self._offline_until = 0.0
        if was_offline:
            _log.info("MLflow at %s answers again", self.tracking_uri)

    def _submit(self, key: str, event: dict[str, Any]) -> str | None:
        """Deliver ``event`` now, or spool it; the run id it touched when delivered."""
        with self._key_lock(key):
            spooled = False
            try:
                pending = self._spool_path(key).exists() or (
                    key != _STUDY_KEY and self._spool_path(_STUDY_KEY).exists()
                )
                if self._is_offline():
                    self._spool(key, event)
                    return None
                if pending:
                    # Earlier events wait in the spool: keep the order, then try to catch up
                    # (the study's spool first: trial runs need the parent run).
                    self._spool(key, event)
                    spooled = True
                    self._sync_key(key)
                    return self._known_run(event)
                return self._deliver_or_spool(key, event)
            except Exception as exc:  # never let a tracking bug reach training
                _log.exception("stagetune tracking: unexpected error; the event stays spooled")
                if not spooled:
                    with contextlib.suppress(Exception):
                        self._spool(key, event)
                self.stats.last_error = repr(exc)
                return None

    def _deliver_or_spool(self, key: str, event: dict[str, Any]) -> str | None:
        try:
            run_id = self._deliver_with_retry(event)
        except _Rejected as exc:
            self._reject(key, event, str(exc))
            return None
        except _Unreachable as exc:
            self._mark_offline(exc)
            self._spool(key, event)
            return None
        self._mark_online()
        return run_id

    def _deliver_with_retry(self, event: dict[str, Any], *, refresh: bool = False) -> str | None:
        deadline = time.monotonic() + self.retry_seconds
        delay = 0.1
        attempt = 0
        while True:
            try:
                with self._io_lock:
                    run_id = self._deliver(event, refresh=refresh or attempt > 0)
                with self._state_lock:
                    self.stats.delivered += 1
                return run_id
            except Exception as exc:
                if isinstance(exc, _Rejected) or is_permanent(exc):
                    raise _Rejected(str(exc).splitlines()[0] if str(exc) else repr(exc)) from exc
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise _Unreachable(str(exc)) from exc
                with self._state_lock:
                    self.stats.retries += 1
                    self.stats.last_error = str(exc)
                # Jitter keeps concurrent trials from retrying in lockstep.
                time.sleep(min(remaining, delay * (0.5 + random.random())))
                delay = min(delay * 2, 2.0)
                attempt += 1

    def _deliver(self, event: dict[str, Any], *, refresh: bool) -> str | None:
        """One delivery attempt; ``refresh`` re-reads the steps MLflow holds before a report."""
        op = event["op"]
        if op == "start_study":
            return self._do_start_study(event)
        if op == "end_study":
            run_id = self._parent(event["study"])
            client = self._get_client()
            client.set_tag(run_id, TAG_STATUS, event["status"])
            client.set_terminated(run_id, status=event["mlflow_status"], end_time=event["time"])
            return run_id
        if op == "start_trial":
            return self._do_start_trial(event)
        if op == "report":
            # After a failed attempt the batch may have landed anyway: hence the refresh.
            return self._do_report(event, refresh=refresh)
        if op == "end_trial":
            run_id = self._trial_run(event["study"], event["trial_id"])
            self._log_params_tags(run_id, {}, event["tags"])
            self._get_client().set_terminated(
                run_id, status=event["mlflow_status"], end_time=event["time"]
            )
            return run_id
        if op == "artifacts":
            return self._do_artifacts(event)
        raise _Rejected(f"unknown spool op {op!r}")

    # -- MLflow operations (each idempotent: they run again after a lost response) ------------
    def _get_client(self) -> MlflowClient:
        if self._client is None:
            self._client = make_client(self.tracking_uri)
        return self._client

    def _get_experiment_id(self) -> str:
        if self._experiment_id is not None:
            return self._experiment_id
        from mlflow.exceptions import MlflowException

        client = self._get_client()
        exp = client.get_experiment_by_name(self.experiment)
        if exp is None:
            try:
                exp_id = client.create_experiment(
                    self.experiment, artifact_location=artifact_location(self.tracking_uri)
                )
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                # Another process created it between our lookup and create.
                exp = client.get_experiment_by_name(self.experiment)
                assert exp is not None
                exp_id = exp.experiment_id
        else:
            exp_id = exp.experiment_id
            if exp.lifecycle_stage == "deleted":
                _log.warning("restoring deleted MLflow experiment %r", self.experiment)
                client.restore_experiment(exp_id)
        self._experiment_id = exp_id
        return exp_id

    def _search_one(self, filters: dict[str, str]) -> str | None:
        """The oldest active run of our experiment whose tags match ``filters``."""
        client = self._get_client()
        query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in filters.items())
        runs = client.search_runs(
            [self._get_experiment_id()],
            filter_string=query,
            order_by=["attributes.start_time ASC"],
            max_results=1,
        )
        return runs[0].info.run_id if runs else None

    def _parent(self, study: str) -> str:
        """The study's parent run id, found by tags or (if the start was lost) created bare."""
        with self._parent_lock:  # two trials must not both create it
            run_id = self._parents.get(study)
            if run_id is None:
                run_id = self._search_one({TAG_STUDY: study, TAG_ROLE: ROLE_PARENT})
                if run_id is None:
                    tags = {TAG_STUDY: study, TAG_ROLE: ROLE_PARENT, TAG_STATUS: STATUS_RUNNING}
                    run_id = self._create_run(study, tags, _now_ms())
                self._parents[study] = run_id
            return run_id

    def _create_run(self, name: str, tags: dict[str, str], start_ms: int) -> str:
        run = self._get_client().create_run(
            self._get_experiment_id(), start_time=start_ms, tags=tags, run_name=name
        )
        self._steps[run.info.run_id] = set()  # a new run holds no steps yet
        return str(run.info.run_id)

    def _reopen(self, run_id: str, params: dict[str, str], tags: dict[str, str]) -> None:
        """Log params/tags to an existing run; params MLflow holds already are left alone."""
        client = self._get_client()
        run = client.get_run(run_id)
        if run.info.status != "RUNNING":
            client.update_run(run_id, status="RUNNING")
        held = run.data.params
        changed = sorted(k for k, v in params.items() if k in held and held[k] != v)
        if changed:
            # MLflow params are immutable; the resumed run keeps the first values.
            _log.warning(
                "run %s: params %s changed on resume; keeping the logged values",
                run_id,
                ", ".join(changed),
            )
        self._log_params_tags(run_id, {k: v for k, v in params.items() if k not in held}, tags)

    def _log_params_tags(self, run_id: str, params: dict[str, str], tags: dict[str, str]) -> None:
        from mlflow.entities import Param, RunTag

        client = self._get_client()
        plist = []
        for k, v in params.items():
            if len(v) > _MAX_PARAM_LEN:
                _log.warning("param %r is %d characters long; truncated", k, len(v))
                v = v[: _MAX_PARAM_LEN - 3] + "..."
            plist.append(Param(k, v))
        tlist = [RunTag(k, v) for k, v in tags.items()]
        for chunk in _chunks(plist, _BATCH_PARAMS):
            client.log_batch(run_id, params=chunk)
        for tchunk in _chunks(tlist, _BATCH_TAGS):
            client.log_batch(run_id, tags=tchunk)

    def _do_start_study(self, ev: dict[str, Any]) -> str:
        study = ev["study"]
        tags = {**ev["tags"], TAG_STUDY: study, TAG_ROLE: ROLE_PARENT, TAG_STATUS: STATUS_RUNNING}
        run_id = self._parents.get(study) or self._search_one(
            {TAG_STUDY: study, TAG_ROLE: ROLE_PARENT}
        )
        if run_id is None:
            run_id = self._create_run(tags.get(TAG_RUN_NAME, study), tags, ev["time"])
            self._log_params_tags(run_id, ev["params"], {})
        else:
            self._reopen(run_id, ev["params"], tags)
        self._parents[study] = run_id
        return run_id

    def _trial_tags(self, study: str, trial_id: str, extra: dict[str, str]) -> dict[str, str]:
        return {
            TAG_IS_BASELINE: "false",
            **extra,
            TAG_PARENT_RUN: self._parent(study),
            TAG_STUDY: study,
            TAG_ROLE: ROLE_TRIAL,
            TAG_TRIAL_ID: trial_id,
            TAG_STATUS: STATUS_RUNNING,
        }

    def _find_trial(self, study: str, trial_id: str) -> str | None:
        run_id = self._runs.get((study, trial_id))
        if run_id is None:
            run_id = self._search_one(
                {TAG_STUDY: study, TAG_ROLE: ROLE_TRIAL, TAG_TRIAL_ID: trial_id}
            )
            if run_id is not None:
                self._runs[(study, trial_id)] = run_id
        return run_id

    def _trial_run(self, study: str, trial_id: str) -> str:
        """The trial's run; created bare if its start never reached MLflow (and was rejected)."""
        run_id = self._find_trial(study, trial_id)
        if run_id is None:
            tags = self._trial_tags(study, trial_id, {})
            run_id = self._create_run(trial_id, tags, _now_ms())
            self._runs[(study, trial_id)] = run_id
        return run_id

    def _do_start_trial(self, ev: dict[str, Any]) -> str:
        study, trial_id = ev["study"], ev["trial_id"]
        tags = self._trial_tags(study, trial_id, ev["tags"])
        run_id = self._find_trial(study, trial_id)
        if run_id is None:
            run_id = self._create_run(tags.get(TAG_RUN_NAME, trial_id), tags, ev["time"])
            self._runs[(study, trial_id)] = run_id
            self._log_params_tags(run_id, ev["params"], {})
        else:
            # A restarted trial continues its run (Tune restores it from a checkpoint).
            self._reopen(run_id, ev["params"], tags)
        return run_id

    def _held_steps(self, run_id: str, *, refresh: bool) -> set[int]:
        steps = self._steps.get(run_id)
        if steps is None or refresh:
            history = self._get_client().get_metric_history(run_id, STEP_KEY)
            steps = {int(m.step) for m in history}
            self._steps[run_id] = steps
        return steps

    def _do_report(self, ev: dict[str, Any], *, refresh: bool) -> str:
        from mlflow.entities import Metric

        run_id = self._trial_run(ev["study"], ev["trial_id"])
        step = int(ev["step"])
        steps = self._held_steps(run_id, refresh=refresh)
        if step in steps:
            with self._state_lock:
                self.stats.duplicate_steps += 1
            return run_id
        metrics = [Metric(k, v, ev["time"], step) for k, v in ev["metrics"].items()]
        client = self._get_client()
        for chunk in _chunks(metrics, _BATCH_METRICS):  # one call unless >1000 keys
            client.log_batch(run_id, metrics=chunk)
        steps.add(step)
        return run_id

    def _do_artifacts(self, ev: dict[str, Any]) -> str:
        study = ev["study"]
        run_id = (
            self._parent(study)
            if ev["trial_id"] is None
            else self._trial_run(study, ev["trial_id"])
        )
        client = self._get_client()
        base = ev.get("artifact_path")
        for f in ev["files"]:
            path = Path(f)
            if path.is_dir():
                sub = f"{base}/{path.name}" if base else path.name
                client.log_artifacts(run_id, str(path), artifact_path=sub)
            elif path.is_file():
                client.log_artifact(run_id, str(path), artifact_path=base)
            else:
                _log.warning("artifact %s is gone; not uploaded", path)
        if ev.get("spooled_copy"):
            shutil.rmtree(ev["spooled_copy"], ignore_errors=True)
        return run_id

    def _known_run(self, event: dict[str, Any]) -> str | None:
        study, trial_id = event["study"], event.get("trial_id")
        if trial_id is None:
            return self._parents.get(study)
        return self._runs.get((study, trial_id))

    # -- the spool -------------------------------------------------------------------------------
    def _spool_path(self, key: str) -> Path:
        return self.spool_dir / f"{key}.jsonl"

    def _append(self, path: Path, event: dict[str, Any]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(event, allow_nan=True) + "\n"
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())  # the spool exists to survive crashes

    def _spool(self, key: str, event: dict[str, Any]) -> None:
        if event["op"] == "artifacts" and not event.get("spooled_copy"):
            # The caller may delete its files before MLflow is back: keep copies.
            dest = self.spool_dir / f"{key}.files" / uuid.uuid4().hex
            dest.mkdir(parents=True, exist_ok=True)
            copies = []
            for f in event["files"]:
                src = Path(f)
                target = dest / src.name
                if src.is_dir():
                    shutil.copytree(src, target)
                elif src.is_file():
                    shutil.copy2(src, target)
                else:
                    continue
                copies.append(str(target))
            event = {**event, "files": copies, "spooled_copy": str(dest)}
        self._append(self._spool_path(key), event)
        with self._state_lock:
            self.stats.spooled += 1

    def _reject(self, key: str, event: dict[str, Any], reason: str) -> None:
        _log.warning(
            "MLflow refused a %s event of %s (%s); kept in %s",
            event.get("op"),
            key,
            reason,
            self.spool_dir,
        )
        with contextlib.suppress(Exception):
            self._append(self.spool_dir / f"{key}.rejected.jsonl", {**event, "error": reason})
        with self._state_lock:
            self.stats.rejected += 1
            self.stats.last_error = reason

    @staticmethod
    def _read_spool(path: Path) -> list[dict[str, Any]]:
        events = []
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                # A torn last line from a crash mid-write: nothing recoverable in it.
                _log.warning("skipping a corrupt line in %s", path)
        return events

    def _sync_key(self, key: str) -> tuple[int, int, bool]:
        """Deliver one spool file in order: (delivered, still pending, MLflow answered)."""
        with self._key_lock(key):
            path = self._spool_path(key)
            events = self._read_spool(path)
            if not events:
                path.unlink(missing_ok=True)
                return 0, 0, True
            if key != _STUDY_KEY and self._spool_path(_STUDY_KEY).exists():
                _, _, ok = self._sync_key(_STUDY_KEY)
                if not ok or self._spool_path(_STUDY_KEY).exists():
                    return 0, len(events), ok  # the parent run must exist first
            delivered = 0
            refreshed: set[str] = set()
            for i, ev in enumerate(events):
                # Another process may have logged this trial meanwhile: re-read its steps once.
                refresh = ev["op"] == "report" and ev["trial_id"] not in refreshed
                if refresh:
                    refreshed.add(ev["trial_id"])
                try:
                    self._deliver_with_retry(ev, refresh=refresh)
                    delivered += 1
                except _Rejected as exc:
                    self._reject(key, ev, str(exc))
                except _Unreachable as exc:
                    self._mark_offline(exc)
                    rest = events[i:]
                    tmp = path.with_suffix(".jsonl.tmp")
                    tmp.write_text("".join(json.dumps(e) + "\n" for e in rest), encoding="utf-8")
                    os.replace(tmp, path)
                    return delivered, len(rest), False
            path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                (self.spool_dir / f"{key}.files").rmdir()  # only if empty
            self._mark_online()
            return delivered, 0, True

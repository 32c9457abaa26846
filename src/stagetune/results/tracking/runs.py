"""The MLflow side of tracking: a study's runs, found or created by their tags, and each event
applied to them.

A study is one parent run, a trial one child run; both are found again by their tags
(:mod:`stagetune.results.naming`), so a resumed study continues its runs. Every operation is
idempotent, since it runs again after a lost response or from the spool: a run is looked up
before it is created, and a metric step MLflow already holds is never logged twice (a trial
restored from a checkpoint re-reports steps). Retries, the offline state and the spool are
:mod:`~stagetune.results.tracking.delivery`'s; this module only talks to MLflow.
"""

from __future__ import annotations

import logging
import math
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeAlias, TypeVar

from stagetune.metrics import FLOPS
from stagetune.results.naming import (
    EXPERIMENT_KIND_TRAINING,
    ROLE_PARENT,
    ROLE_TRIAL,
    STATUS_RUNNING,
    TAG_EXPERIMENT_KIND,
    TAG_IS_BASELINE,
    TAG_PARENT_RUN,
    TAG_ROLE,
    TAG_RUN_NAME,
    TAG_STATUS,
    TAG_STUDY,
    TAG_TRIAL_ID,
)
from stagetune.results.store import artifact_location, make_client, search_all
from stagetune.results.tracking.spool import Op

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

__all__ = ["STEP_KEY", "STEP_UNIT", "Event", "MlflowRuns", "mlflow_step", "now_ms"]

_log = logging.getLogger(__name__)
T = TypeVar("T")

Event: TypeAlias = dict[str, Any]
"""One tracking event: ``op`` (see :mod:`~stagetune.results.tracking.spool`), ``study``, and
what the op needs (``trial_id``, ``params``, ``tags``, ``metrics``, ``step``, ``files``...)."""

STEP_KEY: Final = FLOPS
"""The record key that becomes MLflow's step (:func:`mlflow_step`); its metric history also
tells which steps exist."""
STEP_UNIT: Final = 1e6
"""MLflow's step is the cumulative standard FLOPs in MFLOPs: the runs' default chart is then
eval loss against compute, every schedule on one axis (``tokens`` stays a metric). MLflow steps
are integers; MFLOPs keep a paper-scale run (~1e19 FLOPs) within JavaScript's exact integers,
and a tiny model's step (~1e8 FLOPs) apart from the next."""
_MAX_PARAM_LEN: Final = 6000  # MLflow's limit on a param value
_BATCH_PARAMS: Final = 100  # MLflow's limits per log_batch call
_BATCH_TAGS: Final = 100
_BATCH_METRICS: Final = 1000


def mlflow_step(metrics: dict[str, float]) -> int | None:
    """The MLflow step of a metric record: its :data:`STEP_KEY` in :data:`STEP_UNIT`;
    ``None`` when it has no finite one."""
    value = metrics.get(STEP_KEY)
    if value is None or not math.isfinite(value):
        return None
    return int(value // STEP_UNIT)


def now_ms() -> int:
    """The time as MLflow records it (milliseconds since the epoch)."""
    return int(time.time() * 1000)


def _chunks(items: list[T], n: int) -> Iterator[list[T]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


class MlflowRuns:
    """A study's runs in one MLflow experiment, and the events applied to them.

    Args:
        tracking_uri, experiment: where the runs are (the experiment is created on first use).
        parents: study -> parent run id, already known (kept across pickling by the tracker).
        runs: (study, trial id) -> run id, already known.
        on_duplicate_step: called for each report skipped because MLflow held its step.
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        *,
        parents: dict[str, str],
        runs: dict[tuple[str, str], str],
        on_duplicate_step: Callable[[], None],
    ) -> None:
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.parents = parents
        self.runs = runs
        self._on_duplicate_step = on_duplicate_step
        self._client: MlflowClient | None = None
        self._experiment_id: str | None = None
        self._steps: dict[str, set[int]] = {}  # run id -> steps MLflow holds
        self._parent_lock = threading.Lock()
        self._handlers: dict[str, Callable[[Event, bool], str]] = {
            Op.START_STUDY: self._start_study,
            Op.END_STUDY: self._end_study,
            Op.START_TRIAL: self._start_trial,
            Op.REPORT: self._report,
            Op.END_TRIAL: self._end_trial,
            Op.ARTIFACTS: self._artifacts,
        }

    # -- what the tracker asks ---------------------------------------------------------------
    def apply(self, event: Event, *, refresh: bool = False) -> str:
        """Apply one event to MLflow; the id of the run it touched.

        ``refresh``: re-read the steps MLflow holds before a report (after a failed attempt the
        batch may have landed anyway; another process may have logged the trial meanwhile).

        Raises:
            ValueError: an op nobody knows (a permanent error: the event is rejected).
        """
        handler = self._handlers.get(event["op"])
        if handler is None:
            raise ValueError(f"unknown spool op {event['op']!r}")
        return handler(event, refresh)

    def known_run(self, event: Event) -> str | None:
        """The run the event is for, if its id is already known (no MLflow call)."""
        study, trial_id = event["study"], event.get("trial_id")
        if trial_id is None:
            return self.parents.get(study)
        return self.runs.get((study, trial_id))

    def open_trial_ids(self, study: str) -> set[str]:
        """Trial ids of the study whose runs MLflow still holds as running."""
        query = (
            f"tags.`{TAG_STUDY}` = '{study}' and tags.`{TAG_ROLE}` = '{ROLE_TRIAL}' "
            f"and tags.`{TAG_STATUS}` = '{STATUS_RUNNING}'"
        )
        found = search_all(self._get_client(), self._get_experiment_id(), query)
        return {r.data.tags[TAG_TRIAL_ID] for r in found if TAG_TRIAL_ID in r.data.tags}

    def trial_run(self, study: str, trial_id: str) -> Run | None:
        """The trial's run as MLflow holds it now; ``None`` if it has none."""
        run_id = self._find_trial(study, trial_id)
        return None if run_id is None else self._get_client().get_run(run_id)

    # -- the experiment and its runs -----------------------------------------------------------
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
                    self.experiment,
                    artifact_location=artifact_location(self.tracking_uri),
                    tags={TAG_EXPERIMENT_KIND: EXPERIMENT_KIND_TRAINING},
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
            if TAG_EXPERIMENT_KIND not in exp.tags:
                # An experiment made elsewhere (or by an older stagetune) opens in MLflow 3's
                # GenAI view unless it says it holds model training.
                client.set_experiment_tag(exp_id, TAG_EXPERIMENT_KIND, EXPERIMENT_KIND_TRAINING)
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
            run_id = self.parents.get(study)
            if run_id is None:
                run_id = self._search_one({TAG_STUDY: study, TAG_ROLE: ROLE_PARENT})
                if run_id is None:
                    tags = {TAG_STUDY: study, TAG_ROLE: ROLE_PARENT, TAG_STATUS: STATUS_RUNNING}
                    run_id = self._create_run(study, tags, now_ms())
                self.parents[study] = run_id
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
        run_id = self.runs.get((study, trial_id))
        if run_id is None:
            run_id = self._search_one(
                {TAG_STUDY: study, TAG_ROLE: ROLE_TRIAL, TAG_TRIAL_ID: trial_id}
            )
            if run_id is not None:
                self.runs[(study, trial_id)] = run_id
        return run_id

    def _trial_run_id(self, study: str, trial_id: str) -> str:
        """The trial's run; created bare if its start never reached MLflow (and was rejected)."""
        run_id = self._find_trial(study, trial_id)
        if run_id is None:
            tags = self._trial_tags(study, trial_id, {})
            run_id = self._create_run(trial_id, tags, now_ms())
            self.runs[(study, trial_id)] = run_id
        return run_id

    def _held_steps(self, run_id: str, *, refresh: bool) -> set[int]:
        steps = self._steps.get(run_id)
        if steps is None or refresh:
            history = self._get_client().get_metric_history(run_id, STEP_KEY)
            steps = {int(m.step) for m in history}
            self._steps[run_id] = steps
        return steps

    # -- the events (``refresh`` matters to reports only) ----------------------------------------
    def _start_study(self, ev: Event, refresh: bool) -> str:
        study: str = ev["study"]
        tags = {**ev["tags"], TAG_STUDY: study, TAG_ROLE: ROLE_PARENT, TAG_STATUS: STATUS_RUNNING}
        run_id = self.parents.get(study) or self._search_one(
            {TAG_STUDY: study, TAG_ROLE: ROLE_PARENT}
        )
        if run_id is None:
            run_id = self._create_run(tags.get(TAG_RUN_NAME, study), tags, ev["time"])
            self._log_params_tags(run_id, ev["params"], {})
        else:
            self._reopen(run_id, ev["params"], tags)
        self.parents[study] = run_id
        return run_id

    def _end_study(self, ev: Event, refresh: bool) -> str:
        run_id = self._parent(ev["study"])
        client = self._get_client()
        client.set_tag(run_id, TAG_STATUS, ev["status"])
        client.set_terminated(run_id, status=ev["mlflow_status"], end_time=ev["time"])
        return run_id

    def _start_trial(self, ev: Event, refresh: bool) -> str:
        study: str = ev["study"]
        trial_id: str = ev["trial_id"]
        tags = self._trial_tags(study, trial_id, ev["tags"])
        run_id = self._find_trial(study, trial_id)
        if run_id is None:
            run_id = self._create_run(tags.get(TAG_RUN_NAME, trial_id), tags, ev["time"])
            self.runs[(study, trial_id)] = run_id
            self._log_params_tags(run_id, ev["params"], {})
        else:
            # A restarted trial continues its run (Tune restores it from a checkpoint).
            self._reopen(run_id, ev["params"], tags)
        return run_id

    def _report(self, ev: Event, refresh: bool) -> str:
        from mlflow.entities import Metric

        run_id = self._trial_run_id(ev["study"], ev["trial_id"])
        step = int(ev["step"])
        steps = self._held_steps(run_id, refresh=refresh)
        if step in steps:
            self._on_duplicate_step()
            return run_id
        metrics = [Metric(k, v, ev["time"], step) for k, v in ev["metrics"].items()]
        client = self._get_client()
        for chunk in _chunks(metrics, _BATCH_METRICS):  # one call unless >1000 keys
            client.log_batch(run_id, metrics=chunk)
        steps.add(step)
        return run_id

    def _end_trial(self, ev: Event, refresh: bool) -> str:
        run_id = self._trial_run_id(ev["study"], ev["trial_id"])
        self._log_params_tags(run_id, {}, ev["tags"])
        self._get_client().set_terminated(run_id, status=ev["mlflow_status"], end_time=ev["time"])
        return run_id

    def _artifacts(self, ev: Event, refresh: bool) -> str:
        study = ev["study"]
        run_id = (
            self._parent(study)
            if ev["trial_id"] is None
            else self._trial_run_id(study, ev["trial_id"])
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

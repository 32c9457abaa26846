"""OptunaSearch that survives a driver crash: Tune's snapshot and Optuna's storage disagree.

Tune snapshots its experiment state every few seconds, Optuna's RDB storage commits at once.
After a driver crash the two disagree in two ways:

* Tune may resume a trial that Optuna already recorded as finished; stock ``OptunaSearch``
  then raises ``UpdateFinishedTrialError`` on the next report, and telling its end again fails
  ("Cannot tell a PRUNED trial"). Here both are skipped: Optuna's record stands. So are steps a
  trial restored from its checkpoint reports a second time.
* A trial asked from Optuna after the last snapshot is unknown to Tune: nobody will ever finish
  it (an *orphan*). :func:`reconcile_optuna` marks such trials FAIL with
  ``stagetune_status=interrupted`` before the search resumes.

Budget rule (documented in ``tests/faults/README.md``): a study asks Optuna for at most
``search.num_trials`` trials in total over its first run and all its resumes (a study is only
ever continued by ``--resume``: a new run refuses a work directory that holds one). Every asked trial counts, whatever
its end (finished, stopped, diverged, failed, interrupted), except an interrupted *baseline*
trial: the baseline is enqueued again (every comparison needs it) and its interrupted attempt
does not count. So a resumed study samples only what is left, never one trial too many.

Every Optuna trial carries user attributes that tie it to Tune and MLflow:
``stagetune_trial_id`` (the Tune trial id, which is also the MLflow run's
``stagetune.trial_id`` tag) and, once it ends, ``stagetune_status`` (``finished``,
``stopped``, ``diverged``, ``failed`` or ``interrupted``). A trial a signal or a full disk
stopped stays RUNNING with ``stagetune_status=interrupted`` until ``--resume`` continues it
(see :mod:`stagetune.orchestration.interrupt`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final

from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState
from ray.tune.result import TRAINING_ITERATION
from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from stagetune.diskspace import disk_full_in, report_full
from stagetune.metrics import (
    STATUS_DIVERGED,
    STATUS_FAILED,
    STATUS_FINISHED,
    STATUS_INTERRUPTED,
    STATUS_STOPPED,
)
from stagetune.orchestration.distinct import (
    STATUS_DUPLICATE,
    nearest_unvisited,
    point_key,
    visited_keys,
)
from stagetune.results.naming import STATUS_RUNNING

__all__ = [
    "ATTR_COUNTS",
    "ATTR_LABEL",
    "ATTR_STATUS",
    "ATTR_TRIAL_ID",
    "STATUS_INTERRUPTED",
    "BaselineKeepingASHA",
    "ReconcileResult",
    "ResumableOptunaSearch",
    "counts_against_budget",
    "ensure_baseline",
    "reconcile_optuna",
    "trial_params",
]

log = logging.getLogger(__name__)

ATTR_STATUS: Final = "stagetune_status"
"""Optuna user attribute: how the trial ended (stagetune's status, or ``interrupted``)."""
ATTR_TRIAL_ID: Final = "stagetune_trial_id"
"""Optuna user attribute: the Tune trial id (= MLflow tag ``stagetune.trial_id``)."""
ATTR_COUNTS: Final = "stagetune_counts"
"""Optuna user attribute: ``False`` on trials that do not count against ``num_trials``."""
ATTR_BASELINE: Final = "stagetune_baseline"
SEEDED_PREFIX: Final = "seeded:"
"""Rung entries of trials from outside the search (:meth:`BaselineKeepingASHA.seed_rungs`)."""
ATTR_LABEL: Final = "schedule_label"
"""The trial's schedule label (the MLflow run name), for optuna-dashboard's trial table."""


def trial_status(result: dict[str, Any] | None, error: bool) -> str:
    """stagetune's status of a trial Tune just completed (same rule as the MLflow callback)."""
    status = (result or {}).get("status")
    if status == STATUS_DIVERGED:
        return STATUS_DIVERGED
    if error:
        return STATUS_FAILED
    if status == STATUS_FINISHED:
        return STATUS_FINISHED
    return STATUS_STOPPED


def trial_params(t: FrozenTrial) -> dict[str, Any]:
    """The trial's params; for a WAITING (enqueued) trial, the params it will be asked with."""
    if t.state == TrialState.WAITING:
        return dict(t.system_attrs.get("fixed_params") or {})
    return dict(t.params)


def counts_against_budget(t: FrozenTrial) -> bool:
    return t.state != TrialState.WAITING and t.user_attrs.get(ATTR_COUNTS, True) is not False


class ResumableOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that tolerates Optuna being ahead of Tune, links its trials to Tune's
    ids, records stagetune's status on them, and keeps the study within ``max_trials``.

    ``grid``: all points of a finite space; each is then asked for once before any is asked
    for again (:mod:`stagetune.orchestration.distinct`).
    ``grid_seed`` seeds the choice among equally near unasked points.
    """

    def __init__(
        self,
        *args: Any,
        max_trials: int | None = None,
        label_of: Callable[[dict[str, Any]], str] | None = None,
        grid: list[dict[str, Any]] | None = None,
        grid_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._max_trials = max_trials
        self._grid = grid
        self._grid_rng = random.Random(grid_seed)
        self._label_of = label_of

    def _setup_study(self, mode: str | list[str]) -> None:  # type: ignore[override]
        super()._setup_study(mode)
        # optuna-dashboard names the objectives by these, instead of "Objective 0".
        names = self.metric if isinstance(self.metric, list) else [self.metric]
        study: Any = self._ot_study
        if study is not None and all(isinstance(n, str) for n in names):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # experimental in some Optuna versions
                study.set_metric_names(names)

    def _budget_used(self) -> int:
        study: Any = self._ot_study
        return sum(1 for t in study.get_trials(deepcopy=False) if counts_against_budget(t))

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:  # type: ignore[override]
        max_trials = getattr(self, "_max_trials", None)
        if max_trials is not None and trial_id not in self._ot_trials:
            used = self._budget_used()
            if used >= max_trials:
                log.info("the study has asked for its %d trials; no more are sampled", used)
                return Searcher.FINISHED
        config = self._suggest_new(trial_id) if self._finite() else super().suggest(trial_id)
        if config is None or isinstance(config, str):
            return config
        # Tie the Optuna trial to Tune's (and so MLflow's) trial id at once: a resume that
        # does not find this id in Tune's snapshot knows the trial was orphaned.
        with contextlib.suppress(Exception):
            ot_trial = self._ot_trials[trial_id]
            ot_trial.set_user_attr(ATTR_TRIAL_ID, trial_id)
            label_of = getattr(self, "_label_of", None)
            if label_of is not None and isinstance(config, dict):
                ot_trial.set_user_attr(ATTR_LABEL, label_of(config))
        return config

    def _finite(self) -> bool:
        # getattr: a searcher unpickled from an older snapshot has no grid
        return getattr(self, "_grid", None) is not None

    def _visited(self, *, but: int | None = None) -> set[tuple[tuple[str, Any], ...]]:
        study: Any = self._ot_study
        return visited_keys(
            (t for t in study.get_trials(deepcopy=False) if t.number != but),
            params_of=trial_params,
            status_attr=ATTR_STATUS,
            interrupted=STATUS_INTERRUPTED,
        )

    def _suggest_new(self, trial_id: str) -> dict[str, Any] | str | None:
        """A point of the finite space not asked for before (or FINISHED when none is left)."""
        assert self._grid is not None
        study: Any = self._ot_study
        if trial_id not in self._ot_trials and len(self._visited()) >= len(self._grid):
            # Every point was asked for: more trials than points repeat points, as the sampler
            # draws them (``search.num_trials`` decides; e.g. identical trials on purpose).
            return super().suggest(trial_id)
        while True:
            config = super().suggest(trial_id)
            ot_trial = self._ot_trials[trial_id]
            visited = self._visited(but=ot_trial.number)
            if point_key(ot_trial.params) not in visited:
                return config
            # A repeat: close it where samplers do not look; the nearest new point instead
            # (enqueued: the next ask takes it, whatever the sampler would draw).
            ot_trial.set_user_attr(ATTR_STATUS, STATUS_DUPLICATE)
            ot_trial.set_user_attr(ATTR_COUNTS, False)
            study.tell(ot_trial, state=TrialState.FAIL)
            del self._ot_trials[trial_id]
            point = nearest_unvisited(self._grid, visited, ot_trial.params, self._grid_rng)
            if point is None:  # the last unasked points were taken meanwhile
                return super().suggest(trial_id)
            study.enqueue_trial(point)

    def _recorded(self, trial_id: str) -> FrozenTrial | None:
        """The Optuna trial as its storage holds it now (``None``: not ours, or unreadable)."""
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None:
            return None
        study: Any = self._ot_study
        try:
            return study._storage.get_trial(ot_trial._trial_id)  # type: ignore[no-any-return]
        except Exception as exc:
            if (full := disk_full_in(exc)) is None:
                raise
            report_full(full)
            return None

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        held = self._recorded(trial_id)
        if held is not None and (
            held.state.is_finished() or result.get(TRAINING_ITERATION) in held.intermediate_values
        ):
            # A resumed trial re-reports what its Optuna trial already holds (steps after its
            # checkpoint, or a whole trial that ended before the driver died): nothing to add.
            return
        try:
            super().on_trial_result(trial_id, result)
        except Exception as exc:
            if (full := disk_full_in(exc)) is None:
                raise
            report_full(full)  # the study stops; the step is reported again on resume

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        try:
            self._complete(trial_id, result, error)
        except Exception as exc:
            if (full := disk_full_in(exc)) is None:
                raise
            # Optuna keeps the trial RUNNING; --resume settles it from Tune's snapshot.
            report_full(full)

    def _complete(self, trial_id: str, result: dict[str, Any] | None, error: bool) -> None:
        held = self._recorded(trial_id)
        if held is not None and held.state.is_finished():
            # Optuna recorded this trial's end before the driver died; Tune's snapshot did not
            # (the trial is replayed, see stagetune.orchestration.trainable.train_trial). Optuna's
            # record stands: the other stores take its status.
            self._completed_trials.add(trial_id)
            return
        ot_trial = self._ot_trials.get(trial_id)
        status = trial_status(result, error)
        if ot_trial is not None and trial_id not in self._completed_trials:
            # User attributes can only be written while the trial runs: before ``tell``.
            with contextlib.suppress(UpdateFinishedTrialError):
                ot_trial.set_user_attr(ATTR_STATUS, status)
            study: Any = self._ot_study
            if status == STATUS_DIVERGED:
                # A NaN loss is no objective value: FAIL (Optuna would too, with a warning).
                with contextlib.suppress(UpdateFinishedTrialError):
                    study.tell(ot_trial, state=TrialState.FAIL)
                self._completed_trials.add(trial_id)
                return
            if status == STATUS_STOPPED and not isinstance(self.metric, list):
                # Stopped by ASHA: its last loss was measured at less compute than a finished
                # trial's. As COMPLETE it would teach TPE that late-blooming schedules (long
                # continual phases) are bad; PRUNED keeps only its intermediate values. The
                # result that made ASHA stop it reaches the searcher here, not through
                # on_trial_result: record it, so Optuna's last value is the report's.
                value = (result or {}).get(str(self.metric))
                step = (result or {}).get(TRAINING_ITERATION)
                if value is not None and step is not None:
                    with contextlib.suppress(UpdateFinishedTrialError):
                        ot_trial.report(float(value), int(step))
                with contextlib.suppress(UpdateFinishedTrialError):
                    study.tell(ot_trial, state=TrialState.PRUNED)
                self._completed_trials.add(trial_id)
                return
        super().on_trial_complete(trial_id, result=result, error=error)


# ---------------------------------------------------------------------------------------------
# resume: reconciling Optuna's storage with Tune's snapshot


class ReconcileResult:
    """What :func:`reconcile_optuna` found (ids are Tune trial ids where known)."""

    def __init__(self) -> None:
        self.interrupted: list[tuple[int, str | None]] = []
        """(Optuna trial number, Tune trial id) of the trials marked FAIL/interrupted."""
        self.ended: dict[str, str] = {}
        """Tune trial id -> stagetune status, for every Optuna trial that is over."""
        self.enqueued_baseline = False


def reconcile_optuna(
    study: Any, known_trial_ids: Iterable[str], *, is_baseline: Callable[[dict[str, Any]], bool]
) -> ReconcileResult:
    """Mark RUNNING trials that Tune's snapshot does not know as FAIL (``interrupted``).

    Args:
        study: the loaded ``optuna.Study``.
        known_trial_ids: Tune trial ids in the experiment snapshot Tune resumes from (empty
            when Tune starts afresh): those trials are resumed, and finish their Optuna trial.
        is_baseline: tells whether a trial's params are the baseline point.
    """
    known = set(known_trial_ids)
    out = ReconcileResult()
    storage = study._storage
    for t in study.get_trials(deepcopy=False):
        tid = t.user_attrs.get(ATTR_TRIAL_ID)
        if t.state == TrialState.RUNNING and tid not in known:
            storage.set_trial_user_attr(t._trial_id, ATTR_STATUS, STATUS_INTERRUPTED)
            if is_baseline(trial_params(t)):
                storage.set_trial_user_attr(t._trial_id, ATTR_COUNTS, False)
            storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            out.interrupted.append((t.number, tid))
            if tid:
                out.ended[tid] = STATUS_INTERRUPTED
            log.warning(
                "Optuna trial %d (Tune %s) was running when the driver died and is unknown to "
                "Tune's snapshot: marked FAIL (interrupted)",
                t.number,
                tid or "?",
            )
        elif t.state == TrialState.RUNNING and t.user_attrs.get(ATTR_STATUS) == STATUS_INTERRUPTED:
            # Stopped by a signal or a full disk, continued now (Tune knows it): running again.
            storage.set_trial_user_attr(t._trial_id, ATTR_STATUS, STATUS_RUNNING)
        elif t.state.is_finished() and tid:
            out.ended[tid] = str(
                t.user_attrs.get(ATTR_STATUS)
                or (STATUS_FINISHED if t.state == TrialState.COMPLETE else STATUS_FAILED)
            )
    return out


def ensure_baseline(
    study: Any, baseline_point: dict[str, Any], *, is_baseline: Callable[[dict[str, Any]], bool]
) -> bool:
    """Enqueue the baseline unless the study holds one that is waiting, running or over
    (an interrupted attempt does not count); returns whether it was enqueued."""
    for t in study.get_trials(deepcopy=False):
        if not is_baseline(trial_params(t)):
            continue
        if t.state == TrialState.FAIL and t.user_attrs.get(ATTR_STATUS) == STATUS_INTERRUPTED:
            continue
        return False
    study.enqueue_trial(baseline_point, user_attrs={ATTR_BASELINE: True})
    return True


class BaselineKeepingASHA(AsyncHyperBandScheduler):
    """ASHA on FLOPs that never stops a full-depth trial (the baseline or another lr).

    The reference of every compute-matched outcome is the best full-depth trial (see
    :mod:`stagetune.results.reference`): every candidate must train to its end even when a
    rung ranks it low, or the reference would be chosen among survivors of a comparison with
    itself. Their results still enter the rungs, so the full-depth trials set the bar for the
    others.
    """

    def seed_rungs(self, curves: Mapping[str, Sequence[tuple[float, float]]]) -> None:
        """Enter trials that ran before this search (the reference sweep: full-depth trials,
        never stopped) in every rung, as ASHA records its own: the metric of the first result
        at or past the rung's milestone. Each curve is ``[(time_attr value, metric), ...]``
        in report order; rungs a curve never reached get nothing from it."""
        op = self._metric_op
        assert op is not None, "seed_rungs needs the scheduler's metric and mode set"
        for name, curve in curves.items():
            for bracket in self._brackets:
                for milestone, recorded in bracket._rungs:
                    hit = next((m for t, m in curve if t >= milestone), None)
                    if hit is not None and math.isfinite(hit):
                        recorded[f"{SEEDED_PREFIX}{name}"] = op * hit

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        action = super().on_trial_result(tune_controller, trial, result)
        if result.get("is_baseline") or result.get("full_depth"):
            return str(TrialScheduler.CONTINUE)
        return str(action)

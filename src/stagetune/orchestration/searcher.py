"""OptunaSearch that survives a driver crash: Tune's snapshot and Optuna's storage disagree.

Tune snapshots its experiment state every few seconds, Optuna's RDB storage commits at once.
After a driver crash the two disagree in two ways:

* Tune may resume a trial that Optuna already recorded as finished; stock ``OptunaSearch``
  then raises ``UpdateFinishedTrialError`` on the next report and takes the whole search down.
  Here those reports are ignored: Optuna already holds the outcome.
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
``stopped``, ``diverged``, ``failed`` or ``interrupted``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable
from typing import Any, Final

from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState
from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from stagetune.metrics import STATUS_DIVERGED, STATUS_FAILED, STATUS_FINISHED, STATUS_STOPPED

__all__ = [
    "ATTR_COUNTS",
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
STATUS_INTERRUPTED: Final = "interrupted"
"""The driver died while the trial ran and Tune's snapshot did not know it: never finished."""


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
    ids, records stagetune's status on them, and keeps the study within ``max_trials``."""

    def __init__(self, *args: Any, max_trials: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._max_trials = max_trials

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
        config = super().suggest(trial_id)
        # Tie the Optuna trial to Tune's (and so MLflow's) trial id at once: a resume that
        # does not find this id in Tune's snapshot knows the trial was orphaned.
        with contextlib.suppress(Exception):
            self._ot_trials[trial_id].set_user_attr(ATTR_TRIAL_ID, trial_id)
        return config

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        try:
            super().on_trial_result(trial_id, result)
        except UpdateFinishedTrialError:
            log.info("trial %s is already finished in the Optuna study; report ignored", trial_id)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
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
                # continual phases) are bad; PRUNED keeps only its intermediate values.
                with contextlib.suppress(UpdateFinishedTrialError):
                    study.tell(ot_trial, state=TrialState.PRUNED)
                self._completed_trials.add(trial_id)
                return
        try:
            super().on_trial_complete(trial_id, result=result, error=error)
        except UpdateFinishedTrialError:
            log.info("trial %s is already finished in the Optuna study", trial_id)


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
    """ASHA on FLOPs that never stops the study's baseline.

    The baseline is the reference of every compute-matched outcome: it must train to its end
    even when a rung ranks it low. Its results still enter the rungs, so it sets the bar for
    the other trials.
    """

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        action = super().on_trial_result(tune_controller, trial, result)
        if result.get("is_baseline"):
            return str(TrialScheduler.CONTINUE)
        return str(action)

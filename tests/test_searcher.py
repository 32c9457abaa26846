"""ResumableOptunaSearch on a real Optuna SQLite storage, in the states a resume meets: Optuna
already holds a trial's end (recorded before the driver died, after Tune's last snapshot), or
steps a trial restored from its checkpoint reports again.

A resume must take those states as they are: no exception (Tune would turn it into a failed
trial), no warning, and Optuna's record unchanged.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from stagetune.orchestration.interrupt import mark_interrupted
from stagetune.orchestration.searcher import (
    ATTR_STATUS,
    ResumableOptunaSearch,
    reconcile_optuna,
)

NAME = "searcher"


def _space(trial: Any) -> None:
    trial.suggest_float("lr", 1e-4, 1e-2, log=True)


def _searcher(tmp_path: Path) -> tuple[ResumableOptunaSearch, optuna.Study]:
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name=NAME, storage=url)
    searcher = ResumableOptunaSearch(
        space=_space,
        metric="eval_loss",
        mode="min",
        sampler=optuna.samplers.RandomSampler(seed=0),
        study_name=NAME,
        storage=optuna.storages.RDBStorage(url),
    )
    return searcher, study


def _result(it: int, status: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"eval_loss": 1.0 / it, "training_iteration": it, "flops": 1e6 * it}
    if status:
        out["status"] = status
    return out


@pytest.mark.parametrize(
    ("state", "status"),
    [(TrialState.PRUNED, "stopped"), (TrialState.COMPLETE, "finished")],
)
def test_a_trial_optuna_already_ended_is_left_as_it_is(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, state: TrialState, status: str
) -> None:
    searcher, study = _searcher(tmp_path)
    searcher.suggest("t1")
    searcher.on_trial_result("t1", _result(1))
    # The end reached Optuna, then the driver died before Tune's next snapshot.
    number = study.trials[0].number
    study.tell(number, 0.5 if state == TrialState.COMPLETE else None, state=state)
    before = study.trials[0]

    # On resume, Tune replays the trial's last record and completes it.
    caplog.set_level(logging.INFO)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        searcher.on_trial_result("t1", _result(2, status))
        searcher.on_trial_complete("t1", result=_result(2, status))
    after = study.trials[0]
    assert (after.state, after.values, after.intermediate_values) == (
        before.state,
        before.values,
        before.intermediate_values,
    )
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


def test_steps_reported_again_after_a_restore_are_skipped_quietly(tmp_path: Path) -> None:
    searcher, study = _searcher(tmp_path)
    searcher.suggest("t1")
    for it in (1, 2, 3):
        searcher.on_trial_result("t1", _result(it))
    # Restored from the checkpoint taken at iteration 1: iterations 2 and 3 come again.
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Optuna warns "step is already reported"
        for it in (2, 3, 4):
            searcher.on_trial_result("t1", _result(it))
    assert study.trials[0].intermediate_values == {1: 1.0, 2: 0.5, 3: 1 / 3, 4: 0.25}


def test_an_interrupted_trial_stays_running_and_resumes_as_running(tmp_path: Path) -> None:
    searcher, study = _searcher(tmp_path)
    searcher.suggest("t1")
    searcher.suggest("t2")
    searcher.on_trial_complete("t1", result=_result(1, "finished"))

    mark_interrupted(
        optuna_storage=study._storage, study_name=NAME, tracker=None, study_finished=False
    )
    t1, t2 = study.trials
    assert (t1.state, t1.user_attrs[ATTR_STATUS]) == (TrialState.COMPLETE, "finished")
    # Optuna cannot reopen a finished trial: the interrupted one stays RUNNING, marked.
    assert (t2.state, t2.user_attrs[ATTR_STATUS]) == (TrialState.RUNNING, "interrupted")

    # --resume: Tune's snapshot knows t2 and continues it; Optuna says it runs again.
    res = reconcile_optuna(study, {"t1", "t2"}, is_baseline=lambda params: False)
    assert res.interrupted == []
    t2 = study.trials[1]
    assert (t2.state, t2.user_attrs[ATTR_STATUS]) == (TrialState.RUNNING, "running")
    searcher.on_trial_complete("t2", result=_result(3, "finished"))
    assert study.trials[1].state == TrialState.COMPLETE


def test_objective_named_trials_labelled_and_a_stopped_trials_last_value_kept(
    tmp_path: Path,
) -> None:
    """optuna-dashboard shows ``eval_loss``, not "Objective 0", and each trial's schedule label;
    a trial ASHA stopped keeps the loss it was stopped with as its last value (the result that
    made ASHA stop it reaches the searcher only through on_trial_complete)."""
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    searcher = ResumableOptunaSearch(
        space=_space, metric="eval_loss", mode="min",
        sampler=optuna.samplers.RandomSampler(seed=0), study_name=NAME,
        storage=optuna.storages.RDBStorage(url), label_of=lambda params: f"lr={params['lr']:.3g}",
    )  # fmt: skip
    config = searcher.suggest("t1")
    searcher.on_trial_result("t1", _result(1))
    searcher.on_trial_complete("t1", result={**_result(2), "eval_loss": 0.42})  # stopped
    study = optuna.load_study(study_name=NAME, storage=url)
    assert study.metric_names == ["eval_loss"]
    (t,) = study.trials
    assert t.state == TrialState.PRUNED and t.user_attrs["schedule_label"] == (
        f"lr={config['lr']:.3g}"
    )
    assert t.intermediate_values[max(t.intermediate_values)] == 0.42

"""MlflowTracker's API against real SQLite stores: threads, caller errors, pickling."""

from __future__ import annotations

import pickle
import threading
from pathlib import Path

import pytest

from stagetune.errors import ConfigError, StagetuneError
from stagetune.results import MlflowTracker
from tests.results.helpers import history, rec


def test_concurrent_trials_on_sqlite(uri: str, tmp_path: Path) -> None:
    tr = MlflowTracker(uri, "exp", spool_dir=tmp_path / "spool")
    tr.start_study(study_name="s", params={}, tags={})
    runs: dict[str, str] = {}

    def trial(tid: str) -> None:
        runs[tid] = tr.start_trial(trial_id=tid, params={}, tags={})
        for i in range(1, 21):
            tr.log_report(tid, rec(i))
        tr.end_trial(tid, "finished")

    threads = [threading.Thread(target=trial, args=(f"t_{k}",)) for k in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert tr.stats.spooled == 0 and tr.stats.rejected == 0 and tr.stats.retries == 0
    for run in runs.values():
        assert len(history(uri, run, "eval_loss")) == 20


def test_caller_errors_raise_but_bad_records_are_kept(uri: str, tmp_path: Path) -> None:
    tr = MlflowTracker(uri, "exp", spool_dir=tmp_path / "spool")
    with pytest.raises(StagetuneError, match="start_study"):
        tr.log_report("t_1", rec(1))
    tr.start_study(study_name="s", params={}, tags={})
    with pytest.raises(ConfigError, match="trial_id"):
        tr.start_trial(trial_id="../evil", params={}, tags={})
    tr.start_trial(trial_id="t_1", params={}, tags={})
    with pytest.raises(ConfigError, match=r"status='finshed'.*did you mean 'finished'"):
        tr.end_trial("t_1", "finshed")
    tr.log_report("t_1", {"eval_loss": 3.0})  # no flops: cannot be placed on the step axis
    assert tr.stats.rejected == 1
    kept = (tmp_path / "spool" / "t_1.rejected.jsonl").read_text()
    assert '"eval_loss": 3.0' in kept
    assert tr.pending() == 0  # rejected records are not retried


def test_tracker_pickles(uri: str, tmp_path: Path) -> None:
    tr = MlflowTracker(uri, "exp", spool_dir=tmp_path / "spool")
    tr.start_study(study_name="s", params={}, tags={})
    copy = pickle.loads(pickle.dumps(tr))
    run = copy.start_trial(trial_id="t_1", params={}, tags={})
    copy.log_report("t_1", rec(1))
    assert copy.parent_run_id == tr.parent_run_id
    assert len(history(uri, run, "flops")) == 1


def test_every_tracking_module_logs_under_the_tracking_logger() -> None:
    """A study stopping for a full disk silences ``stagetune.results.tracking`` by name (MLflow's
    store is as full as the rest): every part of tracking must log under it."""
    from stagetune.results.tracking import delivery, runs, spool, tracker

    for module in (delivery, runs, spool, tracker):
        assert module._log.name.startswith("stagetune.results.tracking."), module.__name__

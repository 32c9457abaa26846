"""MlflowTracker against real SQLite stores: restarts, dedup, spool and sync, threads, errors."""

from __future__ import annotations

import json
import pickle
import shutil
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from stagetune.errors import ConfigError, StagetuneError
from stagetune.results import MlflowTracker
from stagetune.results.ui import free_port


@pytest.fixture(scope="module")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An initialised empty MLflow DB: copying it skips MLflow's schema migrations per test."""
    db = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def uri(tmp_path: Path, template_db: Path) -> str:
    db = tmp_path / "work" / "mlflow.db"
    db.parent.mkdir()
    shutil.copy(template_db, db)
    return f"sqlite:///{db}"


@pytest.fixture
def fast_http_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    # What the tracker would set itself; set here so the test process gets them back after.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")


def rec(i: int, loss: float | None = None) -> dict[str, float]:
    return {
        "tokens": i * 1000,
        "flops": i * 1e12,
        "flops_paper": i * 0.5e12,
        "eval_loss": 5.0 - 0.1 * i if loss is None else loss,
        "train_loss": 5.1 - 0.1 * i,
        "stage": 1,
    }


def history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    # MLflow returns history in logging order, not step order.
    hist = MlflowClient(uri).get_metric_history(run_id, key)
    return sorted((m.step, m.value) for m in hist)


def test_restarted_trial_continues_its_run_without_duplicate_steps(
    uri: str, tmp_path: Path
) -> None:
    tr = MlflowTracker(uri, "exp", spool_dir=tmp_path / "spool")
    parent = tr.start_study(study_name="s", params={"lr": 1e-3}, tags={})
    run = tr.start_trial(trial_id="t_1", params={"seed": 3}, tags={})
    for i in (1, 2, 3):
        tr.log_report("t_1", rec(i))
    # Restored from a checkpoint at step 2: steps 2 and 3 are reported again (other values).
    tr.log_report("t_1", rec(2, loss=99.0))
    tr.log_report("t_1", rec(3, loss=99.0))
    tr.end_trial("t_1", "failed")
    assert tr.stats.duplicate_steps == 2

    # A new driver process (--resume): same parent, same child run, steps read back from MLflow.
    tr2 = MlflowTracker(uri, "exp", spool_dir=tmp_path / "spool")
    assert tr2.start_study(study_name="s", params={"lr": 1e-3}, tags={}) == parent
    assert tr2.start_trial(trial_id="t_1", params={"seed": 3}, tags={}) == run
    assert MlflowClient(uri).get_run(run).info.status == "RUNNING"
    tr2.log_report("t_1", rec(3, loss=99.0))
    tr2.log_report("t_1", rec(4))
    tr2.end_trial("t_1", "finished")
    assert tr2.stats.duplicate_steps == 1

    got = history(uri, run, "eval_loss")
    assert [s for s, _ in got] == [1000, 2000, 3000, 4000]
    assert 99.0 not in [v for _, v in got]
    assert [s for s, _ in history(uri, run, "flops")] == [1000, 2000, 3000, 4000]
    client = MlflowClient(uri)
    r = client.get_run(run)
    assert r.info.status == "FINISHED" and r.data.tags["stagetune.status"] == "finished"
    assert r.data.tags["stagetune.seed"] == "3" and r.data.tags["stagetune.is_baseline"] == "false"
    exp = client.get_experiment_by_name("exp")
    assert exp is not None
    assert len(client.search_runs([exp.experiment_id])) == 2  # one parent, one trial


def test_spool_when_unreachable_then_sync_elsewhere(
    uri: str, tmp_path: Path, fast_http_failures: None
) -> None:
    spool = tmp_path / "spool"
    dead = MlflowTracker(
        f"http://127.0.0.1:{free_port()}", "exp", spool_dir=spool, retry_seconds=0.3
    )
    t0 = time.monotonic()
    assert dead.start_study(study_name="s", params={"a": 1}, tags={}) == ""
    assert (
        dead.start_trial(trial_id="t_1", params={"seed": 0}, tags={"stagetune.is_baseline": True})
        == ""
    )
    for i in range(1, 6):
        dead.log_report("t_1", rec(i))
    note = tmp_path / "note.txt"
    note.write_text("kept")
    dead.log_trial_artifacts("t_1", [note])
    note.unlink()  # the caller cleans up before MLflow is back: the spool kept a copy
    dead.end_trial("t_1", "finished")
    # Only the first call waits out the retry budget; the rest go straight to the spool.
    assert time.monotonic() - t0 < 3.0
    assert dead.stats.retries > 0 and dead.stats.spooled == 9
    assert (spool / "_study.jsonl").is_file() and (spool / "t_1.jsonl").is_file()
    assert dead.pending() == 9
    ops = [json.loads(x)["op"] for x in (spool / "t_1.jsonl").read_text().splitlines()]
    assert ops == ["start_trial", *["report"] * 5, "artifacts", "end_trial"]
    # Syncing while MLflow is still down gives up after one retry budget, not one per trial.
    dead.start_trial(trial_id="t_2", params={}, tags={})
    t1 = time.monotonic()
    res = dead.sync_spool()
    assert (res.delivered, res.pending) == (0, 10)
    assert time.monotonic() - t1 < 1.5
    (spool / "t_2.jsonl").unlink()

    # Meanwhile another process already delivered steps 1-2 of that trial.
    other = MlflowTracker(uri, "exp", spool_dir=tmp_path / "other-spool")
    other.start_study(study_name="s", params={"a": 1}, tags={})
    run = other.start_trial(trial_id="t_1", params={"seed": 0}, tags={})
    other.log_report("t_1", rec(1))
    other.log_report("t_1", rec(2))

    live = MlflowTracker(uri, "exp", spool_dir=spool)
    res = live.sync_spool()
    assert (res.delivered, res.pending) == (9, 0)
    assert live.stats.duplicate_steps == 2
    assert not (spool / "t_1.jsonl").exists() and not (spool / "_study.jsonl").exists()
    assert [s for s, _ in history(uri, run, "eval_loss")] == [i * 1000 for i in range(1, 6)]
    client = MlflowClient(uri)
    r = client.get_run(run)
    assert r.info.status == "FINISHED" and r.data.tags["stagetune.is_baseline"] == "true"
    assert [a.path for a in client.list_artifacts(run)] == ["note.txt"]
    assert live.sync_spool().delivered == 0  # idempotent


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
    tr.log_report("t_1", {"eval_loss": 3.0})  # no tokens: cannot be placed on the step axis
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

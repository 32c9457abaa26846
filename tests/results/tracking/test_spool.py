"""The spool: events kept while MLflow is unreachable, delivered later from another process;
its files (order, torn lines, artifact copies, rejected events, open trials)."""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from stagetune.results import MlflowTracker
from stagetune.results.naming import TAG_IS_BASELINE
from stagetune.results.tracking.runs import mlflow_step
from stagetune.results.tracking.spool import STUDY_KEY, Op, Spool
from stagetune.results.ui import free_port
from tests.results.helpers import history, rec


def test_spool_when_unreachable_then_sync_elsewhere(
    uri: str, tmp_path: Path, fast_http_failures: None
) -> None:
    spool = tmp_path / "spool"
    dead = MlflowTracker(
        f"http://127.0.0.1:{free_port()}", "exp", spool_dir=spool, retry_seconds=0.3
    )
    t0 = time.monotonic()
    assert dead.start_study(study_name="s", params={"a": 1}, tags={}) == ""
    assert dead.start_trial(trial_id="t_1", params={"seed": 0}, tags={TAG_IS_BASELINE: True}) == ""
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
    assert [s for s, _ in history(uri, run, "eval_loss")] == [
        mlflow_step(rec(i)) for i in range(1, 6)
    ]
    client = MlflowClient(uri)
    r = client.get_run(run)
    assert r.info.status == "FINISHED" and r.data.tags["stagetune.is_baseline"] == "true"
    assert [a.path for a in client.list_artifacts(run)] == ["note.txt"]
    assert live.sync_spool().delivered == 0  # idempotent


def event(op: str, **fields: object) -> dict[str, object]:
    return {"op": op, "study": "s", **fields}


def test_events_keep_their_order_and_a_torn_line_is_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = Spool(tmp_path / "spool")
    assert spool.read("t_1") == [] and not spool.has("t_1") and spool.pending() == 0
    for i in range(3):
        spool.append("t_1", event(Op.REPORT, trial_id="t_1", step=i, metrics={"x": float(i)}))
    with open(spool.path("t_1"), "a", encoding="utf-8") as fh:
        fh.write('{"op": "rep')  # a crash mid-write
    with caplog.at_level(logging.WARNING):
        assert [e["step"] for e in spool.read("t_1")] == [0, 1, 2]
    assert "corrupt line" in caplog.text
    spool.keep("t_1", spool.read("t_1")[1:])  # the first was delivered
    assert [e["step"] for e in spool.read("t_1")] == [1, 2]
    spool.clear("t_1")
    assert not spool.has("t_1") and spool.trial_keys() == []


def test_an_upload_keeps_copies_of_its_files(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    note, plots = tmp_path / "note.txt", tmp_path / "plots"
    note.write_text("kept")
    plots.mkdir()
    (plots / "a.png").write_bytes(b"png")
    files = [str(note), str(plots), str(tmp_path / "gone.txt")]
    spool.append("t_1", event(Op.ARTIFACTS, trial_id="t_1", files=files))
    note.unlink()
    shutil.rmtree(plots)  # the caller cleans up before MLflow is back
    (ev,) = spool.read("t_1")
    copies = [Path(f) for f in ev["files"]]
    assert [p.name for p in copies] == ["note.txt", "plots"]  # a missing file is left out
    assert copies[0].read_text() == "kept" and (copies[1] / "a.png").read_bytes() == b"png"
    assert Path(ev["spooled_copy"]).parent == tmp_path / "spool" / "t_1.files"
    # Once delivered, the copies go (the upload removes its copy) and so does the folder.
    shutil.rmtree(ev["spooled_copy"])
    spool.clear("t_1")
    assert not (tmp_path / "spool" / "t_1.files").exists()


def test_rejected_events_are_kept_apart_and_never_pending(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.append(STUDY_KEY, event("start_study"))
    spool.reject("t_1", event(Op.REPORT, trial_id="t_1"), "record has no finite 'tokens'")
    assert spool.pending() == 1 and spool.trial_keys() == []
    kept = (tmp_path / "spool" / "t_1.rejected.jsonl").read_text(encoding="utf-8")
    assert json.loads(kept)["error"] == "record has no finite 'tokens'"


def test_open_trials_are_the_starts_without_an_end(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.append("open_1", event(Op.START_TRIAL, trial_id="open_1"))
    spool.append("open_1", event(Op.REPORT, trial_id="open_1"))
    spool.append("done_1", event(Op.START_TRIAL, trial_id="done_1"))
    spool.append("done_1", event(Op.END_TRIAL, trial_id="done_1"))
    spool.append("late_1", event(Op.END_TRIAL, trial_id="late_1"))  # its start reached MLflow
    assert spool.trial_keys() == ["done_1", "late_1", "open_1"]
    assert spool.open_trials() == {"open_1"}

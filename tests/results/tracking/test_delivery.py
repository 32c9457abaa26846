"""Delivery against a real ``mlflow server`` (SQLite backend, 127.0.0.1): outage spool,
recovery, concurrent trials."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from stagetune.errors import ConfigError
from stagetune.results import MlflowTracker, experiment_url, start_ui
from stagetune.results.tracking.runs import mlflow_step
from stagetune.results.ui import free_port

N_RECORDS = 50


def rec(i: int) -> dict[str, float]:
    return {
        "tokens": i * 512,
        "flops": i * 1e12,
        "flops_paper": i * 0.6e12,
        "eval_loss": 6.0 - 0.01 * i,
        "train_loss": 6.1 - 0.01 * i,
        "stage": 1 + i // 20,
    }


def test_server_outage_recovery_and_concurrent_trials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    monkeypatch.setenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    tr = MlflowTracker(
        url, "exp", spool_dir=tmp_path / "spool", retry_seconds=0.3, offline_cooldown=0.0
    )
    # The server is not up yet: the study and a first trial land in the spool.
    assert tr.start_study(study_name="s", params={"n_layer": 4}, tags={}) == ""
    tr.start_trial(trial_id="early_0", params={"seed": 0}, tags={})
    for i in range(1, 4):
        tr.log_report("early_0", rec(i))
    assert tr.pending() == 5

    db = tmp_path / "store" / "mlflow.db"
    server = start_ui(f"sqlite:///{db}", port=port, timeout=90, must_exist=False)
    try:
        assert server.url == url
        # A taken port is refused up front, with the fix in the message.
        with pytest.raises(ConfigError, match=f"ui.port={port}.*in use"):
            start_ui(f"sqlite:///{db}", port=port)

        res = tr.sync_spool()
        assert (res.delivered, res.pending) == (5, 0)
        retries_before = tr.stats.retries

        runs: dict[str, str] = {}
        errors: list[BaseException] = []

        def trial(tid: str) -> None:
            try:
                runs[tid] = tr.start_trial(trial_id=tid, params={"seed": 1}, tags={})
                for i in range(1, N_RECORDS + 1):
                    tr.log_report(tid, rec(i))
                tr.end_trial(tid, "finished")
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=trial, args=(f"t_{k}",)) for k in range(2)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=120)
        assert not errors
        assert tr.stats.retries == retries_before, tr.stats.last_error
        assert tr.stats.spooled == 5 and tr.stats.rejected == 0 and tr.pending() == 0

        client = MlflowClient(url)
        exp = client.get_experiment_by_name("exp")
        assert exp is not None
        assert experiment_url(url, exp.experiment_id) == f"{url}/#/experiments/{exp.experiment_id}"
        parent = tr.parent_run_id
        for tid, run_id in runs.items():
            run = client.get_run(run_id)
            assert run.data.tags["mlflow.parentRunId"] == parent
            assert run.info.status == "FINISHED"
            for key in ("tokens", "flops", "flops_paper", "eval_loss", "train_loss", "stage"):
                steps = sorted(m.step for m in client.get_metric_history(run_id, key))
                assert steps == [mlflow_step(rec(i)) for i in range(1, N_RECORDS + 1)], (tid, key)
        early = tr.run_id("early_0")
        assert early is not None
        assert len(client.get_metric_history(early, "eval_loss")) == 3
    finally:
        server.stop()
    assert server.process is not None and server.process.poll() is not None
    log = server.log_path.read_text() if server.log_path else ""
    assert "database is locked" not in log
    with pytest.raises(ProcessLookupError):  # nothing of the server's process group lingers
        os.killpg(server.process.pid, 0)
    with socket.socket() as s:  # and its port is free again
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))

"""Fault: the MLflow tracking server goes away in the middle of a search.

Injection: a real ``mlflow server`` (SQLite store in tmp, 127.0.0.1, a free port) is the
study's ``--tracking-uri``. Once trials have logged to it, the server's process group is
stopped; it is started again (same port, same store) only after ``stagetune run`` has exited.
Training must not notice; every event MLflow could not take waits in ``<workdir>/mlflow_spool``
and ``stagetune report --sync`` delivers it: afterwards MLflow holds exactly what each trial
reported to Tune (its ``result.json``).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from stagetune.cli import main
from stagetune.metrics import METRIC_KEYS
from stagetune.results.tracking.runs import mlflow_step
from tests.faults.conftest import Cli, MlflowServer, fast_args, kill_group, tune_results

pytestmark = pytest.mark.slow

NAME = "outage"
NUM_TRIALS = 4


def _logged_records(url: str) -> int:
    """Metric values the server holds for trial runs (0 while the study is not there yet)."""
    client = MlflowClient(url)
    exp = client.get_experiment_by_name(NAME)
    if exp is None:
        return 0
    runs = client.search_runs([exp.experiment_id], "tags.`stagetune.role` = 'trial'")
    return sum(len(r.data.metrics) for r in runs)


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def test_tracking_server_away_then_sync(
    ray_local: None,
    cli: Cli,
    mlflow_server: MlflowServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import ray

    workdir = tmp_path / "work"
    # The run joins the session's Ray instance (saves starting another one).
    address = ray.get_runtime_context().gcs_address
    args = ["run", "--workdir", str(workdir), "--trials", str(NUM_TRIALS), "--space", "wide",
            "--quiet", "--tracking-uri", mlflow_server.url, "--address", address,
            # One trial at a time: most of the search is still ahead when the server goes.
            *fast_args(f"name={NAME}", "search.early_stopping=false", "search.max_concurrent=1",
                       "schedule.baseline_steps=48")]  # fmt: skip
    t0 = time.monotonic()
    proc = cli.start(args, name="run")
    try:
        deadline = time.monotonic() + 150
        while _logged_records(mlflow_server.url) == 0:
            assert proc.poll() is None, cli.output("run")[1][-3000:]
            assert time.monotonic() < deadline, "no trial logged to MLflow in time"
            time.sleep(0.5)
        first_log = time.monotonic() - t0
        mlflow_server.stop()  # the outage starts while trials are training
        stopped_at = time.monotonic()
        rc = proc.wait(170)
    except BaseException:
        kill_group(proc)
        raise
    _out, err = cli.output("run")
    outage = time.monotonic() - stopped_at

    # Training went on to the end; the run says what it could not deliver, and where it is.
    assert rc == 1, err[-3000:]
    assert "did not take" in err and "report --sync" in err and "Traceback" not in err
    spool = workdir / "mlflow_spool"
    spooled = [json.loads(x) for f in spool.glob("*.jsonl") for x in f.read_text().splitlines()]
    assert {e["op"] for e in spooled} >= {"report", "end_trial", "end_study"}
    results = tune_results(workdir / "ray_results" / NAME)
    assert len(results) == NUM_TRIALS
    assert all(recs[-1].get("status") == "finished" for recs in results.values())

    # The server comes back (same port, same store); report --sync delivers the spool.
    t1 = time.monotonic()
    mlflow_server.start()
    restart = time.monotonic() - t1
    code = main(["report", "--sync", "--workdir", str(workdir), "--json"])
    sync = time.monotonic() - t1 - restart
    captured = capsys.readouterr()
    assert code == 0, captured.err[-3000:]
    assert json.loads(captured.out)["outcomes"]
    assert not list(spool.glob("*.jsonl")), "the spool was fully delivered"

    # Nothing lost: MLflow holds exactly what every trial reported to Tune.
    client = MlflowClient(mlflow_server.url)
    exp = client.get_experiment_by_name(NAME)
    parents = client.search_runs([exp.experiment_id], "tags.`stagetune.role` = 'parent'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    runs = {
        r.data.tags["stagetune.trial_id"]: r
        for r in client.search_runs([exp.experiment_id], "tags.`stagetune.role` = 'trial'")
    }
    assert set(runs) == set(results)
    compared = 0
    for tid, recs in results.items():
        run = runs[tid]
        assert run.info.status == "FINISHED" and run.data.tags["stagetune.status"] == "finished"
        for key in METRIC_KEYS:
            want: list[tuple[int, Any]] = [
                (mlflow_step(r), float(r[key])) for r in recs if r.get(key) is not None
            ]
            got = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
            assert [s for s, _ in got] == [s for s, _ in want], (tid, key)
            assert all(_same(g, w) for (_, g), (_, w) in zip(got, want)), (tid, key)
            compared += len(want)
    assert compared > NUM_TRIALS * len(METRIC_KEYS)
    print(
        f"first log after {first_log:.0f}s; outage lasted {outage:.0f}s until the run ended; "
        f"server restart {restart:.0f}s; report --sync {sync:.0f}s; {compared} values compared"
    )

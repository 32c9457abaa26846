"""Object storage: a study whose Tune storage and MLflow artifacts live in an S3 bucket.

A real S3-compatible server (``moto``'s server mode) runs on loopback in the test process, and
a real ``mlflow server`` stores its runs in SQLite and proxies artifacts to the bucket
(``--artifacts-destination s3://...``). ``stagetune run`` gets ``resources.storage_path=s3://``
and the tracking server's URL; it and its Ray workers reach the bucket through the variables a
user sets (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_DEFAULT_REGION``; the server also ``MLFLOW_S3_ENDPOINT_URL``). The driver is SIGKILLed
after a trial finished, ``--resume`` verifies the signed Tune state it reads back from the
bucket and finishes the study, and the report's files are read back through MLflow.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from mlflow.tracking import MlflowClient

from tests.faults.conftest import Cli, fast_args, kill_group, mlflow_children
from tests.loopback_cluster import free_port

pytestmark = pytest.mark.slow

NAME = "s3study"
BUCKET = "stagetune-study"
NUM_TRIALS = 3


@pytest.fixture
def s3_env() -> Iterator[dict[str, str]]:
    """A moto S3 server on 127.0.0.1 with an empty bucket; the environment that reaches it."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "MLFLOW_S3_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "stagetune-test",
        "AWS_SECRET_ACCESS_KEY": "stagetune-test-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    s3 = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
    )
    s3.create_bucket(Bucket=BUCKET)
    try:
        yield env
    finally:
        server.stop()


def _keys(env: dict[str, str], prefix: str) -> list[str]:
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
    )
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


@pytest.fixture
def s3_mlflow(tmp_path: Path, s3_env: dict[str, str]) -> Iterator[str]:
    """``mlflow server`` on 127.0.0.1: runs in SQLite, artifacts proxied to the bucket."""
    import os
    import urllib.request

    port = free_port()
    log = open(tmp_path / "mlflow-server.log", "ab")  # noqa: SIM115 - owned by the child
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
         "--artifacts-destination", f"s3://{BUCKET}/mlartifacts"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        env={**os.environ, **s3_env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )  # fmt: skip
    log.close()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                text = (tmp_path / "mlflow-server.log").read_text(errors="replace")
                pytest.fail(f"mlflow server did not come up:\n{text[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except OSError:
                time.sleep(0.3)
        yield url
    finally:
        kill_group(proc)


def _kill_after_a_finished_trial(cli: Cli, proc: Any, url: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            _out, err = cli.output("first")
            pytest.fail(f"the study ended (rc {proc.returncode}) before the fault:\n{err[-3000:]}")
        try:
            runs = mlflow_children(url, NAME)
        except Exception:  # the experiment is not there yet
            runs = []
        if any(r.info.status == "FINISHED" for r in runs):
            kill_group(proc)
            return
        time.sleep(0.5)
    _out, err = cli.output("first")
    pytest.fail(f"no trial finished in time:\n{err[-3000:]}")


def test_study_on_s3_survives_a_driver_kill_and_reports_through_mlflow(
    cli: Cli, tmp_path: Path, s3_env: dict[str, str], s3_mlflow: str
) -> None:
    workdir = tmp_path / "work"
    storage = f"s3://{BUCKET}/tune"
    args = ["run", "--workdir", str(workdir), "--tracking-uri", s3_mlflow,
            "--trials", str(NUM_TRIALS), "--space", "wide", "--quiet",
            *fast_args(f"name={NAME}", f"resources.storage_path={storage}",
                       "search.early_stopping=false", "search.max_concurrent=1",
                       "schedule.baseline_steps=48", "train.checkpoint_every=16")]  # fmt: skip
    proc = cli.start(args, name="first", **s3_env)
    _kill_after_a_finished_trial(cli, proc, s3_mlflow)

    # Tune's state is in the bucket, not in the work directory.
    tune_keys = _keys(s3_env, f"tune/{NAME}/")
    assert any(k.endswith("tuner.pkl") for k in tune_keys), tune_keys
    assert any("experiment_state-" in k for k in tune_keys), tune_keys
    assert not (workdir / "ray_results" / NAME).exists()

    code = cli.run(["run", "--resume", "--workdir", str(workdir), "--json", "--quiet"],
                   name="resume", timeout=400, **s3_env)  # fmt: skip
    out, err = cli.output("resume")
    assert code == 0, err[-3000:]
    report = json.loads(out)
    statuses = [t["status"] for row in report["outcomes"] for t in row["trials"]]
    assert statuses and "Traceback" not in err, err[-3000:]
    # The resume read and verified the signed state from the bucket (nothing was refused).
    assert "refus" not in err.lower(), err[-3000:]

    # Trial checkpoints went to the bucket too.
    assert any("/checkpoint_" in k for k in _keys(s3_env, f"tune/{NAME}/")), "no checkpoints"
    # MLflow: every trial closed; the report's files are artifacts of the parent run, stored
    # in the bucket and readable through the tracking server.
    client = MlflowClient(s3_mlflow)
    study = optuna.load_study(study_name=NAME, storage=f"sqlite:///{workdir / 'optuna.db'}")
    assert len(study.trials) >= NUM_TRIALS
    assert all(t.state.is_finished() for t in study.trials), [t.state for t in study.trials]
    tune_ids = {t.user_attrs.get("stagetune_trial_id") for t in study.trials} - {None}
    children = mlflow_children(s3_mlflow, NAME)
    assert {r.data.tags["stagetune.trial_id"] for r in children} == tune_ids
    assert all(r.info.status != "RUNNING" for r in children)
    exp = client.get_experiment_by_name(NAME)
    assert exp is not None
    (parent,) = client.search_runs([exp.experiment_id], "tags.`stagetune.role` = 'parent'")
    names = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/report.md", "report/report.json"} <= names, names
    local = Path(client.download_artifacts(parent.info.run_id, "report/report.md", str(tmp_path)))
    assert local.read_text() == (workdir / "report" / "report.md").read_text()
    assert any(k.endswith("report/report.md") for k in _keys(s3_env, "mlartifacts/"))

"""Helpers for the fault-injection tests: the real CLI in subprocesses (own process groups),
a real ``mlflow server``, and read-only views of what a study left behind.

Nothing here mocks Ray, MLflow or Optuna: faults are injected the way they happen (a signal to
a process group, a file altered on disk, a server stopped), and outcomes are read back from the
stores themselves.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FAST

__all__ = [
    "Cli",
    "MlflowServer",
    "assert_statuses_agree",
    "fast_args",
    "group_processes",
    "kill_group",
    "mlflow_children",
    "tmpfs",
    "tune_results",
    "wait_group_gone",
]


def fast_args(*overrides: str) -> list[str]:
    """``--set`` flags for the shared FAST settings plus ``overrides``."""
    out: list[str] = []
    for o in (*FAST, *overrides):
        out += ["--set", o]
    return out


def cli_env(cache: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        STAGETUNE_CACHE=str(cache),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        RAY_USAGE_STATS_ENABLED="0",
        RAY_ENABLE_UV_RUN_RUNTIME_ENV="0",
        PYTHONUNBUFFERED="1",
        MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT="true",
    )
    # The subprocess starts its own local Ray; it must not join the test session's.
    env.pop("RAY_ADDRESS", None)
    env.update(extra)
    return env


def kill_group(proc: subprocess.Popen[Any], sig: int = signal.SIGKILL, timeout: float = 30) -> None:
    """Send ``sig`` to the process group ``proc`` leads and wait until every member is gone."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        time.sleep(0.2)
    raise AssertionError(f"process group {proc.pid} survived SIGKILL")


def group_processes(leader: int) -> list[str]:
    """Live processes (zombies excluded) of the process group or session ``leader`` led, as
    ``"pid cmdline"``: what a ``start_new_session`` child left behind (Ray's raylet, GCS,
    workers) shows up here even after the leader exited."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        state, pgrp, session = fields[0], int(fields[2]), int(fields[3])
        if state != "Z" and leader in (pgrp, session):
            out.append(f"{d.name} {cmd.strip()}")
    return out


def wait_group_gone(leader: int, timeout: float = 30) -> list[str]:
    """Wait until no live process of ``leader``'s group or session is left; returns the ones
    still there after ``timeout`` (empty: all gone)."""
    deadline = time.monotonic() + timeout
    while True:
        left = group_processes(leader)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)


@contextlib.contextmanager
def tmpfs(where: Path, options: str) -> Iterator[Path]:
    """A real ``tmpfs`` mounted at ``where`` (``mount -o options``); the test is skipped, with
    the reason, where mounting is not permitted."""
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode})")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


class Cli:
    """``python -m stagetune.cli`` in its own process group, output in files under ``logdir``."""

    def __init__(self, cache: Path, logdir: Path) -> None:
        self.cache = cache
        self.logdir = logdir
        self.procs: list[subprocess.Popen[Any]] = []

    def start(self, args: list[str], *, name: str, **env: str) -> subprocess.Popen[Any]:
        self.logdir.mkdir(parents=True, exist_ok=True)
        out = open(self.logdir / f"{name}.out", "wb")  # noqa: SIM115 - owned by the child
        err = open(self.logdir / f"{name}.err", "wb")  # noqa: SIM115
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "stagetune.cli", *args],
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=cli_env(self.cache, **env),
                start_new_session=True,  # own process group: a SIGKILL reaches Ray's processes
            )
        finally:
            out.close()
            err.close()
        self.procs.append(proc)
        return proc

    def output(self, name: str) -> tuple[str, str]:
        return (
            (self.logdir / f"{name}.out").read_text(errors="replace"),
            (self.logdir / f"{name}.err").read_text(errors="replace"),
        )

    def run(self, args: list[str], *, name: str, timeout: float = 170, **env: str) -> int:
        proc = self.start(args, name=name, **env)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            out, err = self.output(name)
            raise AssertionError(
                f"{args} ran over {timeout}s:\n{out[-3000:]}\n{err[-3000:]}"
            ) from None

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                kill_group(proc)
            else:
                # The leader exited; anything left in its group (Ray's processes) goes too.
                with contextlib.suppress(ProcessLookupError, AssertionError):
                    kill_group(proc, timeout=10)


@pytest.fixture
def cli(token_cache: Path, tmp_path: Path) -> Iterator[Cli]:
    c = Cli(token_cache, tmp_path / "logs")
    yield c
    c.cleanup()


# ---------------------------------------------------------------------------------------------
# reading what a study left behind


def sqlite_rows(db: Path, query: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]] | None:
    """Rows of a read-only query, or ``None`` while a writer holds the database locked."""
    if not db.is_file():
        return []
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1.0)
    except sqlite3.OperationalError:
        return None
    try:
        return list(con.execute(query, args))
    except sqlite3.OperationalError:
        return None
    finally:
        con.close()


def mlflow_trial_runs_sqlite(db: Path) -> dict[str, str] | None:
    """trial id -> MLflow run status (RUNNING/FINISHED/...) read straight from the SQLite store."""
    rows = sqlite_rows(
        db,
        "select t.value, r.status from runs r join tags t on t.run_uuid = r.run_uuid "
        "where t.key = 'stagetune.trial_id' and r.lifecycle_stage = 'active'",
    )
    return None if rows is None else {tid: status for tid, status in rows}


def snapshot_trials(exp_dir: Path) -> dict[str, str] | None:
    """Tune trial id -> status in the newest experiment snapshot (``None``: none written)."""
    files = sorted(exp_dir.glob("experiment_state-*.json"))
    if not files:
        return None
    try:
        data = json.loads(files[-1].read_text())
    except (OSError, json.JSONDecodeError):
        return None
    out = {}
    for state, _meta in data["trial_data"]:
        s = json.loads(state)
        out[s["trial_id"]] = s["status"]
    return out


def tune_results(exp_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """trial id -> every record of its ``result.json`` (what Tune received), in order."""
    out: dict[str, list[dict[str, Any]]] = {}
    for f in sorted(exp_dir.glob("*/result.json")):
        recs = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        if recs:
            out[recs[0]["trial_id"]] = recs
    return out


def mlflow_children(uri: str, experiment: str) -> list[Any]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no MLflow experiment {experiment!r}"
    return client.search_runs(
        [exp.experiment_id], "tags.`stagetune.role` = 'trial'", max_results=1000
    )


# ---------------------------------------------------------------------------------------------
# a real tracking server that can be stopped and started again on the same port and store


class MlflowServer:
    """``mlflow server`` on 127.0.0.1 with a SQLite store in ``root``; stop() / start() keep
    the port and the store."""

    def __init__(self, root: Path) -> None:
        from stagetune.results.ui import free_port

        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.db_uri = f"sqlite:///{root / 'server' / 'mlflow.db'}"
        self._server: Any = None

    def start(self) -> None:
        from stagetune.results import start_ui

        self._server = start_ui(self.db_uri, port=self.port, timeout=120, must_exist=False)

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    @property
    def running(self) -> bool:
        return self._server is not None


@pytest.fixture
def mlflow_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MlflowServer]:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    server = MlflowServer(tmp_path)
    server.start()
    yield server
    server.stop()


# ---------------------------------------------------------------------------------------------
# the study's statuses, store by store


def optuna_statuses(workdir: Path, name: str) -> dict[str, tuple[str, str | None]]:
    """Tune trial id -> (Optuna state, ``stagetune_status``) of every trial that was asked."""
    import optuna

    study = optuna.load_study(study_name=name, storage=f"sqlite:///{workdir / 'optuna.db'}")
    return {
        str(t.user_attrs.get("stagetune_trial_id", f"optuna#{t.number}")): (
            t.state.name,
            t.user_attrs.get("stagetune_status"),
        )
        for t in study.trials
        if t.state != optuna.trial.TrialState.WAITING
    }


def mlflow_statuses(workdir: Path, name: str) -> dict[str, tuple[str, str | None]]:
    """Trial id -> (MLflow run status, tag ``stagetune.status``) of every trial run."""
    runs = mlflow_children(f"sqlite:///{workdir / 'mlflow.db'}", name)
    return {
        r.data.tags["stagetune.trial_id"]: (r.info.status, r.data.tags.get("stagetune.status"))
        for r in runs
    }


def assert_statuses_agree(workdir: Path, name: str, report: dict[str, Any]) -> None:
    """Every trial's status is the same in Optuna (user attribute), MLflow (tag) and the report,
    and it is over everywhere (Tune's snapshot included)."""
    optuna_st = optuna_statuses(workdir, name)
    mlflow_st = mlflow_statuses(workdir, name)
    listed = {t["trial_id"]: t["status"] for row in report["outcomes"] for t in row["trials"]}
    assert set(optuna_st) == set(mlflow_st), (optuna_st, mlflow_st)
    assert set(listed) <= set(optuna_st), (listed, optuna_st)
    for tid, (state, status) in optuna_st.items():
        assert state != "RUNNING", (tid, state)
        assert mlflow_st[tid][1] == status, (tid, optuna_st[tid], mlflow_st[tid])
        assert mlflow_st[tid][0] != "RUNNING", (tid, mlflow_st[tid])
        # A trial that never reported (an orphan) has no row to be listed in.
        assert listed.get(tid, status) == status, (tid, status, listed.get(tid))
    snap = snapshot_trials(workdir / "ray_results" / name) or {}
    assert all(s in ("TERMINATED", "ERROR") for s in snap.values()), snap

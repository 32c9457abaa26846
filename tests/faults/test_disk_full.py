"""Fault: the file system of the work directory fills up while trials run.

Injection: the work directory lives on a real, small ``tmpfs``; once the first trial has
reported, a filler file takes every block that is left. The run must stop the way a signal
stops it (nothing marked finished that is not), say in one line which file system is full and
how to continue, exit 1, and leave no process behind. Once the filler is gone,
``stagetune run --resume`` finishes the study with statuses that agree everywhere.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import optuna
import pytest

from tests.faults.conftest import (
    Cli,
    assert_statuses_agree,
    fast_args,
    mlflow_trial_runs_sqlite,
    optuna_statuses,
    sqlite_rows,
    tmpfs,
    wait_group_gone,
)

pytestmark = pytest.mark.slow

NAME = "full"
NUM_TRIALS = 3
SIZE = "96m"  # above the 64 MiB a study must find free to start


def _fill(path: Path) -> None:
    with open(path, "wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * (1 << 16))
            f.flush()


def test_disk_full_mid_run_then_free_space_and_resume(cli: Cli, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "fs", f"size={SIZE}") as fs:
        workdir = fs / "work"
        args = ["run", "--workdir", str(workdir), "--trials", str(NUM_TRIALS), "--space",
                "wide", "--quiet", *fast_args(f"name={NAME}", "search.max_concurrent=1",
                                             "schedule.baseline_steps=48")]  # fmt: skip
        proc = cli.start(args, name="first")
        deadline = time.monotonic() + 300
        while not sqlite_rows(workdir / "mlflow.db", "select 1 from metrics limit 1"):
            assert proc.poll() is None, cli.output("first")[1][-3000:]
            assert time.monotonic() < deadline, "no trial reported in time"
            time.sleep(0.2)
        _fill(fs / "filler")

        code = proc.wait(300)
        err = cli.output("first")[1]
        assert not wait_group_gone(proc.pid), "processes of the stopped run are still there"
        assert code == 1, err[-3000:]
        line = (
            f"disk full: no space left on {fs}; free space, then "
            f"stagetune run --resume --workdir {workdir}"
        )
        hits = [ln for ln in err.splitlines() if "free space, then" in ln]
        assert len(hits) == 1 and hits[0].startswith(line[: line.index(";")]), err[-3000:]
        assert hits[0].endswith(line[line.index(";") :]), err[-3000:]
        assert "Traceback" not in err, err[-3000:]
        assert "No space left" not in err and "disk is full" not in err.replace(hits[0], "")

        # Space is freed first: reading SQLite may need to roll back a write the full disk
        # cut short. Nothing is marked finished that is not: the parent is open or
        # interrupted, and no trial is FINISHED in MLflow that Optuna does not hold as COMPLETE.
        (fs / "filler").unlink()
        runs = mlflow_trial_runs_sqlite(workdir / "mlflow.db") or {}
        optuna_st = optuna_statuses(workdir, NAME)
        for tid, status in runs.items():
            if status == "FINISHED":
                assert optuna_st[tid][0] == "COMPLETE", (tid, optuna_st)
        parents = sqlite_rows(
            workdir / "mlflow.db",
            "select r.status from runs r join tags t on t.run_uuid = r.run_uuid "
            "where t.key = 'stagetune.role' and t.value = 'parent'",
        )
        assert parents and all(p[0] != "FINISHED" for p in parents), parents
        assert not (workdir / "report").exists()

        code = cli.run(["run", "--resume", "--workdir", str(workdir), "--json", "--quiet"],
                       name="resume", timeout=400)  # fmt: skip
        out, err = cli.output("resume")
        assert code == 0, err[-3000:]
        assert "Traceback" not in err, err[-3000:]
        assert_statuses_agree(workdir, NAME, json.loads(out))
        # num_trials asked in all (an interrupted baseline attempt would not count).
        trials = optuna.load_study(study_name=NAME, storage=f"sqlite:///{workdir / 'optuna.db'}")
        not_counted = [t for t in trials.trials if t.user_attrs.get("stagetune_counts") is False]
        assert len(trials.trials) == NUM_TRIALS + len(not_counted)

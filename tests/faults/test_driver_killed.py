"""Fault: the driver (``stagetune run``, with its local Ray) dies by SIGKILL mid-search.

Injection: the run is a subprocess in its own process group. The test waits until one trial
has finished and another has started (its MLflow child run exists) *after* Tune's last
experiment snapshot, freezes the whole group with SIGSTOP to check that state atomically, then
SIGKILLs the group. ``stagetune run --resume --workdir W`` then takes over the work
directory's lock the dead driver left behind (stale: the kernel dropped its OS lock) and
finishes the study, and every trial's status agrees across Tune, Optuna, MLflow and the
report, with nothing on the resume's stderr about states that were already recorded.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
from mlflow.tracking import MlflowClient

from stagetune.orchestration.lock import LOCK_FILE
from tests.faults.conftest import (
    Cli,
    assert_statuses_agree,
    fast_args,
    kill_group,
    mlflow_children,
    mlflow_trial_runs_sqlite,
    snapshot_trials,
    tune_results,
)

pytestmark = pytest.mark.slow

NAME = "killed"
NUM_TRIALS = 3


def _kill_with_orphan(cli: Cli, proc: Any, workdir: Path, timeout: float = 240) -> set[str]:
    """SIGKILL the run once a started trial is unknown to Tune's snapshot; returns those
    trials (the orphans)."""
    exp_dir = workdir / "ray_results" / NAME
    db = workdir / "mlflow.db"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            _out, err = cli.output("first")
            pytest.fail(f"the study ended (rc {proc.returncode}) before the fault:\n{err[-3000:]}")
        runs = mlflow_trial_runs_sqlite(db) or {}
        snap = snapshot_trials(exp_dir)
        finished = [t for t, s in runs.items() if s == "FINISHED"]
        if (
            finished
            and snap is not None
            and any(s == "RUNNING" and t not in snap for t, s in runs.items())
        ):
            os.killpg(proc.pid, signal.SIGSTOP)  # freeze: the check below is atomic
            killed = False
            try:
                runs2 = mlflow_trial_runs_sqlite(db)
                snap2 = snapshot_trials(exp_dir)
                if runs2 is not None and snap2 is not None:
                    orphans = {t for t, s in runs2.items() if s == "RUNNING" and t not in snap2}
                    if orphans:
                        kill_group(proc)
                        killed = True
                        return orphans
            finally:
                if not killed:
                    os.killpg(proc.pid, signal.SIGCONT)
        time.sleep(0.3)
    kill_group(proc)
    pytest.fail("no trial started after a snapshot in time: the fault was never injected")


def _histories(client: MlflowClient, run_id: str) -> dict[str, list[tuple[int, float]]]:
    out = {}
    for key in ("tokens", "eval_loss", "flops"):
        out[key] = [(m.step, m.value) for m in client.get_metric_history(run_id, key)]
    return out


def test_driver_sigkill_then_resume(cli: Cli, tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    args = ["run", "--workdir", str(workdir), "--trials", str(NUM_TRIALS), "--space", "wide",
            "--quiet", *fast_args(f"name={NAME}", "search.early_stopping=false",
                                  "search.max_concurrent=1", "schedule.baseline_steps=48")]  # fmt: skip
    # Tune snapshots its experiment at the first step, then every TUNE_GLOBAL_CHECKPOINT_S
    # (Ray's knob; here 60 s), or sooner once a trial checkpointed twice. One trial at a time,
    # checkpoints only at phase boundaries: the second trial starts (Optuna trial asked, MLflow
    # run created) well before the next snapshot. The check itself happens under SIGSTOP.
    proc = cli.start(args, name="first", TUNE_GLOBAL_CHECKPOINT_S="60")
    orphans = _kill_with_orphan(cli, proc, workdir)
    killed_at = time.time()
    assert orphans

    # What the dead driver left behind.
    storage = f"sqlite:///{workdir / 'optuna.db'}"
    before = optuna.load_study(study_name=NAME, storage=storage).trials
    done_before = {
        t.number: (t.value, t.datetime_complete, t.params)
        for t in before
        if t.state == optuna.trial.TrialState.COMPLETE
    }
    client = MlflowClient(uri)
    finished_before = {
        r.data.tags["stagetune.trial_id"]: (r.info.run_id, _histories(client, r.info.run_id))
        for r in mlflow_children(uri, NAME)
        if r.info.status == "FINISHED"
    }
    assert finished_before, "the fault must come after a finished trial"
    parents_before = client.search_runs(
        [client.get_experiment_by_name(NAME).experiment_id], "tags.`stagetune.role` = 'parent'"
    )
    assert len(parents_before) == 1

    lock = workdir / LOCK_FILE
    dead = json.loads(lock.read_text())  # the killed driver's record is left behind
    assert dead["pid"] == proc.pid

    t0 = time.monotonic()
    code = cli.run(["run", "--resume", "--workdir", str(workdir), "--json", "--quiet"],
                   name="resume", timeout=400)  # fmt: skip
    out, err = cli.output("resume")
    assert code == 0, err[-3000:]
    report = json.loads(out)
    assert report["outcomes"]
    assert "interrupted" in err  # the CLI says which trials it closed
    assert [line for line in err.splitlines() if "stale lock" in line] == [
        f"stagetune: took over the stale lock of {workdir} left by stagetune run "
        f"(pid {proc.pid} on host {dead['host']}, since {dead['since']}): that process is gone"
    ]
    assert not lock.exists()
    # States the stores already recorded are taken as they are: no traceback, no warning.
    for noise in ("Traceback", "Cannot tell", "already reported", "did not complete"):
        assert noise not in err, err[-3000:]
    print(f"resume took {time.monotonic() - t0:.0f}s; orphans {sorted(orphans)}")
    assert_statuses_agree(workdir, NAME, report)

    # Optuna: the same study continued; finished trials unchanged; orphans FAIL/interrupted;
    # num_trials asked in total (an interrupted baseline would be re-run and not count).
    after = optuna.load_study(study_name=NAME, storage=storage).trials
    by_tune_id = {t.user_attrs.get("stagetune_trial_id"): t for t in after}
    for number, (value, completed, params) in done_before.items():
        t = after[number]
        assert (t.state, t.value, t.datetime_complete, t.params) == (
            optuna.trial.TrialState.COMPLETE, value, completed, params
        )  # fmt: skip
    for tid in orphans:
        t = by_tune_id[tid]
        assert t.state == optuna.trial.TrialState.FAIL
        assert t.user_attrs["stagetune_status"] == "interrupted"
    assert not [t for t in after if t.state in (optuna.trial.TrialState.WAITING,
                                                optuna.trial.TrialState.RUNNING)]  # fmt: skip
    not_counted = [t for t in after if t.user_attrs.get("stagetune_counts") is False]
    assert len(after) == NUM_TRIALS + len(not_counted)
    assert all(t.user_attrs.get("stagetune_status") for t in after)
    # The baseline was enqueued once (plus once more only if its attempt was interrupted).
    baselines = [t for t in after if t.user_attrs.get("stagetune_baseline")]
    assert len(baselines) == 1 + len(not_counted)
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in baselines) == 1

    # MLflow: one parent (continued), one child per Optuna trial, none left running.
    parents = client.search_runs(
        [client.get_experiment_by_name(NAME).experiment_id], "tags.`stagetune.role` = 'parent'"
    )
    assert [p.info.run_id for p in parents] == [parents_before[0].info.run_id]
    assert parents[0].info.status == "FINISHED"
    children = mlflow_children(uri, NAME)
    assert len(children) == len(after)
    assert {r.data.tags["stagetune.trial_id"] for r in children} == set(by_tune_id) - {None}
    for r in children:
        tid = r.data.tags["stagetune.trial_id"]
        assert r.info.status != "RUNNING", tid
        assert r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "tokens")]
        assert len(steps) == len(set(steps)), f"duplicate steps in {tid}"
        if tid in orphans:
            assert r.info.status == "KILLED"
            assert r.data.tags["stagetune.status"] == "interrupted"
            assert r.data.tags["stagetune.interrupted"] == "true"
        else:
            assert r.data.tags["stagetune.status"] == by_tune_id[tid].user_attrs["stagetune_status"]
    # Finished trials were not rerun: their histories are exactly what they were, and Tune
    # received nothing from them after the crash but (at most) their last record, replayed.
    results = tune_results(workdir / "ray_results" / NAME)
    for tid, (run_id, hist) in finished_before.items():
        now = _histories(client, run_id)
        assert now == hist, tid
        assert all(math.isfinite(v) for _, v in hist["eval_loss"])
        late = [r for r in results.get(tid, []) if r["timestamp"] >= int(killed_at)]
        assert all(r.get("replayed") for r in late), f"{tid} trained again after the crash"

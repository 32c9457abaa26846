"""Fault: ``stagetune run`` gets SIGINT (Ctrl-C: the whole process group) or SIGTERM (``kill
PID``: the driver alone; systemd's stop: the whole group, Ray included) while trials run, or
SIGINT during its start-up.

Injection: the run is a subprocess in its own session with its own local Ray. The signal comes
once the baseline has finished and the driver has taken a checkpoint of a second trial that
still runs (or, for start-up, once ``study.json`` exists but before any trial started; or while
Ray starts, before anything was written). Afterwards: the exit code, the one line on stderr,
every store's statuses, no process of the run left; then ``stagetune run --resume`` finishes
the study.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from tests.faults.conftest import (
    Cli,
    assert_statuses_agree,
    fast_args,
    group_processes,
    mlflow_children,
    mlflow_statuses,
    mlflow_trial_runs_sqlite,
    optuna_statuses,
    snapshot_trials,
    tune_results,
    wait_group_gone,
)

pytestmark = pytest.mark.slow

NAME = "stopped"
NUM_TRIALS = 3


def _args(workdir: Path) -> list[str]:
    # One trial at a time and no early stopping: the second trial (three stages, checkpoints at
    # phase boundaries) is still running well after its first checkpoint. 192 steps (a few
    # seconds a trial): at 48 a trial could end between the check and the signal.
    return ["run", "--workdir", str(workdir), "--trials", str(NUM_TRIALS), "--space", "wide",
            "--quiet", *fast_args(f"name={NAME}", "search.early_stopping=false",
                                  "search.max_concurrent=1", "schedule.baseline_steps=192")]  # fmt: skip


def _wait(cli: Cli, proc: Any, name: str, ready: Callable[[], bool], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the run ended (rc {proc.returncode}) before the fault:\n"
                        f"{cli.output(name)[1][-3000:]}")  # fmt: skip
        if ready():
            return
        time.sleep(0.2)
    pytest.fail("the moment for the fault never came")


def _checkpointed_trial_runs(workdir: Path) -> bool:
    """The baseline finished, and another trial whose checkpoint the driver has taken (it is in
    the trial's ``result.json``) is still running."""
    runs = mlflow_trial_runs_sqlite(workdir / "mlflow.db") or {}
    if "FINISHED" not in runs.values():
        return False
    try:
        checkpointed = _checkpointed_steps(workdir)
    except json.JSONDecodeError:  # a line Tune is writing
        return False
    return any(status == "RUNNING" and tid in checkpointed for tid, status in runs.items())


def _checkpointed_steps(workdir: Path) -> dict[str, tuple[int, set[int]]]:
    """Trial id -> (the step of its newest checkpoint Tune heard of, the pids that trained it),
    from ``result.json`` as the stopped run left it."""
    out: dict[str, tuple[int, set[int]]] = {}
    for tid, records in tune_results(workdir / "ray_results" / NAME).items():
        steps = [r["step"] for r in records if r.get("checkpoint_dir_name")]
        if steps:
            out[tid] = (max(steps), {r["pid"] for r in records})
    return out


def _stop(cli: Cli, proc: Any, name: str, sig: int, *, group: bool) -> tuple[int, str]:
    """Send ``sig`` (to the group, as Ctrl-C does, or to the driver alone); returns the exit
    code and stderr once the run has exited."""
    if group:
        os.killpg(proc.pid, sig)
    else:
        os.kill(proc.pid, sig)
    code = proc.wait(180)
    left = wait_group_gone(proc.pid)
    assert not left, f"processes of the stopped run are still there: {left}"
    return code, cli.output(name)[1]


def _assert_one_line(err: str, workdir: Path) -> None:
    line = f"interrupted: continue with stagetune run --resume --workdir {workdir}"
    assert err.splitlines().count(line) == 1, err[-3000:]
    assert err.count("interrupted: ") == 1, err[-3000:]
    for noise in ("Traceback", "Tuner.restore", "SIGTERM received", "Stop signal received"):
        assert noise not in err, err[-3000:]


def _assert_marked_interrupted(workdir: Path) -> set[str]:
    """Every store says the same: the trials that ran are interrupted (Optuna RUNNING + attr,
    MLflow KILLED + tag, Tune unfinished); nothing is marked finished that is not. Returns
    the interrupted trial ids."""
    optuna_st = optuna_statuses(workdir, NAME)
    mlflow_st = mlflow_statuses(workdir, NAME)
    snap = snapshot_trials(workdir / "ray_results" / NAME) or {}
    interrupted = {t for t, (state, _) in optuna_st.items() if state == "RUNNING"}
    for tid in interrupted:
        assert optuna_st[tid][1] == "interrupted", optuna_st
        assert snap.get(tid) in ("RUNNING", "PENDING"), (tid, snap)
        if tid in mlflow_st:  # a trial Tune had not started yet has no run
            assert mlflow_st[tid] == ("KILLED", "interrupted"), mlflow_st
    assert {t for t, (_, s) in mlflow_st.items() if s == "interrupted"} <= interrupted
    assert not [t for t, (s, _) in mlflow_st.items() if s == "RUNNING"], mlflow_st
    for tid, (state, status) in optuna_st.items():
        if tid not in interrupted:  # ended before the signal: the same everywhere
            assert state in ("COMPLETE", "PRUNED", "FAIL"), optuna_st
            assert mlflow_st[tid][1] == status and snap.get(tid) == "TERMINATED"
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(NAME)
    parents = client.search_runs([exp.experiment_id], "tags.`stagetune.role` = 'parent'")
    assert [(p.info.status, p.data.tags["stagetune.status"]) for p in parents] == [
        ("KILLED", "interrupted")
    ]
    assert not (workdir / "report").exists(), "no report (and no verdict) from a partial study"
    return interrupted


def _resume(cli: Cli, workdir: Path) -> dict[str, Any]:
    code = cli.run(["run", "--resume", "--workdir", str(workdir), "--json", "--quiet"],
                   name="resume", timeout=400)  # fmt: skip
    out, err = cli.output("resume")
    assert code == 0, err[-3000:]
    for noise in ("Traceback", "Cannot tell", "already reported", "did not complete"):
        assert noise not in err, err[-3000:]
    report: dict[str, Any] = json.loads(out)
    assert_statuses_agree(workdir, NAME, report)
    optuna_st = optuna_statuses(workdir, NAME)
    assert len(optuna_st) == NUM_TRIALS, optuna_st
    return report


@pytest.mark.parametrize(
    ("sig", "group", "code"),
    [(signal.SIGINT, True, 130), (signal.SIGTERM, False, 143), (signal.SIGTERM, True, 143)],
    # SIGTERM to the group (systemd's stop) also ends the driver's Ray under it.
    ids=["sigint-group", "sigterm-driver", "sigterm-group"],
)
def test_signal_while_trials_run_then_resume(
    cli: Cli, tmp_path: Path, sig: int, group: bool, code: int
) -> None:
    workdir = tmp_path / "work"
    proc = cli.start(_args(workdir), name="first")
    _wait(cli, proc, "first", lambda: _checkpointed_trial_runs(workdir))
    stopped_at = time.time()
    rc, err = _stop(cli, proc, "first", sig, group=group)
    assert rc == code, err[-3000:]
    _assert_one_line(err, workdir)
    interrupted = _assert_marked_interrupted(workdir)
    assert interrupted, "a trial was running"

    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    client = MlflowClient(uri)
    runs = {r.data.tags["stagetune.trial_id"]: r for r in mlflow_children(uri, NAME)}
    finished = {t: r.info.run_id for t, r in runs.items() if r.info.status == "FINISHED"}
    before = {t: _history(client, run_id) for t, run_id in finished.items()}

    checkpointed = _checkpointed_steps(workdir)
    _resume(cli, workdir)
    # Finished trials were not trained again; interrupted ones continued, under the same ids,
    # from their checkpoint and to their end.
    results = tune_results(workdir / "ray_results" / NAME)
    for tid, run_id in finished.items():
        assert _history(client, run_id) == before[tid], tid
        assert not [r for r in results.get(tid, []) if r["timestamp"] > stopped_at + 1], tid
    after = optuna_statuses(workdir, NAME)
    assert interrupted & set(checkpointed), (interrupted, checkpointed)
    for tid in interrupted:
        assert after[tid][0] in ("COMPLETE", "PRUNED"), after
        steps = [m.step for m in client.get_metric_history(runs[tid].info.run_id, "tokens")]
        assert len(steps) == len(set(steps)), f"duplicate steps in {tid}"
        if tid in checkpointed:
            # The loop's own step, not Tune's iteration counter: a trial whose newest checkpoint
            # Tune's last snapshot missed still resumes, from the trial's checkpoint history.
            resumed = [r["step"] for r in results[tid] if r["pid"] not in checkpointed[tid][1]]
            assert resumed, f"{tid} reported nothing after the resume"
            assert min(resumed) > checkpointed[tid][0], (tid, checkpointed[tid], resumed)


def test_sigint_during_start_up_then_resume(cli: Cli, tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    proc = cli.start(_args(workdir), name="first")
    # The study exists (its config and Optuna study are written first), no trial runs yet.
    _wait(cli, proc, "first", lambda: (workdir / "study.json").is_file())
    rc, err = _stop(cli, proc, "first", signal.SIGINT, group=True)
    assert rc == 130, err[-3000:]
    _assert_one_line(err, workdir)
    _assert_marked_interrupted(workdir)
    assert not tune_results(workdir / "ray_results" / NAME), "no trial had started"

    _resume(cli, workdir)


def test_sigint_while_ray_starts(cli: Cli, tmp_path: Path) -> None:
    """Before anything is written there is nothing to resume: the line says to run it again,
    and the work directory holds no study (a fresh run may use it)."""
    workdir = tmp_path / "work"
    proc = cli.start(_args(workdir), name="first")
    _wait(cli, proc, "first", lambda: any("gcs_server" in p for p in group_processes(proc.pid)))
    rc, err = _stop(cli, proc, "first", signal.SIGINT, group=True)
    assert rc == 130, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("interrupted")]
    assert lines == ["interrupted before the study started (nothing was written): run it again"], (
        err[-3000:]
    )
    assert "Traceback" not in err, err[-3000:]
    assert not (workdir / "study.json").exists()


def _history(client: MlflowClient, run_id: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in client.get_metric_history(run_id, "eval_loss")]

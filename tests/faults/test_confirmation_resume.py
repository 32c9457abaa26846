"""Fault: SIGINT while the confirmation round runs, then ``stagetune run --resume``.

Injection: the run is a subprocess in its own session with its own local Ray, one trial at a
time. The signal comes once a confirmation trial has finished and another one runs. Afterwards
the resume must finish the round: every (recipe, seed) of the round ends exactly once, the
trials that had finished are not trained again, and the verdict has its intervals.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.faults.conftest import Cli, fast_args, sqlite_rows, wait_group_gone

pytestmark = pytest.mark.slow

NAME = "confirm"
SEEDS = 3


def _args(workdir: Path) -> list[str]:
    return ["run", "--workdir", str(workdir), "--trials", "2", "--space", "paper", "--quiet",
            "--seeds", str(SEEDS),
            *fast_args(f"name={NAME}", "search.early_stopping=false", "search.repeat_top_k=1",
                       "search.max_concurrent=1", "schedule.baseline_steps=48")]  # fmt: skip


def _confirmation_runs(workdir: Path) -> dict[str, tuple[str, str, str]]:
    """MLflow run id -> (status, schedule key, seed) of the confirmation round's runs."""
    rows = sqlite_rows(
        workdir / "mlflow.db",
        "select r.run_uuid, r.status, k.value, s.value from runs r "
        "join tags p on p.run_uuid = r.run_uuid and p.key = 'stagetune.phase' "
        "join tags k on k.run_uuid = r.run_uuid and k.key = 'stagetune.schedule_key' "
        "join tags s on s.run_uuid = r.run_uuid and s.key = 'stagetune.seed' "
        "where p.value = 'confirmation' and r.lifecycle_stage = 'active'",
    )
    return {run: (status, key, seed) for run, status, key, seed in rows or []}


def test_sigint_during_the_confirmation_round_then_resume(cli: Cli, tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    proc = cli.start(_args(workdir), name="first")
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the run ended before the fault:\n{cli.output('first')[1][-3000:]}")
        statuses = [s for s, _, _ in _confirmation_runs(workdir).values()]
        if "FINISHED" in statuses and "RUNNING" in statuses:
            break
        time.sleep(0.2)
    else:
        pytest.fail("the confirmation round never had a finished and a running trial")
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(180) == 130, cli.output("first")[1][-3000:]
    assert not wait_group_gone(proc.pid)
    before = _confirmation_runs(workdir)
    finished = {run for run, (status, _, _) in before.items() if status == "FINISHED"}
    assert finished and len(finished) < 2 * (SEEDS - 1)

    code = cli.run(["run", "--resume", "--workdir", str(workdir), "--json", "--quiet"],
                   name="resume", timeout=600)  # fmt: skip
    out, err = cli.output("resume")
    assert code == 0, err[-3000:]
    after = _confirmation_runs(workdir)
    # The finished trials kept their runs; every (recipe, seed) of the round ended once.
    assert finished <= set(after) and all(after[r][0] == "FINISHED" for r in finished)
    done = [(key, seed) for status, key, seed in after.values() if status == "FINISHED"]
    assert len(done) == len(set(done)) == 2 * (SEEDS - 1)
    assert {seed for _, seed in done} == {str(s) for s in range(1, SEEDS)}
    report = json.loads(out)
    assert "over 3 seeds" in report["verdict"] and "95% CI" in report["verdict"]

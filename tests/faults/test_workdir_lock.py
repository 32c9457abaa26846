"""Fault: a second driver started on a work directory while a study runs there.

Injection: ``stagetune run`` in its own process group; once it holds the work directory's lock
and has written its study, the whole group is frozen (SIGSTOP) so that nothing else writes
there, and the same command is started a second time. Then, with the first running again,
``stagetune report`` reads the study while it runs. (A driver killed by SIGKILL, whose lock
``--resume`` takes over, is in ``test_driver_killed.py``.)
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from stagetune.orchestration.lock import LOCK_FILE
from tests.faults.conftest import Cli, mlflow_trial_runs_sqlite

pytestmark = pytest.mark.slow

NAME = "locked"


def _tree(root: Path) -> dict[str, tuple[str, int]]:
    """Every path under ``root``: content hash (files) and modification time."""
    return {
        str(p.relative_to(root)): (
            hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir",
            p.stat().st_mtime_ns,
        )
        for p in root.rglob("*")
    }


def _holder_pid(lock: Path) -> int | None:
    try:
        return int(json.loads(lock.read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return None


def _wait_for(
    what: str, ready: Callable[[], bool], cli: Cli, proc: Any, timeout: float = 240
) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"the study ended (rc {proc.returncode}) before {what}:\n"
                        f"{cli.output('first')[1][-3000:]}")  # fmt: skip
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.3)


def test_second_driver_is_refused_and_report_works_meanwhile(cli: Cli, tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    lock = workdir / LOCK_FILE
    # One trial at a time: the baseline, then a full-depth point as long as the baseline,
    # during which the report below runs.
    args = ["run", "--preset", "smoke", "--trials", "2", "--workdir", str(workdir), "--quiet",
            "--set", f"name={NAME}", "--set", "search.max_concurrent=1",
            "--set", "search.early_stopping=false", "--set", "schedule.baseline_steps=400",
            "--set", "train.lr=0.001", "--set",
            "search.points_to_evaluate=[{num_stages: 1, lr: 0.002, warmup_steps: 0}]"]  # fmt: skip
    first = cli.start(args, name="first")
    _wait_for(
        "it held the lock and wrote its study",
        lambda: _holder_pid(lock) == first.pid and (workdir / "study.json").is_file(),
        cli,
        first,
    )

    os.killpg(first.pid, signal.SIGSTOP)  # nothing but the second driver could write now
    try:
        before = _tree(workdir)
        t0 = time.monotonic()
        code = cli.run(args, name="second")
        frozen_s = time.monotonic() - t0
        after = _tree(workdir)
    finally:
        os.killpg(first.pid, signal.SIGCONT)
    _out, err = cli.output("second")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err[-3000:]
    assert lines[0].startswith(f"stagetune: error: workdir='{workdir}': in use by stagetune run")
    assert f"(pid {first.pid} on host " in lines[0] and "since " in lines[0]
    assert after == before, "the refused driver changed the work directory"
    print(f"the second driver was refused {frozen_s:.1f}s after its start")

    # report reads the study while it runs (once the baseline, the first trial, finished).
    db = workdir / "mlflow.db"
    _wait_for(
        "its first trial finished",
        lambda: "FINISHED" in (mlflow_trial_runs_sqlite(db) or {}).values(),
        cli,
        first,
    )
    assert _holder_pid(lock) == first.pid
    code = cli.run(["report", "--workdir", str(workdir)], name="report")
    out, err = cli.output("report")
    assert code == 0, err[-3000:]
    assert "baseline" in out and "report.md" in out
    assert first.poll() is None, "the study ended before the report: it did not run meanwhile"

    assert first.wait(300) == 0, cli.output("first")[1][-3000:]
    assert not lock.exists(), "the driver removes its lock when it ends"

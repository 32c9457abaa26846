"""Bad input: one line naming the field, the value and the fix; exit code 2; nothing created."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stagetune.cli import main

CASES = [
    (["estimate", "--set", "model.family=gpt3"], "model.family"),
    (["estimate", "--set", "model.famly=gpt2"], "did you mean 'family'"),
    (["estimate", "--set", "schedule.increments=[1, 1]"], "schedule.increments"),
    (["estimate", "--set", "schedule.increments=[2, 0, 2]"], "schedule.increments"),
    (["estimate", "--set", "schedule.baseline_steps=0"], "schedule.baseline_steps"),
    (["estimate", "--set", "schedule.baseline_steps=-5"], "schedule.baseline_steps"),
    (["estimate", "--set", "schedule.growth=clone"], "schedule.growth"),
    (["estimate", "--set", "schedule.freeze_policy=all"], "schedule.freeze_policy"),
    (["estimate", "--set", "data.seq_len=4096"], "data.seq_len"),
    (["estimate", "--set", "data.source=/nonexistent/corpus.txt"], "data.source"),
    (["estimate", "--set", "train.lr=-1"], "train.lr"),
    (["estimate", "--set", "train.lr=abc"], "train.lr"),
    (["estimate", "--set", "budget.factor=0"], "budget.factor"),
    (["estimate", "--set", "model.n_head=5"], "model.n_head"),
    (["estimate", "--stages", "9"], "schedule.num_stages"),
    (["estimate", "--preset", "gpt5"], "preset"),
    (["estimate", "--config", "/nonexistent.yaml"], "config"),
    (["estimate", "--set", "name=../evil"], "name"),
    (["estimate", "--set", "train"], "--set"),
    (["run", "--space", "huge"], "search.space"),
    (["run", "--budget-factor", "0"], "--budget-factor"),
    (["run", "--budget-factor", "-1"], "--budget-factor"),
    (["run", "--trials", "0"], "--trials"),
    (["estimate", "--increments", "2,x"], "--increments"),
    (["estimate", "--convention", "metric"], "invalid choice"),
    (
        ["estimate", "--set", "train.batch_size=10", "--set", "resources.workers_per_trial=3"],
        "train.batch_size",
    ),
]


@pytest.mark.parametrize(("argv", "needle"), CASES, ids=[" ".join(c[0])[:60] for c in CASES])
def test_bad_input_is_one_line_exit_2(
    argv: list[str],
    needle: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    code = main([*argv, "--workdir", str(tmp_path / "work")]) if argv[0] != "report" else main(argv)
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert needle in lines[0]
    assert "Traceback" not in err
    assert not (tmp_path / "work").exists()


def test_argparse_errors_are_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--trials", "many"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_estimate_json_contract() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "stagetune.cli",
            "estimate",
            "--preset",
            "paper-gpt2-124m",
            "--stages",
            "4",
            "--convention",
            "paper",
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ},
    ).stdout
    data = json.loads(out)
    for key in (
        "baseline_flops",
        "incremental_flops",
        "ratio",
        "baseline_steps",
        "continual_steps_matched",
    ):
        assert key in data
    assert data["ratio"] == pytest.approx(data["incremental_flops"] / data["baseline_flops"])
    assert data["ratio"] == pytest.approx(0.53125)
    assert data["baseline_steps"] == 9536 and data["continual_steps_matched"] > 0

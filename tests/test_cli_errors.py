"""Bad input: one line naming the field, the value and the fix; exit code 2; nothing created."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

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
    # Bounds live in the config: flags, --set and YAML share them (issue 9, item 9).
    (["run", "--trials", "1000000000"], "--trials=1000000000: more than 10,000 trials"),
    (["run", "--budget-factor", "1e9"], "--budget-factor=1000000000.0: a budget above 100×"),
    (["run", "--budget-factor", "1e-9"], "smallest factor that fits is 1"),
    (["estimate", "--set", "budget.factor=1e9"], "budget.factor=1000000000.0"),
    (["estimate", "--set", "train.seed=-5"], "train.seed=-5"),
    (["estimate", "--stages", "3", "--set", "budget.factor=0.3"], "smallest factor that fits is 1"),
    (["estimate", "--increments", ""], "--increments=''"),
    (["estimate", "--increments", "2,2", "--stages", "3", "--set", "model.n_layer=4"],
     "contradicts schedule.increments=[2, 2]"),
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


def _estimate(*argv: str) -> dict:
    code_out = subprocess.run(
        [sys.executable, "-m", "stagetune.cli", "estimate", *argv, "--json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(code_out)


@pytest.mark.parametrize(
    ("overrides", "continual"),
    [
        (["schedule.continual_steps=10"], lambda matched: 10),
        (["schedule.continual_multiple=0.5"], lambda matched: round(0.5 * matched)),
        ([], lambda matched: matched),
    ],
    ids=["continual-steps", "continual-multiple", "matched"],
)
def test_estimate_shows_the_schedule_train_runs(overrides: list[str], continual: Any) -> None:
    """The phase table is the schedule `train` builds (it showed the budget-matched length
    even when the config set another: JSON 10, table 60), with its total cost; the matched
    length is reported on its own."""
    from stagetune.config import load_config
    from stagetune.schedule import build_schedule

    sets = ["schedule.num_stages=2", "model.n_layer=4", *overrides]
    data = _estimate(*(a for o in sets for a in ("--set", o)))
    cfg = load_config(overrides=sets)
    assert data["schedule"] == build_schedule(cfg, vocab_size=cfg.data.vocab_size).to_dict()
    expected = continual(data["continual_steps_matched"])
    assert data["continual_steps"] == data["schedule"]["continual_steps"] == expected
    for conv, c in data["conventions"].items():
        last = c["phases"][-1]
        assert (last["phase"], last["steps"]) == ("continual", expected), conv
        assert c["total_flops"] == pytest.approx(sum(ph["flops"] for ph in c["phases"]))
        assert c["total_ratio"] == pytest.approx(c["total_flops"] / c["baseline_flops"])
        assert c["budget_flops"] == pytest.approx(c["baseline_flops"] * data["budget_factor"])
    # The chosen convention's numbers are also at the top level (the existing keys too).
    chosen = data["conventions"][data["convention"]]
    for key in ("baseline_flops", "incremental_flops", "ratio", "continual_steps_matched",
                "total_flops", "total_ratio", "budget_flops"):  # fmt: skip
        assert data[key] == chosen[key]


def test_estimate_text_prints_the_total(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["estimate", "--stages", "2", "--set", "schedule.continual_steps=10"]) == 0
    out = capsys.readouterr().out
    assert "what 'stagetune train' runs" in out and "continual steps 10" in out
    rows = [r for r in map(str.split, out.splitlines()) if len(r) > 4 and r[1] == "continual"]
    # One phase table, in the convention the budget is matched in, ending with the 10
    # configured continual steps (the other convention is one line under it).
    assert len(rows) == 1 and rows[0][2:4] == ["6", "10"]
    assert any(line.lstrip().startswith("total") for line in out.splitlines())
    assert out.count("total ") == 1 and "× the baseline = 1.30 TFLOPs" in out

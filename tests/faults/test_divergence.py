"""Fault: a trial's loss becomes NaN (an absurd learning rate that is still inside the space).

Injection: a chosen point that the study evaluates first, given the way a user gives one
(``search.points_to_evaluate``): the full-depth schedule at the space's highest lr,
4 × ``train.lr``, without warmup. With ``train.lr=8`` and warmup over the whole run, the
baseline stays finite; lr 32 from step 0 makes the loss NaN within a few steps.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from stagetune.cli import main
from stagetune.results.tracking.runs import mlflow_step
from tests.faults.conftest import fast_args, mlflow_children, tune_results

pytestmark = pytest.mark.slow

NAME = "diverge"
ABSURD = {"num_stages": 1, "lr": 32.0, "warmup_steps": 0}  # wide space: lr in [8/4, 8*4]


def test_diverging_trial_is_stopped_marked_and_reported(
    ray_local: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    workdir = tmp_path / "work"
    storage = f"sqlite:///{workdir / 'optuna.db'}"
    code = main(["run", "--workdir", str(workdir), "--trials", "3", "--space", "wide",
                 "--json", "--quiet",
                 *fast_args(f"name={NAME}", "train.lr=8", "train.warmup_steps=24",
                            f"search.points_to_evaluate={json.dumps([ABSURD])}")])  # fmt: skip
    out = capsys.readouterr()
    assert code == 0, out.err[-3000:]
    report = json.loads(out.out)

    # Optuna: the search went on (3 trials: the baseline, the custom point, one sampled);
    # the custom point (enqueued, so fixed params) is FAIL with stagetune's status; the
    # baseline was enqueued once, first.
    trials = optuna.load_study(study_name=NAME, storage=storage).trials
    assert len(trials) == 3
    custom = [t for t in trials if t.params == ABSURD]
    assert len(custom) == 1
    ot = custom[0]
    assert ot.system_attrs.get("fixed_params") == ABSURD
    assert ot.state == optuna.trial.TrialState.FAIL
    assert ot.user_attrs["stagetune_status"] == "diverged"
    tid = ot.user_attrs["stagetune_trial_id"]
    base = [t for t in trials if t.user_attrs.get("stagetune_baseline")]
    assert len(base) == 1 and base[0].state == optuna.trial.TrialState.COMPLETE
    assert base[0].number == 0 and ot.number == 1
    assert all(t.user_attrs.get("stagetune_status") for t in trials)

    # Tune: stopped at once, with the status in its last result.
    recs = tune_results(workdir / "ray_results" / NAME)[tid]
    last = recs[-1]
    assert last["status"] == "diverged"
    assert not math.isfinite(last["train_loss"])
    assert all(math.isfinite(r["train_loss"]) for r in recs[:-1])
    assert last["step"] < last["total_steps"] // 2, "stopped at the first non-finite loss"

    # MLflow: tagged diverged, run FAILED, the rest of the study unaffected.
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    runs = {r.data.tags["stagetune.trial_id"]: r for r in mlflow_children(uri, NAME)}
    assert len(runs) == 3
    run = runs[tid]
    assert run.data.tags["stagetune.status"] == "diverged"
    assert run.info.status == "FAILED"
    hist = MlflowClient(uri).get_metric_history(run.info.run_id, "train_loss")
    assert [m.step for m in hist] == [mlflow_step(r) for r in recs]
    baseline_run = runs[base[0].user_attrs["stagetune_trial_id"]]
    assert baseline_run.data.tags["stagetune.status"] == "finished"

    # The report lists it.
    listed = {t["trial_id"]: t["status"] for row in report["outcomes"] for t in row["trials"]}
    assert listed.get(tid) == "diverged", listed
    md = (workdir / "report" / "report.md").read_text()
    assert "diverged" in md

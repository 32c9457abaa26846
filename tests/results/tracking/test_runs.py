"""What tracking leaves in MLflow: runs found again by their tags, params, metrics on the step
axis, statuses and artifacts; a restarted trial continues its run without duplicate steps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from stagetune.metrics import FLOPS, FLOPS_PAPER
from stagetune.results import MlflowTracker
from stagetune.results.tracking.runs import mlflow_step
from tests.results.helpers import EXPERIMENT, STUDY, TRIALS, history, rec


def test_restarted_trial_continues_its_run_without_duplicate_steps(
    uri: str, tmp_path: Path
) -> None:
    tr = MlflowTracker(uri, "exp", spool_dir=tmp_path / "spool")
    parent = tr.start_study(study_name="s", params={"lr": 1e-3}, tags={})
    run = tr.start_trial(trial_id="t_1", params={"seed": 3}, tags={})
    for i in (1, 2, 3):
        tr.log_report("t_1", rec(i))
    # Restored from a checkpoint at step 2: steps 2 and 3 are reported again (other values).
    tr.log_report("t_1", rec(2, loss=99.0))
    tr.log_report("t_1", rec(3, loss=99.0))
    tr.end_trial("t_1", "failed")
    assert tr.stats.duplicate_steps == 2

    # A new driver process (--resume): same parent, same child run, steps read back from MLflow.
    tr2 = MlflowTracker(uri, "exp", spool_dir=tmp_path / "spool")
    assert tr2.start_study(study_name="s", params={"lr": 1e-3}, tags={}) == parent
    assert tr2.start_trial(trial_id="t_1", params={"seed": 3}, tags={}) == run
    assert MlflowClient(uri).get_run(run).info.status == "RUNNING"
    tr2.log_report("t_1", rec(3, loss=99.0))
    tr2.log_report("t_1", rec(4))
    tr2.end_trial("t_1", "finished")
    assert tr2.stats.duplicate_steps == 1

    got = history(uri, run, "eval_loss")
    assert [s for s, _ in got] == [mlflow_step(rec(i)) for i in (1, 2, 3, 4)]
    assert 99.0 not in [v for _, v in got]
    assert [s for s, _ in history(uri, run, "flops")] == [mlflow_step(rec(i)) for i in (1, 2, 3, 4)]
    client = MlflowClient(uri)
    r = client.get_run(run)
    assert r.info.status == "FINISHED" and r.data.tags["stagetune.status"] == "finished"
    assert r.data.tags["stagetune.seed"] == "3" and r.data.tags["stagetune.is_baseline"] == "false"
    exp = client.get_experiment_by_name("exp")
    assert exp is not None
    assert len(client.search_runs([exp.experiment_id])) == 2  # one parent, one trial


def test_runs_params_metrics_tags_statuses_artifacts(store: dict[str, Any]) -> None:
    client = MlflowClient(store["uri"])
    exp = client.get_experiment_by_name(EXPERIMENT)
    assert exp is not None
    # Artifacts live beside the SQLite store, not in the current directory.
    assert exp.artifact_location == (store["root"] / "work" / "mlartifacts").as_uri()
    parent = client.get_run(store["parent"])
    assert parent.data.tags["stagetune.role"] == "parent"
    assert parent.data.tags["stagetune.study"] == STUDY
    assert parent.data.params == {"model.n_layer": "4"}
    assert parent.info.status == "FINISHED"
    assert [a.path for a in client.list_artifacts(store["parent"])] == ["config.yaml"]

    children = client.search_runs([exp.experiment_id], "tags.`stagetune.role` = 'trial'")
    assert len(children) == len(TRIALS)
    expected_status = {"finished": "FINISHED", "stopped": "KILLED", "diverged": "FAILED"}
    for t in TRIALS:
        run = client.get_run(store["runs"][t["id"]])
        tags = run.data.tags
        assert tags["mlflow.parentRunId"] == store["parent"]
        assert tags["stagetune.trial_id"] == t["id"]
        assert tags["stagetune.is_baseline"] == ("true" if t["baseline"] else "false")
        assert tags["stagetune.seed"] == str(t["seed"])
        assert tags["stagetune.status"] == t["end"][0]
        assert run.info.status == expected_status[t["end"][0]]
        assert run.data.params["schedule_key"] == t["key"]
        assert "done" not in run.data.metrics and "config" not in run.data.metrics
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "tokens")]
        assert steps == sorted(set(steps)) and len(steps) == len(t["recs"])
        assert steps == [mlflow_step(r) for r in t["recs"]]
        # flops and flops_paper sit at every step, with the losses.
        for key in (FLOPS, FLOPS_PAPER):
            assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == steps
        eval_steps = [m.step for m in client.get_metric_history(run.info.run_id, "eval_loss")]
        assert set(eval_steps) <= set(steps)
    slow0 = client.get_run(store["runs"]["slow_0"])
    assert slow0.data.tags["stagetune.asha_rung"] == "1"
    assert [a.path for a in client.list_artifacts(store["runs"]["fast_0"])] == ["trial_note.txt"]

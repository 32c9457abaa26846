"""--resume settles trials the dead driver left half-recorded, in Optuna and MLflow alike
(real Optuna RDB storage and a real MLflow SQLite store)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import optuna
from mlflow.tracking import MlflowClient

from stagetune.config import load_config
from stagetune.orchestration.prepare import prepare_study
from stagetune.orchestration.resume import TAG_INTERRUPTED, reconcile_stores
from stagetune.orchestration.searcher import ATTR_TRIAL_ID
from stagetune.orchestration.study import _describe, _open_tracking
from stagetune.orchestration.trainable import StudyContext


def test_a_trial_asked_of_optuna_but_never_started_in_mlflow_is_closed_in_both(
    tmp_path: Path,
) -> None:
    # The driver died after Optuna handed out trial "asked0001" and before MLflow opened its
    # run (the window between the searcher's suggest and Tune's trial start); trial
    # "started01" had its MLflow run open. Tune's snapshot knows neither.
    cfg = load_config(preset="smoke", overrides=[f"workdir={tmp_path / 'work'}", "name=rs"])
    prep = prepare_study(cfg)
    prep.paths.workdir.mkdir(parents=True)
    ot = optuna.create_study(study_name=cfg.name, storage=prep.paths.optuna_url)
    for tid in ("started01", "asked0001"):
        ot.ask().set_user_attr(ATTR_TRIAL_ID, tid)
    tracker, _ = _open_tracking(prep)
    study = StudyContext.create(cfg, vocab_size=prep.vocab_size, train_storage=str(tmp_path))
    point = prep.space.baseline_point(prep.ctx)
    info = _describe(study)(point, "started01")
    tracker.start_trial(trial_id="started01", params=info["params"], tags=info["tags"])

    interrupted, _ = reconcile_stores(
        replace(prep, resume=True),
        storage=optuna.storages.RDBStorage(prep.paths.optuna_url),
        directions="min",
        tracker=tracker,
        snapshot={},
        describe=_describe(study),
    )
    assert sorted(interrupted) == ["asked0001", "started01"]
    client = MlflowClient(cfg.resolved_tracking_uri())
    exp = client.get_experiment_by_name(cfg.experiment_name)
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], "tags.`stagetune.role` = 'trial'")
    # One run each (the open one closed, not duplicated; the missing one created), both
    # closed as interrupted, as Optuna holds them.
    assert sorted(r.data.tags["stagetune.trial_id"] for r in runs) == ["asked0001", "started01"]
    for r in runs:
        assert r.data.tags["stagetune.status"] == "interrupted"
        assert r.data.tags[TAG_INTERRUPTED] == "true" and r.info.status == "KILLED"
    states = {t.user_attrs[ATTR_TRIAL_ID]: t.state for t in ot.trials if ATTR_TRIAL_ID in t.user_attrs}
    assert states == {"started01": optuna.trial.TrialState.FAIL, "asked0001": optuna.trial.TrialState.FAIL}

"""A trial's search params become its description once, at the trainable's edge; MLflow's
params and tags are read from that one value."""

from __future__ import annotations

import dataclasses
from typing import Any

from stagetune.orchestration.trainable import StudyContext, describe_trial, tracking_info
from stagetune.search_spaces import SpaceContext, get_search_space


def _study(fast_config: Any, tmp_path: Any, *overrides: str) -> StudyContext:
    cfg = fast_config("search.space=compact", "train.seed=4", *overrides)
    return StudyContext.create(cfg, vocab_size=512, train_storage=str(tmp_path / "train"))


def test_describe_trial_builds_through_the_space(fast_config: Any, tmp_path: Any) -> None:
    study = _study(fast_config, tmp_path)
    cfg = study.experiment()
    point = {"num_stages": 2, "growth": "zero", "continual_multiple": 0.5}
    trial = describe_trial(point, study, name="train_trial_1")
    ctx = SpaceContext.from_config(cfg, vocab_size=512)
    built = get_search_space("compact").build(point, ctx)
    assert trial == dataclasses.replace(built, name="train_trial_1")
    assert trial.seed == 4 and trial.params == point and not trial.is_baseline
    # A seed repeat: the point wrapped, with its own seed; same recipe, same key.
    repeat = describe_trial({"point": {**point, "seed": 5}}, study, name="r")
    assert repeat.seed == 5 and repeat.key == trial.key and repeat.params == point


def test_tracking_info_is_the_trials(fast_config: Any, tmp_path: Any) -> None:
    study = _study(fast_config, tmp_path)
    base = describe_trial({"num_stages": 1}, study, name="t0")
    info = tracking_info(base, space="compact")
    params, tags = info["params"], info["tags"]
    assert params["schedule_key"] == tags["stagetune.schedule_key"] == base.key
    assert params["schedule_label"] == tags["stagetune.label"] == base.label == "baseline"
    assert (params["seed"], tags["stagetune.seed"]) == (4, "4")
    assert tags["stagetune.is_baseline"] == "true"
    assert tags["stagetune.space"] == "compact"
    assert params["schedule_json"] == base.schedule.to_json()
    assert (params["lr"], params["warmup_steps"]) == (base.lr, base.warmup_steps)
    assert params["num_stages"] == 1


def test_runs_are_named_by_schedule_label(fast_config: Any, tmp_path: Any) -> None:
    """MLflow's runs table reads by schedule: the label is the run name (seed repeats add their
    seed), and the model's size rides along for the tokens-per-parameter summary."""
    study = _study(fast_config, tmp_path)
    base = describe_trial({"num_stages": 1}, study, name="t0")
    assert tracking_info(base, space="compact")["tags"]["mlflow.runName"] == "baseline"
    point = {"num_stages": 2, "growth": "zero", "continual_multiple": 0.5}
    grown = describe_trial(point, study, name="t1")
    info = tracking_info(grown, space="compact", seed_repeat=True, model_params=1234)
    assert info["tags"]["mlflow.runName"] == f"{grown.label} · seed {grown.seed}"
    assert grown.label.startswith("S2[")
    assert info["params"]["non_embedding_params"] == 1234

"""The trial description: one value from the search params (or the config) to every rank,
with one key and one label."""

from __future__ import annotations

import dataclasses
import json
import pickle

from stagetune.config import load_config
from stagetune.schedule import baseline_schedule, from_increments
from stagetune.trial import TrialDescription, recipe_key


def _staged() -> TrialDescription:
    schedule = from_increments([2, 2], stage_steps=20, continual_steps=5, growth="zero")
    schedule = dataclasses.replace(schedule, meta={"space": "wide", "params": {"lr": 0.002}})
    return TrialDescription(
        schedule=schedule,
        lr=0.002,
        warmup_steps=3,
        seed=7,
        params={"num_stages": 2, "lr": 0.002, "uniform_increments": True},
        name="train_trial_abc",
    )


def test_json_round_trip() -> None:
    trial = _staged()
    data = json.loads(json.dumps(trial.to_dict()))
    assert TrialDescription.from_dict(data) == trial
    assert TrialDescription.from_dict(data).schedule.meta == trial.schedule.meta
    assert pickle.loads(pickle.dumps(trial)) == trial


def test_one_key_per_recipe_whatever_the_seed() -> None:
    trial = _staged()
    assert trial.key == recipe_key(trial.schedule, lr=trial.lr, warmup_steps=trial.warmup_steps)
    assert dataclasses.replace(trial, seed=8, name="other").key == trial.key
    assert dataclasses.replace(trial, lr=0.003).key != trial.key


def test_labels() -> None:
    trial = _staged()
    assert trial.label == "S2[2-2] zero/new_only +5c lr=0.002"
    full = TrialDescription(schedule=baseline_schedule(4, 20), lr=0.01, warmup_steps=2, seed=0)
    assert full.label == "full-depth lr=0.01 wu=2"
    assert dataclasses.replace(full, is_baseline=True).label == "baseline"


def test_from_config_is_what_train_runs() -> None:
    cfg = load_config(overrides=["train.seed=3", "train.lr=0.004", "train.warmup_steps=2"])
    base = TrialDescription.from_config(cfg, schedule=baseline_schedule(4, 20))
    assert (base.lr, base.warmup_steps, base.seed, base.name) == (0.004, 2, 3, cfg.name)
    assert base.is_baseline and base.label == "baseline" and base.params == {}

"""The pieces spaces are built from: replayed params, increments, the recipe key."""

from __future__ import annotations

import dataclasses

import numpy as np
import optuna
import pytest
from optuna.samplers import TPESampler

from stagetune.errors import ConfigError
from stagetune.schedule import baseline_schedule
from stagetune.search_spaces import ParamsTrial, suggest_increments
from stagetune.trial import recipe_key

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_recipe_key_ignores_meta_and_seeds_but_not_lr() -> None:
    sched = baseline_schedule(4, 10)
    tagged = dataclasses.replace(sched, meta={"seed": 1})
    assert recipe_key(sched, lr=1e-3, warmup_steps=0) == recipe_key(tagged, lr=1e-3, warmup_steps=0)
    assert recipe_key(sched, lr=1e-3, warmup_steps=0) != recipe_key(sched, lr=2e-3, warmup_steps=0)
    assert recipe_key(sched, lr=1e-3, warmup_steps=0) != recipe_key(sched, lr=1e-3, warmup_steps=1)


def test_params_trial_is_strict() -> None:
    trial = ParamsTrial({"a": 3.0, "b": True, "c": 0.5})
    assert trial.suggest_int("a", 1, 4) == 3 and isinstance(trial.params["a"], int)
    assert trial.suggest_categorical("b", (True, False)) is True
    with pytest.raises(ConfigError, match="use a number in"):
        trial.suggest_float("c", 0.6, 1.0)
    with pytest.raises(ConfigError, match="use one of"):
        ParamsTrial({"b": 1}).suggest_categorical("b", (True, False))
    with pytest.raises(ConfigError, match="expected an integer"):
        ParamsTrial({"a": "3"}).suggest_int("a", 1, 4)
    with pytest.raises(ConfigError, match="expected an integer"):
        ParamsTrial({"a": 2.5}).suggest_int("a", 1, 4)
    assert ParamsTrial({"a": np.int64(2)}).suggest_int("a", 1, 4) == 2


@pytest.mark.parametrize("num_layers,num_stages", [(4, 1), (4, 2), (6, 3), (5, 5), (12, 6)])
def test_suggest_increments_always_composes_the_depth(num_layers: int, num_stages: int) -> None:
    study = optuna.create_study(sampler=TPESampler(seed=0, n_startup_trials=3))
    for _ in range(15):
        trial = study.ask()
        incs = suggest_increments(trial, num_layers, num_stages)
        assert len(incs) == num_stages and min(incs) >= 1 and sum(incs) == num_layers
        assert len(trial.params) == (0 if num_stages == num_layers else num_stages - 1)
        study.tell(trial, float(incs[0]))

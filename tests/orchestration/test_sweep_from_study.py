"""``--from-study``: the best incremental trial of a prior ``wide`` study joins the sweep."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from stagetune.config import config_to_dict, load_config
from stagetune.errors import ConfigError
from stagetune.orchestration.storage import StudyPaths
from stagetune.orchestration.sweep import _best_of_prior_study

BEST = {
    "num_stages": 2,
    "uniform_increments": True,
    "freeze_policy": "none",
    "step_spread": "uniform",
    "growth": "zero",
    "continual_multiple": 0.5,
    "lr": 0.002,
    "warmup_steps": 0,
}


def _prior(tmp_path: Path, space: str) -> Path:
    cfg = load_config(preset="smoke", overrides=[f"search.space={space}", "name=prior"])
    paths = StudyPaths(tmp_path / "prior")
    paths.workdir.mkdir()
    paths.save_study(config_to_dict(cfg))
    st = optuna.create_study(study_name="prior", storage=paths.optuna_url)
    trials = (
        ({"num_stages": 1, "lr": 0.001, "warmup_steps": 0}, 2.0),  # full depth: never taken
        (BEST, 3.0),
        ({**BEST, "growth": "random"}, 3.5),
    )
    # One distribution per param across the study (Optuna refuses changing choices).
    choices: dict[str, list[object]] = {}
    for params, _ in trials:
        for k, v in params.items():
            if v not in choices.setdefault(k, []):
                choices[k].append(v)
    dists = {k: optuna.distributions.CategoricalDistribution(c) for k, c in choices.items()}
    for params, value in trials:
        st.add_trial(
            optuna.trial.create_trial(
                params=params, distributions={k: dists[k] for k in params}, value=value
            )
        )
    return paths.workdir


def test_best_incremental_trial_of_a_wide_study(tmp_path: Path) -> None:
    assert _best_of_prior_study(_prior(tmp_path, "wide")) == BEST


def test_other_spaces_and_empty_directories_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"--from-study.*'compact'"):
        _best_of_prior_study(_prior(tmp_path, "compact"))
    with pytest.raises(ConfigError, match="holds no study"):
        _best_of_prior_study(tmp_path / "nothing")

"""A finite space's points are each asked for once: repeats are redrawn, never trained, and
do not count against ``search.num_trials`` (real Optuna SQLite storage, real samplers)."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from stagetune.orchestration.distinct import STATUS_DUPLICATE, nearest_unvisited, point_key
from stagetune.orchestration.searcher import ATTR_STATUS, ResumableOptunaSearch

optuna.logging.set_verbosity(optuna.logging.WARNING)

CHOICES = ("a", "b", "c", "d")
GRID = [{"x": c} for c in CHOICES]


def _space(trial: Any) -> None:
    trial.suggest_categorical("x", CHOICES)


def _searcher(
    tmp_path: Path, sampler: optuna.samplers.BaseSampler, *, max_trials: int | None = None
) -> tuple[ResumableOptunaSearch, optuna.Study]:
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="distinct", storage=url)
    searcher = ResumableOptunaSearch(
        space=_space,
        metric="eval_loss",
        mode="min",
        sampler=sampler,
        study_name="distinct",
        storage=optuna.storages.RDBStorage(url),
        max_trials=max_trials,
        grid=GRID,
        grid_seed=0,
    )
    return searcher, study


def _run(searcher: ResumableOptunaSearch, n: int) -> list[Any]:
    """Suggest and finish up to ``n`` trials one after the other (loss: the point's rank)."""
    out = []
    for i in range(n):
        config = searcher.suggest(f"t{i}")
        out.append(config)
        if not isinstance(config, dict):
            break
        result = {"eval_loss": float(CHOICES.index(config["x"])), "training_iteration": 1}
        searcher.on_trial_result(f"t{i}", result)
        searcher.on_trial_complete(f"t{i}", result={**result, "status": "finished"})
    return out


@pytest.mark.parametrize(
    "sampler",
    [
        optuna.samplers.TPESampler(seed=0, n_startup_trials=1, constant_liar=True),
        optuna.samplers.RandomSampler(seed=0),
    ],
    ids=["tpe", "random"],
)
def test_every_point_once_before_any_twice(tmp_path: Path, sampler: Any) -> None:
    searcher, study = _searcher(tmp_path, sampler)
    configs = _run(searcher, len(GRID) + 1)
    points = [c["x"] for c in configs[:-1]]
    assert sorted(points) == sorted(CHOICES)  # each point once
    assert configs[-1]["x"] in CHOICES  # then, trials left: the sampler's repeat
    # TPE, told "a" is best, redraws it: those draws were closed as duplicates, not trained.
    trained = [t for t in study.trials if t.user_attrs.get(ATTR_STATUS) != STATUS_DUPLICATE]
    assert Counter(t.params["x"] for t in trained[: len(GRID)]) == Counter(CHOICES)
    for t in study.trials:
        if t.user_attrs.get(ATTR_STATUS) == STATUS_DUPLICATE:
            assert t.state == TrialState.FAIL


def test_duplicates_do_not_count_against_the_trial_budget(tmp_path: Path) -> None:
    sampler = optuna.samplers.TPESampler(seed=1, n_startup_trials=1, constant_liar=True)
    searcher, _ = _searcher(tmp_path, sampler, max_trials=3)
    configs = _run(searcher, 4)
    assert [isinstance(c, dict) for c in configs] == [True, True, True, False]
    assert len({point_key(c) for c in configs[:3]}) == 3


def test_a_running_point_is_not_asked_again(tmp_path: Path) -> None:
    """All four trials in flight at once (none finished): four different points."""
    searcher, _ = _searcher(tmp_path, optuna.samplers.RandomSampler(seed=3))
    configs = [searcher.suggest(f"t{i}") for i in range(len(GRID))]
    assert sorted(c["x"] for c in configs) == sorted(CHOICES)


def test_a_repeat_is_replaced_by_the_nearest_unasked_point() -> None:
    grid = [
        {"s": 1, "lr": 1.0},
        {"s": 2, "g": "r", "lr": 1.0},
        {"s": 2, "g": "r", "lr": 4.0},
        {"s": 2, "g": "c", "lr": 4.0},
        {"s": 2, "g": "c", "lr": 0.5},
    ]
    visited = {point_key(grid[2])}
    rng = random.Random(0)
    # One param away from the repeat: g=c (same lr) or lr=1.0 (same g); never two away.
    picks = {point_key(nearest_unvisited(grid, visited, grid[2], rng) or {}) for _ in range(20)}
    assert picks == {point_key(grid[1]), point_key(grid[3])}
    assert nearest_unvisited(grid, {point_key(p) for p in grid}, grid[0], rng) is None

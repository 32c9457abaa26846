"""Samplers by name: the built-ins registered in ``stagetune.registry.SAMPLERS``, ``auto``
asking the space, the seed, and a sampler of one's own named in the config."""

from __future__ import annotations

import pickle
from pathlib import Path

import optuna
import pytest
from optuna.samplers import BruteForceSampler, NSGAIISampler, RandomSampler, TPESampler

from stagetune.config import load_config
from stagetune.errors import ConfigError
from stagetune.orchestration.prepare import prepare_study
from stagetune.orchestration.samplers import PicklableLock, make_sampler
from stagetune.registry import SAMPLERS
from stagetune.search_spaces import get_search_space

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


def test_the_builtins_are_the_registry() -> None:
    assert SAMPLERS.names() == ["auto", "bruteforce", "nsga2", "random", "tpe"]
    kinds = {
        "tpe": TPESampler,
        "nsga2": NSGAIISampler,
        "bruteforce": BruteForceSampler,
        "random": RandomSampler,
    }
    for name, kind in kinds.items():
        cfg = load_config(overrides=[f"search.sampler={name}"])
        assert type(make_sampler(cfg, get_search_space(cfg.search.space))) is kind


@pytest.mark.parametrize(
    ("space", "multi", "kind"),
    [
        ("paper", False, BruteForceSampler),  # the space prefers it: a small finite grid
        ("wide", False, TPESampler),
        ("compact", False, TPESampler),
        ("paper", True, NSGAIISampler),  # two objectives
        ("wide", True, NSGAIISampler),
    ],
)
def test_auto_asks_the_space(space: str, multi: bool, kind: type) -> None:
    cfg = load_config(
        overrides=[f"search.space={space}", f"search.multi_objective={str(multi).lower()}"]
    )
    assert cfg.search.sampler == "auto"
    assert type(make_sampler(cfg, get_search_space(space))) is kind


def _first_points(cfg_overrides: list[str]) -> list[dict]:
    cfg = load_config(overrides=["search.sampler=random", *cfg_overrides])
    study = optuna.create_study(sampler=make_sampler(cfg, get_search_space("wide")))
    return [study.ask({"x": optuna.distributions.FloatDistribution(0, 1)}).params for _ in "ab"]


def test_the_sampler_seed_is_its_own_or_the_training_seed() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    assert _first_points(["train.seed=5"]) == _first_points(["search.sampler_seed=5"])
    assert _first_points(["train.seed=5"]) != _first_points(["train.seed=6"])
    assert _first_points(["train.seed=5", "search.sampler_seed=6"]) == _first_points(
        ["train.seed=6"]
    )


def test_a_registered_sampler_works_from_the_config() -> None:
    def qmc(search: object, space: object, seed: int) -> optuna.samplers.BaseSampler:
        return optuna.samplers.QMCSampler(seed=seed)

    with pytest.raises(ConfigError, match=r"search\.sampler='qmc'.*valid: auto, bruteforce"):
        load_config(overrides=["search.sampler=qmc"])
    with SAMPLERS.isolated():
        SAMPLERS.register("qmc", qmc)
        cfg = load_config(overrides=["search.sampler=qmc"])
        assert type(make_sampler(cfg, get_search_space("wide"))) is optuna.samplers.QMCSampler


@pytest.mark.parametrize(
    ("name", "multi"),
    [(n, False) for n in ("tpe", "nsga2", "bruteforce", "random")]
    + [(n, True) for n in ("tpe", "nsga2", "random")],  # bruteforce: one objective here
)
def test_every_sampler_survives_pickling_mid_study(name: str, multi: bool) -> None:
    """Tune saves the searcher with its sampler (tuner.pkl, searcher snapshots) and a resume
    unpickles it: the copy keeps sampling the study where the original left off. Optuna 5.1's
    NSGA-II holds a threading.Lock, which does not pickle by itself."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = load_config(overrides=[f"search.sampler={name}", "search.num_trials=8"])
    sampler = make_sampler(cfg, get_search_space("wide"))
    directions = ["minimize", "minimize"] if multi else ["minimize"]
    study = optuna.create_study(sampler=sampler, directions=directions)

    def objective(trial: optuna.Trial) -> float | tuple[float, float]:
        x = trial.suggest_int("x", 0, 3)
        y = trial.suggest_categorical("y", ["a", "b"])
        return (x, float(y == "a")) if multi else x + float(y == "a")

    study.optimize(objective, n_trials=3)
    copy = pickle.loads(pickle.dumps(sampler))
    assert type(copy) is type(sampler)
    study.sampler = copy
    study.optimize(objective, n_trials=3)  # the copy's locks work (NSGA-II takes its lock)
    assert len(study.trials) == 6
    # And pickles again (a second snapshot of a resumed study).
    pickle.loads(pickle.dumps(copy))


def test_picklable_lock_locks_and_pickles_unlocked() -> None:
    for reentrant in (False, True):
        lock = PicklableLock(reentrant=reentrant)
        with lock:
            assert lock.acquire(blocking=False) is reentrant  # an RLock re-enters, a Lock not
            if reentrant:
                lock.release()
            copy = pickle.loads(pickle.dumps(lock))  # pickled while held
        assert copy.acquire(blocking=False)  # the copy starts unlocked
        copy.release()


class _Unpicklable(optuna.samplers.RandomSampler):
    def __init__(self, seed: int) -> None:
        super().__init__(seed=seed)
        self._pending = (i for i in range(3))  # a generator does not pickle


def test_a_sampler_that_does_not_pickle_is_refused_by_name() -> None:
    with SAMPLERS.isolated():
        SAMPLERS.register("gen", lambda search, space, seed: _Unpicklable(seed))
        cfg = load_config(overrides=["search.sampler=gen"])
        with pytest.raises(ConfigError, match=r"search\.sampler='gen'.*cannot be pickled"):
            make_sampler(cfg, get_search_space("wide"))


def test_a_study_with_such_a_sampler_is_refused_before_anything_is_written(
    tmp_path: Path,
) -> None:
    work = tmp_path / "work"
    with SAMPLERS.isolated():
        SAMPLERS.register("gen", lambda search, space, seed: _Unpicklable(seed))
        cfg = load_config(
            preset="smoke", overrides=[f"workdir={work}", "search.sampler=gen", "name=gen"]
        )
        with pytest.raises(ConfigError, match=r"search\.sampler='gen'.*cannot be pickled"):
            prepare_study(cfg)
    assert not work.exists()

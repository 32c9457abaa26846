"""Samplers by name: the built-ins registered in ``stagetune.registry.SAMPLERS``, ``auto``
asking the space, the seed, and a sampler of one's own named in the config."""

from __future__ import annotations

import optuna
import pytest
from optuna.samplers import BruteForceSampler, NSGAIISampler, RandomSampler, TPESampler

from stagetune.config import load_config
from stagetune.errors import ConfigError
from stagetune.orchestration.samplers import make_sampler
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

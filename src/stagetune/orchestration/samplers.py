"""The Optuna samplers ``search.sampler`` names, registered in
:data:`stagetune.registry.SAMPLERS`.

Each is a factory ``(search, space, seed) -> optuna.samplers.BaseSampler``: the study's
:class:`~stagetune.config.SearchConfig`, its :class:`~stagetune.search_spaces.SearchSpace`
and the sampler's seed. A package adds its own through the ``stagetune.samplers`` entry-point
group. ``auto`` asks the space which sampler suits it (NSGA-II for two objectives).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from stagetune.config import ExperimentConfig, SearchConfig
from stagetune.registry import SAMPLERS
from stagetune.search_spaces import SearchSpace

if TYPE_CHECKING:
    from optuna.samplers import BaseSampler

__all__ = ["MIN_STARTUP_TRIALS", "STARTUP_SHARE", "SamplerFactory", "make_sampler", "sampler_seed"]

STARTUP_SHARE = 10
"""TPE samples 1 / this of a study's trials at random before it models them."""
MIN_STARTUP_TRIALS = 2


class SamplerFactory(Protocol):
    """What :data:`~stagetune.registry.SAMPLERS` holds."""

    def __call__(self, search: SearchConfig, space: SearchSpace, seed: int) -> BaseSampler: ...


def make_sampler(cfg: ExperimentConfig, space: SearchSpace) -> BaseSampler:
    """The study's seeded sampler: ``search.sampler``, seeded with ``search.sampler_seed`` or,
    when unset, ``train.seed``."""
    factory: SamplerFactory = SAMPLERS.get(cfg.search.sampler)
    return factory(cfg.search, space, sampler_seed(cfg))


def sampler_seed(cfg: ExperimentConfig) -> int:
    """``search.sampler_seed`` or, when unset, ``train.seed``."""
    return cfg.search.sampler_seed if cfg.search.sampler_seed is not None else cfg.train.seed


@SAMPLERS.register("auto")
def auto(search: SearchConfig, space: SearchSpace, seed: int) -> BaseSampler:
    """NSGA-II for a multi-objective study, else the sampler the space prefers
    (:attr:`SearchSpace.preferred_sampler`)."""
    name = "nsga2" if search.multi_objective else space.preferred_sampler
    factory: SamplerFactory = SAMPLERS.get(name)
    return factory(search, space, seed)


@SAMPLERS.register("tpe")
def tpe(search: SearchConfig, space: SearchSpace, seed: int) -> BaseSampler:
    """TPE after a short random start-up: a tenth of the trials (at least 2)."""
    import optuna

    # constant_liar: concurrent trials should not all be drawn next to the same running one.
    # A start-up third of the trials (the earlier default) spent it on random points: on the
    # lattice benchmark TPE then did no better than random search (benchmarks/RESULTS.md).
    return optuna.samplers.TPESampler(
        seed=seed,
        n_startup_trials=max(MIN_STARTUP_TRIALS, search.num_trials // STARTUP_SHARE),
        constant_liar=True,
    )


@SAMPLERS.register("nsga2")
def nsga2(search: SearchConfig, space: SearchSpace, seed: int) -> BaseSampler:
    """NSGA-II (multi-objective: eval loss and compute)."""
    import optuna

    return optuna.samplers.NSGAIISampler(seed=seed)


@SAMPLERS.register("bruteforce")
def bruteforce(search: SearchConfig, space: SearchSpace, seed: int) -> BaseSampler:
    """Every point of a finite space once."""
    import optuna

    return optuna.samplers.BruteForceSampler(seed=seed)


@SAMPLERS.register("random")
def random(search: SearchConfig, space: SearchSpace, seed: int) -> BaseSampler:
    """Uniformly random points."""
    import optuna

    return optuna.samplers.RandomSampler(seed=seed)

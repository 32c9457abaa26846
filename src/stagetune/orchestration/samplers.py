"""The Optuna samplers ``search.sampler`` names, registered in
:data:`stagetune.registry.SAMPLERS`.

Each is a factory ``(search, space, seed) -> optuna.samplers.BaseSampler``: the study's
:class:`~stagetune.config.SearchConfig`, its :class:`~stagetune.search_spaces.SearchSpace`
and the sampler's seed. A package adds its own through the ``stagetune.samplers`` entry-point
group. ``auto`` asks the space which sampler suits it (NSGA-II for two objectives).
"""

from __future__ import annotations

import pickle
import threading
from typing import TYPE_CHECKING, Any, Protocol

from stagetune.config import ExperimentConfig, SearchConfig
from stagetune.errors import ConfigError
from stagetune.registry import SAMPLERS
from stagetune.search_spaces import SearchSpace

if TYPE_CHECKING:
    from optuna.samplers import BaseSampler

__all__ = [
    "MIN_STARTUP_TRIALS",
    "STARTUP_SHARE",
    "PicklableLock",
    "SamplerFactory",
    "make_sampler",
    "sampler_seed",
]

STARTUP_SHARE = 10
"""TPE samples 1 / this of a study's trials at random before it models them."""
MIN_STARTUP_TRIALS = 2


class SamplerFactory(Protocol):
    """What :data:`~stagetune.registry.SAMPLERS` holds."""

    def __call__(self, search: SearchConfig, space: SearchSpace, seed: int) -> BaseSampler: ...


_LOCK_TYPES = (type(threading.Lock()), type(threading.RLock()))


class PicklableLock:
    """A lock that pickles as a new, unlocked lock.

    Tune saves the searcher with its sampler (``tuner.pkl`` and every searcher snapshot, with
    the standard ``pickle``). Optuna 5.1's genetic samplers (NSGA-II, NSGA-III) hold a
    ``threading.Lock`` and no pickling support, so a multi-objective study could not even
    start; the lock only guards the sampler's in-memory generation cache.
    """

    def __init__(self, reentrant: bool = False) -> None:
        self._reentrant = reentrant
        self._lock: Any = threading.RLock() if reentrant else threading.Lock()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        return bool(self._lock.acquire(blocking, timeout))

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __reduce__(self) -> tuple[Any, ...]:
        return (PicklableLock, (self._reentrant,))


def _picklable(sampler: BaseSampler, name: str) -> BaseSampler:
    """``sampler`` with its own locks made picklable; refused (naming ``search.sampler``) when
    it still does not pickle, before anything of the study is written."""
    for attr, value in vars(sampler).items():
        if isinstance(value, _LOCK_TYPES):
            reentrant = isinstance(value, _LOCK_TYPES[1])
            setattr(sampler, attr, PicklableLock(reentrant=reentrant))
    try:
        pickle.dumps(sampler)
    except Exception as exc:
        raise ConfigError(
            "search.sampler",
            name,
            f"its sampler cannot be pickled ({type(exc).__name__}: {exc}), and Tune saves the "
            "sampler with the study; give the sampler __getstate__/__setstate__ or choose "
            "another",
        ) from None
    return sampler


def make_sampler(cfg: ExperimentConfig, space: SearchSpace) -> BaseSampler:
    """The study's seeded sampler: ``search.sampler``, seeded with ``search.sampler_seed`` or,
    when unset, ``train.seed``.

    Raises:
        ConfigError: the sampler cannot be pickled (Tune saves it with the study).
    """
    factory: SamplerFactory = SAMPLERS.get(cfg.search.sampler)
    return _picklable(factory(cfg.search, space, sampler_seed(cfg)), cfg.search.sampler)


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

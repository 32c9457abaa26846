"""Checking the names a config gives against their registries, where the config enters.

``model.family``, ``schedule.growth``, ``schedule.freeze_policy``, ``budget.convention``,
``search.space``, ``search.sampler`` and ``data.source`` name extensions; a name is valid exactly when something is
registered under it (:mod:`stagetune.registry`: built-ins, installed plugins and run-time
registrations alike). Asking a registry imports the module that defines its built-ins (models,
search spaces, ...), so names are checked once, where user input becomes a config
(:func:`stagetune.config.load_config`, :func:`stagetune.config.config_from_dict`), and not each
time a Ray worker rebuilds an already checked config from its dict.
"""

from __future__ import annotations

from pathlib import Path

from stagetune.config.schema import DataConfig, ExperimentConfig
from stagetune.errors import ConfigError
from stagetune.registry import (
    CONVENTIONS,
    DATA_SOURCES,
    FREEZE_POLICIES,
    GROWTH_OPERATORS,
    MODEL_FAMILIES,
    SAMPLERS,
    SEARCH_SPACES,
)

__all__ = ["validate_names"]

_GLOB_CHARS = "*?["


def validate_names(cfg: ExperimentConfig) -> None:
    """Raise :class:`ConfigError` for the first name in ``cfg`` that nothing is registered under
    (fields in the order of the config's sections)."""
    MODEL_FAMILIES.check(cfg.model.family)
    _check_source(cfg.data)
    GROWTH_OPERATORS.check(cfg.schedule.growth)
    FREEZE_POLICIES.check(cfg.schedule.freeze_policy)
    CONVENTIONS.check(cfg.budget.convention)
    SEARCH_SPACES.check(cfg.search.space)
    SAMPLERS.check(cfg.search.sampler)


def _check_source(data: DataConfig) -> None:
    """``data.source``: a registered name, a glob (resolved by the data layer), or a path that
    exists. A path is checked first, so a path needs no data-layer import."""
    source = data.source
    if any(ch in source for ch in _GLOB_CHARS) or Path(source).expanduser().exists():
        return
    if source not in DATA_SOURCES:
        raise ConfigError(
            "data.source",
            source,
            "no such path and no source of that name (registered: "
            f"{', '.join(DATA_SOURCES.names())}); point to an existing file or directory, or "
            "name a source",
        )

"""Choosing the data source for a config, and the registry that makes sources pluggable."""

from __future__ import annotations

import logging
from collections.abc import Callable
from importlib.metadata import entry_points

from stagetune.config import DataConfig
from stagetune.data.base import DataSource
from stagetune.data.builtin import BuiltinCorpus
from stagetune.data.files import TextFiles
from stagetune.data.paths import TOKEN_SUFFIXES, resolve_files
from stagetune.data.shards import TokenShards
from stagetune.errors import ConfigError

_log = logging.getLogger(__name__)

__all__ = [
    "ENTRY_POINT_GROUP",
    "SourceFactory",
    "register_source",
    "registered_sources",
    "source_from_config",
]

SourceFactory = Callable[[DataConfig], DataSource]
"""Builds a source from the data config (for sources selected by a name in ``data.source``)."""

ENTRY_POINT_GROUP = "stagetune.data_sources"
"""Entry-point group of installed packages' sources: ``name = "module:factory"``.

A name registered in the driver alone would not exist in the Ray workers that train each trial
(they read the config and prepare the data themselves); an installed package's entry point
exists in every process of the environment, so a YAML config can name it anywhere. The config
only names a source; what runs is code the environment installed.
"""

_REGISTRY: dict[str, SourceFactory] = {}
_plugins_loaded = False


def _load_plugins() -> None:
    """Register the installed packages' sources, once per process (explicit ones win)."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _REGISTRY:
            continue
        try:
            factory = ep.load()
            if not callable(factory):
                raise TypeError("not callable")
            register_source(ep.name, factory)  # refuses names that are not plain words
        except Exception as exc:  # a broken plugin must not hide the others
            _log.warning("data source plugin %s = %s ignored: %s", ep.name, ep.value, exc)


def register_source(name: str, factory: SourceFactory, *, replace: bool = False) -> None:
    """Register a named source: ``data.source: <name>`` then builds it with ``factory(cfg)``.

    Names are matched exactly, before ``data.source`` is read as a path.
    """
    if not name or any(ch in name for ch in "/\\*?["):
        raise ConfigError("data.source", name, "a source name must be a plain word")
    if name in _REGISTRY and not replace:
        raise ConfigError("data.source", name, "already registered; pass replace=True")
    _REGISTRY[name] = factory


def registered_sources() -> list[str]:
    """Names usable as ``data.source`` besides file paths (installed plugins included)."""
    _load_plugins()
    return sorted(_REGISTRY)


def source_from_config(cfg: DataConfig) -> DataSource:
    """The :class:`DataSource` named by ``cfg.source``.

    ``builtin`` (or another registered name) selects that source; anything else is a file,
    directory or glob: ``.bin`` / ``.npy`` files become :class:`TokenShards`, ``.txt`` /
    ``.jsonl`` / ``.parquet`` files :class:`TextFiles`.

    Raises:
        ConfigError: missing path, no matching files, or text files mixed with token shards.
    """
    _load_plugins()
    factory = _REGISTRY.get(cfg.source)
    if factory is not None:
        return factory(cfg)
    files = resolve_files(cfg.source)
    token_files = [p for p in files if p.suffix in TOKEN_SUFFIXES]
    if token_files and len(token_files) != len(files):
        text_file = next(p for p in files if p.suffix not in TOKEN_SUFFIXES)
        raise ConfigError(
            "data.source",
            cfg.source,
            f"mixes token shards ({token_files[0].name}) and text files ({text_file.name}); "
            "point to one kind",
        )
    if token_files:
        shards = TokenShards(files)
        shards.spec = cfg.source
        return shards
    source = TextFiles(files, text_field=cfg.text_field)
    source.spec = cfg.source  # describe() shows what the user wrote, not the expanded list
    return source


register_source("builtin", lambda cfg: BuiltinCorpus(cfg.max_corpus_mb))

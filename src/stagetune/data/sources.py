"""Choosing the data source for a config (named sources: :data:`stagetune.registry.DATA_SOURCES`).

A name registered in the driver alone (:func:`register_source`) would not exist in the Ray
workers that train each trial (they read the config and prepare the data themselves); an
installed package's entry point (group ``stagetune.data_sources``, ``name = "module:factory"``)
exists in every process of the environment, so a YAML config can name it anywhere. The config
only names a source; what runs is code the environment installed.
"""

from __future__ import annotations

from collections.abc import Callable

from stagetune.config import DataConfig
from stagetune.data.base import DataSource
from stagetune.data.builtin import BuiltinCorpus
from stagetune.data.files import TextFiles
from stagetune.data.paths import TOKEN_SUFFIXES, resolve_files
from stagetune.data.pysources import PySourcesCorpus
from stagetune.data.shards import TokenShards
from stagetune.errors import ConfigError
from stagetune.registry import DATA_SOURCES

__all__ = [
    "SourceFactory",
    "register_source",
    "registered_sources",
    "source_from_config",
]

SourceFactory = Callable[[DataConfig], DataSource]
"""Builds a source from the data config (for sources selected by a name in ``data.source``)."""


def register_source(name: str, factory: SourceFactory, *, replace: bool = False) -> None:
    """Register a named source: ``data.source: <name>`` then builds it with ``factory(cfg)``.

    Names are matched exactly, before ``data.source`` is read as a path.
    """
    DATA_SOURCES.register(name, factory, replace=replace)


def registered_sources() -> list[str]:
    """Names usable as ``data.source`` besides file paths (installed plugins included)."""
    return DATA_SOURCES.names()


@DATA_SOURCES.register("builtin")
def _builtin(cfg: DataConfig) -> DataSource:
    """The interpreter's standard-library source, capped at ``data.max_corpus_mb``."""
    return BuiltinCorpus(cfg.max_corpus_mb)


@DATA_SOURCES.register("pysources")
def _pysources(cfg: DataConfig) -> DataSource:
    """The installed environment's Python sources (site-packages and stdlib), capped at
    ``data.max_corpus_mb``; its selection manifest is cached in ``data.cache_dir``."""
    return PySourcesCorpus(cfg.max_corpus_mb, cache_dir=cfg.resolved_cache_dir())


def source_from_config(cfg: DataConfig) -> DataSource:
    """The :class:`DataSource` named by ``cfg.source``.

    ``builtin``, ``pysources`` (or another registered name) selects that source; anything else is a file,
    directory or glob: ``.bin`` / ``.npy`` files become :class:`TokenShards`, ``.txt`` /
    ``.jsonl`` / ``.parquet`` files :class:`TextFiles`.

    Raises:
        ConfigError: missing path, no matching files, or text files mixed with token shards.
    """
    if cfg.source in DATA_SOURCES:
        factory: SourceFactory = DATA_SOURCES.get(cfg.source)
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

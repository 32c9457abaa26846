"""Turning ``data.source`` (a file, a directory or a glob) into a sorted list of data files."""

from __future__ import annotations

import glob
from pathlib import Path

from stagetune.errors import ConfigError

__all__ = ["TEXT_SUFFIXES", "TOKEN_SUFFIXES", "resolve_files"]

TEXT_SUFFIXES = (".txt", ".jsonl", ".parquet")
"""File types read as text documents."""
TOKEN_SUFFIXES = (".bin", ".npy")
"""File types read as pre-tokenised ids."""
_SUPPORTED = TEXT_SUFFIXES + TOKEN_SUFFIXES
_SUPPORTED_TEXT = ", ".join(_SUPPORTED)


def _is_glob(spec: str) -> bool:
    return any(ch in spec for ch in "*?[")


def _visible(path: Path, root: Path) -> bool:
    # Skip hidden files and anything under a hidden directory (.git, .cache, editor droppings).
    return not any(part.startswith(".") for part in path.relative_to(root).parts)


def resolve_files(spec: str, field: str = "data.source") -> list[Path]:
    """Resolve a file, directory (searched recursively) or glob to sorted data files.

    Directories and globs keep only supported file types (``.txt``, ``.jsonl``, ``.parquet``,
    ``.bin``, ``.npy``), so a README beside the shards does no harm; a single file of another
    type is an error. The order is the sorted path order, so it is the same on every machine.

    Raises:
        ConfigError: the path does not exist, nothing matches, or a named file has an
            unsupported type.
    """
    if _is_glob(spec):
        matches = [Path(p) for p in glob.glob(str(Path(spec).expanduser()), recursive=True)]
        files = sorted(p for p in matches if p.is_file() and p.suffix in _SUPPORTED)
        if not files:
            raise ConfigError(
                field, spec, f"no {_SUPPORTED_TEXT} files match the glob; check the pattern"
            )
        return files
    path = Path(spec).expanduser()
    if not path.exists():
        raise ConfigError(
            field,
            spec,
            "the path does not exist; point to an existing file, directory or glob, "
            "or use 'builtin'",
        )
    if path.is_dir():
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and p.suffix in _SUPPORTED and _visible(p, path)
        )
        if not files:
            raise ConfigError(
                field, spec, f"the directory holds no {_SUPPORTED_TEXT} files; add data files"
            )
        return files
    if path.suffix not in _SUPPORTED:
        raise ConfigError(
            field, spec, f"unsupported file type {path.suffix or '(none)'}; use {_SUPPORTED_TEXT}"
        )
    return [path]

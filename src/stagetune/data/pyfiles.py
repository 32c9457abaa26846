"""Listing the ``.py`` files of a source tree, and the fixed pseudo-random order corpora use.

Shared by the two offline corpora (:mod:`stagetune.data.builtin`, the standard library, and
:mod:`stagetune.data.pysources`, the installed environment): both list candidates in sorted
path order and visit them in the order of the SHA-256 of their relative path, so that a size
cap takes a sample of the whole tree rather than its alphabetical prefix.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

__all__ = ["PYCACHE", "hash_order", "list_py_files"]

PYCACHE = "__pycache__"
"""Bytecode directories: never source."""


def list_py_files(root: Path, excluded_dirs: frozenset[str]) -> list[str]:
    """Relative POSIX paths of every ``.py`` file under ``root``, sorted.

    Directories named in ``excluded_dirs`` are pruned while walking (not listed and then
    filtered: the stdlib's test suite alone is ~3x the rest). Symlinked directories are not
    followed, so a tree that links into itself is listed once.
    """
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in excluded_dirs]
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        prefix = "" if rel_dir == "." else rel_dir + "/"
        found.extend(prefix + name for name in filenames if name.endswith(".py"))
    return sorted(found)


def hash_order(names: Iterable[str]) -> list[str]:
    """``names`` ordered by the SHA-256 of each name: a fixed shuffle, the same on every
    machine and in every process."""
    return sorted(names, key=lambda name: hashlib.sha256(name.encode("utf-8")).hexdigest())

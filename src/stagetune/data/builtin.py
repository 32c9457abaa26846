"""The built-in offline corpus: the running interpreter's standard-library Python source."""

from __future__ import annotations

import hashlib
import platform
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

from stagetune.data.base import TextSource
from stagetune.data.pyfiles import PYCACHE, hash_order, list_py_files
from stagetune.errors import ConfigError

__all__ = ["BuiltinCorpus"]

_EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", PYCACHE})
_TEST_DIRS = frozenset({"test", "tests", "idle_test"})
_MIB = 1024 * 1024


class BuiltinCorpus(TextSource):
    """The ``.py`` files of the interpreter's standard library, one document per file.

    Selection is deterministic for a given Python build: every candidate file (no
    ``site-packages``, no test packages unless ``include_tests``) is listed in sorted path
    order, then visited in the order of the SHA-256 of its relative path and taken while it
    fits in ``max_mb``. The hash order is a fixed pseudo-random shuffle: the capped corpus is a
    sample of the whole library rather than its alphabetical prefix, and the held-out tail
    (the eval split) is a mix of modules instead of whichever package sorts last.

    Args:
        max_mb: cap on the corpus size in MiB of source bytes.
        include_tests: also take the stdlib's test packages (~18 MiB more code).
        root: the library directory; default ``sysconfig.get_paths()["stdlib"]``.
    """

    name: ClassVar[str] = "builtin"

    def __init__(
        self, max_mb: float = 6.0, *, include_tests: bool = False, root: str | Path | None = None
    ) -> None:
        if not max_mb > 0:
            raise ConfigError("data.max_corpus_mb", max_mb, "use a positive size")
        self.max_mb = float(max_mb)
        self.include_tests = include_tests
        self.root = Path(root) if root is not None else Path(sysconfig.get_paths()["stdlib"])
        self._files: list[Path] | None = None
        self._fingerprint: str | None = None

    def _candidates(self) -> list[str]:
        """Relative POSIX paths of every eligible ``.py`` file, sorted."""
        if not self.root.is_dir():
            raise ConfigError(
                "data.source",
                "builtin",
                f"the standard library directory {self.root} is missing; point data.source to "
                "text files instead",
            )
        excluded = _EXCLUDED_DIRS if self.include_tests else _EXCLUDED_DIRS | _TEST_DIRS
        return list_py_files(self.root, excluded)

    def files(self) -> list[Path]:
        """The selected files, in corpus order."""
        if self._files is None:
            budget = int(self.max_mb * _MIB)
            ordered = hash_order(self._candidates())
            chosen: list[Path] = []
            for rel in ordered:
                path = self.root / rel
                if not path.is_file():
                    continue
                size = path.stat().st_size
                # Skip a file that would overflow the cap but keep filling with smaller ones,
                # so a small cap still yields a usable corpus.
                if 0 < size <= budget:
                    chosen.append(path)
                    budget -= size
            self._files = chosen
        return list(self._files)

    def iter_texts(self) -> Iterator[str]:
        """Yield each selected file's text (UTF-8; undecodable bytes replaced)."""
        for path in self.files():
            yield path.read_bytes().decode("utf-8", errors="replace")

    def fingerprint(self) -> str:
        """Digest of the Python version and every selected file's path and bytes."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            digest.update(f"builtin|{platform.python_version()}".encode())
            for path in self.files():
                digest.update(path.relative_to(self.root).as_posix().encode("utf-8") + b"\0")
                digest.update(hashlib.sha256(path.read_bytes()).digest())
            self._fingerprint = digest.hexdigest()[:16]
        return self._fingerprint

    def size_bytes(self) -> int:
        """Total size of the selected files in bytes."""
        return sum(p.stat().st_size for p in self.files())

    def describe(self) -> str:
        files = self.files()
        return (
            f"builtin corpus: {len(files)} stdlib .py files of Python "
            f"{platform.python_version()} ({self.size_bytes() / _MIB:.2f} MiB, cap "
            f"{self.max_mb:g} MiB) from {self.root}"
        )

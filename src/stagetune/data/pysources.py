"""The environment corpus, ``data.source: pysources``: every Python source file installed.

The ``.py`` files of the running interpreter's environment, one document per file: its
site-packages (``sysconfig`` ``purelib`` and ``platlib``; 342 MiB taken of an environment with
stagetune's dependencies) and its standard library (30 MiB taken, its test packages included:
8 % more data at no cost). Large enough to train a small model for tens of tokens per parameter without
repeating data, and offline: nothing outside the installed environment is read.

The name says what it holds, Python sources, and stays true whichever of the environment's
directories contribute; ``builtin`` remains the small stdlib-only default.

Selection, deterministic for a given environment:

* candidates are listed in sorted path order (``<root label>/<relative path>``, so two
  environments with the same packages list the same names wherever they are installed), then
  visited in the SHA-256 order of their names (the fixed shuffle of
  :class:`~stagetune.data.BuiltinCorpus`): a size cap takes a sample of every package, and the
  held-out tail is a sample of files too;
* a file is skipped when it is empty or blank, larger than :data:`MAX_FILE_BYTES` (generated
  tables), not UTF-8 or holding a NUL byte (binary-ish), or holds a line longer than
  :data:`MAX_LINE_CHARS` characters (machine-written: protobuf descriptors, unicode tables,
  embedded data), or when its bytes equal those of a file already taken (many packages vendor
  the same files);
* files are taken while they fit in ``data.max_corpus_mb`` (a file that would overflow it is
  passed over, smaller ones still fill the rest).

Reading every candidate takes seconds, so the selection is cached (a JSON manifest under
``<cache_dir>/pysources/``) keyed by the fingerprint, which only lists and ``stat`` s the
candidates: their names, sizes and modification times. pip writes every file it installs
with the time of installation, so installing, upgrading or removing a package changes the key;
a file rewritten in place keeping its size and modification time would not (nothing installs
that way). The token cache is keyed by the same fingerprint, so a prepared corpus is reused
without reading a source file.

A sweep that must not repeat data raises the cap above the corpus size
(``data.max_corpus_mb: 400`` or ``--set data.max_corpus_mb=400``); the built-in tokenizer
still trains on only the first :data:`TOKENIZER_SAMPLE_MB` MiB of the corpus.
"""

from __future__ import annotations

import hashlib
import json
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from stagetune.data.base import TextSource
from stagetune.data.cache import file_lock, stable_hash, write_json_atomic
from stagetune.data.pyfiles import PYCACHE, hash_order, list_py_files
from stagetune.errors import ConfigError

__all__ = [
    "MAX_FILE_BYTES",
    "MAX_LINE_CHARS",
    "SKIP_REASONS",
    "TOKENIZER_SAMPLE_MB",
    "CorpusSelection",
    "PySourcesCorpus",
    "environment_roots",
]

MAX_FILE_BYTES = 1 << 20
"""Files above 1 MiB are skipped: generated tables and dumps, not code a person wrote."""
MAX_LINE_CHARS = 1000
"""A file with a longer line is skipped as machine-written (serialised protobuf descriptors,
unicode tables, embedded data): 123 files, about 1 % of the bytes, in stagetune's environment."""
TOKENIZER_SAMPLE_MB = 6.0
"""The built-in tokenizer trains on the corpus's first 6 MiB (the ``builtin`` default's size):
a sample of every package, as the corpus is shuffled, and seconds of BPE, not minutes."""

EMPTY, HUGE, BINARY, GENERATED, DUPLICATE = "empty", "huge", "binary", "generated", "duplicate"
SKIP_REASONS = (EMPTY, HUGE, BINARY, GENERATED, DUPLICATE)
"""Why a candidate file is skipped (see the module docstring for each rule)."""

# Bump when the selection rules change, so cached manifests and tokens are not reused.
_SELECTION_VERSION = 1
_MANIFEST_DIR = "pysources"
# In the standard library, the environment's packages are not stdlib (they are their own
# roots); in site-packages only bytecode directories are pruned.
_STDLIB_EXCLUDED = frozenset({"site-packages", "dist-packages", PYCACHE})
_PACKAGES_EXCLUDED = frozenset({PYCACHE})
_ROOT_LABELS = ("stdlib", "purelib", "platlib")
_MIB = 1024 * 1024


def environment_roots() -> dict[str, Path]:
    """The running interpreter's source directories by ``sysconfig`` name, each once.

    ``purelib`` and ``platlib`` are usually the same directory (then only ``purelib`` is
    kept); a directory that does not exist is left out.
    """
    paths = sysconfig.get_paths()
    roots: dict[str, Path] = {}
    seen: set[Path] = set()
    for label in _ROOT_LABELS:
        path = Path(paths[label])
        if path.is_dir() and path.resolve() not in seen:
            roots[label] = path
            seen.add(path.resolve())
    return roots


@dataclass(frozen=True)
class _Candidate:
    name: str
    path: Path
    size: int
    mtime_ns: int


@dataclass
class CorpusSelection:
    """The outcome of selecting files: what was taken, and why the others were not.

    Attributes:
        files: ``(name, bytes)`` of every file taken, in corpus order; a name is
            ``<root label>/<path relative to the root>``.
        candidates: ``.py`` files found.
        skipped: files skipped per reason of :data:`SKIP_REASONS`; the rest of the
            candidates that were not taken did not fit in the cap.
    """

    files: list[tuple[str, int]]
    candidates: int
    skipped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SKIP_REASONS, 0))

    @property
    def size_bytes(self) -> int:
        """Bytes of the files taken."""
        return sum(size for _, size in self.files)

    @property
    def over_cap(self) -> int:
        """Candidates neither taken nor skipped: they did not fit in the cap."""
        return self.candidates - len(self.files) - sum(self.skipped.values())

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable form (the cached manifest)."""
        return {"files": self.files, "candidates": self.candidates, "skipped": self.skipped}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CorpusSelection:
        """Read back :meth:`to_json`."""
        files = [(str(name), int(size)) for name, size in data["files"]]
        return cls(files, int(data["candidates"]), {k: int(v) for k, v in data["skipped"].items()})


def _content_skip_reason(data: bytes) -> str | None:
    """Why a file's bytes are not corpus material, or ``None`` when they are."""
    if b"\0" in data:
        return BINARY
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return BINARY
    if not text.strip():
        return EMPTY
    if max(map(len, text.splitlines())) > MAX_LINE_CHARS:
        return GENERATED
    return None


class PySourcesCorpus(TextSource):
    """The ``.py`` files of the installed environment, one document per file.

    Args:
        max_mb: cap on the corpus size in MiB of source bytes (``data.max_corpus_mb``).
        root: one directory to take the files from instead of the environment's (tests, or
            another environment's site-packages).
        cache_dir: where the selection manifest is cached; ``None`` selects in memory on
            every new instance (reading up to ``max_mb`` MiB of candidates).

    The eval split is made of whole files (``split_by_document``): the files last in corpus
    order, about ``data.eval_fraction`` of the tokens.
    """

    name: ClassVar[str] = "pysources"
    split_by_document: ClassVar[bool] = True
    tokenizer_sample_mb: ClassVar[float | None] = TOKENIZER_SAMPLE_MB

    def __init__(
        self,
        max_mb: float = 6.0,
        *,
        root: str | Path | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        if not max_mb > 0:
            raise ConfigError("data.max_corpus_mb", max_mb, "use a positive size")
        self.max_mb = float(max_mb)
        self.roots = {"root": Path(root)} if root is not None else environment_roots()
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._candidates: list[_Candidate] | None = None
        self._fingerprint: str | None = None
        self._selection: CorpusSelection | None = None

    # ---------------------------------------------------------------------------------------
    # candidates and fingerprint (metadata only)

    def _scan(self) -> list[_Candidate]:
        """Every ``.py`` file under the roots with its size and mtime, sorted by name."""
        if self._candidates is None:
            found: list[_Candidate] = []
            for label, root in self.roots.items():
                if not root.is_dir():
                    raise ConfigError(
                        "data.source",
                        self.name,
                        f"the source directory {root} is missing; point data.source to text "
                        "files instead",
                    )
                excluded = _STDLIB_EXCLUDED if label == "stdlib" else _PACKAGES_EXCLUDED
                for rel in list_py_files(root, excluded):
                    path = root / rel
                    try:
                        stat = path.stat()
                    except OSError:  # a dangling symlink, or removed while listing
                        continue
                    found.append(_Candidate(f"{label}/{rel}", path, stat.st_size, stat.st_mtime_ns))
            self._candidates = sorted(found, key=lambda c: c.name)
        return list(self._candidates)

    def fingerprint(self) -> str:
        """Digest of the cap, the selection rules, the tokenizer sample's size and every
        candidate's name, size and mtime.

        Lists and ``stat`` s the candidates only: no file is read (see the module docstring
        for why metadata identifies an installed file).
        """
        if self._fingerprint is None:
            entries = [(c.name, c.size, c.mtime_ns) for c in self._scan()]
            self._fingerprint = stable_hash(
                self.name,
                _SELECTION_VERSION,
                self.max_mb,
                self.tokenizer_sample_mb,
                MAX_FILE_BYTES,
                MAX_LINE_CHARS,
                entries,
            )
        return self._fingerprint

    # ---------------------------------------------------------------------------------------
    # selection (reads files; cached)

    def _read(self, path: Path) -> bytes:
        """A candidate's bytes: the one place this source reads file contents."""
        return path.read_bytes()

    def _select(self) -> CorpusSelection:
        by_name = {c.name: c for c in self._scan()}
        selection = CorpusSelection([], len(by_name))
        budget = int(self.max_mb * _MIB)
        seen: set[bytes] = set()
        for name in hash_order(by_name):
            candidate = by_name[name]
            if candidate.size == 0:
                selection.skipped[EMPTY] += 1
                continue
            if candidate.size > MAX_FILE_BYTES:
                selection.skipped[HUGE] += 1
                continue
            if candidate.size > budget:
                continue  # over the cap; smaller files may still fit
            try:
                data = self._read(candidate.path)
            except OSError:  # removed since it was listed
                continue
            reason = _content_skip_reason(data)
            if reason is None:
                digest = hashlib.sha256(data).digest()
                reason = DUPLICATE if digest in seen else None
                seen.add(digest)
            if reason is not None:
                selection.skipped[reason] += 1
                continue
            selection.files.append((name, len(data)))
            budget -= len(data)
        return selection

    def selection(self) -> CorpusSelection:
        """The files taken and the counts of those skipped (from the cached manifest)."""
        if self._selection is None:
            if self.cache_dir is None:
                self._selection = self._select()
            else:
                manifest = self.cache_dir / _MANIFEST_DIR / f"{self.fingerprint()}.json"
                self._selection = self._cached(manifest)
        return self._selection

    def _cached(self, manifest: Path) -> CorpusSelection:
        def load() -> CorpusSelection | None:
            if not manifest.is_file():
                return None
            return CorpusSelection.from_json(json.loads(manifest.read_text(encoding="utf-8")))

        hit = load()
        if hit is not None:
            return hit
        with file_lock(manifest):
            # Another worker may have written it while this one waited for the lock.
            hit = load()
            if hit is not None:
                return hit
            selection = self._select()
            write_json_atomic(manifest, selection.to_json())
        return selection

    def _path(self, name: str) -> Path:
        label, _, rel = name.partition("/")
        return self.roots[label] / rel

    def files(self) -> list[Path]:
        """The selected files, in corpus order."""
        return [self._path(name) for name, _ in self.selection().files]

    def iter_texts(self) -> Iterator[str]:
        """Yield each selected file's text (checked as UTF-8 when selected)."""
        for path in self.files():
            yield self._read(path).decode("utf-8", errors="replace")

    def size_bytes(self) -> int:
        """Total size of the selected files in bytes."""
        return self.selection().size_bytes

    def describe(self) -> str:
        sel = self.selection()
        skipped = ", ".join(f"{sel.skipped[r]:,} {r}" for r in SKIP_REASONS)
        roots = ", ".join(f"{label} {path}" for label, path in self.roots.items())
        return (
            f"pysources corpus: {len(sel.files):,} of {sel.candidates:,} .py files "
            f"({sel.size_bytes / _MIB:.2f} MiB, cap {self.max_mb:g} MiB; skipped {skipped}; "
            f"{sel.over_cap:,} over the cap), eval split by file, from {roots}"
        )

"""Helpers shared by the data tests: small corpora written to tmp dirs, a user source."""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stagetune.config import DataConfig
from stagetune.data import (
    TextSource,
)
from stagetune.data.cache import stable_hash
from stagetune.errors import ConfigError

_WORDS = [
    *("alpha", "beta", "gamma", "delta", "layer", "stage", "growth", "frozen", "tensor"),
    *("token", "model", "batch", "loss", "compute", "budget", "schedule", "train", "eval"),
    *("python", "def", "return", "class", "import", "yield", "lambda"),
]


def make_docs(n: int, seed: int = 0, words: int = 60) -> list[str]:
    """Deterministic pseudo-English documents (with some unicode)."""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        body = " ".join(rng.choice(_WORDS) for _ in range(words))
        docs.append(f"doc {i}: {body}.\nπ≈3.14 — déjà vu\n")
    return docs


DOCS = make_docs(40)
"""Forty pseudo-English documents."""
IDS = (np.arange(5000) * 7) % 300
"""Five thousand token ids below 300."""


def write_txt(directory: Path, docs: list[str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for i, doc in enumerate(docs):
        (directory / f"{i:03d}.txt").write_text(doc, encoding="utf-8")
    return directory


def write_jsonl(path: Path, docs: list[str], field: str = "text") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({field: d, "id": i}) for i, d in enumerate(docs)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_parquet(path: Path, docs: list[str], field: str = "text") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({field: docs, "id": list(range(len(docs)))}), path)
    return path


def write_raw_bin(path: Path, ids: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.asarray(ids, dtype=np.uint16).tofile(path)
    return path


def write_llmc_bin(path: Path, ids: np.ndarray) -> Path:
    """An llm.c / FineWeb shard: 256 int32 header (magic, version, count) + uint16 ids."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = np.zeros(256, dtype=np.int32)
    header[:3] = (20240520, 1, len(ids))
    with open(path, "wb") as handle:
        handle.write(header.tobytes())
        handle.write(np.asarray(ids, dtype=np.uint16).tobytes())
    return path


def cfg_for(tmp_path: Path, source: str = "builtin", **kw: object) -> DataConfig:
    kw.setdefault("vocab_size", 300)
    kw.setdefault("seq_len", 8)
    return DataConfig(source=source, cache_dir=str(tmp_path / "cache"), **kw)  # type: ignore[arg-type]


def one_line(exc: pytest.ExceptionInfo[ConfigError]) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


class ListSource(TextSource):
    """A user-defined source: the extension point in its smallest form."""

    name: ClassVar[str] = "list"

    def __init__(self, docs: list[str]) -> None:
        self.docs = docs

    def iter_texts(self) -> Iterator[str]:
        yield from self.docs

    def fingerprint(self) -> str:
        return stable_hash("list", self.docs)

    def describe(self) -> str:
        return f"{len(self.docs)} in-memory documents"


def write_single_line(path: Path, megabytes: float) -> Path:
    """A text of pseudo-words on one line (no newline at all), ``megabytes`` MiB long."""
    rng = random.Random(0)
    words = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 9)))
             for _ in range(5000)]  # fmt: skip
    target = int(megabytes * 1024 * 1024)
    with open(path, "w", encoding="utf-8") as handle:
        written = 0
        while written < target:
            line = " ".join(rng.choices(words, k=10_000)) + " "
            handle.write(line)
            written += len(line)
    return path


FAKE_PACKAGES = 6
"""Packages in :func:`write_site_packages`'s tree."""
FAKE_MODULES = 5
"""Distinct modules per package (``mod0.py`` … ``mod4.py``)."""


def write_site_packages(root: Path) -> Path:
    """A small fake site-packages tree for the ``pysources`` corpus.

    ``pkg0`` … ``pkg5``, each an empty ``__init__.py`` and five modules of distinct code (30
    corpus files), plus what the corpus must skip: two copies of ``pkg1/mod0.py`` (a vendored
    one under ``pkg0/_vendor``), a Latin-1 file and one with NUL bytes (binary-ish), a module
    with a 2000-character line (generated), one over 1 MiB (huge), a blank one (empty), and
    files that are no candidates at all (``__pycache__``, a ``.txt``).
    """
    for p in range(FAKE_PACKAGES):
        pkg = root / f"pkg{p}"
        pkg.mkdir(parents=True, exist_ok=True)
        (pkg / "__init__.py").write_text("", encoding="utf-8")
        for m in range(FAKE_MODULES):
            body = make_docs(1, seed=100 * p + m, words=40 + 7 * m)[0]
            code = f'"""Module {p}.{m}."""\n\n\ndef f_{p}_{m}() -> str:\n    return {body!r}\n'
            (pkg / f"mod{m}.py").write_text(code, encoding="utf-8")
    vendored = root / "pkg0" / "_vendor"
    vendored.mkdir()
    shutil.copyfile(root / "pkg1" / "mod0.py", vendored / "mod0.py")
    shutil.copyfile(root / "pkg1" / "mod0.py", root / "pkg2" / "copy_of_mod0.py")
    (root / "pkg3" / "latin1.py").write_bytes("# café\nx = 1\n".encode("latin-1"))
    (root / "pkg3" / "nul.py").write_bytes(b"x = 1\n\0\0\n")
    (root / "pkg4" / "table_pb2.py").write_text(f"DATA = '{'a' * 2000}'\n", encoding="utf-8")
    (root / "pkg4" / "huge.py").write_text("x = 1\n" * 200_000, encoding="utf-8")
    (root / "pkg5" / "blank.py").write_text("\n   \n", encoding="utf-8")
    (root / "pkg5" / "__pycache__").mkdir()
    (root / "pkg5" / "__pycache__" / "cached.py").write_text("x = 1\n", encoding="utf-8")
    (root / "pkg5" / "notes.txt").write_text("not python\n", encoding="utf-8")
    return root

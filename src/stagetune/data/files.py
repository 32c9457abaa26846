"""Text documents from user files: ``.txt`` (one document per file), ``.jsonl`` and ``.parquet``
(one document per record, text in ``text_field``)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import ClassVar

from stagetune.data.base import TextSource
from stagetune.data.cache import stable_hash
from stagetune.data.decode import read_utf8_chunks
from stagetune.data.paths import TEXT_SUFFIXES, resolve_files
from stagetune.errors import ConfigError, shown

__all__ = ["TextFiles"]

_PARQUET_BATCH = 1024


class TextFiles(TextSource):
    """Documents read from text, JSON-lines or Parquet files, in sorted file order.

    Args:
        paths: a file, directory or glob (``data.source``), or an explicit list of files.
        text_field: the JSONL key / Parquet column holding the text.

    A ``.txt`` file is one document, streamed in chunks (memory does not grow with its size
    or its longest line) and refused when much of it is not UTF-8. Null or empty records are
    skipped.
    """

    name: ClassVar[str] = "text_files"

    def __init__(self, paths: str | Path | Sequence[str | Path], *, text_field: str = "text"):
        if isinstance(paths, (str, Path)):
            self.spec = str(paths)
            files = resolve_files(self.spec)
        else:
            files = [Path(p) for p in paths]
            self.spec = ", ".join(str(p) for p in files) or "(no files)"
            for p in files:
                if not p.is_file():
                    raise ConfigError("data.source", str(p), "the file does not exist")
        if not files:
            raise ConfigError("data.source", self.spec, "no files given; name at least one")
        bad = [p for p in files if p.suffix not in TEXT_SUFFIXES]
        if bad:
            raise ConfigError(
                "data.source",
                str(bad[0]),
                f"not a text file; text sources take {', '.join(TEXT_SUFFIXES)} "
                "(token shards and text cannot be mixed)",
            )
        if not text_field:
            raise ConfigError("data.text_field", text_field, "name the field holding the text")
        self.files = files
        self.text_field = text_field

    def iter_texts(self) -> Iterator[str]:
        """Yield documents file by file, records in file order."""
        for document in self.iter_documents():
            text = "".join(document)
            if text:
                yield text

    def iter_documents(self) -> Iterator[Iterator[str]]:
        """Documents as chunk streams: a ``.txt`` file in chunks, a record in one."""
        for path in self.files:
            if path.suffix == ".txt":
                yield read_utf8_chunks(path)
            elif path.suffix == ".jsonl":
                yield from (iter((text,)) for text in self._iter_jsonl(path))
            else:
                yield from (iter((text,)) for text in self._iter_parquet(path))

    def _iter_jsonl(self, path: Path) -> Iterator[str]:
        field = self.text_field
        with open(path, encoding="utf-8", errors="replace") as handle:
            for lineno, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ConfigError(
                        "data.source",
                        f"{path}:{lineno}",
                        f"line is not valid JSON ({exc.msg}); write one JSON object per line",
                    ) from None
                if not isinstance(record, dict) or field not in record:
                    keys = sorted(record) if isinstance(record, dict) else type(record).__name__
                    raise ConfigError(
                        "data.text_field",
                        field,
                        f"{path}:{lineno} has no {field!r} key (found {shown(keys)}); "
                        "set data.text_field to the key holding the text",
                    )
                value = record[field]
                if value is None:
                    continue
                if not isinstance(value, str):
                    raise ConfigError(
                        "data.text_field",
                        field,
                        f"{path}:{lineno} holds a {type(value).__name__}, not a string; "
                        "name a text field",
                    )
                if value:
                    yield value

    def _iter_parquet(self, path: Path) -> Iterator[str]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        field = self.text_field
        try:
            parquet = pq.ParquetFile(path)
        except (pa.ArrowException, OSError) as exc:
            raise ConfigError(
                "data.source", str(path), f"not a readable Parquet file ({exc})"
            ) from None
        columns = parquet.schema_arrow.names
        if field not in columns:
            raise ConfigError(
                "data.text_field",
                field,
                f"{path} has no {field!r} column (columns: {columns}); "
                "set data.text_field to the text column",
            )
        column_type = parquet.schema_arrow.field(field).type
        if not (pa.types.is_string(column_type) or pa.types.is_large_string(column_type)):
            raise ConfigError(
                "data.text_field",
                field,
                f"column {field!r} of {path} has type {column_type}, not string; "
                "name a text column",
            )
        for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH, columns=[field]):
            for value in batch.column(0).to_pylist():
                if value:
                    yield value

    def fingerprint(self) -> str:
        """Digest of each file's absolute path, size and modification time, and the field.

        Hashing metadata rather than contents keeps fingerprinting free for large corpora;
        any rewrite of a file changes its mtime and so invalidates the token cache.
        """
        entries = []
        for path in self.files:
            stat = path.stat()
            entries.append((str(path.resolve()), stat.st_size, stat.st_mtime_ns))
        return stable_hash("text_files", self.text_field, entries)

    def describe(self) -> str:
        size = sum(p.stat().st_size for p in self.files) / (1024 * 1024)
        kinds = sorted({p.suffix for p in self.files})
        return (
            f"text files: {len(self.files)} file(s) ({', '.join(kinds)}, {size:.2f} MiB, "
            f"field {self.text_field!r}) from {self.spec}"
        )

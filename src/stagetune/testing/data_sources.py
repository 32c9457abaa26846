"""The data-source contract, as a pytest suite (subclass it; override ``make_source``).

A source is a :class:`~stagetune.data.TextSource` (documents) or a
:class:`~stagetune.data.TokenSource` (token arrays) with a name and a description. Every worker
of a trial prepares its own data from it, so it must be deterministic (two passes and a fresh
instance give the same content), non-empty, and carry a stable hex fingerprint (the token
cache's key); and the whole preparation pipeline must accept it, holding out its eval split
where the source says (a text source with ``split_by_document`` at a document's start, every
other source at the stream's tail). The suite prepares tokens with a small builtin tokenizer
(vocabulary 300) in a temporary cache.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from stagetune.config import DataConfig
from stagetune.data import DataSource, TextSource, TokenSource, prepare_data
from stagetune.data.split import read_document_starts, tail_split

__all__ = ["DataSourceSuite", "SourceBuilder", "source_content"]

SourceBuilder = Callable[[], DataSource]
"""Builds a fresh instance of the source under test."""


def source_content(source: DataSource) -> list[object]:
    """Everything ``source`` yields: its documents, or its token arrays as numpy arrays."""
    if isinstance(source, TextSource):
        return list(source.iter_texts())
    assert isinstance(source, TokenSource)
    return [np.array(a) for a in source.iter_token_arrays()]


def _same(a: list[object], b: list[object]) -> bool:
    return len(a) == len(b) and all(
        np.array_equal(x, np.asarray(y)) if isinstance(x, np.ndarray) else x == y
        for x, y in zip(a, b)
    )


class DataSourceSuite:
    """Tests every data source passes. Override :meth:`make_source`."""

    @pytest.fixture
    def make_source(self, tmp_path: Path) -> SourceBuilder:
        """A builder of fresh instances of the source under test (write its files here)."""
        raise NotImplementedError("override the `make_source` fixture with your source builder")

    @staticmethod
    def data_config(tmp_path: Path) -> DataConfig:
        """The data config the suite prepares with (its own cache under ``tmp_path``)."""
        return DataConfig(cache_dir=str(tmp_path / "cache"), vocab_size=300, seq_len=8)

    def test_is_a_described_source(self, make_source: SourceBuilder) -> None:
        source = make_source()
        assert isinstance(source, (TextSource, TokenSource))
        assert isinstance(source.name, str) and source.name
        assert isinstance(source.describe(), str) and source.describe()

    def test_content_is_deterministic_and_not_empty(self, make_source: SourceBuilder) -> None:
        source = make_source()
        first = source_content(source)
        assert first and any(len(item) for item in first)  # type: ignore[arg-type]
        assert _same(first, source_content(source)), "a second pass differs"
        assert _same(first, source_content(make_source())), "a fresh instance differs"

    def test_fingerprint_is_a_stable_hex_digest(self, make_source: SourceBuilder) -> None:
        source = make_source()
        fp = source.fingerprint()
        assert fp == source.fingerprint() == make_source().fingerprint()
        int(fp, 16)

    def test_the_pipeline_prepares_it(self, make_source: SourceBuilder, tmp_path: Path) -> None:
        cfg = self.data_config(tmp_path)
        prepared = prepare_data(cfg, source=make_source())
        assert prepared.num_tokens > 0
        assert prepared.fingerprint == prepare_data(cfg, source=make_source()).fingerprint

    def test_the_eval_split_is_where_the_source_says(
        self, make_source: SourceBuilder, tmp_path: Path
    ) -> None:
        cfg = self.data_config(tmp_path)
        source = make_source()
        prepared = prepare_data(cfg, source=source)
        start = prepared.eval_start()
        if not (isinstance(source, TextSource) and source.split_by_document):
            assert prepared.document_starts is None
            assert start == tail_split(prepared.num_tokens, cfg.eval_fraction)
            return
        assert prepared.document_starts is not None
        starts = read_document_starts(prepared.document_starts)
        # One start per non-empty document, each at the end-of-text token that opens it.
        assert len(starts) == sum(1 for text in source.iter_texts() if text)
        assert starts[0] == 0 and np.all(np.diff(starts) > 0)
        assert 0 < start < prepared.num_tokens and start in set(starts.tolist())
        tokens = prepared.open()
        assert all(tokens.read(int(s), 1)[0] == prepared.eot_id for s in starts)

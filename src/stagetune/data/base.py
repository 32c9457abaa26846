"""The data-source extension point: where the text or the token ids of a run come from.

A source is either a :class:`TextSource` (documents as strings, tokenised by stagetune) or a
:class:`TokenSource` (already tokenised ids on disk). New sources subclass one of the two and
can be registered by name with :func:`stagetune.data.register_source`.

Contract every source keeps (checked by the conformance tests):

* **deterministic**: iterating twice yields the same documents / ids in the same order;
* **non-empty**: at least one non-empty document or one token;
* **stable fingerprint**: :meth:`DataSource.fingerprint` is the same for the same data across
  instances and processes (it keys the token cache) and changes when the data changes.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from typing import ClassVar

import numpy as np

from stagetune.data.tokens import TokenSegment

__all__ = ["DataSource", "TextSource", "TokenSource"]


class DataSource(abc.ABC):
    """Base class of all data sources."""

    name: ClassVar[str] = "source"
    """Short kind name (``builtin``, ``text_files``, ``token_shards``, ...)."""

    @abc.abstractmethod
    def describe(self) -> str:
        """One human-readable line for the CLI and logs."""

    @abc.abstractmethod
    def fingerprint(self) -> str:
        """A stable hex digest identifying the data (and options that change its tokens)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.describe()}>"


class TextSource(DataSource):
    """A source of raw text documents; stagetune tokenises them (EOT between documents)."""

    split_by_document: ClassVar[bool] = False
    """``True``: the eval split begins at a document boundary (the document start nearest to
    the last ``data.eval_fraction`` of the tokens), so no document lends tokens to both
    splits. ``False``: the eval split is the exact tail of the token stream, which may cut
    the document it starts in."""
    tokenizer_sample_mb: ClassVar[float | None] = None
    """Cap (MiB) on the text the built-in tokenizer trains on, below ``data.max_corpus_mb``,
    for a source much larger than a tokenizer needs; ``None``: ``data.max_corpus_mb``. Part
    of what the source's fingerprint must cover, as it changes the tokens."""

    @abc.abstractmethod
    def iter_texts(self) -> Iterator[str]:
        """Yield the documents in a deterministic order (empty documents are skipped later)."""

    def iter_documents(self) -> Iterator[Iterator[str]]:
        """Yield each document as consecutive chunks of its text, in :meth:`iter_texts` order.

        What tokenizer training and tokenisation read, so that a document need not be in
        memory whole: a source with long documents overrides this to stream them (consume
        each document before asking for the next). The default wraps :meth:`iter_texts`.
        """
        for text in self.iter_texts():
            yield iter((text,))


class TokenSource(DataSource):
    """A source of pre-tokenised ids stored in files that can be memory-mapped."""

    @abc.abstractmethod
    def segments(self) -> list[TokenSegment]:
        """The token runs in stream order (each one a memmap-able region of a file)."""

    def iter_token_arrays(self) -> Iterator[np.ndarray]:
        """Yield each segment as a read-only memmap (nothing is loaded until sliced)."""
        for segment in self.segments():
            yield segment.open()

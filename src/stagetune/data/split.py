"""Where the eval split of a token stream begins: at the tail, or at a document boundary.

The eval split is the last ``eval_fraction`` of the tokens. For most sources it starts at
exactly that token (:func:`tail_split`), which can cut the document it falls in. A text source
with ``split_by_document`` has the token index of every document's start recorded beside its
tokens (a ``.npy`` of int64), and its eval split starts at the document start nearest to that
token (:func:`document_split`), so no document lends tokens to both splits.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from stagetune.errors import ConfigError

__all__ = ["document_split", "read_document_starts", "tail_split", "write_document_starts"]


def tail_split(num_tokens: int, eval_fraction: float) -> int:
    """First eval token of a stream split at its tail: the last ``eval_fraction`` of it,
    rounded down to whole tokens, is held out."""
    return num_tokens - int(num_tokens * eval_fraction)


def document_split(starts: np.ndarray, num_tokens: int, eval_fraction: float, source: str) -> int:
    """First eval token of a stream split at a document boundary.

    Args:
        starts: ascending token index of each document's first token (the first is 0).
        num_tokens: length of the stream.
        eval_fraction: the share of tokens the eval split should hold.
        source: ``data.source``, for the error message.

    Returns:
        The document start nearest to :func:`tail_split` (ties to the later one), never the
        first document's: both splits hold at least one whole document.

    Raises:
        ConfigError: fewer than two documents.
    """
    inner = starts[1:]
    if len(inner) == 0:
        raise ConfigError(
            "data.source",
            source,
            f"holds {len(starts)} document(s) but its eval split is made of whole documents, "
            "so it needs at least two; add data (for pysources raise data.max_corpus_mb)",
        )
    target = tail_split(num_tokens, eval_fraction)
    i = int(np.searchsorted(inner, target))
    if i == len(inner):
        return int(inner[-1])
    if i == 0:
        return int(inner[0])
    before, after = int(inner[i - 1]), int(inner[i])
    return after if after - target <= target - before else before


def write_document_starts(path: Path, starts: Sequence[int]) -> None:
    """Write document starts as an int64 ``.npy`` (to ``path`` exactly, whatever its suffix)."""
    with open(path, "wb") as handle:
        np.save(handle, np.asarray(starts, dtype=np.int64), allow_pickle=False)


def read_document_starts(path: Path) -> np.ndarray:
    """The document starts written by :func:`write_document_starts`."""
    return np.asarray(np.load(path, allow_pickle=False), dtype=np.int64)

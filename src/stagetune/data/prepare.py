"""Turning a data source into a memmap-able token stream on disk: :func:`prepare_data`.

Text sources are tokenised once into a cached uint16 ``.bin`` (documents each preceded by the
end-of-text token, the nanoGPT/llm.c FineWeb layout); for a source that splits by document,
the token index of each document's start is cached beside it (``.docs.npy``), and the eval
split begins at a document boundary (:mod:`stagetune.data.split`). Token shards are validated
(ids within the vocabulary) and used in place, never copied. Every cache entry is built under a file lock
and published with an atomic rename, so concurrent Ray workers share one build.

One cohesive module (over 400 lines): the token cache's build, lock and publication.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from stagetune.config import DataConfig, ExperimentConfig
from stagetune.data.base import DataSource, TextSource, TokenSource
from stagetune.data.cache import atomic_path, file_lock, stable_hash, write_json_atomic
from stagetune.data.pieces import document_pieces
from stagetune.data.sources import source_from_config
from stagetune.data.split import (
    document_split,
    read_document_starts,
    tail_split,
    write_document_starts,
)
from stagetune.data.tokenizer import MAX_VOCAB, TokenizerInfo, load_tokenizer, resolve_tokenizer
from stagetune.data.tokens import TokenArray, TokenSegment, scan_token_range
from stagetune.errors import ConfigError

__all__ = [
    "PreparedData",
    "min_tokens_needed",
    "model_vocab_size",
    "prepare_data",
    "require_tokens",
]

# Bump when the on-disk token layout changes, so stale cache files are not reused.
_FORMAT_VERSION = 1
# Documents are encoded in batches of about this much text (bounded memory, parallel encode);
# a long document is cut into pieces first (stagetune.data.pieces).
_BATCH_CHARS = 1024 * 1024
_BATCH_DOCS = 1024


@dataclass(frozen=True)
class PreparedData:
    """Tokens ready for :class:`~stagetune.data.TokenStream`.

    Attributes:
        tokens_path: the token file (the cached ``.bin``, or the first shard).
        num_tokens: tokens over all segments.
        vocab_size: number of token ids the model must embed (the tokenizer's size, or
            ``data.vocab_size`` for shards without a tokenizer.json).
        eot_id: the end-of-text id, or ``None`` when unknown (shards without a tokenizer.json).
        tokenizer_path: the ``tokenizer.json`` (to decode samples), or ``None``.
        fingerprint: digest of the source and tokenizer: equal fingerprints, equal tokens.
        source: the ``data.source`` value the tokens came from (for error messages).
        description: one-line description of the source (for logs and the CLI).
        segments: the memmap-able token runs, in stream order (one for tokenised text, one per
            shard for token shards).
        document_starts: the ``.npy`` of each document's first token index, for a source
            that splits by document; ``None``: the eval split is the stream's tail.
        eval_fraction: the ``data.eval_fraction`` it was prepared with (what
            :meth:`eval_start` and :meth:`describe` use unless told otherwise).
    """

    tokens_path: Path
    num_tokens: int
    vocab_size: int
    eot_id: int | None
    tokenizer_path: Path | None
    fingerprint: str
    source: str
    description: str
    segments: tuple[TokenSegment, ...]
    document_starts: Path | None = None
    eval_fraction: float = DataConfig.eval_fraction

    def open(self) -> TokenArray:
        """The tokens as a lazily read :class:`~stagetune.data.tokens.TokenArray`."""
        return TokenArray(self.segments)

    def on_this_machine(self) -> bool:
        """Whether every token file (and the document index) is here, at its full size: data
        prepared by the driver can then be memory-mapped as it is (a worker on another machine
        of a cluster prepares its own)."""
        for seg in self.segments:
            try:
                size = seg.path.stat().st_size
            except OSError:
                return False
            if size < seg.offset + seg.num_tokens * np.dtype(seg.dtype).itemsize:
                return False
        return self.document_starts is None or self.document_starts.is_file()

    def eval_start(self, eval_fraction: float | None = None) -> int:
        """Index of the first eval token (the train split is everything before it).

        The tail split (:func:`~stagetune.data.split.tail_split`), or for data split by
        document the document start nearest to it. ``eval_fraction`` defaults to the one the
        data was prepared with.

        Raises:
            ConfigError: data split by document that holds a single document.
        """
        fraction = self.eval_fraction if eval_fraction is None else eval_fraction
        if self.document_starts is None:
            return tail_split(self.num_tokens, fraction)
        starts = read_document_starts(self.document_starts)
        return document_split(starts, self.num_tokens, fraction, self.source)

    def describe(self) -> str:
        """One line for the CLI: tokens, the train/eval split, vocabulary and the source."""
        eot = "unknown" if self.eot_id is None else str(self.eot_id)
        start = self.eval_start()
        if self.document_starts is None:
            split = "the eval split is the stream's tail"
        else:
            documents = len(read_document_starts(self.document_starts))
            split = f"{documents:,} documents, the eval split starts at a document boundary"
        return (
            f"{self.num_tokens:,} tokens ({start:,} train / {self.num_tokens - start:,} eval at "
            f"eval_fraction {self.eval_fraction:g}; {split}), vocab {self.vocab_size}, eot {eot}, "
            f"{len(self.segments)} file(s) [{self.fingerprint}] - {self.description}"
        )


def min_tokens_needed(
    *, seq_len: int, batch_size: int, eval_fraction: float, eval_batches: int
) -> int:
    """The fewest tokens for which a :class:`TokenStream` with these settings can be built.

    The train split (all but the last ``eval_fraction``) must hold ``batch_size`` distinct
    windows of ``seq_len + 1`` tokens after a random shift of up to ``seq_len - 1`` tokens;
    the eval split must hold ``eval_batches × batch_size`` non-overlapping windows.
    """
    eval_windows = eval_batches * batch_size
    # Lower bounds from the two conditions (n·f ≥ eval need; n·(1−f) + 1 > train need), less
    # a margin for float rounding; both conditions grow monotonically with n, so step up.
    n = max(
        1,
        math.floor((eval_windows * seq_len + 1) / eval_fraction) - 2,
        math.floor(((batch_size + 1) * seq_len - 1) / (1.0 - eval_fraction)) - 2,
    )
    while not _fits(n, tail_split(n, eval_fraction), seq_len, batch_size, eval_windows):
        n += 1
    return n


def _fits(n: int, eval_start: int, seq_len: int, batch_size: int, eval_windows: int) -> bool:
    """Whether ``n`` tokens split at ``eval_start`` hold one train batch and the eval set."""
    n_train, n_eval = eval_start, n - eval_start
    return (n_train - seq_len) // seq_len >= batch_size and (n_eval - 1) // seq_len >= eval_windows


def require_tokens(
    num_tokens: int,
    source: str,
    *,
    seq_len: int,
    batch_size: int,
    eval_fraction: float,
    eval_batches: int,
    eval_start: int | None = None,
) -> None:
    """Refuse a stream of ``num_tokens`` too short for one train batch plus the eval split.

    ``eval_start`` is where a source split by document starts its eval split (``None``: the
    tail split of ``eval_fraction``).
    """
    start = tail_split(num_tokens, eval_fraction) if eval_start is None else eval_start
    if _fits(num_tokens, start, seq_len, batch_size, eval_batches * batch_size):
        return
    if eval_start is not None:
        raise ConfigError(
            "data.source",
            source,
            f"has {num_tokens} tokens, split at a document boundary into {start} train and "
            f"{num_tokens - start} eval tokens, but one train batch ({batch_size}×{seq_len}) "
            f"needs {(batch_size + 1) * seq_len} train tokens and the eval split "
            f"({eval_batches} batches) {eval_batches * batch_size * seq_len + 1}; add data "
            "(raise data.max_corpus_mb for a built-in corpus) or lower train.batch_size, "
            "data.seq_len or data.eval_batches",
        )
    needed = min_tokens_needed(
        seq_len=seq_len,
        batch_size=batch_size,
        eval_fraction=eval_fraction,
        eval_batches=eval_batches,
    )
    raise ConfigError(
        "data.source",
        source,
        f"has {num_tokens} tokens but one train batch ({batch_size}×{seq_len}) plus the eval "
        f"split ({eval_batches} batches at eval_fraction={eval_fraction}) need {needed}; "
        "add data or lower train.batch_size, data.seq_len or data.eval_batches",
    )


def model_vocab_size(cfg: ExperimentConfig, prepared: PreparedData) -> int:
    """The vocabulary the model embeds for ``prepared``, once the data fits the experiment.

    Every command that trains checks this before it creates anything: ``model.vocab_size``
    must hold the tokenizer's ids, and the tokens one batch plus the eval split.
    """
    vocab = cfg.model.vocab_size or prepared.vocab_size
    if vocab < prepared.vocab_size:
        raise ConfigError(
            "model.vocab_size",
            vocab,
            f"the tokenizer has {prepared.vocab_size} tokens; raise it or leave it null",
        )
    require_tokens(
        prepared.num_tokens,
        prepared.source,
        seq_len=cfg.data.seq_len,
        batch_size=cfg.train.batch_size,
        eval_fraction=cfg.data.eval_fraction,
        eval_batches=cfg.data.eval_batches,
        eval_start=_document_split_start(prepared, cfg.data.eval_fraction),
    )
    return vocab


def _document_split_start(prepared: PreparedData, eval_fraction: float) -> int | None:
    """Where ``prepared``'s eval split starts if it is split by document, else ``None``."""
    if prepared.document_starts is None:
        return None
    return prepared.eval_start(eval_fraction)


def prepare_data(cfg: DataConfig, source: DataSource | None = None) -> PreparedData:
    """Prepare the tokens described by ``cfg`` (or by an explicit ``source``), using the cache.

    Cheap when cached: a second call (any process on the machine) only checks the cache.

    Raises:
        ConfigError: missing path, no matching files, no tokens, too few tokens for one
            sequence in each split, token ids outside the vocabulary or above uint16.
    """
    spec = cfg.source if source is None else source.name
    if source is None:
        source = source_from_config(cfg)
    if isinstance(source, TokenSource):
        prepared = _prepare_shards(cfg, source, spec)
    elif isinstance(source, TextSource):
        prepared = _prepare_text(cfg, source, spec)
    else:
        raise ConfigError(
            "data.source",
            spec,
            f"{type(source).__name__} is neither a TextSource nor a "
            "TokenSource; subclass one of them",
        )
    # The smallest sensible stream: one train and one eval sequence. TokenStream checks the
    # real requirement, which depends on the batch size.
    document_start = _document_split_start(prepared, cfg.eval_fraction)
    if document_start is not None:
        require_tokens(
            prepared.num_tokens,
            spec,
            seq_len=cfg.seq_len,
            batch_size=1,
            eval_fraction=cfg.eval_fraction,
            eval_batches=1,
            eval_start=document_start,
        )
        return prepared
    needed = min_tokens_needed(
        seq_len=cfg.seq_len, batch_size=1, eval_fraction=cfg.eval_fraction, eval_batches=1
    )
    if prepared.num_tokens < needed:
        raise ConfigError(
            "data.source",
            spec,
            f"yields only {prepared.num_tokens} tokens, fewer than the {needed} needed for one "
            f"sequence of data.seq_len={cfg.seq_len} in both the train and eval splits; add data",
        )
    return prepared


# --------------------------------------------------------------------------------------------
# text sources


def _encode_batch(
    tok: Tokenizer,
    pieces: list[str],
    starts: list[bool],
    eot_id: int,
    doc_starts: list[int] | None = None,
) -> np.ndarray:
    """Encode pieces as one uint16 run, the end-of-text token before each document's first
    piece (``starts``): ``[eot, doc0..., eot, doc1..., ...]``; append the run-relative index
    of each of those end-of-text tokens to ``doc_starts`` when given."""
    encodings = tok.encode_batch_fast(pieces, add_special_tokens=False)
    chunks: list[list[int]] = []
    offset = 0
    for first, encoding in zip(starts, encodings):
        if first:
            if doc_starts is not None:
                doc_starts.append(offset)
            chunks.append([eot_id])
            offset += 1
        chunks.append(encoding.ids)
        offset += len(encoding.ids)
    total = sum(len(c) for c in chunks)
    out = np.empty(total, dtype=np.uint16)
    pos = 0
    for chunk in chunks:
        out[pos : pos + len(chunk)] = chunk
        pos += len(chunk)
    return out


def _tokenize_to(
    path: Path, source: TextSource, info: TokenizerInfo, doc_starts: list[int] | None = None
) -> int:
    """Tokenise every document of ``source`` into ``path``; return the token count.

    Documents are read as chunk streams and cut into pieces, so memory stays bounded however
    long a document (or a line of it) is. ``doc_starts``, when given, receives the index of
    each document's first token (its end-of-text token).
    """
    tok = info.load()
    num_tokens = 0
    pieces: list[str] = []
    starts: list[bool] = []
    chars = 0
    with open(path, "wb") as handle:

        def flush() -> None:
            nonlocal num_tokens, chars
            if pieces:
                local: list[int] = []
                ids = _encode_batch(tok, pieces, starts, info.eot_id, local)
                if doc_starts is not None:
                    doc_starts.extend(num_tokens + i for i in local)
                handle.write(ids.tobytes())
                num_tokens += len(ids)
            pieces.clear()
            starts.clear()
            chars = 0

        for document in source.iter_documents():
            first = True
            for piece in document_pieces(document):
                pieces.append(piece)
                starts.append(first)
                first = False
                chars += len(piece)
                if chars >= _BATCH_CHARS or len(pieces) >= _BATCH_DOCS:
                    flush()
        flush()
    return num_tokens


def _prepare_text(cfg: DataConfig, source: TextSource, spec: str) -> PreparedData:
    info = resolve_tokenizer(cfg, source)
    key = stable_hash(_FORMAT_VERSION, source.fingerprint(), info.fingerprint)
    target = cfg.resolved_cache_dir() / "tokens" / f"{source.name}-{key}.bin"
    meta_path = target.with_suffix(".json")
    starts_path = target.with_suffix(".docs.npy") if source.split_by_document else None

    def from_cache() -> PreparedData | None:
        # The metadata file is written last, so its presence marks a complete entry.
        if not meta_path.is_file() or not target.is_file():
            return None
        if starts_path is not None and not starts_path.is_file():
            return None
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        num_tokens = int(meta["num_tokens"])
        if target.stat().st_size != 2 * num_tokens:
            return None  # truncated by something outside stagetune: rebuild
        return PreparedData(
            tokens_path=target,
            num_tokens=num_tokens,
            vocab_size=info.vocab_size,
            eot_id=info.eot_id,
            tokenizer_path=info.path,
            fingerprint=key,
            source=spec,
            description=source.describe(),
            segments=(TokenSegment(target, 0, num_tokens, "uint16"),),
            document_starts=starts_path,
            eval_fraction=cfg.eval_fraction,
        )

    cached = from_cache()
    if cached is not None:
        return cached
    with file_lock(target):
        cached = from_cache()
        if cached is not None:
            return cached
        doc_starts: list[int] | None = [] if starts_path is not None else None
        with atomic_path(target) as tmp:
            num_tokens = _tokenize_to(tmp, source, info, doc_starts)
            if num_tokens == 0:
                raise ConfigError(
                    "data.source", spec, "yields no tokens (empty files?); add documents"
                )
        if starts_path is not None and doc_starts is not None:
            with atomic_path(starts_path) as tmp:
                write_document_starts(tmp, doc_starts)
        write_json_atomic(
            meta_path,
            {
                "num_tokens": num_tokens,
                "documents": None if doc_starts is None else len(doc_starts),
                "vocab_size": info.vocab_size,
                "eot_id": info.eot_id,
                "tokenizer": str(info.path),
                "source": source.describe(),
                "format": _FORMAT_VERSION,
            },
        )
    result = from_cache()
    assert result is not None
    return result


# --------------------------------------------------------------------------------------------
# token shards


def _token_range(cfg: DataConfig, segment: TokenSegment) -> tuple[int, int]:
    """(min, max) id of a shard, cached: scanning 10B tokens per worker per trial is wasteful."""
    stat = segment.path.stat()
    key = stable_hash(
        str(segment.path.resolve()), stat.st_size, stat.st_mtime_ns, segment.offset, segment.dtype
    )
    target = cfg.resolved_cache_dir() / "shards" / f"{key}.json"
    if target.is_file():
        data = json.loads(target.read_text(encoding="utf-8"))
        return int(data["min"]), int(data["max"])
    with file_lock(target):
        if target.is_file():
            data = json.loads(target.read_text(encoding="utf-8"))
            return int(data["min"]), int(data["max"])
        lo, hi = scan_token_range(segment)
        write_json_atomic(target, {"min": lo, "max": hi, "path": str(segment.path)})
    return lo, hi


def _prepare_shards(cfg: DataConfig, source: TokenSource, spec: str) -> PreparedData:
    segments = tuple(s for s in source.segments() if s.num_tokens > 0)
    if not segments:
        raise ConfigError("data.source", spec, "the token shards hold no tokens; add data")
    tokenizer_path: Path | None = None
    eot_id: int | None = None
    if cfg.tokenizer == "builtin":
        vocab_size, vocab_field = cfg.vocab_size, "data.vocab_size"
    else:
        info = load_tokenizer(cfg.tokenizer)
        vocab_size, vocab_field = info.vocab_size, "data.tokenizer"
        tokenizer_path, eot_id = info.path, info.eot_id
    for segment in segments:
        lo, hi = _token_range(cfg, segment)
        if lo < 0:
            raise ConfigError(
                "data.source",
                str(segment.path),
                f"holds a negative token id ({lo}); ids must be >= 0",
            )
        if hi >= MAX_VOCAB:
            raise ConfigError(
                "data.source",
                str(segment.path),
                f"holds token id {hi} >= {MAX_VOCAB}; stagetune stores ids as uint16, so use a "
                f"tokenizer with at most {MAX_VOCAB} tokens",
            )
        if hi >= vocab_size:
            shown: object = cfg.vocab_size if vocab_field == "data.vocab_size" else cfg.tokenizer
            padded = min(MAX_VOCAB - 1, 64 * math.ceil((hi + 1) / 64))
            raise ConfigError(
                vocab_field,
                shown,
                f"{segment.path.name} holds token id {hi} but the vocabulary has {vocab_size} ids; "
                f"set data.vocab_size to at least {hi + 1} (e.g. {padded}) or data.tokenizer to "
                "the tokenizer.json that made the shards",
            )
    fingerprint = stable_hash(_FORMAT_VERSION, source.fingerprint(), vocab_size)
    return PreparedData(
        tokens_path=segments[0].path,
        num_tokens=sum(s.num_tokens for s in segments),
        vocab_size=vocab_size,
        eot_id=eot_id,
        tokenizer_path=tokenizer_path,
        fingerprint=fingerprint,
        source=spec,
        description=source.describe(),
        segments=segments,
        eval_fraction=cfg.eval_fraction,
    )

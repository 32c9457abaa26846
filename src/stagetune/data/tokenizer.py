"""Tokenizers: the built-in byte-level BPE (trained on the corpus, cached) or a user's
``tokenizer.json``.

The built-in tokenizer is trained with Hugging Face ``tokenizers`` on the text source itself
(for the default data: the stdlib corpus), to ``data.vocab_size`` tokens including the
end-of-text token ``<|endoftext|>``. It is cached as ``tokenizer.json`` under
``<cache_dir>/tokenizers/`` keyed by (Python version, ``tokenizers`` version, corpus
fingerprint, vocabulary size); BPE training is deterministic, so every machine of a cluster
that trains it from the same corpus gets the same file.
"""

from __future__ import annotations

import hashlib
import itertools
import platform
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import tokenizers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from stagetune.config import DataConfig
from stagetune.data.base import TextSource
from stagetune.data.cache import atomic_path, file_lock, stable_hash
from stagetune.data.pieces import document_pieces
from stagetune.errors import ConfigError

__all__ = [
    "EOT_TOKEN",
    "MAX_VOCAB",
    "TokenizerInfo",
    "load_tokenizer",
    "resolve_tokenizer",
    "sample_bytes",
    "train_tokenizer",
]

EOT_TOKEN = "<|endoftext|>"
"""The end-of-text token that separates documents (the GPT-2 spelling)."""
MAX_VOCAB = 65536
"""Token ids are stored as uint16, so a vocabulary may hold at most 65536 entries."""
# Spellings of an end-of-text / end-of-sequence token in common tokenizer.json files.
_EOT_CANDIDATES = (EOT_TOKEN, "<|end_of_text|>", "</s>", "<eos>", "<|eos|>", "[EOS]", "<|im_end|>")
# Bump when the training recipe changes, so old cached tokenizers are not reused.
# 2: the sample is capped by piece, not by whole document (a long document no longer enters
# the sample whole); corpora of documents under a MiB get the same tokenizer as with 1.
_RECIPE_VERSION = 2
_MIB = 1024 * 1024


@dataclass(frozen=True)
class TokenizerInfo:
    """A tokenizer file and the facts the data layer needs about it.

    Attributes:
        path: the ``tokenizer.json``.
        vocab_size: number of token ids, added tokens included.
        eot_id: id of the end-of-text token.
        fingerprint: SHA-256 (16 hex digits) of the file's bytes.
        cache_hit: ``False`` when this call trained the tokenizer.
    """

    path: Path
    vocab_size: int
    eot_id: int
    fingerprint: str
    cache_hit: bool = True

    def load(self) -> Tokenizer:
        """The ``tokenizers.Tokenizer`` object."""
        return Tokenizer.from_file(str(self.path))


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Train a byte-level BPE (GPT-2 style) with ``EOT_TOKEN`` as id 0.

    The 256 byte symbols are always in the vocabulary, so any text can be encoded; the
    vocabulary can end up smaller than ``vocab_size`` when the corpus runs out of pairs.
    """
    if not 257 <= vocab_size <= MAX_VOCAB:
        raise ConfigError(
            "data.vocab_size", vocab_size, f"use 257..{MAX_VOCAB} (256 bytes + end-of-text)"
        )
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return tok


def _capped(source: TextSource, max_bytes: int) -> Iterator[str]:
    """The training sample: the source's text, up to about ``max_bytes`` of UTF-8, as pieces.

    Each piece is one training sequence: a long document never has to be in memory whole,
    and as pieces are cut where a token starts anyway, BPE counts the same words as it would
    in the whole document.
    """
    used = 0
    for document in source.iter_documents():
        for piece in document_pieces(document):
            if used >= max_bytes:
                return
            used += len(piece.encode("utf-8", errors="replace"))
            yield piece


def sample_bytes(cfg: DataConfig, source: TextSource) -> int:
    """How much of ``source`` the built-in tokenizer trains on: ``data.max_corpus_mb``, or the
    source's own :attr:`~stagetune.data.TextSource.tokenizer_sample_mb` when smaller."""
    cap = cfg.max_corpus_mb
    if source.tokenizer_sample_mb is not None:
        cap = min(cap, source.tokenizer_sample_mb)
    return int(cap * _MIB)


def _file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _find_eot(tok: Tokenizer) -> int | None:
    for spelling in _EOT_CANDIDATES:
        token_id = tok.token_to_id(spelling)
        if token_id is not None:
            return int(token_id)
    return None


def load_tokenizer(path: str | Path, *, field: str = "data.tokenizer") -> TokenizerInfo:
    """Load and check a ``tokenizer.json``: readable, ≤ 65536 ids, has an end-of-text token."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(
            field,
            str(path),
            "the tokenizer file does not exist; give a tokenizer.json or 'builtin'",
        )
    try:
        tok = Tokenizer.from_file(str(file))
    except Exception as exc:  # tokenizers raises a bare Exception for malformed files
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(
            field, str(path), f"not a valid tokenizer.json ({reason}); save one with tokenizers"
        ) from None
    vocab = tok.get_vocab_size(with_added_tokens=True)
    if vocab > MAX_VOCAB:
        raise ConfigError(
            field,
            str(path),
            f"has {vocab} tokens but ids are stored as uint16; use a vocabulary of at most "
            f"{MAX_VOCAB}",
        )
    eot = _find_eot(tok)
    if eot is None:
        raise ConfigError(
            field,
            str(path),
            f"has no end-of-text token (looked for {', '.join(_EOT_CANDIDATES)}); "
            f"add {EOT_TOKEN!r} as a special token",
        )
    return TokenizerInfo(path=file, vocab_size=vocab, eot_id=eot, fingerprint=_file_hash(file))


def builtin_tokenizer_path(cfg: DataConfig, source: TextSource) -> Path:
    """Where the built-in tokenizer for ``source`` and ``cfg.vocab_size`` is cached."""
    key = stable_hash(
        _RECIPE_VERSION,
        platform.python_version(),
        tokenizers.__version__,
        source.fingerprint(),
        cfg.vocab_size,
    )
    name = f"bpe-{source.name}-v{cfg.vocab_size}-{key}"
    return cfg.resolved_cache_dir() / "tokenizers" / name / "tokenizer.json"


def resolve_tokenizer(cfg: DataConfig, source: TextSource) -> TokenizerInfo:
    """The tokenizer for a text source: ``cfg.tokenizer`` as a path, or the cached built-in
    BPE (trained now, under a file lock, if no process has trained it yet).

    The built-in BPE trains on at most :func:`sample_bytes` of the source's documents (its
    first documents, in the source's order).
    """
    if cfg.tokenizer != "builtin":
        return load_tokenizer(cfg.tokenizer)
    target = builtin_tokenizer_path(cfg, source)
    if target.is_file():
        return load_tokenizer(target)
    with file_lock(target):
        # Another worker may have finished training while this one waited for the lock.
        if target.is_file():
            return load_tokenizer(target)
        sample = _capped(source, sample_bytes(cfg, source))
        first = list(itertools.islice(sample, 1))
        if not first:
            raise ConfigError(
                "data.source", cfg.source, "yields no text to train the tokenizer on; add documents"
            )
        tok = train_tokenizer(itertools.chain(first, sample), cfg.vocab_size)
        with atomic_path(target) as tmp:
            tok.save(str(tmp))
    info = load_tokenizer(target)
    return TokenizerInfo(info.path, info.vocab_size, info.eot_id, info.fingerprint, cache_hit=False)

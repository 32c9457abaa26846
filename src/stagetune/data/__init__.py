"""Data for stagetune: sources, tokenizer, token preparation and deterministic token streams.

Typical use (every worker of a trial runs the same two lines; the cache makes it cheap)::

    prepared = prepare_data(cfg.data)
    stream = TokenStream(prepared, seq_len=cfg.data.seq_len, batch_size=cfg.train.batch_size,
                         seed=cfg.train.seed, eval_fraction=cfg.data.eval_fraction,
                         eval_batches=cfg.data.eval_batches, rank=rank, world_size=world,
                         grad_accum=cfg.train.grad_accum)
    x, y = stream.train_batch(step, micro)
"""

from stagetune.data.base import DataSource, TextSource, TokenSource
from stagetune.data.builtin import BuiltinCorpus
from stagetune.data.files import TextFiles
from stagetune.data.paths import TEXT_SUFFIXES, TOKEN_SUFFIXES, resolve_files
from stagetune.data.prepare import PreparedData, min_tokens_needed, prepare_data
from stagetune.data.pysources import PySourcesCorpus
from stagetune.data.shards import TokenShards
from stagetune.data.sources import (
    SourceFactory,
    register_source,
    registered_sources,
    source_from_config,
)
from stagetune.data.stream import TokenStream
from stagetune.data.tokenizer import (
    EOT_TOKEN,
    MAX_VOCAB,
    TokenizerInfo,
    load_tokenizer,
    resolve_tokenizer,
    train_tokenizer,
)
from stagetune.data.tokens import TokenArray, TokenSegment, read_token_file

__all__ = [
    "EOT_TOKEN",
    "MAX_VOCAB",
    "TEXT_SUFFIXES",
    "TOKEN_SUFFIXES",
    "BuiltinCorpus",
    "DataSource",
    "PreparedData",
    "PySourcesCorpus",
    "SourceFactory",
    "TextFiles",
    "TextSource",
    "TokenArray",
    "TokenSegment",
    "TokenShards",
    "TokenSource",
    "TokenStream",
    "TokenizerInfo",
    "load_tokenizer",
    "min_tokens_needed",
    "prepare_data",
    "read_token_file",
    "register_source",
    "registered_sources",
    "resolve_files",
    "resolve_tokenizer",
    "source_from_config",
    "train_tokenizer",
]

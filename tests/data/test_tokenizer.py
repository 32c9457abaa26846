"""The builtin tokenizer on the real (small) stdlib corpus; piecewise encoding of long texts."""

from __future__ import annotations

import itertools
import random
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from stagetune.config import DataConfig
from stagetune.data import (
    EOT_TOKEN,
    BuiltinCorpus,
    PreparedData,
    TextFiles,
    TokenStream,
    load_tokenizer,
    prepare_data,
    resolve_tokenizer,
    source_from_config,
    train_tokenizer,
)
from stagetune.data import pieces as pieces_module
from stagetune.data import prepare as prepare_module
from stagetune.data import tokenizer as tokenizer_module
from stagetune.data.decode import read_utf8_chunks
from stagetune.data.pieces import document_pieces
from stagetune.errors import ConfigError
from tests.data.helpers import (
    DOCS,
    cfg_for,
    make_docs,
    one_line,
    write_jsonl,
    write_single_line,
    write_txt,
)

# --------------------------------------------------------------------------------------------
# builtin tokenizer on the real (small) stdlib corpus


@pytest.fixture(scope="module")
def builtin_prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[DataConfig, PreparedData]:
    cache = tmp_path_factory.mktemp("builtin-cache")
    cfg = DataConfig(cache_dir=str(cache), max_corpus_mb=0.5, vocab_size=512, seq_len=32)
    return cfg, prepare_data(cfg)


def test_builtin_tokenizer_trains_caches_and_round_trips(
    builtin_prepared: tuple[DataConfig, PreparedData],
) -> None:
    cfg, prepared = builtin_prepared
    assert prepared.tokenizer_path is not None and prepared.tokenizer_path.is_file()
    assert prepared.tokenizer_path.is_relative_to(cfg.resolved_cache_dir())
    assert prepared.vocab_size == 512
    assert prepared.num_tokens > 50_000
    info = load_tokenizer(prepared.tokenizer_path)
    tok = info.load()
    assert tok.token_to_id(EOT_TOKEN) == prepared.eot_id == info.eot_id
    # Second call: a cache hit, fast, same files.
    source = source_from_config(cfg)
    t0 = time.perf_counter()
    again = resolve_tokenizer(cfg, source)
    second = prepare_data(cfg)
    assert time.perf_counter() - t0 < 1.0
    assert again.cache_hit and again.path == prepared.tokenizer_path
    assert second == prepared
    # Round trip, including text the corpus never saw (byte-level: nothing is unknown).
    for text in ("def f(x):\n    return x ** 2\n", "héllo wörld ∑ 😀 日本語", EOT_TOKEN[1:-1]):
        assert tok.decode(tok.encode(text).ids) == text
    # The token file is the corpus: decoding its first document gives the first file's text.
    tokens = np.memmap(prepared.tokens_path, dtype=np.uint16, mode="r")
    assert tokens[0] == prepared.eot_id
    end = int(np.argmax(tokens[1:] == prepared.eot_id)) + 1
    first_file = next(iter(BuiltinCorpus(0.5).iter_texts()))
    assert tok.decode(tokens[1:end].tolist()) == first_file


def test_builtin_stream_sanity(builtin_prepared: tuple[DataConfig, PreparedData]) -> None:
    _, prepared = builtin_prepared
    stream = TokenStream(prepared, seq_len=32, batch_size=8, seed=1)
    x, y = stream.train_batch(0)
    assert x.dtype == torch.long and x.shape == (8, 32)
    assert int(x.max()) < prepared.vocab_size
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert "train" in stream.describe() and "tokens" in prepared.describe()


def test_tokenizer_cache_keyed_by_vocab(tmp_path: Path) -> None:
    write_txt(tmp_path / "t", DOCS)
    a = resolve_tokenizer(
        cfg_for(tmp_path, str(tmp_path / "t"), vocab_size=300), TextFiles(str(tmp_path / "t"))
    )
    b = resolve_tokenizer(
        cfg_for(tmp_path, str(tmp_path / "t"), vocab_size=320), TextFiles(str(tmp_path / "t"))
    )
    assert not a.cache_hit and not b.cache_hit
    assert a.path != b.path
    assert a.vocab_size <= 300 and b.vocab_size <= 320
    # No temporary files are left behind by the atomic writes.
    assert not list((tmp_path / "cache").rglob("*.tmp"))


def test_user_tokenizer_json(tmp_path: Path) -> None:
    tok_path = tmp_path / "my-tokenizer.json"
    train_tokenizer(DOCS, 280).save(str(tok_path))
    write_jsonl(tmp_path / "d.jsonl", DOCS)
    prepared = prepare_data(cfg_for(tmp_path, str(tmp_path / "d.jsonl"), tokenizer=str(tok_path)))
    assert prepared.tokenizer_path == tok_path
    assert prepared.vocab_size == 280
    # No builtin tokenizer was trained.
    assert not (tmp_path / "cache" / "tokenizers").exists()


# Texts whose pieces must tokenise as the whole: one long line of words, indented code,
# runs of spaces and tabs, unicode, and a long run with no whitespace at all.
_PIECE_TEXTS = {
    "code": "".join(DOCS) + "    indented\n\n  \nx = 1\n" * 20,
    "one-line": " ".join(make_docs(40, seed=5)).replace("\n", " ") + "  tail\t \t end",
    "unicode": "déjà vu — π≈3.14 ünïcödé  日本語 テキスト " * 60,
    "spaces": "a" + "  b   c\t\td" * 90,
}


@pytest.fixture
def small_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pieces_module, "PIECE_CHARS", 100)
    monkeypatch.setattr(pieces_module, "MAX_PIECE_CHARS", 400)


@pytest.mark.parametrize("name", sorted(_PIECE_TEXTS))
def test_piecewise_encoding_equals_whole(name: str, small_pieces: None) -> None:
    tok = train_tokenizer(DOCS, 300)
    text = _PIECE_TEXTS[name]
    rng = random.Random(0)
    cuts = sorted(rng.sample(range(1, len(text)), 30))
    # However the text arrives (whole, or in chunks that split words), same pieces.
    chunks = [text[a:b] for a, b in itertools.pairwise([0, *cuts, len(text)])]
    pieces = list(document_pieces([text]))
    assert list(document_pieces(chunks)) == pieces
    assert len(pieces) > 5 and "".join(pieces) == text
    assert all(0 < len(p) <= pieces_module.MAX_PIECE_CHARS for p in pieces)
    got = prepare_module._encode_batch(tok, pieces, [True] + [False] * (len(pieces) - 1), 0)
    assert got.tolist() == [0, *tok.encode(text).ids]
    # BPE training counts the same words in the pieces as in the whole: the same tokenizer.
    whole, split = train_tokenizer([text], 320), train_tokenizer(pieces, 320)
    assert whole.get_vocab() == split.get_vocab()


def test_text_without_whitespace_is_cut_at_the_cap(small_pieces: None) -> None:
    text = "x" * 1000 + " y" * 10
    pieces = list(document_pieces(iter([text[:150], text[150:]])))
    assert "".join(pieces) == text
    assert [len(p) for p in pieces[:2]] == [400, 400]


def test_tokenizer_sample_of_a_long_document_is_capped(
    tmp_path: Path, small_pieces: None
) -> None:
    """A single-line document larger than data.max_corpus_mb enters the BPE sample only up to
    the cap (it used to enter whole, with all of it in memory at once)."""
    path = write_single_line(tmp_path / "long.txt", 0.05)
    cap = 10_000
    sample = list(tokenizer_module._capped(TextFiles(str(path)), cap))
    assert cap <= sum(len(p) for p in sample) <= cap + pieces_module.MAX_PIECE_CHARS
    assert path.read_text().startswith("".join(sample))


def test_txt_is_read_in_chunks_like_a_whole_decode(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Chunked decoding equals bytes.decode(errors='replace'), multi-byte characters split
    across chunks included; a few undecodable bytes are replaced with a warning."""
    good = "déjà vu — π≈3.14 日本語 " * 15
    data = good.encode() + b"\xff" + good.encode() + b"\xc3(" + good.encode()
    path = tmp_path / "mixed.txt"
    path.write_bytes(data)
    with caplog.at_level("WARNING", logger="stagetune.data.decode"):
        chunks = list(read_utf8_chunks(path, chunk_bytes=7))
    assert "".join(chunks) == data.decode("utf-8", errors="replace")
    assert len(chunks) > 100 and all(len(c.encode()) <= 3 * 7 for c in chunks)
    [record] = caplog.records
    assert str(path) in record.getMessage() and f"2 of its {len(data)} bytes" in record.getMessage()


def test_binary_txt_is_refused(tmp_path: Path) -> None:
    """A .txt that is mostly not UTF-8 is refused with its share of undecodable bytes (it
    used to train on replacement characters without a word)."""
    rng = random.Random(1)
    path = tmp_path / "blob.txt"
    path.write_bytes(b"some text " * 50 + bytes(rng.randrange(256) for _ in range(5000)))
    with pytest.raises(ConfigError) as exc:
        prepare_data(cfg_for(tmp_path, str(path)))
    msg = one_line(exc)
    assert msg.startswith(f"data.source='{path}': ") and "are not UTF-8" in msg
    bad = int(msg.split(" of its ")[0].split(": ")[-1].replace(",", ""))
    share = f"({bad / path.stat().st_size:.1%})"
    assert share in msg and "convert it to UTF-8" in msg
    # Nothing half-built is left in the cache.
    assert not list((tmp_path / "cache").rglob("*.bin"))
    assert not list((tmp_path / "cache").rglob("tokenizer.json"))

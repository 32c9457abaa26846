"""Tests of stagetune.data: sources (one conformance suite), tokenizer cache, token
preparation and its errors, and the deterministic TokenStream.

Everything runs on tiny corpora in tmp dirs; only the ``builtin_prepared`` fixture builds
the real stdlib corpus (0.5 MiB, vocab 512).
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import pickle
import random
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from stagetune.config import DataConfig
from stagetune.data import (
    EOT_TOKEN,
    BuiltinCorpus,
    DataSource,
    PreparedData,
    TextFiles,
    TextSource,
    TokenArray,
    TokenSegment,
    TokenShards,
    TokenSource,
    TokenStream,
    load_tokenizer,
    min_tokens_needed,
    prepare_data,
    read_token_file,
    register_source,
    resolve_tokenizer,
    source_from_config,
    train_tokenizer,
)
from stagetune.data import pieces as pieces_module
from stagetune.data import prepare as prepare_module
from stagetune.data import tokenizer as tokenizer_module
from stagetune.data.cache import stable_hash
from stagetune.data.decode import read_utf8_chunks
from stagetune.data.pieces import document_pieces
from stagetune.data.sources import _REGISTRY
from stagetune.errors import ConfigError

# --------------------------------------------------------------------------------------------
# helpers

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


def content(source: DataSource) -> list[object]:
    if isinstance(source, TextSource):
        return list(source.iter_texts())
    assert isinstance(source, TokenSource)
    return [np.array(a) for a in source.iter_token_arrays()]


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


# --------------------------------------------------------------------------------------------
# conformance suite: every source, same contract

# Each factory writes its files once and returns a builder of fresh source instances.
Factory = Callable[[Path], Callable[[], DataSource]]
DOCS = make_docs(40)
IDS = (np.arange(5000) * 7) % 300


def _builtin(tmp: Path) -> Callable[[], DataSource]:
    return lambda: BuiltinCorpus(0.03)


def _txt(tmp: Path) -> Callable[[], DataSource]:
    write_txt(tmp / "txt", DOCS)
    return lambda: TextFiles(str(tmp / "txt"))


def _jsonl(tmp: Path) -> Callable[[], DataSource]:
    write_jsonl(tmp / "d.jsonl", DOCS)
    return lambda: TextFiles(str(tmp / "d.jsonl"))


def _parquet(tmp: Path) -> Callable[[], DataSource]:
    write_parquet(tmp / "p" / "d.parquet", DOCS)
    return lambda: TextFiles(str(tmp / "p" / "*.parquet"))


def _raw_bin(tmp: Path) -> Callable[[], DataSource]:
    write_raw_bin(tmp / "train.bin", IDS)
    return lambda: TokenShards(str(tmp / "train.bin"))


def _llmc_bin(tmp: Path) -> Callable[[], DataSource]:
    write_llmc_bin(tmp / "s" / "shard_000.bin", IDS[:2500])
    write_llmc_bin(tmp / "s" / "shard_001.bin", IDS[2500:])
    return lambda: TokenShards(str(tmp / "s"))


def _npy(tmp: Path) -> Callable[[], DataSource]:
    np.save(tmp / "ids.npy", IDS.astype(np.int32))
    return lambda: TokenShards(str(tmp / "ids.npy"))


def _custom(tmp: Path) -> Callable[[], DataSource]:
    return lambda: ListSource(DOCS)


SOURCES: dict[str, Factory] = {
    "builtin": _builtin,
    "txt": _txt,
    "jsonl": _jsonl,
    "parquet": _parquet,
    "raw_bin": _raw_bin,
    "llmc_bin": _llmc_bin,
    "npy": _npy,
    "custom": _custom,
}


@pytest.mark.parametrize("kind", list(SOURCES))
def test_source_conformance(kind: str, tmp_path: Path) -> None:
    build = SOURCES[kind](tmp_path)
    source = build()
    assert isinstance(source, (TextSource, TokenSource))
    assert isinstance(source.name, str) and source.name
    assert isinstance(source.describe(), str) and source.describe()
    # Deterministic: two passes over one instance and a fresh instance agree.
    first = content(source)
    for other in (content(source), content(build())):
        assert len(other) == len(first)
        for a, b in zip(first, other):
            assert np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b
    # Non-empty.
    assert first
    assert sum(len(item) for item in first) > 0  # type: ignore[arg-type]
    # Fingerprint: a stable hex digest, the same for a fresh instance.
    fp = source.fingerprint()
    assert fp == source.fingerprint() == build().fingerprint()
    int(fp, 16)
    # And the whole pipeline accepts it.
    prepared = prepare_data(cfg_for(tmp_path), source=source)
    assert prepared.num_tokens > 0
    assert prepared.fingerprint == prepare_data(cfg_for(tmp_path), source=build()).fingerprint


@pytest.mark.parametrize("kind", ["txt", "jsonl", "raw_bin"])
def test_fingerprint_changes_with_data(kind: str, tmp_path: Path) -> None:
    build = SOURCES[kind](tmp_path)
    before = build().fingerprint()
    target = next(p for p in sorted(tmp_path.rglob("*")) if p.is_file())
    time.sleep(0.01)
    target.write_bytes(target.read_bytes() + b"\x00\x01")
    assert build().fingerprint() != before


def test_builtin_corpus_selection() -> None:
    small = BuiltinCorpus(0.05)
    files = small.files()
    assert files and all(p.suffix == ".py" for p in files)
    assert small.size_bytes() <= 0.05 * 1024 * 1024
    parts = {part for p in files for part in p.relative_to(small.root).parts[:-1]}
    assert parts.isdisjoint({"site-packages", "test", "tests", "__pycache__"})
    bigger = BuiltinCorpus(0.2).files()
    assert len(bigger) > len(files)
    assert "builtin corpus" in small.describe()
    with pytest.raises(ConfigError):
        BuiltinCorpus(0)


def test_source_from_config_kinds(tmp_path: Path) -> None:
    write_txt(tmp_path / "t", DOCS[:3])
    write_raw_bin(tmp_path / "b" / "x.bin", IDS)
    assert isinstance(source_from_config(cfg_for(tmp_path)), BuiltinCorpus)
    assert isinstance(source_from_config(cfg_for(tmp_path, str(tmp_path / "t"))), TextFiles)
    assert isinstance(source_from_config(cfg_for(tmp_path, str(tmp_path / "b"))), TokenShards)
    (tmp_path / "b" / "README.md").write_text("ignored in directories")
    assert isinstance(source_from_config(cfg_for(tmp_path, str(tmp_path / "b"))), TokenShards)
    write_txt(tmp_path / "b", ["mixing"])
    with pytest.raises(ConfigError, match="mixes token shards"):
        source_from_config(cfg_for(tmp_path, str(tmp_path / "b")))


def test_register_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # No file or directory of that name: DataConfig accepts it because it is registered.
    monkeypatch.chdir(tmp_path)
    register_source("mysrc", lambda cfg: ListSource(DOCS))
    try:
        source = source_from_config(cfg_for(tmp_path, "mysrc"))
        assert isinstance(source, ListSource)
        with pytest.raises(ConfigError, match="already registered"):
            register_source("mysrc", lambda cfg: ListSource(DOCS))
    finally:
        _REGISTRY.pop("mysrc", None)


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


def _write_single_line(path: Path, megabytes: float) -> Path:
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


def test_tokenizer_sample_of_a_long_document_is_capped(
    tmp_path: Path, small_pieces: None
) -> None:
    """A single-line document larger than data.max_corpus_mb enters the BPE sample only up to
    the cap (it used to enter whole, with all of it in memory at once)."""
    path = _write_single_line(tmp_path / "long.txt", 0.05)
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


_MEMORY_CHILD = """
import resource, sys
from stagetune.config import DataConfig
from stagetune.data import prepare_data
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
prepared = prepare_data(DataConfig(source=sys.argv[1], cache_dir=sys.argv[2]))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(prepared.num_tokens, before * 1024, after * 1024)
"""


@pytest.mark.slow
def test_long_single_line_txt_prepares_in_bounded_memory(tmp_path: Path) -> None:
    """A 30 MiB text on a single line: tokenizer training and tokenisation stream it.

    Measured on the 2-core CI machine: before, peak RSS 6.08 GiB (BPE training on the whole
    line; its encoding alone 4.6 GiB); after, 381 MiB (223 MiB of it the imports).
    """
    path = _write_single_line(tmp_path / "one-line.txt", 30)
    assert b"\n" not in path.read_bytes()[-1000:]
    out = subprocess.run(
        [sys.executable, "-c", _MEMORY_CHILD, str(path), str(tmp_path / "cache")],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    ).stdout.split()
    num_tokens, before, after = (int(x) for x in out)
    assert num_tokens > 1_000_000
    gib = 1024**3
    assert after < gib, f"peak RSS {after / gib:.2f} GiB"
    assert after - before < 0.6 * gib, f"RSS grew by {(after - before) / gib:.2f} GiB"


def _prepare_in_child(cfg: DataConfig, queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    prepared = prepare_data(cfg)
    queue.put((str(prepared.tokens_path), prepared.num_tokens, prepared.fingerprint))


def test_concurrent_prepare_shares_one_cache_entry(tmp_path: Path) -> None:
    write_txt(tmp_path / "t", make_docs(200, seed=3))
    cfg = cfg_for(tmp_path, str(tmp_path / "t"))
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_prepare_in_child, args=(cfg, queue)) for _ in range(3)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    results = {queue.get(timeout=5) for _ in procs}
    assert len(results) == 1
    cache = tmp_path / "cache"
    assert len(list(cache.rglob("tokenizer.json"))) == 1
    assert len(list(cache.rglob("*.bin"))) == 1
    assert not list(cache.rglob("*.tmp"))


# --------------------------------------------------------------------------------------------
# text and token files through prepare_data


@pytest.mark.parametrize("kind", ["txt", "jsonl", "parquet"])
def test_text_sources_tokenise_documents(kind: str, tmp_path: Path) -> None:
    docs = make_docs(30)
    if kind == "txt":
        spec = str(write_txt(tmp_path / "t", docs))
    elif kind == "jsonl":
        spec = str(write_jsonl(tmp_path / "d.jsonl", docs, field="body"))
    else:
        spec = str(write_parquet(tmp_path / "d.parquet", docs, field="body"))
    cfg = cfg_for(tmp_path, spec, text_field="body")
    prepared = prepare_data(cfg)
    tokens = np.memmap(prepared.tokens_path, dtype=np.uint16, mode="r")
    assert len(tokens) == prepared.num_tokens
    assert prepared.eot_id is not None
    # One end-of-text token before each document.
    assert int((tokens == prepared.eot_id).sum()) == len(docs)
    assert prepared.tokenizer_path is not None
    tok = load_tokenizer(prepared.tokenizer_path).load()
    decoded = tok.decode(tokens.tolist(), skip_special_tokens=False)
    assert decoded == "".join(EOT_TOKEN + d for d in docs)


def test_token_files_layouts(tmp_path: Path) -> None:
    ids = np.arange(1000, dtype=np.uint16)
    raw = read_token_file(write_raw_bin(tmp_path / "raw.bin", ids))
    llmc = read_token_file(write_llmc_bin(tmp_path / "llmc.bin", ids))
    np.save(tmp_path / "u16.npy", ids)
    npy = read_token_file(tmp_path / "u16.npy")
    assert (raw.offset, llmc.offset) == (0, 1024)
    for seg in (raw, llmc, npy):
        assert seg.num_tokens == 1000
        assert np.array_equal(seg.open(), ids)
        assert isinstance(seg.open(), np.memmap)
    # A raw file that happens to start with the magic is not mistaken for a header.
    fake = np.zeros(600, dtype=np.uint16)
    fake[:2] = np.array([20240520], dtype="<i4").view(np.uint16)
    assert read_token_file(write_raw_bin(tmp_path / "fake.bin", fake)).offset == 0


def test_multi_shard_stream_crosses_boundaries(tmp_path: Path) -> None:
    ids = np.arange(6000, dtype=np.uint16)
    for i, chunk in enumerate(np.array_split(ids, 4)):
        write_llmc_bin(tmp_path / "s" / f"fineweb_train_{i:06d}.bin", chunk)
    prepared = prepare_data(cfg_for(tmp_path, str(tmp_path / "s" / "*.bin"), vocab_size=6000))
    assert len(prepared.segments) == 4 and prepared.num_tokens == 6000
    arr = prepared.open()
    assert np.array_equal(arr.read(1490, 30), ids[1490:1520])
    stream = TokenStream(prepared, seq_len=16, batch_size=8, eval_batches=2)
    for step in range(30):
        x, y = stream.train_batch(step)
        assert torch.equal(y, x + 1)  # consecutive ids: windows are contiguous across shards


# --------------------------------------------------------------------------------------------
# errors: one line, naming field, value and fix


def test_error_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        DataConfig(source=str(tmp_path / "nope"))
    assert "data.source" in one_line(exc)
    with pytest.raises(ConfigError) as exc:
        TextFiles(str(tmp_path / "nope.txt"))
    assert "does not exist" in one_line(exc)
    with pytest.raises(ConfigError) as exc:
        TokenStream(tmp_path / "nope.bin", seq_len=4, batch_size=1)
    assert "does not exist" in one_line(exc)
    with pytest.raises(ConfigError) as exc:
        prepare_data(cfg_for(tmp_path, tokenizer=str(tmp_path / "nope.json")))
    assert "data.tokenizer" in one_line(exc)


def test_error_no_matching_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        prepare_data(cfg_for(tmp_path, str(tmp_path / "*.jsonl")))
    assert "no .txt" in one_line(exc) and "glob" in str(exc.value)
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "empty_dir" / "notes.md").write_text("not data")
    with pytest.raises(ConfigError) as exc:
        prepare_data(cfg_for(tmp_path, str(tmp_path / "empty_dir")))
    assert "holds no" in one_line(exc)
    with pytest.raises(ConfigError) as exc:
        prepare_data(cfg_for(tmp_path, str(tmp_path / "empty_dir" / "notes.md")))
    assert "unsupported file type .md" in one_line(exc)


def test_error_empty_files(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ConfigError) as exc:
        prepare_data(cfg_for(tmp_path, str(tmp_path / "empty.txt")))
    assert "data.source" in one_line(exc) and "no text" in str(exc.value)
    (tmp_path / "empty.bin").write_bytes(b"")
    with pytest.raises(ConfigError) as exc:
        prepare_data(cfg_for(tmp_path, str(tmp_path / "empty.bin")))
    assert "no tokens" in one_line(exc)
    # Empty with a user tokenizer (nothing to train): still a clear error.
    tok_path = tmp_path / "tok.json"
    train_tokenizer(DOCS, 280).save(str(tok_path))
    write_jsonl(tmp_path / "blank.jsonl", ["", ""])
    with pytest.raises(ConfigError) as exc:
        prepare_data(cfg_for(tmp_path, str(tmp_path / "blank.jsonl"), tokenizer=str(tok_path)))
    assert "no tokens" in one_line(exc)


def test_error_bad_records(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "d.jsonl", DOCS[:2], field="content")
    with pytest.raises(ConfigError) as exc:
        prepare_data(cfg_for(tmp_path, str(tmp_path / "d.jsonl")))
    assert "data.text_field" in one_line(exc) and "content" in str(exc.value)
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{not json\n')
    with pytest.raises(ConfigError) as exc:
        prepare_data(cfg_for(tmp_path, str(tmp_path / "bad.jsonl")))
    assert "bad.jsonl:2" in one_line(exc)
    write_parquet(tmp_path / "d.parquet", DOCS[:2], field="body")
    with pytest.raises(ConfigError) as exc:
        prepare_data(cfg_for(tmp_path, str(tmp_path / "d.parquet")))
    assert "columns" in one_line(exc)
    (tmp_path / "odd.bin").write_bytes(b"\x01\x02\x03")
    with pytest.raises(ConfigError) as exc:
        prepare_data(cfg_for(tmp_path, str(tmp_path / "odd.bin")))
    assert "uint16" in one_line(exc)


def test_error_too_few_tokens(tmp_path: Path) -> None:
    path = write_raw_bin(tmp_path / "small.bin", np.arange(100))
    with pytest.raises(ConfigError) as exc:
        prepare_data(cfg_for(tmp_path, str(path), seq_len=64))
    assert "fewer than" in one_line(exc)
    prepared = prepare_data(cfg_for(tmp_path, str(path), seq_len=4))
    with pytest.raises(ConfigError) as exc:
        TokenStream(prepared, seq_len=4, batch_size=32, eval_fraction=0.1, eval_batches=1)
    msg = one_line(exc)
    assert msg.startswith("data.source=") and "has 100 tokens" in msg and "lower" in msg


@pytest.mark.parametrize(
    ("seq_len", "batch_size", "eval_fraction", "eval_batches"),
    [(8, 4, 0.05, 2), (16, 1, 0.1, 1), (5, 6, 0.3, 3)],
)
def test_min_tokens_needed_is_tight(
    tmp_path: Path, seq_len: int, batch_size: int, eval_fraction: float, eval_batches: int
) -> None:
    kw = dict(
        seq_len=seq_len,
        batch_size=batch_size,
        eval_fraction=eval_fraction,
        eval_batches=eval_batches,
    )
    need = min_tokens_needed(**kw)  # type: ignore[arg-type]
    TokenStream(write_raw_bin(tmp_path / "ok.bin", np.zeros(need)), **kw)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        TokenStream(write_raw_bin(tmp_path / "short.bin", np.zeros(need - 1)), **kw)  # type: ignore[arg-type]


def test_error_token_id_overflow(tmp_path: Path) -> None:
    np.save(tmp_path / "big.npy", np.array([1, 2, 70_000] * 100, dtype=np.int32))
    with pytest.raises(ConfigError) as exc:
        prepare_data(cfg_for(tmp_path, str(tmp_path / "big.npy")))
    assert "65536" in one_line(exc)
    np.save(tmp_path / "neg.npy", np.array([1, -2] * 100, dtype=np.int64))
    with pytest.raises(ConfigError) as exc:
        prepare_data(cfg_for(tmp_path, str(tmp_path / "neg.npy")))
    assert "negative" in one_line(exc)
    path = write_raw_bin(tmp_path / "gpt2.bin", np.full(500, 50_256))
    with pytest.raises(ConfigError) as exc:
        prepare_data(cfg_for(tmp_path, str(path), vocab_size=2048))
    msg = one_line(exc)
    assert msg.startswith("data.vocab_size=2048") and "50256" in msg and "50304" in msg
    assert prepare_data(cfg_for(tmp_path, str(path), vocab_size=50_304)).vocab_size == 50_304
    np.save(tmp_path / "float.npy", np.zeros(100, dtype=np.float32))
    with pytest.raises(ConfigError) as exc:
        prepare_data(cfg_for(tmp_path, str(tmp_path / "float.npy")))
    assert "integer" in one_line(exc)


def test_error_tokenizer_without_eot(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models

    path = tmp_path / "plain.json"
    Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]")).save(str(path))
    with pytest.raises(ConfigError) as exc:
        load_tokenizer(path)
    assert "end-of-text" in one_line(exc)
    (tmp_path / "broken.json").write_text("{ nope")
    with pytest.raises(ConfigError) as exc:
        load_tokenizer(tmp_path / "broken.json")
    assert "not a valid tokenizer.json" in one_line(exc)


# --------------------------------------------------------------------------------------------
# TokenStream


@pytest.fixture
def ramp(tmp_path: Path) -> Path:
    """Token i has id i: every token names its own position (40k < 65536)."""
    return write_raw_bin(tmp_path / "ramp.bin", np.arange(40_000))


def stream(path: Path, **kw: int | float) -> TokenStream:
    base: dict[str, int | float] = dict(
        seq_len=16, batch_size=8, seed=0, eval_fraction=0.1, eval_batches=3
    )
    base.update(kw)
    return TokenStream(path, **base)  # type: ignore[arg-type]


def test_stream_targets_aligned(ramp: Path) -> None:
    x, y = stream(ramp).train_batch(0)
    assert x.shape == y.shape == (8, 16) and x.dtype == y.dtype == torch.long
    assert torch.equal(y, x + 1)
    assert torch.equal((x[:, 0] % 16), torch.full((8,), int(x[0, 0]) % 16))  # one grid per epoch


def test_stream_is_a_pure_function_of_seed_and_step(ramp: Path) -> None:
    a, b = stream(ramp), stream(ramp)
    forward = [a.train_batch(s)[0] for s in range(0, 700, 37)]  # spans several epochs
    backward = [b.train_batch(s)[0] for s in reversed(range(0, 700, 37))][::-1]
    assert all(torch.equal(p, q) for p, q in zip(forward, backward))
    # Resume = call with the step: a fresh stream (or a pickled one) gives the same batch.
    revived = pickle.loads(pickle.dumps(a))
    assert len(pickle.dumps(a)) < 50_000
    assert torch.equal(revived.train_batch(123)[0], stream(ramp).train_batch(123)[0])
    # Another seed, another order.
    assert not torch.equal(stream(ramp, seed=1).train_batch(0)[0], forward[0])


@pytest.mark.parametrize(("world", "accum"), [(2, 1), (4, 1), (2, 2), (1, 4), (8, 1)])
def test_rank_and_micro_shards_union_is_the_global_batch(
    ramp: Path, world: int, accum: int
) -> None:
    single = stream(ramp)
    for step in (0, 5, 281):  # 281 crosses into a later epoch
        parts_x, parts_y = [], []
        for rank in range(world):
            shard = stream(ramp, rank=rank, world_size=world, grad_accum=accum)
            assert shard.micro_batch_size == 8 // (world * accum)
            for micro in range(accum):
                x, y = shard.train_batch(step, micro)
                parts_x.append(x)
                parts_y.append(y)
        assert torch.equal(torch.cat(parts_x), single.train_batch(step)[0])
        assert torch.equal(torch.cat(parts_y), single.global_batch(step)[1])
    # Eval: every rank gets the same full list of equal micro-batches; its round-robin shares
    # (sharded=True) partition it, and together they are the one-worker eval set.
    full_x = torch.cat([x for x, _ in single.eval_batches()])
    shards = [stream(ramp, rank=r, world_size=world, grad_accum=accum) for r in range(world)]
    items = shards[0].eval_batches()
    assert len(items) == 3 * world * accum
    assert all(x.shape == (8 // (world * accum), 16) for x, _ in items)
    assert torch.equal(torch.cat([x for x, _ in items]), full_x)
    assert all(torch.equal(a[0], b[0]) for s in shards[1:] for a, b in zip(s.eval_batches(), items))
    shares = [s.eval_batches(sharded=True) for s in shards]
    assert sum(len(share) for share in shares) == len(items)
    for r, share in enumerate(shares):
        assert all(torch.equal(x, items[r + world * i][0]) for i, (x, _) in enumerate(share))


def test_epoch_is_a_permutation_of_windows(ramp: Path) -> None:
    s = stream(ramp, batch_size=4)
    per_epoch = s.windows_per_epoch
    starts = s.window_starts(np.arange(per_epoch))
    assert len(set(starts.tolist())) == per_epoch
    shift = int(starts.min()) % 16
    assert sorted(starts.tolist()) == [shift + 16 * i for i in range(per_epoch)]
    assert s.epoch_of(per_epoch // 4) == pytest.approx(1.0, abs=0.01)


def test_eval_split_disjoint_from_train(ramp: Path) -> None:
    s = stream(ramp)
    train_ids: set[int] = set()
    for step in range(int(3 * s.steps_per_epoch)):
        x, y = s.train_batch(step)
        train_ids.update(x.flatten().tolist())
        train_ids.update(y.flatten().tolist())
    eval_ids: set[int] = set()
    for x, y in s.eval_batches():
        eval_ids.update(x.flatten().tolist())
        eval_ids.update(y.flatten().tolist())
    assert max(train_ids) < s.num_train_tokens <= min(eval_ids)
    assert train_ids.isdisjoint(eval_ids)
    assert s.num_train_tokens + s.num_eval_tokens == 40_000
    # Eval is fixed: the same for every seed, and non-overlapping windows.
    other = stream(ramp, seed=7).eval_batches()
    assert all(torch.equal(a[0], b[0]) for a, b in zip(s.eval_batches(), other))
    starts = torch.cat([x[:, 0] for x, _ in s.eval_batches()]).tolist()
    assert len(starts) == 3 * 8 and all(b - a >= 16 for a, b in itertools.pairwise(starts))


def test_stream_sizes(ramp: Path) -> None:
    s = stream(ramp, world_size=2, rank=1, grad_accum=2)
    assert s.tokens_per_step == 8 * 16
    assert s.num_tokens == 40_000 and s.num_train_tokens == 36_000
    assert s.train_batch(0, 1)[0].shape == (2, 16)
    assert len(s.eval_batches()) == 3 * 2 * 2 and len(s.eval_batches(sharded=True)) == 6


def test_stream_argument_errors(ramp: Path) -> None:
    with pytest.raises(ConfigError, match=r"train\.batch_size"):
        stream(ramp, world_size=3)
    with pytest.raises(ConfigError, match="rank"):
        stream(ramp, world_size=2, rank=2)
    with pytest.raises(ConfigError, match="micro"):
        stream(ramp, grad_accum=2).train_batch(0, micro=2)
    with pytest.raises(ConfigError, match=r"train\.seed"):
        stream(ramp, seed=-1)
    with pytest.raises(ConfigError, match="step"):
        stream(ramp).train_batch(-1)


def test_stream_uses_memmap_not_ram(tmp_path: Path) -> None:
    n = 24 * 1024 * 1024  # 48 MiB of uint16 tokens
    path = tmp_path / "big.bin"
    np.memmap(path, dtype=np.uint16, mode="w+", shape=(n,)).flush()  # sparse file, no RAM
    prepared = prepare_data(cfg_for(tmp_path, str(path), seq_len=512))
    tracemalloc.start()
    try:
        s = TokenStream(prepared, seq_len=512, batch_size=16, seed=0, eval_batches=2)
        for step in (0, 1, 10_000):
            s.train_batch(step)
        s.eval_batches()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert all(isinstance(m, np.memmap) for m in s.tokens.memmaps)
    assert peak < 4 * 1024 * 1024, f"peak {peak} bytes: tokens were loaded into RAM"


def test_token_array_pickles_by_reference(tmp_path: Path) -> None:
    path = write_raw_bin(tmp_path / "x.bin", np.arange(50_000))
    arr = TokenArray([TokenSegment(path, 0, 50_000)])
    blob = pickle.dumps(arr)
    assert len(blob) < 2_000
    assert np.array_equal(pickle.loads(blob).read(100, 5), np.arange(100, 105))

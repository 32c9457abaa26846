"""Token preparation through prepare_data: text and token files, the cache, and the errors
(one line, naming field, value and fix)."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from stagetune.config import DataConfig, load_config
from stagetune.data import (
    EOT_TOKEN,
    TextFiles,
    TokenStream,
    load_tokenizer,
    min_tokens_needed,
    prepare_data,
    read_token_file,
    train_tokenizer,
)
from stagetune.errors import ConfigError
from tests.data.helpers import (
    DOCS,
    cfg_for,
    make_docs,
    one_line,
    write_jsonl,
    write_llmc_bin,
    write_parquet,
    write_raw_bin,
    write_single_line,
    write_txt,
)

_MEMORY_CHILD = """
import resource, sys
from stagetune.config import DataConfig, load_config
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
    path = write_single_line(tmp_path / "one-line.txt", 30)
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
    # Where a config enters, and where a worker that trusted it prepares the data.
    with pytest.raises(ConfigError) as exc:
        load_config(overrides=[f"data.source={tmp_path / 'nope'}"])
    assert "data.source" in one_line(exc)
    with pytest.raises(ConfigError) as exc:
        prepare_data(cfg_for(tmp_path, str(tmp_path / "nope")))
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

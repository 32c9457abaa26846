"""The environment corpus (``data.source: pysources``) and the eval split by document.

Unit tests use a small fake site-packages tree (``root=``); one test reads the real
environment with a small cap.
"""

from __future__ import annotations

import hashlib
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from stagetune.config import load_config
from stagetune.data import (
    BuiltinCorpus,
    PySourcesCorpus,
    TextFiles,
    TokenStream,
    prepare_data,
    resolve_tokenizer,
    source_from_config,
)
from stagetune.data.pyfiles import hash_order
from stagetune.data.pysources import MAX_LINE_CHARS, TOKENIZER_SAMPLE_MB
from stagetune.data.split import read_document_starts, tail_split
from stagetune.data.tokenizer import sample_bytes
from stagetune.errors import ConfigError
from stagetune.testing.data_sources import DataSourceSuite, SourceBuilder
from tests.data.helpers import (
    FAKE_MODULES,
    FAKE_PACKAGES,
    ListSource,
    cfg_for,
    one_line,
    write_site_packages,
    write_txt,
)

_MIB = 1024 * 1024
# An eval split of several files of the 30 (at 0.05 it would be one or two).
_EVAL_FRACTION = 0.2


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return write_site_packages(tmp_path / "site-packages")


def _names(source: PySourcesCorpus) -> list[str]:
    return [name for name, _ in source.selection().files]


class TestPySourcesConformance(DataSourceSuite):
    @pytest.fixture
    def make_source(self, tmp_path: Path) -> SourceBuilder:
        root = write_site_packages(tmp_path / "site-packages")
        return lambda: PySourcesCorpus(root=root, cache_dir=tmp_path / "manifests")


# --------------------------------------------------------------------------------------------
# selection


def test_two_constructions_select_the_same_files_in_a_fixed_shuffle(
    tree: Path, tmp_path: Path
) -> None:
    first, second = PySourcesCorpus(root=tree), PySourcesCorpus(root=tree)
    assert first.files() == second.files() and first.fingerprint() == second.fingerprint()
    # Through the cached manifest: the same selection.
    cached = PySourcesCorpus(root=tree, cache_dir=tmp_path / "m")
    assert cached.files() == first.files()
    assert PySourcesCorpus(root=tree, cache_dir=tmp_path / "m").files() == first.files()
    names = _names(first)
    assert names == hash_order(names)  # corpus order is the hash order, not sorted paths
    assert names != sorted(names)


def test_duplicates_and_unusable_files_are_skipped(tree: Path) -> None:
    source = PySourcesCorpus(root=tree)
    sel = source.selection()
    assert len(sel.files) == FAKE_PACKAGES * FAKE_MODULES
    # 30 modules + 6 __init__ + 2 copies + latin1, nul, generated, huge, blank.
    assert sel.candidates == 30 + 6 + 2 + 5
    assert sel.skipped == {"empty": 7, "huge": 1, "binary": 2, "generated": 1, "duplicate": 2}
    assert sel.over_cap == 0
    contents = [path.read_bytes() for path in source.files()]
    assert len({hashlib.sha256(c).digest() for c in contents}) == len(contents)
    copies = {"pkg1/mod0.py", "pkg0/_vendor/mod0.py", "pkg2/copy_of_mod0.py"}
    assert len(copies & {n.removeprefix("root/") for n in _names(source)}) == 1
    taken = {p.name for p in source.files()}
    assert taken.isdisjoint(
        {"latin1.py", "nul.py", "table_pb2.py", "huge.py", "blank.py", "cached.py"}
    )
    assert all(max(map(len, c.decode().splitlines())) <= MAX_LINE_CHARS for c in contents)
    line = source.describe()
    assert "30 of 43 .py files" in line and "2 duplicate" in line and "by file" in line


def test_the_cap_takes_a_shuffled_sample_that_fits(tree: Path) -> None:
    whole = PySourcesCorpus(root=tree)
    cap_mb = whole.size_bytes() / 3 / _MIB
    capped = PySourcesCorpus(cap_mb, root=tree)
    names = _names(capped)
    assert 0 < capped.size_bytes() <= cap_mb * _MIB
    assert len(names) < len(_names(whole))
    assert capped.selection().over_cap > 0
    # A sample of packages, in the whole corpus's order, starting where it starts.
    assert len({name.split("/")[1] for name in names}) >= 3
    assert names[0] == _names(whole)[0]
    assert [n for n in _names(whole) if n in set(names)] == names
    assert capped.fingerprint() != whole.fingerprint()
    with pytest.raises(ConfigError) as err:
        PySourcesCorpus(0, root=tree)
    assert err.value.field == "data.max_corpus_mb" and "positive" in one_line(err)


def test_a_missing_root_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        PySourcesCorpus(root=tmp_path / "nowhere").fingerprint()
    assert err.value.field == "data.source" and "is missing" in one_line(err)


# --------------------------------------------------------------------------------------------
# the split by file


def test_the_eval_split_is_made_of_whole_files(tree: Path, tmp_path: Path) -> None:
    cfg = cfg_for(tmp_path, eval_fraction=_EVAL_FRACTION)
    source = PySourcesCorpus(root=tree, cache_dir=tmp_path / "m")
    prepared = prepare_data(cfg, source=source)
    assert prepared.document_starts is not None
    starts = read_document_starts(prepared.document_starts)
    files = source.files()
    assert len(starts) == len(files)
    start = prepared.eval_start()
    k = int(np.flatnonzero(starts == start)[0])
    assert 0 < k < len(files) - 1  # several files on each side
    assert start != tail_split(prepared.num_tokens, _EVAL_FRACTION)  # the tail cuts a file
    # Document i is file i's tokens, whole: train = files[:k], eval = files[k:].
    tok = resolve_tokenizer(cfg, source).load()
    tokens = prepared.open()
    ends = [*starts[1:].tolist(), prepared.num_tokens]
    for i, path in enumerate(files):
        got = tokens.read(int(starts[i]), ends[i] - int(starts[i]))
        want = [prepared.eot_id, *tok.encode(path.read_text(encoding="utf-8")).ids]
        assert got.tolist() == want, path
    assert abs((prepared.num_tokens - start) / prepared.num_tokens - _EVAL_FRACTION) < 0.1
    assert "the eval split starts at a document boundary" in prepared.describe()

    stream = TokenStream(
        prepared,
        seq_len=cfg.seq_len,
        batch_size=4,
        eval_fraction=_EVAL_FRACTION,
        eval_batches=2,
    )
    assert stream.num_train_tokens == start
    assert stream.num_eval_tokens == prepared.num_tokens - start
    train_starts = stream.window_starts(np.arange(3 * stream.windows_per_epoch))
    assert int(train_starts.max()) + cfg.seq_len + 1 <= start  # no train window reaches eval
    assert int(stream._eval_starts.min()) >= start  # every eval window lies in eval files


class _SplitList(ListSource):
    """Any text source can ask for the split by document."""

    split_by_document: ClassVar[bool] = True


def test_a_source_that_asks_gets_its_eval_split_at_a_document_start(tmp_path: Path) -> None:
    # Documents of very different lengths: the tail split falls inside one of them.
    docs = [f"doc {i} " + "word " * (40 + 97 * (i % 5)) for i in range(12)]
    cfg = cfg_for(tmp_path, eval_fraction=_EVAL_FRACTION)
    prepared = prepare_data(cfg, source=_SplitList(docs))
    stream = TokenStream(prepared, seq_len=8, batch_size=2, eval_fraction=_EVAL_FRACTION)
    assert prepared.document_starts is not None
    starts = read_document_starts(prepared.document_starts)
    assert stream.num_train_tokens in set(starts.tolist())
    assert stream.num_train_tokens != tail_split(prepared.num_tokens, _EVAL_FRACTION)
    assert prepared.open().read(stream.num_train_tokens, 1)[0] == prepared.eot_id
    # The same documents without the request: the stream's tail, as before.
    plain = prepare_data(cfg, source=ListSource(docs))
    assert plain.document_starts is None
    tail = TokenStream(plain, seq_len=8, batch_size=2, eval_fraction=_EVAL_FRACTION)
    assert tail.num_eval_tokens == int(plain.num_tokens * _EVAL_FRACTION)


def test_existing_sources_keep_the_tail_split(tmp_path: Path) -> None:
    write_txt(tmp_path / "t", [f"text {i} " * 50 for i in range(40)])
    cfg = cfg_for(tmp_path, str(tmp_path / "t"))
    prepared = prepare_data(cfg)
    assert isinstance(source_from_config(cfg), TextFiles)
    assert prepared.document_starts is None
    assert not list((tmp_path / "cache" / "tokens").glob("*.docs.npy"))
    stream = TokenStream(prepared, seq_len=8, batch_size=2)
    assert stream.num_eval_tokens == int(prepared.num_tokens * 0.05)
    assert "the eval split is the stream's tail" in prepared.describe()


def test_a_single_file_cannot_be_split_by_file(tmp_path: Path) -> None:
    root = tmp_path / "one"
    root.mkdir()
    (root / "only.py").write_text("def f():\n    return 1\n" * 200, encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        prepare_data(cfg_for(tmp_path), source=PySourcesCorpus(root=root))
    assert err.value.field == "data.source" and "at least two" in one_line(err)


def test_a_split_too_small_for_the_batch_names_the_split(tree: Path, tmp_path: Path) -> None:
    cfg = load_config(
        overrides=[
            f"data.cache_dir={tmp_path / 'cache'}",
            "data.vocab_size=300",
            "data.seq_len=64",
            "data.eval_batches=50",
            "train.batch_size=16",
        ]
    )
    prepared = prepare_data(cfg.data, source=PySourcesCorpus(root=tree))
    with pytest.raises(ConfigError) as err:
        TokenStream(prepared, seq_len=64, batch_size=16, eval_batches=50)
    assert "split at a document boundary" in one_line(err)


# --------------------------------------------------------------------------------------------
# caching and the tokenizer sample


def test_a_second_prepare_is_a_cache_hit_that_reads_no_source_file(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = cfg_for(tmp_path)
    manifests = tmp_path / "m"
    first = prepare_data(cfg, source=PySourcesCorpus(root=tree, cache_dir=manifests))
    stamp = first.tokens_path.stat().st_mtime_ns

    def refuse(self: PySourcesCorpus, path: Path) -> bytes:
        raise AssertionError(f"read {path} on a cache hit")

    with monkeypatch.context() as patch:
        patch.setattr(PySourcesCorpus, "_read", refuse)
        again = prepare_data(cfg, source=PySourcesCorpus(root=tree, cache_dir=manifests))
        assert "30 of 43" in again.describe()
    assert again == first
    assert again.tokens_path.stat().st_mtime_ns == stamp  # not re-tokenised

    # A package upgrade rewrites a file: new fingerprint, new tokens.
    changed = tree / "pkg3" / "mod1.py"
    changed.write_text(changed.read_text(encoding="utf-8") + "# patched\n", encoding="utf-8")
    third = prepare_data(cfg, source=PySourcesCorpus(root=tree, cache_dir=manifests))
    assert third.fingerprint != first.fingerprint and third.num_tokens > first.num_tokens


class _CountingCorpus(PySourcesCorpus):
    """Counts the documents the tokenizer pulls (a sample of a few KiB)."""

    tokenizer_sample_mb: ClassVar[float | None] = 2048 / _MIB
    pulled = 0

    def iter_texts(self) -> Iterator[str]:
        for text in super().iter_texts():
            type(self).pulled += 1
            yield text


def test_the_tokenizer_trains_on_a_bounded_sample(tree: Path, tmp_path: Path) -> None:
    big = cfg_for(tmp_path, max_corpus_mb=400)
    assert sample_bytes(big, PySourcesCorpus(root=tree)) == int(TOKENIZER_SAMPLE_MB * _MIB)
    assert sample_bytes(cfg_for(tmp_path, max_corpus_mb=2), PySourcesCorpus(root=tree)) == (
        2 * _MIB
    )
    assert sample_bytes(big, BuiltinCorpus(0.05)) == 400 * _MIB  # unchanged for builtin
    source = _CountingCorpus(root=tree)
    info = resolve_tokenizer(big, source)
    assert not info.cache_hit
    # ~2 KiB of ~430-byte files: a handful of documents, not the 30.
    assert 4 <= _CountingCorpus.pulled <= 8


# --------------------------------------------------------------------------------------------
# the real environment


def test_the_real_environment_with_a_small_cap(tmp_path: Path) -> None:
    cfg = cfg_for(tmp_path, "pysources", max_corpus_mb=0.2)
    assert load_config(overrides=["data.source=pysources"]).data.source == "pysources"
    source = source_from_config(cfg)
    assert isinstance(source, PySourcesCorpus)
    purelib = Path(sysconfig.get_paths()["purelib"]).resolve()
    assert any(purelib in p.resolve().parents for p in source.files())
    assert 0 < source.size_bytes() <= 0.2 * _MIB
    assert all(p.suffix == ".py" and "__pycache__" not in p.parts for p in source.files())
    again = source_from_config(cfg)
    assert again.fingerprint() == source.fingerprint()
    assert isinstance(again, PySourcesCorpus) and again.files() == source.files()
    assert source.selection().candidates > 1000

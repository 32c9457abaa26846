"""Data sources: the conformance suite on every kind of source and every registered name,
and choosing a source from the config."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from stagetune.config import DataConfig, load_config
from stagetune.data import (
    BuiltinCorpus,
    DataSource,
    TextFiles,
    TokenShards,
    register_source,
    source_from_config,
)
from stagetune.errors import ConfigError
from stagetune.registry import DATA_SOURCES
from stagetune.testing.data_sources import DataSourceSuite, SourceBuilder
from tests.data.helpers import (
    DOCS,
    IDS,
    ListSource,
    cfg_for,
    write_jsonl,
    write_llmc_bin,
    write_parquet,
    write_raw_bin,
    write_txt,
)

# --------------------------------------------------------------------------------------------
# conformance suite: every source, same contract

# Each factory writes its files once and returns a builder of fresh source instances.
Factory = Callable[[Path], Callable[[], DataSource]]


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


class TestEveryKindOfSource(DataSourceSuite):
    @pytest.fixture(params=list(SOURCES))
    def make_source(self, request: pytest.FixtureRequest, tmp_path: Path) -> SourceBuilder:
        return SOURCES[request.param](tmp_path)


class TestRegisteredSources(DataSourceSuite):
    """Every name ``data.source`` may take, built by its factory from a small data config."""

    @pytest.fixture(params=DATA_SOURCES.names())
    def make_source(self, request: pytest.FixtureRequest) -> SourceBuilder:
        factory = DATA_SOURCES.get(request.param)
        cfg = DataConfig(max_corpus_mb=0.03)
        return lambda: factory(cfg)


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
    with DATA_SOURCES.isolated():
        register_source("mysrc", lambda cfg: ListSource(DOCS))
        source = source_from_config(cfg_for(tmp_path, "mysrc"))
        assert isinstance(source, ListSource)
        assert load_config(overrides=["data.source=mysrc"]).data.source == "mysrc"
        with pytest.raises(ConfigError, match="registered already"):
            register_source("mysrc", lambda cfg: ListSource(DOCS))
        with pytest.raises(TypeError, match="not callable"):
            register_source("notafactory", 42)  # type: ignore[arg-type]
    assert "mysrc" not in DATA_SOURCES

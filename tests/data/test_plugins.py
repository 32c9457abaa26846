"""Data sources from installed packages (entry-point group ``stagetune.data_sources``).

A source registered with ``register_source`` lives in the process that registered it; the Ray
workers that train each trial read the config and prepare the data themselves, so a source a
YAML config can name must exist in every process: an installed package's entry point does.
The tests install a tiny package the way pip would leave it (a module plus a ``.dist-info``
directory with ``entry_points.txt``) in a temporary directory on the path.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from stagetune.config import DataConfig, load_config
from stagetune.data import prepare_data, registered_sources, source_from_config
from stagetune.errors import ConfigError
from stagetune.registry import DATA_SOURCES
from tests.faults.conftest import Cli, fast_args

PLUGIN = textwrap.dedent(
    '''
    """A user's data source package (what `pip install` would have put on the path)."""
    import random
    from collections.abc import Iterator
    from typing import ClassVar

    from stagetune.data.base import TextSource

    WORDS = ("layer stage phase growth freeze budget compute token model depth loss curve "
             "schedule baseline search trial worker cluster report seed").split()


    class WordSalad(TextSource):
        name: ClassVar[str] = "word-salad"

        def __init__(self, docs: int) -> None:
            self.docs = docs

        def iter_texts(self) -> Iterator[str]:
            rng = random.Random(0)
            for _ in range(self.docs):
                yield " ".join(rng.choice(WORDS) for _ in range(200)) + "."

        def fingerprint(self) -> str:
            return f"word-salad-{self.docs}"

        def describe(self) -> str:
            return f"{self.docs} generated documents"


    def make_source(cfg):
        return WordSalad(docs=400)


    NOT_A_FACTORY = 42
    '''
)


def install_plugin(root: Path, entries: dict[str, str]) -> Path:
    """Write the module and its dist-info under ``root``; returns the directory to put on
    ``sys.path`` / ``PYTHONPATH``."""
    site = root / "site"
    site.mkdir(parents=True)
    (site / "toy_stagetune_plugin.py").write_text(PLUGIN)
    info = site / "toy_stagetune_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: toy-stagetune-plugin\nVersion: 0.1\n"
    )
    lines = "".join(f"{k} = {v}\n" for k, v in entries.items())
    (info / "entry_points.txt").write_text(f"[stagetune.data_sources]\n{lines}")
    return site


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    site = install_plugin(
        tmp_path,
        {
            "wordsalad": "toy_stagetune_plugin:make_source",
            "broken": "toy_stagetune_plugin_missing:make_source",
            "notcallable": "toy_stagetune_plugin:NOT_A_FACTORY",
            "not*a*word": "toy_stagetune_plugin:make_source",
        },
    )
    monkeypatch.syspath_prepend(str(site))
    # Plugins load once per process: load them afresh here and leave no trace after.
    with DATA_SOURCES.isolated():
        yield site


def test_an_installed_plugin_is_a_source_a_config_can_name(
    plugin: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    names = registered_sources()
    assert "wordsalad" in names and "builtin" in names
    # A plugin that does not import, is not a factory or has no usable name is skipped with a
    # warning, and the others still load.
    assert not {"broken", "notcallable", "not*a*word"} & set(names)
    assert "No module named 'toy_stagetune_plugin_missing'" in caplog.text
    assert "not callable" in caplog.text and "must be a plain word" in caplog.text
    cfg = DataConfig(source="wordsalad", cache_dir=str(tmp_path / "cache"), vocab_size=300)
    src = source_from_config(cfg)
    assert type(src).__name__ == "WordSalad" and src.describe() == "400 generated documents"
    prepared = prepare_data(cfg)
    assert prepared.num_tokens > 10_000


def test_unknown_source_name_lists_the_registered_ones(plugin: Path) -> None:
    assert load_config(overrides=["data.source=wordsalad"]).data.source == "wordsalad"
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["data.source=wordsald"])
    msg = str(err.value)
    assert err.value.field == "data.source" and "wordsald" in msg
    assert "registered: builtin, pysources, wordsalad" in msg


def test_explicit_registration_wins_over_a_plugin_of_the_same_name(plugin: Path) -> None:
    from stagetune.data import BuiltinCorpus, register_source

    register_source("wordsalad", lambda cfg: BuiltinCorpus(0.1))
    assert isinstance(source_from_config(DataConfig(source="wordsalad")), BuiltinCorpus)


def test_a_study_trains_on_a_plugin_source_in_its_ray_workers(tmp_path: Path) -> None:
    """The CLI's own Ray workers find the plugin (via the environment), prepare the data from
    it and train: the whole point of entry points over ``register_source``."""
    site = install_plugin(tmp_path, {"wordsalad": "toy_stagetune_plugin:make_source"})
    cache = tmp_path / "cache"  # not the session's: this corpus is the plugin's
    cli = Cli(cache, tmp_path / "logs")
    try:
        work = tmp_path / "work"
        code = cli.run(
            ["run", "--trials", "2", "--workdir", str(work), "--json",
             *fast_args("data.source=wordsalad")],
            name="run",
            PYTHONPATH=str(site),
            timeout=240,
        )  # fmt: skip
        out, err = cli.output("run")
        assert code == 0, err[-3000:]
        report = json.loads(out)
        trials = [t for row in report["outcomes"] for t in row["trials"]]
        # A worker that could not resolve the source would have failed its trial.
        assert len(trials) == 2 and {t["status"] for t in trials} <= {"finished", "stopped"}
        # The driver tokenised the plugin's corpus: its words, none of the stdlib's.
        (tok,) = cache.rglob("tokenizer.json")
        vocab = json.loads(tok.read_text())["model"]["vocab"]
        assert any("baseline" in t for t in vocab) and not any("import" in t for t in vocab)
    finally:
        cli.cleanup()

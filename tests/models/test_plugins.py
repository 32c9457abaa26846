"""A growth operator and a model family from an installed package, named in YAML.

Like a data source (tests/data/test_plugins.py), a plugin a YAML config can name must exist in
every process that trains, so it comes from an entry point (groups ``stagetune.growth_operators``
and ``stagetune.model_families``). The toy package here is what ``pip install`` would leave: a
module and a ``.dist-info`` with ``entry_points.txt``. Its family is Mistral (one adapter: a
Hugging Face family stagetune does not ship) and its operator copies the stack upside down. The
plugin author's view is tested too: the conformance suites run on both.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from stagetune.config import load_config
from stagetune.errors import ConfigError
from stagetune.models import FamilyAdapter, GrowthOperator, get_family, get_growth_operator
from stagetune.registry import GROWTH_OPERATORS, MODEL_FAMILIES
from stagetune.testing.families import ModelFamilySuite
from stagetune.testing.growth import GrowthOperatorSuite
from tests.faults.conftest import Cli, fast_args

PLUGIN = textwrap.dedent(
    '''
    """A user's package of a growth operator and a model family."""
    import os

    from transformers import MistralConfig, MistralForCausalLM

    from stagetune.models import GrowthOperator, LlamaAdapter


    def _trace(what):
        # Which processes used the plugin: the test reads it back.
        trace = os.environ.get("TOY_PLUGIN_TRACE")
        if trace:
            with open(os.path.join(trace, f"{what}-{os.getpid()}"), "w"):
                pass


    class Mirror(GrowthOperator):
        """New block old + j copies block old - 1 - j (mod old): the stack, upside down."""

        name = "mirror"

        def apply(self, model, old_depth, new_depth, generator):
            if not 1 <= old_depth < new_depth <= model.num_layers:
                raise ValueError(f"bad depths {old_depth} -> {new_depth}")
            _trace("growth")
            for j in range(new_depth - old_depth):
                src = model.blocks[(old_depth - 1 - j) % old_depth]
                model.blocks[old_depth + j].load_state_dict(src.state_dict())


    class MistralAdapter(LlamaAdapter):
        """Mistral: Llama's module layout; its own HF config and model class."""

        name = "mistral"

        def build_hf_config(self, cfg, *, vocab_size):
            _trace("family")
            return MistralConfig(
                vocab_size=vocab_size,
                hidden_size=cfg.n_embd,
                intermediate_size=self.ffn_size(cfg),
                num_hidden_layers=cfg.n_layer,
                num_attention_heads=cfg.n_head,
                num_key_value_heads=cfg.kv_heads,
                max_position_embeddings=cfg.context_length,
                sliding_window=None,
                attention_dropout=cfg.dropout,
                tie_word_embeddings=cfg.tie_embeddings,
                bos_token_id=None,
                eos_token_id=None,
                use_cache=False,
                attn_implementation=cfg.attn_implementation,
            )

        def model_class(self):
            return MistralForCausalLM


    MIRROR = Mirror()
    MISTRAL = MistralAdapter()
    '''
)

ENTRY_POINTS = """\
[stagetune.growth_operators]
mirror = toy_stagetune_models:MIRROR
[stagetune.model_families]
mistral = toy_stagetune_models:MISTRAL
"""


def install_plugin(root: Path) -> Path:
    """Write the module and its dist-info under ``root``; returns the directory to put on
    ``sys.path`` / ``PYTHONPATH``."""
    site = root / "site"
    site.mkdir(parents=True)
    (site / "toy_stagetune_models.py").write_text(PLUGIN)
    info = site / "toy_stagetune_models-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-stagetune-models\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    return site


@pytest.fixture(scope="module")
def plugin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The toy package on ``sys.path``, its entry points loaded; no trace left afterwards."""
    site = install_plugin(tmp_path_factory.mktemp("models-plugin"))
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(site))
        with GROWTH_OPERATORS.isolated(), MODEL_FAMILIES.isolated():
            yield site


def test_a_yaml_config_names_the_plugins(plugin: Path, tmp_path: Path) -> None:
    path = tmp_path / "plugins.yaml"
    path.write_text("model: {family: mistral, n_layer: 4}\nschedule: {growth: mirror}\n")
    cfg = load_config(path)
    assert (cfg.model.family, cfg.schedule.growth) == ("mistral", "mirror")
    assert type(get_family("mistral")).__name__ == "MistralAdapter"
    assert type(get_growth_operator("mirror")).__name__ == "Mirror"
    with pytest.raises(ConfigError, match="did you mean 'mirror'"):
        load_config(path, overrides=["schedule.growth=miror"])


class TestPluginOperator(GrowthOperatorSuite):
    """What a plugin author runs: the built-ins' suite, on the plugin's operator."""

    @pytest.fixture
    def operator(self, plugin: Path) -> GrowthOperator:
        return get_growth_operator("mirror")


class TestPluginFamily(ModelFamilySuite):
    @pytest.fixture
    def adapter(self, plugin: Path) -> FamilyAdapter:
        return get_family("mistral")


@pytest.mark.slow
def test_train_on_ray_workers_resolves_the_plugins(tmp_path: Path) -> None:
    """``stagetune train`` on two Ray Train workers, the plugins named in YAML: each worker
    finds them through the environment, builds a Mistral model and grows it with the plugin's
    operator."""
    site = install_plugin(tmp_path)
    trace = tmp_path / "trace"
    trace.mkdir()
    config = tmp_path / "plugins.yaml"
    config.write_text(
        "model: {family: mistral, n_kv_head: 2}\n"
        "schedule: {increments: [2, 2], growth: mirror, continual_steps: 2}\n"
        "resources: {workers_per_trial: 2}\n"
    )
    out = tmp_path / "out"
    cli = Cli(tmp_path / "cache", tmp_path / "logs")
    try:
        code = cli.run(
            ["train", "--config", str(config), "--out", str(out), "--workdir",
             str(tmp_path / "work"), "--json", *fast_args()],
            name="train",
            timeout=400,
            PYTHONPATH=str(site),
            TOY_PLUGIN_TRACE=str(trace),
        )
        _, err = cli.output("train")
        assert code == 0, err[-3000:]
    finally:
        cli.cleanup()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished"
    assert summary["schedule"]["growth"] == "mirror"
    driver = cli.procs[0].pid
    for what in ("family", "growth"):
        pids = {int(p.name.split("-")[1]) for p in trace.glob(f"{what}-*")}
        # Both workers resolve the plugins themselves; the driver may too for the family (it
        # counts the model's parameters on the meta device for MLflow), but never grows.
        assert len(pids - {driver}) == 2, (what, pids, driver)
        assert what == "family" or driver not in pids, (what, pids, driver)

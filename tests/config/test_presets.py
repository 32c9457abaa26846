"""Presets: commented YAML files shipped in the package, each a valid config."""

from __future__ import annotations

from importlib import resources

import pytest

from stagetune.config import DEFAULT_PRESET, PRESETS, load_config, preset_overrides
from stagetune.errors import ConfigError

PRESET_FILES = sorted(
    f for f in resources.files("stagetune.config").joinpath("presets").iterdir()
    if f.name.endswith(".yaml")
)  # fmt: skip


def test_every_preset_is_a_file_and_every_file_a_preset() -> None:
    assert sorted(f.name.removesuffix(".yaml") for f in PRESET_FILES) == sorted(PRESETS)
    assert next(iter(PRESETS)) == DEFAULT_PRESET == "tiny"
    assert {"tiny", "llama-tiny", "paper-tiny", "paper-gpt2-124m", "smoke"} <= set(PRESETS)


@pytest.mark.parametrize("file", PRESET_FILES, ids=[f.name for f in PRESET_FILES])
def test_each_preset_file_says_what_it_is_for(file: resources.abc.Traversable) -> None:
    text = file.read_text(encoding="utf-8")
    name = file.name.removesuffix(".yaml")
    # Its opening comment names the preset and its purpose.
    assert text.startswith(f"# {name}: ")
    comment = [line for line in text.splitlines() if line.startswith("#")]
    assert len(" ".join(comment)) > 80


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_each_preset_loads(name: str) -> None:
    cfg = load_config(preset=name)
    assert cfg.name == PRESETS[name].get("name", "stagetune-default")
    # Laid over another preset as overrides, it gives the same sections.
    over = load_config(overrides=preset_overrides(name))
    assert over.model == cfg.model and over.train == cfg.train and over.search == cfg.search


def test_smoke_is_the_fast_settings_of_the_tests() -> None:
    cfg = load_config(preset="smoke")
    assert (cfg.model.n_layer, cfg.model.n_embd, cfg.schedule.baseline_steps) == (4, 32, 24)
    assert "name=stagetune-smoke" not in preset_overrides("smoke")


def test_unknown_preset() -> None:
    with pytest.raises(ConfigError, match="did you mean 'smoke'"):
        load_config(preset="smok")
    with pytest.raises(ConfigError, match="preset"):
        preset_overrides("gpt5")

"""Extension names are checked against their registries where a config enters, and only there."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from stagetune.config import (
    ExperimentConfig,
    ModelConfig,
    config_from_dict,
    config_to_dict,
    load_config,
    validate_names,
)
from stagetune.errors import ConfigError
from stagetune.models import GPT2Adapter, GrowthOperator, StagedModel, register_family
from stagetune.models.growth import register_growth_operator
from stagetune.registry import GROWTH_OPERATORS, MODEL_FAMILIES

NAMES = [
    ("model.family=gpt3", "model.family", "did you mean 'gpt2'"),
    ("schedule.growth=clone", "schedule.growth", "copy_top"),
    ("schedule.freeze_policy=all", "schedule.freeze_policy", "new_only"),
    ("budget.convention=metric", "budget.convention", "standard"),
    ("search.space=huge", "search.space", "wide"),
    ("data.source=/nonexistent/corpus.txt", "data.source", "registered: builtin"),
]


@pytest.mark.parametrize(("override", "field", "words"), NAMES, ids=[n[0] for n in NAMES])
def test_unknown_names_are_refused_at_the_edge(override: str, field: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[override])
    assert err.value.field == field and words in str(err.value)
    # The same dict, rebuilt by a process that trusts it (a Ray worker), is not checked again.
    key, value = override.split("=")
    section, name = key.split(".")
    data = config_to_dict(load_config())
    data[section][name] = value
    assert getattr(getattr(config_from_dict(data, check_names=False), section), name) == value
    with pytest.raises(ConfigError):
        config_from_dict(data)


def test_sections_no_longer_check_names_themselves() -> None:
    """Building a section by hand checks its values, not its names: that is the edge's job."""
    cfg = ModelConfig(family="not-yet-registered")
    assert cfg.family == "not-yet-registered"
    with pytest.raises(ConfigError, match=r"model\.family"):
        validate_names(ExperimentConfig(model=cfg))


class Mirror(GrowthOperator):
    """New block ``old + j`` copies block ``old - 1 - j`` (mod old): the stack, reversed."""

    name = "mirror"

    def apply(
        self, model: StagedModel, old_depth: int, new_depth: int, generator: torch.Generator
    ) -> None:
        for j in range(new_depth - old_depth):
            src = model.blocks[(old_depth - 1 - j) % old_depth]
            model.blocks[old_depth + j].load_state_dict(src.state_dict())


class RenamedGPT2(GPT2Adapter):
    name = "gpt2-renamed"


def test_names_registered_at_run_time_are_accepted() -> None:
    """register_growth_operator and register_family used to change nothing: config.py kept
    its own lists and refused the new names."""
    with GROWTH_OPERATORS.isolated(), MODEL_FAMILIES.isolated():
        register_growth_operator(Mirror())
        register_family(RenamedGPT2())
        cfg = load_config(
            overrides=["model.family=gpt2-renamed", "schedule.growth=mirror", "model.n_layer=4"]
        )
        assert (cfg.model.family, cfg.schedule.growth) == ("gpt2-renamed", "mirror")
    with pytest.raises(ConfigError, match=r"schedule\.growth"):
        load_config(overrides=["schedule.growth=mirror"])


def test_rebuilding_a_config_imports_no_model_or_search_space() -> None:
    """A Ray worker rebuilds its trial's config from a dict: that must not import the search
    spaces (optuna) or the models for name checks (trial start-up time)."""
    data = config_to_dict(load_config())
    code = (
        "import sys\n"
        "from stagetune.config import config_from_dict\n"
        f"config_from_dict({data!r}, check_names=False)\n"
        "heavy = [m for m in ('optuna', 'stagetune.search_spaces', 'stagetune.models', 'torch')"
        " if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path.cwd()
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr

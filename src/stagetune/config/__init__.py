"""The experiment configuration: typed schema, YAML loading with ``--set`` overrides, presets.

* :mod:`~stagetune.config.schema`: the keyword-only dataclasses, each field with a docstring.
* :mod:`~stagetune.config.loading`: :func:`load_config` (preset, YAML file, ``--set``) and the
  presets, commented YAML files under ``presets/``.
* :mod:`~stagetune.config.convert`: plain dicts to typed config and back.
* :mod:`~stagetune.config.names`: extension names checked against their registries at the edge.
* :mod:`~stagetune.config.yaml_loader`: the YAML dialect (safe, YAML 1.2 numbers, no repeated
  key); :mod:`~stagetune.config.limits`: the bounds of the config's counts.
"""

from stagetune.config.convert import config_from_dict, config_to_dict
from stagetune.config.loading import (
    DEFAULT_PRESET,
    PRESETS,
    apply_overrides,
    load_config,
    preset_overrides,
)
from stagetune.config.names import validate_names
from stagetune.config.schema import (
    ATTN_IMPLEMENTATIONS,
    BudgetConfig,
    DataConfig,
    ExperimentConfig,
    ModelConfig,
    ResourcesConfig,
    ScheduleConfig,
    SearchConfig,
    TrackingConfig,
    TrainConfig,
    validate_name,
)

__all__ = [
    "ATTN_IMPLEMENTATIONS",
    "DEFAULT_PRESET",
    "PRESETS",
    "BudgetConfig",
    "DataConfig",
    "ExperimentConfig",
    "ModelConfig",
    "ResourcesConfig",
    "ScheduleConfig",
    "SearchConfig",
    "TrackingConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "preset_overrides",
    "validate_name",
    "validate_names",
]

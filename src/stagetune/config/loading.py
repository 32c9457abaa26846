"""Loading a config: presets, YAML files and ``--set`` overrides, in that order.

A preset is a commented YAML file shipped in the package (``stagetune/config/presets/``, like
litgpt's ``config_hub``): its comments say what it is for. :data:`PRESETS` holds them by name,
the default (``tiny``) first. :func:`load_config` lays the preset, then the user's YAML file,
then ``--set key=value`` overrides over each other, and builds the config at the edge: every
value checked, every extension name checked against its registry.
"""

from __future__ import annotations

import copy
import os
from importlib import resources
from typing import Any

from stagetune.config.convert import config_from_dict
from stagetune.config.schema import ExperimentConfig
from stagetune.config.yaml_loader import parse_value, read_config_file
from stagetune.errors import ConfigError, suggest

__all__ = ["DEFAULT_PRESET", "PRESETS", "apply_overrides", "load_config", "preset_overrides"]

DEFAULT_PRESET = "tiny"
"""The preset a config starts from when none is named."""
_PRESET_SUFFIX = ".yaml"


def _read_presets() -> dict[str, dict[str, Any]]:
    files = [
        f
        for f in resources.files("stagetune.config").joinpath("presets").iterdir()
        if f.name.endswith(_PRESET_SUFFIX)
    ]
    presets: dict[str, dict[str, Any]] = {}
    for f in sorted(files, key=lambda f: (f.name != DEFAULT_PRESET + _PRESET_SUFFIX, f.name)):
        with resources.as_file(f) as path:
            presets[f.name.removesuffix(_PRESET_SUFFIX)] = read_config_file(path)
    return presets


PRESETS: dict[str, dict[str, Any]] = _read_presets()
"""Named presets (the YAML files' mappings), the default first."""


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def preset_overrides(name: str) -> list[str]:
    """A preset as ``key=value`` overrides (its ``name`` left out), to lay it over another preset."""
    if name not in PRESETS:
        raise ConfigError("preset", name, suggest(name, PRESETS))

    def flat(prefix: str, d: dict[str, Any]) -> list[str]:
        out: list[str] = []
        for k, v in d.items():
            if isinstance(v, dict):
                out += flat(f"{prefix}{k}.", v)
            elif prefix or k != "name":
                out.append(f"{prefix}{k}={v}")
        return out

    return flat("", PRESETS[name])


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    preset: str | None = None,
    overrides: list[str] | None = None,
) -> ExperimentConfig:
    """Load a config: preset (default ``tiny``), then the YAML file, then ``key=value`` overrides.

    The result is checked at the edge: values by the schema, extension names by their
    registries (:func:`~stagetune.config.names.validate_names`).
    """
    preset_name = preset or DEFAULT_PRESET
    if preset_name not in PRESETS:
        raise ConfigError("preset", preset_name, suggest(preset_name, PRESETS))
    data: dict[str, Any] = copy.deepcopy(PRESETS[preset_name])
    if path is not None:
        loaded = read_config_file(path)
        data = _deep_merge(data, loaded)
    if overrides:
        data = apply_overrides(data, overrides)
    return config_from_dict(data)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` overrides; values are parsed as YAML, like the config file."""
    out = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError("--set", item, "use key=value, e.g. --set train.lr=1e-3")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ConfigError("--set", item, "use a dotted key, e.g. --set train.lr=1e-3")
        value = parse_value(key, raw)
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = {}
                node[part] = child
            if not isinstance(child, dict):
                raise ConfigError(key, raw, f"{part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return out

"""Plain data (YAML/JSON dicts) to typed config and back, with an error line per bad value.

Values are coerced to each field's annotated type (an integral float to ``int``, a list to
``list[int]``, a mapping to a section) or refused with a :class:`ConfigError` naming the dotted
field; unknown keys are refused with the closest known key.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal, TypeVar, get_args, get_origin

from stagetune.config.names import validate_names
from stagetune.config.schema import ExperimentConfig
from stagetune.errors import ConfigError, suggest

__all__ = ["config_from_dict", "config_to_dict"]

T = TypeVar("T")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, path: str) -> Any:
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors: list[ConfigError] = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, path)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0] if errors else ConfigError(path, value, "unsupported type")
    if origin is list:
        (item_tp,) = get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(path, value, f"expected a list of {_type_name(item_tp)}")
        return [_coerce(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(path, value, suggest(str(value), map(str, get_args(tp))))
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):  # type: ignore[arg-type]
            return value
        if not isinstance(value, dict):
            raise ConfigError(path, value, "expected a mapping of fields")
        return _from_dict(tp, value, path)  # type: ignore[arg-type]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(path, value, "expected true or false")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(path, value, "expected an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(path, value, "expected a number")
        if not math.isfinite(value):
            raise ConfigError(path, value, "expected a finite number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(path, value, "expected a string")
        return value
    return value


def _from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise ConfigError(path, value, f"unknown key; {suggest(str(key), names)}")
        kwargs[key] = _coerce(value, hints[key], path)
    try:
        return cls(**kwargs)
    except TypeError as exc:  # pragma: no cover - dataclass signature mismatch
        raise ConfigError(prefix or cls.__name__, data, str(exc)) from exc


def config_from_dict(data: dict[str, Any], *, check_names: bool = True) -> ExperimentConfig:
    """Build a validated :class:`ExperimentConfig` from a plain (YAML/JSON) dict.

    Args:
        data: the config as plain data (every section optional).
        check_names: also check the names of extensions against their registries
            (:func:`~stagetune.config.names.validate_names`). User input needs it; a process
            rebuilding a config that was checked when it entered (a Ray worker reading its
            trial's dict) passes ``False`` and imports no model or search-space code for it.
    """
    if not isinstance(data, dict):
        raise ConfigError("config", data, "the config file must hold a mapping at top level")
    cfg = _from_dict(ExperimentConfig, data)
    if check_names:
        validate_names(cfg)
    return cfg


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain-dict form of any config dataclass (JSON/YAML serialisable)."""
    return dataclasses.asdict(cfg)

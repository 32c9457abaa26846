"""The YAML dialect of config files and ``--set`` values: safe, YAML 1.2 numbers, no repeated key.

PyYAML implements YAML 1.1, where ``1e-3`` (no dot) is a string and a key given twice silently
keeps the last value. Configs are written by people who expect ``lr: 1e-3`` to be a number and
who do not expect a second ``train:`` section to wipe out the first, so this loader resolves
YAML 1.2 exponent floats and refuses repeated keys. It is still a :class:`yaml.SafeLoader`:
only plain data (mappings, lists, scalars) is built, never an object.
"""

from __future__ import annotations

import os
import re
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode

from stagetune.errors import ConfigError, shown

__all__ = ["ConfigLoader", "DuplicateKeyError", "parse_value", "parse_yaml", "read_config_file"]

# YAML 1.2 core-schema floats that YAML 1.1 reads as strings: an exponent without a dot
# ("1e-3", "5E4") or without a sign ("1.0e3"). Plain integers and the 1.1 forms are left to
# PyYAML's own resolvers, which run first.
_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")
_MERGE_TAG = "tag:yaml.org,2002:merge"


class DuplicateKeyError(ConstructorError):
    """A mapping gives the same key twice (``line`` and ``first_line`` are 1-based)."""

    def __init__(self, key: Any, line: int, first_line: int, mark: Any) -> None:
        self.key = key
        self.line = line
        self.first_line = first_line
        super().__init__(
            None, None, f"key {key!r} given twice (lines {first_line} and {line})", mark
        )


class ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with YAML 1.2 exponent floats and refusal of repeated keys."""

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Hashable, int] = {}
        for key_node, _ in node.value:
            # A merge key (<<) brings defaults that local keys may override: not a repeat.
            if key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):
                continue  # SafeConstructor refuses it with its own message below
            line = key_node.start_mark.line + 1
            if key in seen:
                raise DuplicateKeyError(key, line, seen[key], key_node.start_mark)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789.")
)


def parse_yaml(text: str) -> Any:
    """Parse ``text`` with :class:`ConfigLoader` (raises :class:`yaml.YAMLError` subclasses)."""
    loader = ConfigLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _line(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    return f" at line {mark.line + 1}" if mark is not None else ""


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The mapping a YAML config file holds (empty for an empty file).

    Raises:
        ConfigError: (field ``config``) a missing or non-UTF-8 file, invalid YAML, a tag
            (``!!python/object`` …), a key given twice, or a top level that is not a mapping.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError("config", str(path), "the file does not exist; pass a YAML file path")
    try:
        loaded = parse_yaml(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError("config", str(path), "not a UTF-8 text file; pass a YAML file") from None
    except DuplicateKeyError as exc:
        raise ConfigError(
            "config",
            str(path),
            f"key {shown(exc.key)} is given twice (line {exc.first_line} and line {exc.line}); "
            "the second would replace the first, so merge them into one",
        ) from None
    except ConstructorError as exc:
        # A SafeLoader builds plain data only: tags such as !!python/object are refused.
        raise ConfigError(
            "config",
            str(path),
            f"unsupported YAML tag{_line(exc)} ({exc.problem}); only plain YAML data is accepted",
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(
            "config", str(path), f"not valid YAML{_line(exc)}; fix the syntax"
        ) from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError("config", str(path), "the file must hold a mapping at top level")
    return loaded


def parse_value(key: str, raw: str) -> Any:
    """The value of ``--set key=raw``: YAML like the file (``1e-3`` is a number); text that is
    not valid YAML stays a string for the field's own check to judge."""
    if not raw.strip():
        return ""
    try:
        return parse_yaml(raw)
    except DuplicateKeyError as exc:
        raise ConfigError(key, raw, f"key {shown(exc.key)} is given twice; give each key once") from None
    except yaml.YAMLError:
        return raw

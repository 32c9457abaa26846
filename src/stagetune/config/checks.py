"""The checks config sections validate their fields with (one home for the error wording)."""

from __future__ import annotations

from typing import Any

from stagetune.errors import ConfigError, suggest

__all__ = ["bounded", "choice", "require"]


def require(cond: bool, field_name: str, value: Any, fix: str) -> None:
    """Refuse ``value`` of ``field_name`` with ``fix`` unless ``cond``."""
    if not cond:
        raise ConfigError(field_name, value, fix)


def bounded(value: float, low: float, high: float, field_name: str, why_high: str) -> None:
    """``low <= value <= high``; past ``high`` the error says ``why_high`` (see limits)."""
    require(value >= low, field_name, value, f"use >= {low:g}")
    require(value <= high, field_name, value, why_high)


def choice(value: str, choices: tuple[str, ...], field_name: str) -> None:
    """Refuse a ``value`` not among ``choices``, suggesting the nearest."""
    if value not in choices:
        raise ConfigError(field_name, value, suggest(str(value), choices))

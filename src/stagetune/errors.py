"""Error types shared by every layer of stagetune.

Every error a user can cause is a :class:`StagetuneError`; the CLI turns it into one line on
stderr and exit code 2. The message always names the field, the offending value and the fix.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

__all__ = ["ConfigError", "DivergenceError", "StagetuneError", "suggest"]


class StagetuneError(Exception):
    """Base class of all user-facing errors (exit code 2 in the CLI)."""

    exit_code = 2


class ConfigError(StagetuneError, ValueError):
    """A configuration value is invalid.

    Args:
        field: dotted path of the offending field, e.g. ``schedule.increments``.
        value: the value that was given.
        fix: what the user should do instead.
    """

    def __init__(self, field: str, value: Any, fix: str) -> None:
        self.field = field
        self.value = value
        self.fix = fix
        super().__init__(f"{field}={value!r}: {fix}")


class DivergenceError(RuntimeError):
    """Training produced a non-finite loss; the trial stops with status ``diverged``."""

    def __init__(self, step: int, loss: float) -> None:
        self.step = step
        self.loss = loss
        super().__init__(f"loss became {loss} at step {step}")


def suggest(name: str, choices: Iterable[str]) -> str:
    """Return a 'did you mean' hint naming the closest valid choice, or the valid choices."""
    options = sorted(choices)
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.5)
    if close:
        return f"did you mean {close[0]!r}? (valid: {', '.join(options)})"
    return f"valid: {', '.join(options)}"

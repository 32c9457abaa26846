"""Error types shared by every layer of stagetune.

Every error a user can cause is a :class:`StagetuneError`; the CLI turns it into one line on
stderr and exit code 2. The message always names the field, the offending value and the fix.
"""

from __future__ import annotations

import difflib
import reprlib
from collections.abc import Iterable
from typing import Any

__all__ = ["MAX_SHOWN_CHARS", "ConfigError", "DivergenceError", "StagetuneError", "shown", "suggest"]

MAX_SHOWN_CHARS = 200
"""Longest echo of a user's value (or field name) in an error line: an error is one line that
a person reads, whatever size of value (a 50 MB YAML string, a huge list) caused it."""


class _ShortRepr(reprlib.Repr):
    """``repr`` with long strings cut in the middle (both ends stay: a path keeps its file name)
    and long containers elided, never building the whole text of a huge value."""

    def __init__(self) -> None:
        super().__init__()
        self.maxstring = self.maxother = MAX_SHOWN_CHARS
        self.maxlist = self.maxtuple = self.maxset = self.maxdict = 16
        self.maxlong = 64

    def repr_str(self, x: str, level: int) -> str:
        if len(x) <= MAX_SHOWN_CHARS:
            return repr(x)
        half = MAX_SHOWN_CHARS // 2
        return f"{x[:half]!r}...{x[-half:]!r} ({len(x):,} characters)"


_SHORT = _ShortRepr()


def _cut(text: str, most: int) -> str:
    """``text`` cut in the middle to about ``most`` characters (a fix may quote user data)."""
    if len(text) <= most:
        return text
    half = most // 2
    return f"{text[:half]} ... {text[-half:]}"


def shown(value: Any) -> str:
    """How an error line echoes ``value``: its ``repr``, at most about 200 characters."""
    text = _SHORT.repr(value)
    # reprlib leaves the repr of unknown types (and of what holds them) to the type itself.
    if len(text) > 2 * MAX_SHOWN_CHARS:
        text = f"{text[:MAX_SHOWN_CHARS]}... ({len(text):,} characters)"
    return text


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
        # The one place a value is formatted: capped, so a huge value gives a short line.
        name, why = _cut(field, MAX_SHOWN_CHARS), _cut(fix, 5 * MAX_SHOWN_CHARS)
        super().__init__(f"{name}={shown(value)}: {why}")


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

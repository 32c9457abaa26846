"""The trial interface spaces sample from, and a strict replay of given params through it.

``define`` sees three kinds of trial: an ``optuna.Trial`` (a study's ``ask``), Ray Tune's
suggest-captor wrapping one (``OptunaSearch`` with a define-by-run space), and
:class:`ParamsTrial`, which replays a params dict so that ``build`` checks a point against
the very code that defines the space instead of a second, drifting copy of its rules.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from stagetune.errors import ConfigError

__all__ = ["ParamsTrial", "RecordingTrial", "TrialLike"]


class TrialLike(Protocol):
    """The part of ``optuna.Trial`` a search space uses (Ray's captor has it too)."""

    def suggest_int(
        self, name: str, low: int, high: int, *, step: int = 1, log: bool = False
    ) -> int: ...

    def suggest_float(
        self,
        name: str,
        low: float,
        high: float,
        *,
        step: float | None = None,
        log: bool = False,
    ) -> float: ...

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any: ...


def _field(name: str) -> str:
    return f"search.params.{name}"


class ParamsTrial:
    """Answers each ``suggest_*`` from a params dict; missing or out-of-range values raise.

    Unlike ``optuna.trial.FixedTrial`` (which only warns when a value is out of range), this
    raises :class:`ConfigError`, so an invalid point never becomes a training run. ``params``
    records the values actually asked for, normalised to the space's types.
    """

    def __init__(self, params: Mapping[str, Any]) -> None:
        self._given = dict(params)
        self.params: dict[str, Any] = {}

    def _value(self, name: str) -> Any:
        if name not in self._given:
            given = ", ".join(sorted(self._given)) or "nothing"
            raise ConfigError(_field(name), None, f"missing; this point needs it (given: {given})")
        return self._given[name]

    def suggest_int(
        self, name: str, low: int, high: int, *, step: int = 1, log: bool = False
    ) -> int:
        raw = self._value(name)
        # JSON/MLflow round trips may turn 3 into 3.0, numpy into np.int64: both are fine.
        if (
            isinstance(raw, bool)
            or not isinstance(raw, numbers.Real)
            or not float(raw).is_integer()
        ):
            raise ConfigError(_field(name), raw, "expected an integer")
        value = int(float(raw))  # step and layer counts: far below float's exact range
        if not low <= value <= high or (value - low) % step:
            raise ConfigError(
                _field(name), value, f"use an integer in [{low}, {high}] (step {step})"
            )
        self.params[name] = value
        return value

    def suggest_float(
        self,
        name: str,
        low: float,
        high: float,
        *,
        step: float | None = None,
        log: bool = False,
    ) -> float:
        raw = self._value(name)
        if isinstance(raw, bool) or not isinstance(raw, numbers.Real) or not math.isfinite(raw):
            raise ConfigError(_field(name), raw, "expected a finite number")
        value = float(raw)
        if not low <= value <= high:
            raise ConfigError(_field(name), raw, f"use a number in [{low}, {high}]")
        self.params[name] = value
        return value

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        raw = self._value(name)
        for choice in choices:
            # Same type family, so True does not pass for 1 nor 1 for True.
            if isinstance(choice, bool) == isinstance(raw, bool) and choice == raw:
                self.params[name] = choice
                return choice
        valid = ", ".join(map(repr, choices))
        raise ConfigError(_field(name), raw, f"use one of {valid}")


class RecordingTrial:
    """Forwards ``suggest_*`` to a trial and records the answers in ``params``.

    Lets ``define`` return exactly what this point sampled, whichever kind of trial it was
    given (an ``optuna.Trial``, Ray's captor, a :class:`ParamsTrial`), without each space
    keeping the books itself.
    """

    def __init__(self, trial: TrialLike) -> None:
        self._trial = trial
        self.params: dict[str, Any] = {}

    def suggest_int(
        self, name: str, low: int, high: int, *, step: int = 1, log: bool = False
    ) -> int:
        self.params[name] = value = self._trial.suggest_int(name, low, high, step=step, log=log)
        return value

    def suggest_float(
        self,
        name: str,
        low: float,
        high: float,
        *,
        step: float | None = None,
        log: bool = False,
    ) -> float:
        self.params[name] = value = self._trial.suggest_float(name, low, high, step=step, log=log)
        return value

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        self.params[name] = value = self._trial.suggest_categorical(name, choices)
        return value

"""Registries: the one list of names of each extension point.

A :class:`Registry` maps a name (the value a config field takes, e.g. ``schedule.growth:
zero``) to its implementation. Built-ins register themselves where they are defined
(``@GROWTH_OPERATORS.register("zero")``), installed packages add theirs through an
entry-point group, and code registers at run time with :meth:`Registry.register`. Config
validation asks the registry, so a name is valid exactly when something is registered under it:
there is no second list to keep in step.

The registries are declared here, in a module that imports nothing of stagetune but its error
type, so the config (which validates names at the edge) can ask them without importing the
layers that implement them. Each registry names the module that defines its built-ins and
imports it on first use, the same way an entry point's plugin is loaded.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import threading
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar, overload

from stagetune.errors import ConfigError, suggest

__all__ = [
    "CONVENTIONS",
    "DATA_SOURCES",
    "FREEZE_POLICIES",
    "GROWTH_OPERATORS",
    "MODEL_FAMILIES",
    "SAMPLERS",
    "SEARCH_SPACES",
    "Registry",
]

_log = logging.getLogger(__name__)

T = TypeVar("T")

_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")


class Registry(Generic[T]):
    """Names of one kind of extension, each bound to its implementation.

    Args:
        kind: what is registered, for messages (``growth operator``).
        field: the config field whose values are these names (``schedule.growth``).
        builtins: module that registers the built-ins when imported (imported on first use).
        entry_point_group: entry-point group of installed packages' implementations, loaded on
            first use; an entry point's object is registered under the entry point's name.
            Names registered explicitly win over a plugin of the same name, and a plugin that
            fails to load is skipped with a warning, so it cannot hide the others.
        expects: what an implementation must be: ``"module:Class"`` (an instance of that class,
            imported when the first implementation is registered) or ``"callable"`` (a
            factory). Anything else is refused when it is registered, so a plugin that points
            at the wrong object fails where it is loaded, not deep inside a trial.
    """

    def __init__(
        self,
        kind: str,
        *,
        field: str,
        builtins: str | None = None,
        entry_point_group: str | None = None,
        expects: str | None = None,
    ) -> None:
        self.kind = kind
        self.field = field
        self.builtins = builtins
        self.entry_point_group = entry_point_group
        self.expects = expects
        self._items: dict[str, T] = {}
        self._loaded = False
        self._lock = threading.RLock()

    # -- registering -----------------------------------------------------------------------------
    @overload
    def register(self, name: str, obj: T, *, replace: bool = False) -> T: ...

    @overload
    def register(
        self, name: str, obj: None = None, *, replace: bool = False
    ) -> Callable[[T], T]: ...

    def register(
        self, name: str, obj: T | None = None, *, replace: bool = False
    ) -> T | Callable[[T], T]:
        """Register ``obj`` under ``name``; without ``obj``, a decorator that does.

        Raises:
            ConfigError: ``name`` is not a plain word (letters, digits, ``-_.``), or is taken
                and ``replace`` is false.
            TypeError: ``obj`` is not what the registry :attr:`expects`.
        """
        if not isinstance(name, str) or not name or not set(name) <= _NAME_CHARS:
            raise ConfigError(
                self.field, name, f"a {self.kind} name must be a plain word (letters, digits, -_.)"
            )

        def add(item: T) -> T:
            self._check_type(name, item)
            with self._lock:
                if name in self._items and not replace and self._items[name] is not item:
                    raise ConfigError(
                        self.field, name, f"a {self.kind} of that name is registered already; "
                        "pass replace=True to replace it"
                    )  # fmt: skip
                self._items[name] = item
            return item

        return add if obj is None else add(obj)

    def _check_type(self, name: str, item: object) -> None:
        if self.expects is None:
            return
        if self.expects == "callable":
            if not callable(item):
                raise TypeError(f"{self.kind} {name!r} is not callable: {item!r}")
            return
        module, _, qualname = self.expects.partition(":")
        cls: Any = importlib.import_module(module)
        for part in qualname.split("."):
            cls = getattr(cls, part)
        if not isinstance(item, cls):
            raise TypeError(f"{self.kind} {name!r} is not a {qualname} instance: {item!r}")

    def unregister(self, name: str) -> None:
        """Remove ``name`` (tests and notebooks that register temporary implementations)."""
        with self._lock:
            self._items.pop(name, None)

    @contextlib.contextmanager
    def isolated(self) -> Iterator[Registry[T]]:
        """Within the block, entry points load afresh (a package just put on ``sys.path`` is
        found) and registrations are undone afterwards: for tests of plugins."""
        self._load()  # the built-ins register once per process: keep them
        with self._lock:
            saved = dict(self._items)
            self._loaded = False
        try:
            yield self
        finally:
            with self._lock:
                self._items = saved
                self._loaded = True

    # -- looking up --------------------------------------------------------------------------------
    def get(self, name: str) -> T:
        """The implementation registered under ``name``.

        Raises:
            ConfigError: naming :attr:`field`, the value and the registered names.
        """
        self._load()
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise ConfigError(self.field, name, suggest(str(name), self._items)) from None

    def check(self, name: str) -> None:
        """Raise :class:`ConfigError` unless ``name`` is registered (config validation)."""
        self.get(name)

    def names(self) -> list[str]:
        """Registered names, sorted."""
        self._load()
        return sorted(self._items)

    def items(self) -> list[tuple[str, T]]:
        """(name, implementation) pairs, sorted by name."""
        self._load()
        return sorted(self._items.items())

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self._load()
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, field={self.field!r})"

    # -- loading -----------------------------------------------------------------------------------
    def _load(self) -> None:
        if self._loaded:
            return
        with self._lock:
            if self._loaded:
                return
            # Set first: the built-ins module registers into this registry while it imports.
            self._loaded = True
            if self.builtins:
                importlib.import_module(self.builtins)
            if self.entry_point_group:
                self._load_entry_points(self.entry_point_group)

    def _load_entry_points(self, group: str) -> None:
        for ep in entry_points(group=group):
            if ep.name in self._items:
                continue
            try:
                obj = ep.load()
                self.register(ep.name, obj)
            except Exception as exc:  # a broken plugin must not hide the others
                _log.warning("%s plugin %s = %s ignored: %s", self.kind, ep.name, ep.value, exc)


GROWTH_OPERATORS: Registry[Any] = Registry(
    "growth operator",
    field="schedule.growth",
    builtins="stagetune.models.growth",
    entry_point_group="stagetune.growth_operators",
    expects="stagetune.models.growth:GrowthOperator",
)
"""How the new blocks of a stage start (:class:`stagetune.models.growth.GrowthOperator`)."""

FREEZE_POLICIES: Registry[Any] = Registry(
    "freeze policy",
    field="schedule.freeze_policy",
    builtins="stagetune.freeze",
    entry_point_group="stagetune.freeze_policies",
    expects="stagetune.freeze:FreezePolicy",
)
"""What trains in phase 1 and what work a frozen block does."""

MODEL_FAMILIES: Registry[Any] = Registry(
    "model family",
    field="model.family",
    builtins="stagetune.models",
    entry_point_group="stagetune.model_families",
    expects="stagetune.models.family:FamilyAdapter",
)
"""Hugging Face model families (:class:`stagetune.models.family.FamilyAdapter`)."""

SEARCH_SPACES: Registry[Any] = Registry(
    "search space",
    field="search.space",
    builtins="stagetune.search_spaces",
    entry_point_group="stagetune.search_spaces",
    expects="stagetune.search_spaces.base:SearchSpace",
)
"""Optuna define-by-run spaces (:class:`stagetune.search_spaces.SearchSpace`)."""

SAMPLERS: Registry[Any] = Registry(
    "sampler",
    field="search.sampler",
    builtins="stagetune.orchestration.samplers",
    entry_point_group="stagetune.samplers",
    expects="callable",
)
"""Optuna samplers by name, each a factory of a seeded sampler."""

DATA_SOURCES: Registry[Any] = Registry(
    "data source",
    field="data.source",
    builtins="stagetune.data.sources",
    entry_point_group="stagetune.data_sources",
    expects="callable",
)
"""Named data sources, each a factory ``(DataConfig) -> DataSource`` (paths need no name)."""

OPTIMIZER_POLICIES = ("reset", "carry", "carry_then_reset")
"""What a schedule does with AdamW's state: ``reset`` it at every growth and at the continual
start, ``carry`` it through everything, or ``carry_then_reset``: keep it through growth and
unfreezing and start a fresh optimizer for continual training (the paper's code)."""
RECIPES = ("stagetune", "paper")
"""Training recipes (``train.recipe``): ``paper`` holds a config to the paper's procedure."""

CONVENTIONS: Registry[Any] = Registry(
    "FLOPs convention", field="budget.convention", builtins="stagetune.compute", expects="callable"
)
"""FLOPs conventions (``standard``, ``paper``): how a step's compute is counted, each a function
``(dims, work, tokens) -> FLOPs`` (:func:`stagetune.compute.step_flops` dispatches on it)."""

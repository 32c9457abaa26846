"""Looking up and adding search spaces: the names ``search.space`` may take.

The names live in :data:`stagetune.registry.SEARCH_SPACES` (the one list); each built-in space
registers itself in its own module, a package's space through the ``stagetune.search_spaces``
entry-point group (an instance of :class:`~stagetune.search_spaces.SearchSpace`).
"""

from __future__ import annotations

from stagetune.registry import SEARCH_SPACES
from stagetune.search_spaces.base import SearchSpace

__all__ = ["get_search_space", "register_search_space"]


def register_search_space(space: SearchSpace, *, replace: bool = False) -> SearchSpace:
    """Register ``space`` under ``space.name`` (spaces are stateless: one shared instance)."""
    return SEARCH_SPACES.register(space.name, space, replace=replace)


def get_search_space(name: str) -> SearchSpace:
    """The registered space called ``name``; ConfigError on ``search.space`` otherwise."""
    space: SearchSpace = SEARCH_SPACES.get(name)
    return space

"""Search spaces by name: the values ``search.space`` may take."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from stagetune.errors import ConfigError, suggest
from stagetune.search_spaces.base import SearchSpace
from stagetune.search_spaces.compact import CompactSpace
from stagetune.search_spaces.paper import PaperSpace
from stagetune.search_spaces.wide import WideSpace

__all__ = ["SEARCH_SPACES", "get_search_space"]

# Spaces are stateless, so one shared instance each; read-only so no caller can swap one.
SEARCH_SPACES: Mapping[str, SearchSpace] = MappingProxyType(
    {space.name: space for space in (PaperSpace(), WideSpace(), CompactSpace())}
)


def get_search_space(name: str) -> SearchSpace:
    """The registered space called ``name``; ConfigError on ``search.space`` otherwise."""
    try:
        return SEARCH_SPACES[name]
    except KeyError:
        raise ConfigError("search.space", name, suggest(str(name), SEARCH_SPACES)) from None

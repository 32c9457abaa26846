"""Search spaces: the conformance suite on every registered space, and the registry.

The suite (:mod:`stagetune.testing.search_spaces`, modelled on optuna's shared sampler tests)
checks each property for every space in the registry and several study contexts, on real
studies with seeded samplers. No training.
"""

from __future__ import annotations

import optuna
import pytest

from stagetune.errors import ConfigError
from stagetune.registry import SEARCH_SPACES
from stagetune.search_spaces import SearchSpace, WideSpace, get_search_space, register_search_space
from stagetune.testing.search_spaces import SearchSpaceSuite

optuna.logging.set_verbosity(optuna.logging.WARNING)


class TestRegisteredSpaces(SearchSpaceSuite):
    @pytest.fixture(params=SEARCH_SPACES.names())
    def space(self, request: pytest.FixtureRequest) -> SearchSpace:
        space = get_search_space(request.param)
        assert space.name == request.param  # registered under its own name
        return space


def test_registry_names_and_lookup() -> None:
    assert SEARCH_SPACES.names() == ["compact", "lattice", "paper", "wide"]
    with pytest.raises(ConfigError, match="did you mean 'wide'") as err:
        get_search_space("wdie")
    assert err.value.field == "search.space"


def test_register_search_space() -> None:
    class Wider(WideSpace):
        name = "wider"

    space = Wider()
    with SEARCH_SPACES.isolated():
        assert register_search_space(space) is get_search_space("wider") is space
        with pytest.raises(ConfigError, match="registered already"):
            register_search_space(WideSpace())
        with pytest.raises(TypeError, match="not a SearchSpace instance"):
            SEARCH_SPACES.register("bogus", "wide")
    assert "wider" not in SEARCH_SPACES

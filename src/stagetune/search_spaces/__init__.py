"""Schedule search spaces for Optuna (define-by-run), including the paper's.

A :class:`SearchSpace` samples params on an Optuna trial (:meth:`SearchSpace.define`, or
:meth:`SearchSpace.as_define_by_run` for ``ray.tune.search.optuna.OptunaSearch``) and turns
params into a :class:`~stagetune.trial.TrialDescription` (:meth:`SearchSpace.build`) given the study's
:class:`SpaceContext`. Spaces are looked up by name with :func:`get_search_space`; the names
are those of :data:`stagetune.registry.SEARCH_SPACES`.
"""

from stagetune.search_spaces.base import DefineByRun, SearchSpace, suggest_increments
from stagetune.search_spaces.compact import CompactSpace
from stagetune.search_spaces.context import SpaceContext
from stagetune.search_spaces.lattice import LatticeSpace
from stagetune.search_spaces.paper import PaperSpace
from stagetune.search_spaces.registry import get_search_space, register_search_space
from stagetune.search_spaces.trial import ParamsTrial, RecordingTrial, TrialLike
from stagetune.search_spaces.wide import WideSpace

__all__ = [
    "CompactSpace",
    "DefineByRun",
    "LatticeSpace",
    "PaperSpace",
    "ParamsTrial",
    "RecordingTrial",
    "SearchSpace",
    "SpaceContext",
    "TrialLike",
    "WideSpace",
    "get_search_space",
    "register_search_space",
    "suggest_increments",
]

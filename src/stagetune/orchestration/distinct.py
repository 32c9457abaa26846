"""Each point of a finite space once before any twice: a sampler's repeat is replaced.

A trial is a pure function of its point (same params, same training seed: the same losses),
so on a finite space a sampler that draws a point it has already asked for would spend a whole
trial learning nothing. TPE does so most of the time once it has found a good region (it
proposes the best point it knows again), and Optuna's samplers keep no memory of what was
asked. The searcher therefore closes such a draw at once as FAIL (``stagetune_status=
duplicate``, not counted against ``search.num_trials``; samplers ignore FAIL trials) and runs
instead the unasked point nearest to the one drawn (fewest params differing, ties at random):
the sampler's choice, one step away, rather than a random point that throws its guidance away.
Once every point was asked for, a study with trials left repeats points as the sampler draws
them (``search.num_trials`` is the user's: e.g. identical trials side by side on purpose).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from optuna.trial import FrozenTrial, TrialState

__all__ = ["STATUS_DUPLICATE", "nearest_unvisited", "point_key", "visited_keys"]

STATUS_DUPLICATE: Final = "duplicate"
"""``stagetune_status`` of a draw closed because its point was asked for before."""


def point_key(params: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """A hashable identity of a point (its params, order-free)."""
    return tuple(sorted(params.items()))


def visited_keys(
    trials: Iterable[FrozenTrial],
    *,
    params_of: Callable[[FrozenTrial], dict[str, Any]],
    status_attr: str,
    interrupted: str,
) -> set[tuple[tuple[str, Any], ...]]:
    """The points already asked for (``params_of``: a trial's params, an enqueued one's too):
    every trial's but an interrupted one's (that point was never trained to a result) and the
    duplicates' own (their point is counted once)."""
    out = set()
    for t in trials:
        status = t.user_attrs.get(status_attr)
        if t.state == TrialState.FAIL and status in (interrupted, STATUS_DUPLICATE):
            continue
        params = params_of(t)
        if params:
            out.add(point_key(params))
    return out


def distance(a: Mapping[str, Any], b: Mapping[str, Any]) -> int:
    """How many params differ (one a point has and the other lacks counts as differing)."""
    return sum(a.get(k, _MISSING) != b.get(k, _MISSING) for k in a.keys() | b.keys())


_MISSING = object()


def nearest_unvisited(
    grid: list[dict[str, Any]],
    visited: set[tuple[tuple[str, Any], ...]],
    near: Mapping[str, Any],
    rng: random.Random,
) -> dict[str, Any] | None:
    """The point of ``grid`` not in ``visited`` nearest to ``near`` (ties: uniformly at
    random); None when all were visited."""
    left = [p for p in grid if point_key(p) not in visited]
    if not left:
        return None
    best = min(distance(p, near) for p in left)
    return rng.choice([p for p in left if distance(p, near) == best])

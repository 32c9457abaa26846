"""Each point of a finite space at most once: a sampler's repeat is redrawn, not trained.

A trial is a pure function of its point (same params, same training seed: the same losses),
so on a finite space a sampler that draws a point it has already asked for would spend a whole
trial learning nothing. TPE does so often once it has found a good region, and Optuna's
samplers keep no memory of what was asked. The searcher therefore closes such a draw at once
as FAIL (``stagetune_status=duplicate``, not counted against ``search.num_trials``; samplers
ignore FAIL trials) and asks again; after :data:`MAX_REDRAWS` repeats in a row it enqueues a
point nobody has asked for, chosen at random, so the study still gets a new point per trial.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from optuna.trial import FrozenTrial, TrialState

__all__ = ["MAX_REDRAWS", "STATUS_DUPLICATE", "point_key", "unvisited", "visited_keys"]

STATUS_DUPLICATE: Final = "duplicate"
"""``stagetune_status`` of a draw closed because its point was asked for before."""
MAX_REDRAWS: Final = 8
"""Repeats in a row before an unasked point is taken at random instead."""


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


def unvisited(
    grid: list[dict[str, Any]], visited: set[tuple[tuple[str, Any], ...]], rng: random.Random
) -> dict[str, Any] | None:
    """A point of ``grid`` not in ``visited``, uniformly at random; None when all were."""
    left = [p for p in grid if point_key(p) not in visited]
    return rng.choice(left) if left else None

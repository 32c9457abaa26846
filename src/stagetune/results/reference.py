"""The reference: the best full-depth recipe of a study, the bar every schedule is measured at.

A study trains the full-depth schedule at several learning rates (the reference sweep,
``search.reference_lr_factors``: the configured baseline is the × 1 one), never stopped early;
a search may sample more full-depth recipes (the ``wide`` space's lr and warmup). The
**reference** is the full-depth recipe with the lowest final eval loss on the study's own seed
(``train.seed``: the one every phase before the confirmation round ran on), among the
full-depth trials that finished. One rule, one seed, for two reasons:

* the orchestration must choose it before the confirmation round, which retrains it on further
  seeds: at that moment only the study's own seed has results;
* the report must find the same recipe again from MLflow afterwards, when the confirmation
  round has added seeds to some recipes and not to others (a mean over unequal seed sets
  would let an unconfirmed recipe win by luck).

An envelope (the lowest full-depth loss at each compute) would also be defensible; a single
recipe was chosen because it can be retrained on further seeds and gives per-seed pairs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["ReferenceCandidate", "choose_reference"]


@dataclass(frozen=True, kw_only=True)
class ReferenceCandidate:
    """One full-depth trial, as far as choosing the reference needs to know it."""

    key: str
    """Its recipe (schedule key; equal across seeds)."""
    final_eval_loss: float | None
    finished: bool
    """It trained to its end (not stopped, diverged, failed or interrupted)."""
    is_baseline: bool = False
    """The configured baseline: it wins a tie."""


def choose_reference(candidates: Iterable[ReferenceCandidate]) -> str | None:
    """The key of the reference among ``candidates`` (all of one seed), ``None`` if none
    finished with a finite eval loss (callers then fall back to the configured baseline).

    Lowest final eval loss wins; on a tie the configured baseline, then the smaller key (so
    the choice never depends on the order trials finished in).
    """
    ok = [
        c
        for c in candidates
        if c.finished and c.final_eval_loss is not None and math.isfinite(c.final_eval_loss)
    ]
    if not ok:
        return None
    best = min(ok, key=lambda c: (c.final_eval_loss, not c.is_baseline, c.key))
    return best.key

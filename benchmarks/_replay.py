"""Replaying a search against recorded training curves: what the search would have spent.

Every point of a finite space is trained once to its end (its *curve*: the records the
training loop reported, in order). A searcher is then replayed against the curves the way
Ray Tune drives it in a study: up to ``concurrency`` trials at a time, each new trial asked
from the searcher when a slot frees; every record goes to the searcher's
``on_trial_result`` and the scheduler's (stagetune's ASHA), in the order the records would
reach the driver; a STOP ends the trial there (the searcher and scheduler are told the trial
completed with that record, as Tune does); the final record completes it.

The clock is compute: a trial's record at cumulative FLOPs ``f`` arrives ``f`` after the trial
started, so trials run at the same speed per FLOP and "compute spent at time t" is the sum over
trials of the FLOPs they had spent by then. Since a point's curve is a pure function of the
point (same training seed), a replayed trial reports exactly what training it would report.

Imported as ``_replay`` by ``search_efficiency.py`` and by the tests.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Protocol

CLOCK = "flops"
"""The record field the clock and the accounting read (standard-convention FLOPs)."""
STATUS_FINISHED = "finished"
STATUS_STOPPED = "stopped"


def point_key(params: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """A hashable identity of a point (its params, order-free)."""
    return tuple(sorted(params.items()))


@dataclass(frozen=True)
class Curve:
    """One grid point trained to its end: its params and the records it reported."""

    params: dict[str, Any]
    records: list[dict[str, Any]]

    @property
    def flops(self) -> float:
        return float(self.records[-1][CLOCK])

    @property
    def final_loss(self) -> float:
        return float(self.records[-1]["eval_loss"])


class PointSource(Protocol):
    """What the replay asks for points and tells results to (a Tune ``Searcher``'s calls)."""

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None: ...

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None: ...

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None: ...


class GridOrder:
    """The grid in random order (the first point, the baseline, first): no learning."""

    def __init__(self, grid: list[dict[str, Any]], seed: int) -> None:
        rest = grid[1:]
        random.Random(seed).shuffle(rest)
        self._order = [grid[0], *rest]

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        return self._order.pop(0) if self._order else "FINISHED"

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        return None

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        return None


@dataclass
class Ran:
    """One replayed trial: its point, when it started and ended on the compute clock, how it
    ended, and the FLOPs it spent."""

    trial_id: str
    key: tuple[tuple[str, Any], ...]
    start: float
    end: float = float("nan")
    spent: float = 0.0
    status: str = ""
    final_loss: float = float("nan")
    full_loss: float = float("nan")
    """The loss the point reaches at its end (what a stopped trial would have reached)."""
    next_record: int = field(default=0, repr=False)

    def spent_at(self, when: float) -> float:
        """FLOPs spent by ``when`` (linear: the clock is this trial's own FLOPs)."""
        return min(max(0.0, when - self.start), self.spent)


def replay(
    source: PointSource,
    curves: Mapping[tuple[tuple[str, Any], ...], Curve],
    *,
    scheduler: Any | None,
    concurrency: int,
    max_trials: int,
) -> list[Ran]:
    """Run ``source`` (and ``scheduler``, ASHA or None) against ``curves``; the trials in
    the order they started."""
    ran: list[Ran] = []
    running: list[Ran] = []
    clock = 0.0
    exhausted = False

    def fill() -> None:
        nonlocal exhausted
        while not exhausted and len(running) < concurrency and len(ran) < max_trials:
            trial_id = f"trial_{len(ran):05d}"
            config = source.suggest(trial_id)
            if not isinstance(config, dict):
                exhausted = True
                return
            key = point_key(config)
            if key not in curves:
                raise KeyError(f"suggested point {config} is not a grid point")
            run = Ran(trial_id=trial_id, key=key, start=clock, full_loss=curves[key].final_loss)
            if scheduler is not None:
                scheduler.on_trial_add(None, SimpleNamespace(trial_id=trial_id))
            ran.append(run)
            running.append(run)

    fill()
    while running:
        run = min(running, key=lambda r: r.start + curves[r.key].records[r.next_record][CLOCK])
        curve = curves[run.key]
        record = curve.records[run.next_record]
        clock = run.start + float(record[CLOCK])
        run.next_record += 1
        result = {**record, "training_iteration": run.next_record}
        last = run.next_record == len(curve.records)
        source.on_trial_result(run.trial_id, result)
        action = "CONTINUE"
        stub = SimpleNamespace(trial_id=run.trial_id)
        if scheduler is not None and not last:
            action = str(scheduler.on_trial_result(None, stub, result))
        if last or action == "STOP":
            if scheduler is not None:
                scheduler.on_trial_complete(None, stub, result)
            source.on_trial_complete(run.trial_id, result=result)
            run.end, run.spent = clock, float(record[CLOCK])
            run.status = STATUS_FINISHED if last else STATUS_STOPPED
            run.final_loss = float(record["eval_loss"])
            running.remove(run)
            fill()
    return ran


@dataclass(frozen=True)
class Cost:
    """What a replayed search spent before it held a qualifying point run to its end."""

    reached: bool
    ratio: float
    """FLOPs spent by every trial until the hit's final record ÷ the grid's compute (inf: none
    within the trial budget)."""
    hit_trial: int | None
    """1-based start order of the hitting trial."""
    trials: int
    distinct: int
    stopped: int
    total_ratio: float
    """The whole search's FLOPs ÷ the grid's."""
    qualifying_stopped: int
    """Trials of a qualifying point that early stopping ended before their end."""


def cost(ran: list[Ran], *, threshold: float, grid_flops: float) -> Cost:
    """Compute until the first trial run to its end with final loss ≤ ``threshold`` ended,
    time-ordered (trials still running count up to that moment), ÷ ``grid_flops``."""
    hits = [r for r in ran if r.status == STATUS_FINISHED and r.final_loss <= threshold]
    total = sum(r.spent for r in ran)
    common = {
        "trials": len(ran),
        "distinct": len({r.key for r in ran}),
        "stopped": sum(r.status == STATUS_STOPPED for r in ran),
        "total_ratio": total / grid_flops,
        "qualifying_stopped": sum(
            r.status == STATUS_STOPPED and r.full_loss <= threshold for r in ran
        ),
    }
    if not hits:
        return Cost(reached=False, ratio=float("inf"), hit_trial=None, **common)
    hit = min(hits, key=lambda r: r.end)
    spent = sum(r.spent_at(hit.end) for r in ran)
    return Cost(reached=True, ratio=spent / grid_flops, hit_trial=ran.index(hit) + 1, **common)

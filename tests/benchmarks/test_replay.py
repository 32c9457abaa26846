"""The search-efficiency benchmark's replay and accounting on a tiny grid with synthetic
curves, where the answer is known (``benchmarks/_replay.py``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from _replay import Curve, cost, point_key, replay
from stagetune.orchestration.searcher import BaselineKeepingASHA


def _curve(name: str, points: list[tuple[float, float]]) -> Curve:
    records: list[dict[str, Any]] = [{"flops": f, "eval_loss": loss} for f, loss in points]
    records[-1]["status"] = "finished"
    return Curve({"p": name}, records)


# A: 8 FLOPs, poor early; B: 4 FLOPs; C: 4 FLOPs, the best at its end.
CURVES = {
    point_key(c.params): c
    for c in (
        _curve("A", [(2, 3.5), (4, 3.0), (6, 2.5), (8, 2.0)]),
        _curve("B", [(1, 2.0), (2, 1.5), (3, 1.2), (4, 1.0)]),
        _curve("C", [(1, 2.2), (2, 1.6), (3, 1.0), (4, 0.5)]),
    )
}
GRID_FLOPS = 16.0


class InOrder:
    """A searcher that suggests the given points in order."""

    def __init__(self, *names: str) -> None:
        self.names = list(names)
        self.told: list[tuple[str, str, Any]] = []

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        return {"p": self.names.pop(0)} if self.names else "FINISHED"

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        self.told.append(("result", trial_id, result["flops"]))

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        self.told.append(("complete", trial_id, (result or {}).get("status")))


def _asha() -> BaselineKeepingASHA:
    # rungs at 2 and 4 FLOPs
    return BaselineKeepingASHA(
        time_attr="flops",
        metric="eval_loss",
        mode="min",
        max_t=8,
        grace_period=2,
        reduction_factor=2,
        stop_last_trials=False,
    )


def test_sequential_without_early_stopping_spends_whole_trials() -> None:
    ran = replay(InOrder("A", "B", "C"), CURVES, scheduler=None, concurrency=1, max_trials=3)
    assert [(r.start, r.end, r.status) for r in ran] == [
        (0, 8, "finished"),
        (8, 12, "finished"),
        (12, 16, "finished"),
    ]
    # Only C qualifies (≤ 0.6): everything was spent when it ended.
    c = cost(ran, threshold=0.6, grid_flops=GRID_FLOPS)
    assert (c.reached, c.ratio, c.hit_trial, c.distinct) == (True, 1.0, 3, 3)
    # B qualifies too at 1.0: the search held it after A and B.
    assert cost(ran, threshold=1.0, grid_flops=GRID_FLOPS).ratio == pytest.approx(12 / 16)


def test_concurrent_trials_count_up_to_the_hit() -> None:
    """A and C start together; C ends at 4 while A has spent 4 of its 8."""
    ran = replay(InOrder("A", "C", "B"), CURVES, scheduler=None, concurrency=2, max_trials=3)
    c = cost(ran, threshold=0.6, grid_flops=GRID_FLOPS)
    assert c.ratio == pytest.approx((4 + 4) / 16)
    assert [r.start for r in ran] == [0, 0, 4]  # B took C's slot when C ended


def test_asha_stops_at_its_rung_and_a_stopped_trial_never_hits() -> None:
    src = InOrder("B", "A", "C")
    ran = replay(src, CURVES, scheduler=_asha(), concurrency=1, max_trials=3)
    _, a, c = ran
    # A's 3.5 at the 2-FLOP rung is worse than B's 1.5 there: stopped after 2 FLOPs.
    assert (a.status, a.spent, a.start, a.end) == ("stopped", 2, 4, 6)
    assert (c.start, c.end, c.status) == (6, 10, "finished")
    assert ("complete", a.trial_id, None) in src.told  # told as ended, not finished
    res = cost(ran, threshold=0.6, grid_flops=GRID_FLOPS)
    assert (res.ratio, res.stopped, res.total_ratio) == (10 / 16, 1, 10 / 16)
    # A's loss when stopped (3.5) would qualify under a lax threshold, but it never finished.
    lax = cost([a], threshold=4.0, grid_flops=GRID_FLOPS)
    assert not lax.reached and lax.ratio == float("inf")


def test_the_trial_budget_ends_the_search() -> None:
    ran = replay(InOrder("A", "B", "C"), CURVES, scheduler=None, concurrency=1, max_trials=2)
    res = cost(ran, threshold=0.6, grid_flops=GRID_FLOPS)
    assert len(ran) == 2 and not res.reached  # C, the only qualifying point, never ran

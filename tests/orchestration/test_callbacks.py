"""The driver's callbacks: live progress (the best trial relative to the baseline at equal
compute) and MLflow tracking of each trial's end."""

from __future__ import annotations

import pytest

from stagetune.orchestration.callbacks import TrialLedger


def _feed(
    ledger: TrialLedger, trial: str, points: list[tuple[float, float]], **extra: object
) -> None:
    for flops, loss in points:
        ledger.add(trial, {"flops": flops, "eval_loss": loss, **extra})


def test_best_is_compared_at_equal_compute() -> None:
    ledger = TrialLedger()
    _feed(ledger, "staged", [(10.0, 5.0), (20.0, 4.0), (29.0, 3.5)])
    assert ledger.best_matched() is None  # no finished baseline yet
    _feed(ledger, "base", [(10.0, 5.5), (20.0, 4.5), (30.0, 4.0)], is_baseline=True)
    ledger.status["base"] = "finished"
    # The staged trial ended at 29 FLOPs, just short of the baseline's 30: compared there.
    _feed(ledger, "worse", [(10.0, 6.0), (20.0, 5.5)])
    trial, mine, base, at = ledger.best_matched()  # type: ignore[misc]
    assert trial == "staged" and at == 29.0
    assert mine == pytest.approx(3.5) and base == pytest.approx(4.05)


def test_only_the_baseline_reports_itself() -> None:
    ledger = TrialLedger()
    _feed(ledger, "base", [(10.0, 5.5), (30.0, 4.0)], is_baseline=True)
    ledger.status["base"] = "finished"
    assert ledger.best_matched() == ("base", 4.0, 4.0, 30.0)


"""MLflow as the review surface: a model-training experiment whose step is compute, and runs
that carry their outcome against the reference as summary metrics (the runs table sorts by it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from stagetune.results import build_report
from stagetune.results.naming import EXPERIMENT_KIND_TRAINING, TAG_EXPERIMENT_KIND
from stagetune.results.summary import (
    M_COMPUTE_FRACTION,
    M_DELTA,
    M_FINAL_LOSS,
    M_REACHED,
    M_SPEEDUP,
    M_TOTAL_TFLOPS,
    TAG_BEST,
    TAG_VERDICT,
)
from stagetune.results.tracking.runs import STEP_UNIT
from tests.results.helpers import EXPERIMENT, TRIALS, history


def test_experiment_opens_as_model_training(store: dict[str, Any]) -> None:
    exp = MlflowClient(store["uri"]).get_experiment_by_name(EXPERIMENT)
    assert exp.tags[TAG_EXPERIMENT_KIND] == EXPERIMENT_KIND_TRAINING


def test_metric_step_is_compute_in_mflops(store: dict[str, Any]) -> None:
    """Eval loss charts against compute, the same axis for every schedule; tokens stay."""
    t = TRIALS[2]
    run_id = store["runs"][t["id"]]
    expected = [int(r["flops"] // STEP_UNIT) for r in t["recs"]]
    assert [s for s, _ in history(store["uri"], run_id, "eval_loss")] == expected
    assert [v for _, v in history(store["uri"], run_id, "tokens")] == [
        r["tokens"] for r in t["recs"]
    ]


def test_runs_carry_summary_metrics_and_sort_by_outcome(
    store: dict[str, Any], tmp_path: Path
) -> None:
    rep = build_report(store["uri"], EXPERIMENT, tmp_path / "out")
    client = MlflowClient(store["uri"])
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs(
        [exp.experiment_id],
        "tags.`stagetune.role` = 'trial'",
        order_by=[f"metrics.`{M_DELTA}` ASC"],
    )
    by_id = {r.data.tags["stagetune.trial_id"]: r.data.metrics for r in runs}
    fast = by_id["fast_0"]
    assert fast[M_FINAL_LOSS] == pytest.approx(2.8)
    assert fast[M_COMPUTE_FRACTION] == pytest.approx(0.70)
    assert fast[M_SPEEDUP] == pytest.approx(1 / 0.70)
    assert fast[M_TOTAL_TFLOPS] == pytest.approx(100)
    assert fast[M_REACHED] == 1.0
    assert by_id["base_0"][M_DELTA] == 0.0
    assert by_id["slow_1"][M_REACHED] == 0.0 and M_SPEEDUP not in by_id["slow_1"]
    # Sorted by Δ loss at equal compute, the better schedule comes before the baseline.
    order = [r.data.tags["stagetune.trial_id"] for r in runs]
    assert order.index("fast_0") < order.index("base_0") < order.index("slow_0")
    parent = client.get_run(store["parent"]).data
    assert parent.tags[TAG_VERDICT] == rep.verdict
    assert parent.tags["mlflow.note.content"] == rep.verdict
    assert parent.tags[TAG_BEST] == "S2 fast"
    assert parent.metrics["outcome/schedules_reaching_ref_loss"] == 1.0
    assert parent.metrics["outcome/best_speedup"] == pytest.approx(1.38, abs=0.01)

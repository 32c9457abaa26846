"""A whole study with the reference sweep and the confirmation round, on a real local Ray,
Optuna RDB storage and MLflow SQLite.

The configured lr (2e-5) is far too low for 24 steps, so the sweep's × 50 (1e-3) full-depth
trial beats the configured baseline: it must become the reference of every outcome and of the
verdict, in the ``paper`` space, which has no lr param of its own. Then the reference and the
best schedule train again on a second seed (the confirmation round), and the verdict quotes
intervals over both seeds and the study's regime.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from stagetune.cli import main
from tests.conftest import FAST

pytestmark = pytest.mark.slow

NAME = "refsweep"


def test_the_best_full_depth_lr_is_the_reference_and_is_confirmed(
    ray_local: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    workdir = tmp_path / "work"
    args = ["run", "--workdir", str(workdir), "--json", "--quiet", "--trials", "3",
            "--space", "paper", "--seeds", "2"]  # fmt: skip
    for o in (
        *FAST,
        f"name={NAME}",
        "train.lr=2.0e-5",
        "search.reference_lr_factors=[1.0, 50.0]",
        "search.repeat_top_k=1",
        "search.early_stopping=false",
        "search.max_concurrent=2",
    ):
        args += ["--set", o]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)

    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(NAME)
    runs = client.search_runs([exp.experiment_id], "tags.`stagetune.role` = 'trial'")
    by_phase: dict[str, list] = {}
    for r in runs:
        by_phase.setdefault(r.data.tags["stagetune.phase"], []).append(r)
        assert r.data.tags["stagetune.status"] == "finished"
    # The sweep: one full-depth trial at 50 × the configured lr, not the baseline.
    (sweep,) = by_phase["reference"]
    assert float(sweep.data.params["lr"]) == pytest.approx(1e-3)
    assert sweep.data.tags["stagetune.full_depth"] == "true"
    assert sweep.data.tags["stagetune.is_baseline"] == "false"
    assert len(by_phase["search"]) == 3
    # The confirmation round: the reference and the best schedule, on seed 1.
    confirm = by_phase["confirmation"]
    assert sorted(r.data.tags["stagetune.seed"] for r in confirm) == ["1", "1"]
    ref_key = sweep.data.params["schedule_key"]
    assert ref_key in {r.data.params["schedule_key"] for r in confirm}
    confirmed = next(r for r in confirm if r.data.params["schedule_key"] != ref_key)
    assert confirmed.data.tags["stagetune.full_depth"] == "false"

    rows = report["outcomes"]
    ref, rest = rows[0], rows[1:]
    assert ref["is_reference"] and not ref["is_baseline"] and ref["schedule_key"] == ref_key
    assert ref["schedule"].startswith("full-depth lr=0.001")
    assert ref["seeds"] == ["0", "1"]
    base = next(r for r in rest if r["is_baseline"])
    # The lr-tuned full-depth trial beats the configured baseline ...
    assert ref["final_eval_loss"]["values"][0] < base["final_eval_loss"]["mean"]
    # ... and every row is measured against it, seed by seed.
    for row in rest:
        for t in row["trials"]:
            assert t["baseline_final_loss"] == pytest.approx(
                ref["final_eval_loss"]["values"][int(t["seed"])]
            )
    # The confirmed schedule has an interval over its two seeds; beside it, the baseline's view.
    row = next(r for r in rest if r["schedule_key"] == confirmed.data.params["schedule_key"])
    assert row["seeds"] == ["0", "1"] and row["matched_delta"]["n"] == 2
    assert row["matched_delta"]["ci95_low"] is not None
    assert row["vs_baseline"] is not None

    verdict = report["verdict"]
    assert verdict.startswith(
        f"Against the reference ({ref['schedule']}, the best of the full-depth lr sweep), "
        "over 2 seeds: schedule "
    )
    assert "at equal compute its eval loss was" in verdict and "95% CI" in verdict
    assert "Against the configured baseline instead (1 seed)" in verdict
    # The regime, on the parent run and in the verdict.
    (parent,) = client.search_runs([exp.experiment_id], "tags.`stagetune.role` = 'parent'")
    tpp = float(parent.data.params["regime.tokens_per_param"])
    assert 0 < tpp < 2 and int(parent.data.params["regime.tokens_trained"]) == 24 * 8 * 32
    assert "Regime: the reference has" in verdict
    assert "shallower-first schedules are favoured" in verdict

"""The search end to end on a real local Ray instance, Optuna RDB storage and MLflow SQLite."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from stagetune.cli import main
from stagetune.metrics import FLOPS_BY_CONVENTION
from tests.conftest import FAST

pytestmark = pytest.mark.slow
GRACE = 0.25


def _run_args(workdir: Path, *extra: str) -> list[str]:
    args = ["run", "--workdir", str(workdir), "--json", "--quiet"]
    for o in FAST:
        args += ["--set", o]
    return [*args, *extra]


def _children(workdir: Path, experiment: str) -> list:
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], "tags.`stagetune.role` = 'trial'")
    return runs


@pytest.mark.parametrize("convention", ["standard", "paper"])
def test_search_with_asha_on_flops(
    ray_local: None, tmp_path: Path, capsys: pytest.CaptureFixture[str], convention: str
) -> None:
    workdir = tmp_path / "work"
    code = main(
        _run_args(
            workdir,
            "--trials",
            "6",
            "--space",
            "wide",
            "--set",
            "name=e2e",
            "--set",
            f"search.grace_fraction={GRACE}",
            "--set",
            "search.reduction_factor=2",
            "--set",
            "train.eval_points=8",
            "--set",
            f"budget.convention={convention}",
        )
    )
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["outcomes"], report

    runs = _children(workdir, "e2e")
    assert len(runs) >= 6
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    baselines = [r for r in runs if r.data.tags.get("stagetune.is_baseline") == "true"]
    assert baselines, "the baseline is the first point evaluated"
    # ASHA never stops the reference of every compute-matched comparison.
    assert all(r.data.tags.get("stagetune.status") == "finished" for r in baselines)
    for r in runs:
        hist = client.get_metric_history(r.info.run_id, "flops")
        assert hist and all(b.value >= a.value for a, b in itertools.pairwise(hist))
        assert len(client.get_metric_history(r.info.run_id, "eval_loss")) == len(hist)
    stopped = [r for r in runs if r.data.tags.get("stagetune.status") == "stopped"]
    assert stopped, "ASHA stopped no trial"
    assert all("stagetune.asha_rung" in r.data.tags for r in stopped)
    # Each stopped trial's last record is the first to reach a rung, and the rungs sit at
    # GRACE × 2^k of the budget, all in the FLOPs of the convention the budget is matched in.
    exp = client.get_experiment_by_name("e2e")
    (parent,) = client.search_runs([exp.experiment_id], "tags.`stagetune.role` = 'parent'")
    budget = float(parent.data.tags["stagetune.budget_flops"])  # in `convention`
    rungs = [GRACE * budget * 2**k for k in range(8)]
    unit = FLOPS_BY_CONVENTION[convention]
    for r in stopped:
        hist = [0.0] + [m.value for m in client.get_metric_history(r.info.run_id, unit)]
        before, last = hist[-2], hist[-1]
        assert any(before < m * (1 + 1e-5) and last >= m * (1 - 1e-5) for m in rungs), (
            r.info.run_id, before, last, rungs[:4])  # fmt: skip
        # The tag names where ASHA cut it, in the unit of its rungs.
        assert float(r.data.tags["stagetune.asha_rung"]) == pytest.approx(last, rel=1e-5)

    study = optuna.load_study(study_name="e2e", storage=f"sqlite:///{workdir / 'optuna.db'}")
    assert len(study.trials) >= 6
    assert study.trials[0].params.get("num_stages") == 1


def test_multi_objective_returns_pareto_set(
    ray_local: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    workdir = tmp_path / "work"
    code = main(
        _run_args(
            workdir,
            "--trials",
            "4",
            "--space",
            "compact",
            "--set",
            "name=pareto",
            "--set",
            "search.multi_objective=true",
        )
    )
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    pareto = report["optuna_pareto"]
    assert pareto
    for p in pareto:
        assert set(p) >= {"eval_loss", "flops", "params"}
    # No member of the set is dominated by another.
    for a in pareto:
        for b in pareto:
            assert not (b["eval_loss"] < a["eval_loss"] and b["flops"] < a["flops"])


def test_seed_repeats_give_confidence_intervals(
    ray_local: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    workdir = tmp_path / "work"
    code = main(
        _run_args(
            workdir,
            "--trials",
            "3",
            "--space",
            "compact",
            "--seeds",
            "2",
            "--set",
            "name=seeds",
            "--set",
            "search.repeat_top_k=1",
            "--set",
            "search.early_stopping=false",
        )
    )
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    runs = _children(workdir, "seeds")
    seeds_by_key: dict[str, set[str]] = {}
    for r in runs:
        seeds_by_key.setdefault(r.data.params["schedule_key"], set()).add(
            r.data.tags["stagetune.seed"]
        )
    baseline = next(r for r in runs if r.data.tags.get("stagetune.is_baseline") == "true")
    assert seeds_by_key[baseline.data.params["schedule_key"]] == {"0", "1"}
    # The best non-baseline schedule was repeated too.
    assert sum(1 for s in seeds_by_key.values() if len(s) == 2) >= 2
    assert any(len(str(row.get("seeds", ""))) > 1 for row in report["outcomes"])

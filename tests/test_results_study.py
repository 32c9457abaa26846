"""A fake-but-real study logged through MlflowTracker into SQLite, read back, analysed, reported.

Curves (FLOPs in units of 1e12; eval loss):

* baseline  seed 0: (25,4.0) (50,3.5) (75,3.2) (100,3.0); seed 1: same FLOPs, 4.1 3.6 3.3 3.1
* S2 fast   seed 0: (20,3.9) (40,3.4) (60,3.1) (80,2.9) (100,2.8), stages 1 1 2 2 3
            seed 1: same FLOPs, 4.0 3.5 3.25 3.05 2.95 -> reaches at 70 / 75 (70 % / 75 %)
* S4 slow   seed 0: (30,4.2) (60,3.8) (90,3.5), stopped by ASHA at rung 1
            seed 1: (30,4.3) (60,3.9) (90,3.6) (120,3.3) -> loss 3.5 at 100, never reaches 3.1
* S3 diverged seed 0: (20,3.95) (40,3.7), then train loss inf at 50
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from stagetune.errors import ConfigError, StagetuneError
from stagetune.metrics import FLOPS, FLOPS_PAPER
from stagetune.results import (
    MlflowTracker,
    build_report,
    compute_matched,
    format_table,
    load_study,
    pareto_front,
    to_json,
)
from stagetune.results.analysis import StudyResults

E12 = 1e12
EXPERIMENT = "stagetune-study"
STUDY = "study-a"


def records(flops: list[float], loss: list[float], stage: list[int] | None = None) -> list[dict]:
    out = []
    for i, (f, lo) in enumerate(zip(flops, loss)):
        out.append({
            "step": (i + 1) * 10,
            "tokens": int(f * 1000),
            FLOPS: f * E12,
            FLOPS_PAPER: f * E12 * 0.5,
            "seconds": float(i),
            "train_loss": lo + 0.05,
            "eval_loss": lo,
            "lr": 6e-4,
            "stage": (stage or [1] * len(flops))[i],
            "phase_id": 2,
            "active_depth": 4,
            "done": False,  # Tune bookkeeping: not logged
            "config": {"x": 1},  # not numeric: not logged
        })  # fmt: skip
    return out


TRIALS: list[dict[str, Any]] = [
    {"id": "base_0", "key": "kbase", "label": "baseline", "seed": 0, "baseline": True,
     "recs": records([25, 50, 75, 100], [4.0, 3.5, 3.2, 3.0]), "end": ("finished", None)},
    {"id": "base_1", "key": "kbase", "label": "baseline", "seed": 1, "baseline": True,
     "recs": records([25, 50, 75, 100], [4.1, 3.6, 3.3, 3.1]), "end": ("finished", None)},
    {"id": "fast_0", "key": "kfast", "label": "S2 fast", "seed": 0, "baseline": False,
     "recs": records([20, 40, 60, 80, 100], [3.9, 3.4, 3.1, 2.9, 2.8], [1, 1, 2, 2, 3]),
     "end": ("finished", None)},
    {"id": "fast_1", "key": "kfast", "label": "S2 fast", "seed": 1, "baseline": False,
     "recs": records([20, 40, 60, 80, 100], [4.0, 3.5, 3.25, 3.05, 2.95], [1, 1, 2, 2, 3]),
     "end": ("finished", None)},
    {"id": "slow_0", "key": "kslow", "label": "S4 slow", "seed": 0, "baseline": False,
     "recs": records([30, 60, 90], [4.2, 3.8, 3.5]), "end": ("stopped", 1)},
    {"id": "slow_1", "key": "kslow", "label": "S4 slow", "seed": 1, "baseline": False,
     "recs": records([30, 60, 90, 120], [4.3, 3.9, 3.6, 3.3]), "end": ("finished", None)},
    {"id": "div_0", "key": "kdiv", "label": "S3 diverged", "seed": 0, "baseline": False,
     "recs": [*records([20, 40], [3.95, 3.7]),
              {"tokens": 50_000, FLOPS: 50 * E12, FLOPS_PAPER: 25 * E12,
               "train_loss": float("inf"), "stage": 1}],
     "end": ("diverged", None)},
]  # fmt: skip


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("study")
    uri = f"sqlite:///{root / 'work' / 'mlflow.db'}"
    tr = MlflowTracker(uri, EXPERIMENT, spool_dir=root / "spool")
    parent = tr.start_study(study_name=STUDY, params={"model.n_layer": 4}, tags={"k": "v"})
    runs = {}
    for t in TRIALS:
        params = {"schedule_key": t["key"], "schedule_label": t["label"], "seed": t["seed"]}
        runs[t["id"]] = tr.start_trial(
            trial_id=t["id"], params=params, tags={"stagetune.is_baseline": t["baseline"]}
        )
        for rec in t["recs"]:
            tr.log_report(t["id"], rec)
        status, rung = t["end"]
        tr.end_trial(t["id"], status, tags={"stagetune.asha_rung": rung} if rung else None)
    note = root / "trial_note.txt"
    note.write_text("checkpoint meta")
    tr.log_trial_artifacts("fast_0", [note])
    cfg = root / "config.yaml"
    cfg.write_text("name: study-a\n")
    tr.log_study_artifacts([cfg])
    tr.end_study()
    assert tr.stats.spooled == 0 and tr.stats.rejected == 0, tr.stats
    # A second experiment whose study never ran its baseline.
    other = MlflowTracker(uri, "no-baseline", spool_dir=root / "spool2")
    other.start_study(study_name="nb", params={}, tags={})
    other.start_trial(trial_id="x_0", params={"seed": 0}, tags={})
    other.log_report("x_0", records([10], [3.0])[0])
    return {"uri": uri, "root": root, "parent": parent, "runs": runs}


@pytest.fixture(scope="module")
def results(store: dict[str, Any]) -> StudyResults:
    return load_study(store["uri"], EXPERIMENT)


def test_runs_params_metrics_tags_statuses_artifacts(store: dict[str, Any]) -> None:
    client = MlflowClient(store["uri"])
    exp = client.get_experiment_by_name(EXPERIMENT)
    assert exp is not None
    # Artifacts live beside the SQLite store, not in the current directory.
    assert exp.artifact_location == (store["root"] / "work" / "mlartifacts").as_uri()
    parent = client.get_run(store["parent"])
    assert parent.data.tags["stagetune.role"] == "parent"
    assert parent.data.tags["stagetune.study"] == STUDY
    assert parent.data.params == {"model.n_layer": "4"}
    assert parent.info.status == "FINISHED"
    assert [a.path for a in client.list_artifacts(store["parent"])] == ["config.yaml"]

    children = client.search_runs([exp.experiment_id], "tags.`stagetune.role` = 'trial'")
    assert len(children) == len(TRIALS)
    expected_status = {"finished": "FINISHED", "stopped": "KILLED", "diverged": "FAILED"}
    for t in TRIALS:
        run = client.get_run(store["runs"][t["id"]])
        tags = run.data.tags
        assert tags["mlflow.parentRunId"] == store["parent"]
        assert tags["stagetune.trial_id"] == t["id"]
        assert tags["stagetune.is_baseline"] == ("true" if t["baseline"] else "false")
        assert tags["stagetune.seed"] == str(t["seed"])
        assert tags["stagetune.status"] == t["end"][0]
        assert run.info.status == expected_status[t["end"][0]]
        assert run.data.params["schedule_key"] == t["key"]
        assert "done" not in run.data.metrics and "config" not in run.data.metrics
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "tokens")]
        assert steps == sorted(set(steps)) and len(steps) == len(t["recs"])
        assert steps == [int(r["tokens"]) for r in t["recs"]]
        # flops and flops_paper sit at every step, with the losses.
        for key in (FLOPS, FLOPS_PAPER):
            assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == steps
        eval_steps = [m.step for m in client.get_metric_history(run.info.run_id, "eval_loss")]
        assert set(eval_steps) <= set(steps)
    slow0 = client.get_run(store["runs"]["slow_0"])
    assert slow0.data.tags["stagetune.asha_rung"] == "1"
    assert [a.path for a in client.list_artifacts(store["runs"]["fast_0"])] == ["trial_note.txt"]


def test_load_study_curves(results: StudyResults) -> None:
    assert results.study_name == STUDY
    assert len(results.trials) == len(TRIALS)
    assert {t.trial_id for t in results.baselines} == {"base_0", "base_1"}
    fast0 = results.trial("fast_0")
    assert fast0.status == "finished" and fast0.seed == "0" and fast0.label == "S2 fast"
    c, loss = fast0.curve.eval_points()
    assert list(c / E12) == pytest.approx([20, 40, 60, 80, 100])
    assert list(loss) == pytest.approx([3.9, 3.4, 3.1, 2.9, 2.8])
    assert list(fast0.curve.tokens) == [20_000, 40_000, 60_000, 80_000, 100_000]
    assert fast0.curve.stage_boundaries() == [(60 * E12, 2), (100 * E12, 3)]
    div = results.trial("div_0")
    assert div.status == "diverged"
    assert div.curve.train_loss[-1] == float("inf")  # MLflow stores +inf as max float
    assert div.curve.total_compute() == 50 * E12
    assert results.trial("slow_0").status == "stopped"


def test_compute_matched_from_mlflow(results: StudyResults) -> None:
    outs = compute_matched(results)
    assert [o.label for o in outs] == ["baseline", "S2 fast", "S4 slow", "S3 diverged"]
    base, fast, slow, div = outs
    assert base.final_eval_loss.mean == pytest.approx(3.05)
    assert [(t.compute_to_baseline_loss or 0) / E12 for t in fast.trials] == pytest.approx([70, 75])
    assert fast.compute_fraction.mean == pytest.approx(0.725)
    assert fast.compute_fraction.half_width == pytest.approx(12.7062047 * 0.025)
    assert fast.speedup.mean == pytest.approx((100 / 70 + 100 / 75) / 2)
    assert [t.loss_at_baseline_compute for t in slow.trials] == [None, pytest.approx(3.5)]
    assert slow.n_reached == 0 and slow.loss_delta.mean == pytest.approx(0.4)
    assert div.trials[0].loss_at_baseline_compute is None
    assert [o.label for o in pareto_front(outs)] == ["S3 diverged", "S2 fast"]


def test_build_report(store: dict[str, Any], tmp_path: Path) -> None:
    rep = build_report(store["uri"], EXPERIMENT, tmp_path / "out")
    expected = (
        "Schedule S2 fast reached the baseline's eval loss with 72.5% of its compute "
        "(95% CI 40.7–104.3%, 2 seeds; speedup 1.38×)."
    )
    assert rep.verdict == expected
    md = rep.paths["report_md"].read_text()
    assert expected in md
    assert "| Schedule | Seeds | Final eval loss |" in md
    assert "| **baseline** | 0, 1 |" in md
    assert "not reached" in md and "72.5% ± 31.8%" in md
    for name in ("loss_vs_compute", "compute_to_baseline_loss", "pareto"):
        assert f"](plots/{name}.png)" in md
        png = rep.paths[f"{name}_png"]
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        page = rep.paths[f"{name}_html"].read_text()
        # plotly.js is inline (a few MB), not fetched from a CDN at view time.
        assert len(page) > 1_000_000 and 'src="https://cdn.plot.ly' not in page
    html = rep.paths["report_html"].read_text()
    assert expected.replace("'", "&#x27;") in html
    assert html.count("Plotly.newPlot") == 3 and 'src="https://cdn.plot.ly' not in html
    from plotly.offline import get_plotlyjs

    bundle = len(get_plotlyjs())
    assert bundle < len(html) < 1.5 * bundle  # plotly.js inline exactly once
    data = json.loads(rep.paths["report_json"].read_text())
    assert data["verdict"] == expected
    assert [r["schedule"] for r in data["rows"]] == [
        "baseline", "S2 fast", "S4 slow", "S3 diverged"
    ]  # fmt: skip
    assert data["rows"][1]["compute_fraction"]["mean"] == pytest.approx(0.725)
    assert json.loads(to_json(rep.outcomes))["verdict"] == expected
    # Logged to the parent run.
    client = MlflowClient(store["uri"])
    logged = {a.path for a in client.list_artifacts(store["parent"], "report")}
    assert {
        "report/report.md",
        "report/report.html",
        "report/report.json",
        "report/plots",
    } <= logged
    table = format_table(rep.outcomes)
    assert "S2 fast" in table and "not reached" in table and "72.5% ± 31.8%" in table


def test_unknown_experiment_lists_existing(store: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as err:
        load_study(store["uri"], "nope")
    msg = str(err.value)
    assert "\n" not in msg and "nope" in msg
    assert EXPERIMENT in msg and "no-baseline" in msg


def test_study_without_baseline(store: dict[str, Any]) -> None:
    with pytest.raises(StagetuneError, match=r"'nb'.*no baseline run \(tag stagetune.is_baseline"):
        load_study(store["uri"], "no-baseline")


def test_unreachable_stores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    from stagetune.results.ui import free_port

    with pytest.raises(ConfigError, match="MLflow is unreachable") as err:
        load_study(f"http://127.0.0.1:{free_port()}", EXPERIMENT)
    assert "\n" not in str(err.value)
    missing = tmp_path / "typo.db"
    with pytest.raises(ConfigError, match="no MLflow database"):
        load_study(f"sqlite:///{missing}", EXPERIMENT)
    assert not missing.exists()  # a reader never creates a store


def test_report_without_mlflow_logging(store: dict[str, Any], tmp_path: Path,
                                       caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    caplog.set_level(logging.WARNING)
    rep = build_report(store["uri"], EXPERIMENT, tmp_path, log_to_mlflow=False, html_plots=False,
                       convention="paper")  # fmt: skip
    assert rep.convention == "paper"
    assert "fast" in rep.verdict  # the paper axis halves every curve alike: same winner
    assert "loss_vs_compute_html" not in rep.paths


def test_report_of_an_interrupted_study_is_partial_without_verdict(tmp_path: Path) -> None:
    """Stopped by a signal or a full disk: its report says "partial" and gives no verdict
    from the trials it has (they would favour whatever happened to finish first)."""
    from stagetune.results.report import PARTIAL_STUDY

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tr = MlflowTracker(uri, EXPERIMENT, spool_dir=tmp_path / "spool")
    tr.start_study(study_name=STUDY, params={}, tags={})
    for t in TRIALS[:3]:
        params = {"schedule_key": t["key"], "schedule_label": t["label"], "seed": t["seed"]}
        tr.start_trial(trial_id=t["id"], params=params,
                       tags={"stagetune.is_baseline": t["baseline"]})  # fmt: skip
        for rec in t["recs"]:
            tr.log_report(t["id"], rec)
    tr.end_trial("base_0", "finished")
    tr.end_trial("base_1", "finished")
    tr.end_trial("fast_0", "interrupted")
    tr.end_study("interrupted")

    study = load_study(uri, EXPERIMENT)
    assert study.partial and study.parent_status == "interrupted"
    rep = build_report(uri, EXPERIMENT, tmp_path / "out", log_to_mlflow=False, html_plots=False)
    assert rep.verdict == PARTIAL_STUDY.format(status="interrupted")
    md = rep.paths["report_md"].read_text()
    assert md.startswith(f"# stagetune report (partial): {STUDY}\n")
    assert "reached the baseline's eval loss" not in md
    assert f"<h1>stagetune report (partial): {STUDY}</h1>" in rep.paths["report_html"].read_text()
    assert json.loads(rep.paths["report_json"].read_text())["verdict"] == rep.verdict


def test_a_finished_study_is_not_partial(results: StudyResults) -> None:
    assert results.parent_status == "finished" and not results.partial

"""The report's equal-compute column: Markdown, HTML and JSON of ``build_report``, paper verdict.

A study logged to SQLite through MlflowTracker (FLOPs in units of 1e12; eval loss). Baseline
seed 0: (25,4.0) (50,3.5) (75,3.2) (100,3.0); seed 1 the same FLOPs with 4.1 3.6 3.3 3.1.

* S2 near  seed 0 ends at 95 with 3.02 (baseline there 3.04: -0.02),
           seed 1 ends at 90 with 3.23 (baseline seed 1 there 3.18: +0.05) -> +0.015 ± 0.4447
* S4 short seed 0 ends at 90 with 3.3 (baseline 3.08): +0.22 @ 90%
* S3 long  seed 0 runs to 120; at 100 its loss is 3.5: +0.5 at the baseline's compute
* S5 late  seed 0 first evaluates at 120, after the baseline's end: nothing to compare
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from stagetune.results import MlflowTracker, build_report, compute_matched, format_table
from stagetune.results.analysis import TrialResult
from stagetune.results.report import NO_SCHEDULE_REACHED, TABLE_COLUMNS, paper_verdict
from tests.test_results_analysis import BASE0, study, trial
from tests.test_results_study import E12, records

EXPERIMENT = "matched"
COLUMN = "Δ loss at equal compute"

TRIALS: list[dict[str, Any]] = [
    {"id": "base_0", "key": "kbase", "label": "baseline", "seed": 0, "baseline": True,
     "recs": records([25, 50, 75, 100], [4.0, 3.5, 3.2, 3.0])},
    {"id": "base_1", "key": "kbase", "label": "baseline", "seed": 1, "baseline": True,
     "recs": records([25, 50, 75, 100], [4.1, 3.6, 3.3, 3.1])},
    {"id": "near_0", "key": "knear", "label": "S2 near", "seed": 0, "baseline": False,
     "recs": records([19, 38, 57, 76, 95], [3.9, 3.5, 3.3, 3.15, 3.02])},
    {"id": "near_1", "key": "knear", "label": "S2 near", "seed": 1, "baseline": False,
     "recs": records([30, 60, 90], [4.2, 3.6, 3.23])},
    {"id": "short_0", "key": "kshort", "label": "S4 short", "seed": 0, "baseline": False,
     "recs": records([30, 60, 90], [4.2, 3.6, 3.3])},
    {"id": "long_0", "key": "klong", "label": "S3 long", "seed": 0, "baseline": False,
     "recs": records([30, 60, 90, 120], [4.3, 3.9, 3.6, 3.3])},
    {"id": "late_0", "key": "klate", "label": "S5 late", "seed": 0, "baseline": False,
     "recs": records([120, 140], [3.5, 3.4])},
]  # fmt: skip


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("matched")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    tr = MlflowTracker(uri, EXPERIMENT, spool_dir=root / "spool")
    tr.start_study(study_name="m", params={}, tags={})
    for t in TRIALS:
        params = {"schedule_key": t["key"], "schedule_label": t["label"], "seed": t["seed"]}
        tr.start_trial(trial_id=t["id"], params=params,
                       tags={"stagetune.is_baseline": t["baseline"]})  # fmt: skip
        for rec in t["recs"]:
            tr.log_report(t["id"], rec)
        tr.end_trial(t["id"], "finished")
    tr.end_study()
    out = root / "report"
    build_report(uri, EXPERIMENT, out, log_to_mlflow=False, html_plots=False)
    return out


def md_rows(md: str) -> dict[str, dict[str, str]]:
    """The Markdown outcome table as {schedule: {column: cell}}."""
    lines = [ln for ln in md.splitlines() if ln.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split(" | ")]
    assert header == list(TABLE_COLUMNS)
    rows = {}
    for ln in lines[1:]:
        cells = [c.strip() for c in ln.strip().strip("|").split(" | ")]
        rows[cells[0].strip("*")] = dict(zip(header, cells))
    return rows


def test_markdown_column(report_dir: Path) -> None:
    md = (report_dir / "report.md").read_text(encoding="utf-8")
    rows = md_rows(md)
    assert list(rows) == ["baseline", "S2 near", "S4 short", "S3 long", "S5 late"]
    assert rows["baseline"][COLUMN] == "0 (reference)"
    assert rows["S2 near"][COLUMN] == "+0.0150 ± 0.4447 @ 90%–95%"
    assert rows["S4 short"][COLUMN] == "+0.2200 @ 90%"
    assert rows["S3 long"][COLUMN] == "+0.5000"  # at the baseline's compute: no marker
    assert rows["S5 late"][COLUMN] == "no overlap"
    # "stopped short" only where the schedule did stop before the baseline's compute.
    assert rows["S2 near"]["Loss @ baseline compute"] == "stopped short"
    assert rows["S4 short"]["Loss @ baseline compute"] == "stopped short"
    assert rows["S3 long"]["Loss @ baseline compute"] == "3.5000"
    assert rows["S5 late"]["Loss @ baseline compute"] == "—"
    assert NO_SCHEDULE_REACHED in md
    assert "*Δ loss at equal compute*" in md and "*@ NN%*" in md


def test_html_column(report_dir: Path) -> None:
    page = (report_dir / "report.html").read_text(encoding="utf-8")
    assert f"<th>{COLUMN}</th>" in page
    assert "<td class=num>+0.2200 @ 90%</td>" in page
    assert "<td class=num>+0.0150 ± 0.4447 @ 90%–95%</td>" in page


def test_json_fields(report_dir: Path) -> None:
    data = json.loads((report_dir / "report.json").read_text(encoding="utf-8"))
    rows = {r["schedule"]: r for r in data["rows"]}
    near = rows["S2 near"]
    assert near["matched_delta"]["mean"] == pytest.approx(0.015)
    assert near["matched_delta"]["ci95_high"] - near["matched_delta"]["mean"] == pytest.approx(
        0.4447, abs=1e-4
    )
    assert near["matched_fraction"]["values"] == pytest.approx([0.95, 0.90])
    assert near["matched_compute"]["mean"] == pytest.approx(92.5 * E12)
    assert near["loss_at_matched"]["mean"] == pytest.approx((3.02 + 3.23) / 2)
    assert near["baseline_loss_at_matched"]["mean"] == pytest.approx((3.04 + 3.18) / 2)
    t0, t1 = near["trials"]
    assert t0["matched_compute"] == pytest.approx(95 * E12)
    assert t0["baseline_loss_at_matched"] == pytest.approx(3.04)
    assert t0["loss_at_matched"] == pytest.approx(3.02)
    assert t0["matched_delta"] == pytest.approx(-0.02)
    assert t0["matched_fraction"] == pytest.approx(0.95)
    assert t0["final_eval_compute"] == pytest.approx(95 * E12)
    assert t1["matched_delta"] == pytest.approx(0.05)
    assert rows["baseline"]["matched_delta"]["mean"] == 0.0
    late = rows["S5 late"]
    assert late["matched_delta"]["n"] == 0 and late["trials"][0]["matched_compute"] is None


def test_marker_never_rounds_up_to_the_baselines_compute() -> None:
    nearly = trial("n", "n", "0", [33, 66, 99.8], [4.0, 3.6, 3.2])
    table = format_table(compute_matched(study(BASE0, nearly)))
    assert "@ 99.8%" in table and "@ 100%" not in table


def paper_trial(
    tid: str, stages: int, multiple: float, flops: list[float], loss: list[float]
) -> TrialResult:
    t = trial(tid, f"S{stages}x{multiple:g}", "0", flops, loss)
    params = {
        "schedule_key": t.schedule_key,
        "schedule_json": json.dumps({"meta": {"space": "paper"}}),
        "num_stages": str(stages),
        "continual_multiple": str(multiple),
    }
    return dataclasses.replace(t, params=params)


def test_paper_verdict_quotes_the_equal_compute_delta() -> None:
    # S=2: its 1x schedule ends at 99.5 (budget matching floors to whole steps); quoted as the
    # first within 1 % of the baseline's compute, before the 1.5x one that got all the way.
    # S=4: every schedule ends well short; the furthest, 0.5x at 80, is quoted there.
    trials = [
        BASE0,
        paper_trial("a", 2, 0.0, [20, 40, 50], [4.4, 3.9, 3.7]),
        paper_trial("b", 2, 1.0, [20, 40, 60, 80, 99.5], [4.4, 3.9, 3.5, 3.3, 3.1]),
        paper_trial("e", 2, 1.5, [20, 40, 60, 80, 100, 120], [4.4, 3.9, 3.5, 3.3, 3.1, 3.05]),
        paper_trial("c", 4, 0.0, [20, 40], [4.5, 4.0]),
        paper_trial("d", 4, 0.5, [20, 40, 60, 80], [4.5, 4.0, 3.6, 3.2]),
    ]
    s = study(*trials)
    text = paper_verdict(s, compute_matched(s))
    assert text is not None
    # S=2 at 99.5: 3.1 - (3.2 - 0.2 * 24.5/25) = +0.096.
    assert (
        "at equal compute, 99.5% of the baseline's (where it ended), its eval loss was +0.0960 "
        "vs the baseline's" in text
    )
    # S=4 at 80: 3.2 - (3.2 - 0.2 * 5/25) = +0.04; before, S=4 had no such comparison at all.
    assert (
        "S=4 did not reach it within 0.80× the baseline's compute; its stages alone cost 0.40×, "
        "and at equal compute, 80% of the baseline's (where it ended), its eval loss was +0.0400 "
        "vs the baseline's" in text
    )

"""The report files of ``build_report``: Markdown, HTML and JSON, logged to the parent run or
not; an interrupted study's report is partial and has no verdict.

Two studies logged to SQLite through MlflowTracker: the one of :mod:`tests.results.helpers`,
and the one below for the equal-compute column (FLOPs in units of 1e12; eval loss). Baseline
seed 0: (25,4.0) (50,3.5) (75,3.2) (100,3.0); seed 1 the same FLOPs with 4.1 3.6 3.3 3.1.

* S2 near  seed 0 ends at 95 with 3.02 (baseline there 3.04: -0.02),
           seed 1 ends at 90 with 3.23 (baseline seed 1 there 3.18: +0.05) -> +0.015 ± 0.4447
* S4 short seed 0 ends at 90 with 3.3 (baseline 3.08): +0.22 @ 90%
* S3 long  seed 0 runs to 120; at 100 its loss is 3.5: +0.5 at the baseline's compute
* S5 late  seed 0 first evaluates at 120, after the baseline's end: nothing to compare
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from stagetune.results import MlflowTracker, build_report, format_table, load_study, to_json
from stagetune.results.render import TABLE_COLUMNS
from stagetune.results.report import REPORT_SCHEMA_VERSION
from stagetune.results.verdict import NO_SIGNIFICANT_GAIN, PARTIAL_STUDY
from tests.results.helpers import E12, EXPERIMENT, STUDY, TRIALS, log_trial, records

MATCHED = "matched"
COLUMN = "Δ loss at equal compute"

MATCHED_TRIALS: list[dict[str, Any]] = [
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
    tr = MlflowTracker(uri, MATCHED, spool_dir=root / "spool")
    tr.start_study(study_name="m", params={}, tags={})
    for t in MATCHED_TRIALS:
        log_trial(tr, t)
        tr.end_trial(t["id"], "finished")
    tr.end_study()
    out = root / "report"
    build_report(uri, MATCHED, out, log_to_mlflow=False, html_plots=False)
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
    # Where the schedule ended, only where it did end before the baseline's compute.
    assert rows["S2 near"]["Loss @ baseline compute"] == "ended at 90%–95%"
    assert rows["S4 short"]["Loss @ baseline compute"] == "ended at 90%"
    assert rows["S3 long"]["Loss @ baseline compute"] == "3.5000"
    assert rows["S5 late"]["Loss @ baseline compute"] == "—"
    assert NO_SIGNIFICANT_GAIN in md
    assert "*Δ loss at equal compute*" in md and "*@ NN%*" in md


def test_html_column(report_dir: Path) -> None:
    page = (report_dir / "report.html").read_text(encoding="utf-8")
    assert f"<th>{COLUMN}</th>" in page
    assert "<td class=num>+0.2200 @ 90%</td>" in page
    assert "<td class=num>+0.0150 ± 0.4447 @ 90%–95%</td>" in page


def test_json_fields(report_dir: Path) -> None:
    data = json.loads((report_dir / "report.json").read_text(encoding="utf-8"))
    rows = {r["schedule"]: r for r in data["outcomes"]}
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


def test_build_report(store: dict[str, Any], tmp_path: Path) -> None:
    rep = build_report(store["uri"], EXPERIMENT, tmp_path / "out")
    expected = (
        "Against the reference (the configured baseline, the best of the full-depth lr sweep), "
        "over 2 seeds: schedule S2 fast reached the reference's eval loss with 72.5% of its "
        "compute (95% CI 40.7% to 104.3%; speedup 1.38×); at equal compute its eval loss was "
        "-0.1750 vs the reference's (95% CI -0.4927 to +0.1427). No significant gain: the 95% "
        "intervals include no gain."
    )
    assert rep.verdict == expected
    md = rep.paths["report_md"].read_text()
    assert expected in md
    assert "| Schedule | Seeds | Final eval loss |" in md
    assert "| **baseline** | 2 |" in md  # a count of seeds, not their ids
    assert "not reached" in md and "72.5% ± 31.8%" in md
    for name in ("loss_vs_compute", "compute_to_baseline_loss", "pareto"):
        assert f"](plots/{name}.png)" in md
        png = rep.paths[f"{name}_png"]
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"{name}_html" not in rep.paths  # the interactive plots live in report.html
    assert "Interactive: [report.html](report.html)" in md
    # plotly.js once per report: the whole folder stays small (it was 19 MB).
    folder = sum(p.stat().st_size for p in rep.paths["report_md"].parent.rglob("*"))
    assert folder <= 6_000_000, folder
    html = rep.paths["report_html"].read_text()
    assert expected.replace("'", "&#x27;") in html
    assert html.count("Plotly.newPlot") == 3 and 'src="https://cdn.plot.ly' not in html
    from plotly.offline import get_plotlyjs

    bundle = len(get_plotlyjs())
    assert bundle < len(html) < 1.5 * bundle  # plotly.js inline exactly once
    data = json.loads(rep.paths["report_json"].read_text())
    assert data["schema_version"] == REPORT_SCHEMA_VERSION and "rows" not in data
    assert data["verdict"] == expected
    assert [r["schedule"] for r in data["outcomes"]] == [
        "baseline", "S2 fast", "S4 slow", "S3 diverged"
    ]  # fmt: skip
    assert data["outcomes"][1]["compute_fraction"]["mean"] == pytest.approx(0.725)
    assert json.loads(to_json(rep.outcomes))["verdict"] == expected
    assert json.loads(to_json(rep)) == data
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
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tr = MlflowTracker(uri, EXPERIMENT, spool_dir=tmp_path / "spool")
    tr.start_study(study_name=STUDY, params={}, tags={})
    for t in TRIALS[:3]:
        log_trial(tr, t)
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


def test_terminal_table_fits_120_columns_with_si_flops_and_a_legend(
    store: dict[str, Any], tmp_path: Path
) -> None:
    from stagetune.results.render import LABEL_LEGEND

    rep = build_report(store["uri"], EXPERIMENT, tmp_path / "out", log_to_mlflow=False)
    table = format_table(rep.outcomes)
    lines = table.rstrip("\n").splitlines()
    assert max(len(line) for line in lines) <= 120, "\n".join(lines)
    assert "100 TFLOPs" in table and "e+" not in table  # SI units, not 1.000e+14
    assert LABEL_LEGEND.split(";")[0] in " ".join(table.split())
    base_row = next(line for line in lines if line.lstrip().startswith("baseline"))
    assert base_row.split()[1] == "2"  # seeds: a count


def test_stopped_schedules_are_marked_and_off_the_pareto_front(
    store: dict[str, Any], tmp_path: Path
) -> None:
    rep = build_report(store["uri"], EXPERIMENT, tmp_path / "out", log_to_mlflow=False)
    rows = {r["schedule"]: r for r in json.loads(to_json(rep))["outcomes"]}
    # S4 slow: one seed stopped by ASHA; S3 diverged: neither is on the front.
    assert not rows["S4 slow"]["pareto"] and not rows["S3 diverged"]["pareto"]
    assert "stopped" in format_table(rep.outcomes)


def test_bar_chart_labels_are_not_clipped(store: dict[str, Any], tmp_path: Path) -> None:
    """ "not reached" sits right of its bar, inside the plot: the axis leaves room for it."""
    from stagetune.results.plots import plotly_figures

    rep = build_report(store["uri"], EXPERIMENT, tmp_path / "out", log_to_mlflow=False)
    bar = plotly_figures(rep.study, rep.outcomes)["compute_to_baseline_loss"]
    assert any("not reached" in (t.text or ())[0] for t in bar.data)
    assert all(t.cliponaxis is False for t in bar.data)
    longest = max(float(t.x[0]) for t in bar.data)
    assert bar.layout.xaxis.range[1] >= 1.4 * max(longest, 100.0)

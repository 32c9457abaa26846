"""The study report: outcome table, verdict and plots as Markdown, HTML and JSON files.

``build_report`` reads everything from MLflow (so it works after the fact, from any machine
that reaches the tracking store), writes ``report.md`` / ``report.html`` / ``report.json`` and
the plots to a directory, and logs them to the study's parent run. What the files say comes from
:mod:`~stagetune.results.matched` (the numbers), :mod:`~stagetune.results.verdict` (the answer)
and :mod:`~stagetune.results.render` (the text).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from stagetune.errors import ConfigError
from stagetune.results.loading import StudyResults, load_study
from stagetune.results.matched import Outcome, compute_matched
from stagetune.results.plots import write_plots
from stagetune.results.regime import Regime
from stagetune.results.render import html_document, json_safe, markdown_document, outcome_rows
from stagetune.results.store import error_reason, make_client
from stagetune.results.summary import log_summaries
from stagetune.results.verdict import study_verdict, verdict

__all__ = ["REPORT_ARTIFACT_DIR", "REPORT_SCHEMA_VERSION", "Report", "build_report", "to_json"]

_log = logging.getLogger(__name__)

REPORT_ARTIFACT_DIR: Final = "report"
"""Where the report's files go in the study's parent run."""
REPORT_SCHEMA_VERSION: Final = 2
"""``report.json``'s ``schema_version``: 2 names the per-schedule rows ``outcomes`` (1 called
them ``rows`` and had no version), and may hold ``optuna_pareto``."""


@dataclass(frozen=True)
class Report:
    """A built report: its rows (JSON-ready), verdict and the files written."""

    study: StudyResults
    outcomes: list[Outcome]
    rows: list[dict[str, Any]]
    verdict: str
    paths: dict[str, Path]
    """``report_md``, ``report_html``, ``report_json``, then ``<plot>_png`` / ``<plot>_html``."""
    convention: str
    regime: Regime | None = None
    """The study's regime (from its parent run; ``None`` for a study recorded without it)."""
    optuna_pareto: list[dict[str, Any]] | None = None
    """A multi-objective study's Pareto set as Optuna holds it (eval loss, FLOPs)."""


def to_json(obj: Report | Sequence[Outcome]) -> str:
    """JSON for ``--json``: a whole report, or just rows for a list of outcomes."""
    if isinstance(obj, Report):
        data: Any = {
            "schema_version": REPORT_SCHEMA_VERSION,
            "study": obj.study.study_name,
            "experiment": obj.study.experiment,
            "experiment_id": obj.study.experiment_id,
            "tracking_uri": obj.study.tracking_uri,
            "parent_run_id": obj.study.parent_run_id,
            "convention": obj.convention,
            "verdict": obj.verdict,
            "regime": None if obj.regime is None else obj.regime.to_dict(),
            "outcomes": obj.rows,
            "paths": {k: str(v) for k, v in obj.paths.items()},
        }
        if obj.optuna_pareto:
            data["optuna_pareto"] = obj.optuna_pareto
    else:
        data = {"outcomes": outcome_rows(obj), "verdict": verdict(obj)}
    return json.dumps(json_safe(data), indent=2, sort_keys=False)


def _log_to_parent(report: Report) -> None:
    run_id = report.study.parent_run_id
    if run_id is None:
        _log.warning("study %s has no parent run; report not logged to MLflow",
                     report.study.study_name)  # fmt: skip
        return
    client = make_client(report.study.tracking_uri)
    try:
        log_summaries(report.study, report.outcomes, report.verdict)
        for key in ("report_md", "report_html", "report_json"):
            client.log_artifact(run_id, str(report.paths[key]), artifact_path=REPORT_ARTIFACT_DIR)
        plots_dir = report.paths["report_md"].parent / "plots"
        if plots_dir.is_dir():
            client.log_artifacts(
                run_id, str(plots_dir), artifact_path=f"{REPORT_ARTIFACT_DIR}/plots"
            )
    except Exception as exc:
        raise ConfigError(
            "tracking_uri",
            report.study.tracking_uri,
            f"could not log the report to run {run_id} ({error_reason(exc)}); the files are in "
            f"{report.paths['report_md'].parent}; rerun with log_to_mlflow off or fix MLflow",
        ) from exc


def build_report(
    tracking_uri: str,
    experiment: str,
    output_dir: Path,
    *,
    log_to_mlflow: bool = True,
    study: str | None = None,
    convention: str = "standard",
    html_plots: bool = False,
    optuna_pareto: list[dict[str, Any]] | None = None,
) -> Report:
    """Load the study from MLflow, compare at equal compute, write and log the report.

    Writes ``report.md``, ``report.html`` (plots interactive, plotly.js inline: the one copy
    of it, so the folder stays a few MB), ``report.json`` and ``plots/*.png`` (+ self-contained
    ``plots/*.html``, each with its own plotly.js, when ``html_plots``) under
    ``output_dir``; with ``log_to_mlflow`` they go to the parent run under ``report/``.

    Raises:
        StagetuneError: see :func:`~stagetune.results.loading.load_study`.
    """
    out = Path(output_dir)
    results = load_study(tracking_uri, experiment, study=study)
    outcomes = compute_matched(results, convention=convention)
    out.mkdir(parents=True, exist_ok=True)  # only once there is something to report
    plot_files = write_plots(results, outcomes, out / "plots", convention=convention,
                             html=html_plots)  # fmt: skip
    paths: dict[str, Path] = {
        "report_md": out / "report.md",
        "report_html": out / "report.html",
        "report_json": out / "report.json",
    }
    for name, p in plot_files.png.items():
        paths[f"{name}_png"] = p
    for name, p in plot_files.html.items():
        paths[f"{name}_html"] = p
    text = study_verdict(results, outcomes, convention=convention)
    report = Report(
        study=results,
        outcomes=outcomes,
        rows=outcome_rows(outcomes),
        verdict=text,
        paths=paths,
        convention=convention,
        regime=Regime.from_params(results.parent_params),
        optuna_pareto=optuna_pareto,
    )
    markdown = markdown_document(results, outcomes, text, plots=paths, convention=convention,
                                 base=out)  # fmt: skip
    paths["report_md"].write_text(markdown, encoding="utf-8")
    page = html_document(results, outcomes, text, convention=convention)
    paths["report_html"].write_text(page, encoding="utf-8")
    paths["report_json"].write_text(to_json(report), encoding="utf-8")
    if log_to_mlflow:
        _log_to_parent(report)
    return report

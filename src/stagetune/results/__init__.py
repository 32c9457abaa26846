"""Results: MLflow logging of studies, compute-matched analysis, plots, reports and the UI.

Everything here reads and writes MLflow only (no Ray), so reports can be built after the fact
from any machine that reaches the tracking store.
"""

from stagetune.results.analysis import (
    Curve,
    Outcome,
    Stat,
    StudyResults,
    TrialOutcome,
    TrialResult,
    compute_matched,
    load_study,
    pareto_front,
)
from stagetune.results.naming import schedule_key, schedule_params
from stagetune.results.plots import PlotFiles, write_plots
from stagetune.results.report import Report, build_report, format_table, to_json, verdict
from stagetune.results.tracking import MlflowTracker, SyncResult, TrackerStats
from stagetune.results.ui import UiServer, experiment_url, run_url, start_ui

__all__ = [
    "Curve",
    "MlflowTracker",
    "Outcome",
    "PlotFiles",
    "Report",
    "Stat",
    "StudyResults",
    "SyncResult",
    "TrackerStats",
    "TrialOutcome",
    "TrialResult",
    "UiServer",
    "build_report",
    "compute_matched",
    "experiment_url",
    "format_table",
    "load_study",
    "pareto_front",
    "run_url",
    "schedule_key",
    "schedule_params",
    "start_ui",
    "to_json",
    "verdict",
    "write_plots",
]

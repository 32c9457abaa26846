"""Results: MLflow logging of studies, compute-matched analysis, plots, reports and the UI.

Everything here reads and writes MLflow only (no Ray), so reports can be built after the fact
from any machine that reaches the tracking store. One concept a module:

* :mod:`~stagetune.results.naming`: the tag and param names tracking writes and loading reads;
* :mod:`~stagetune.results.tracking`: logging a study as it runs (MLflow runs, the spool);
* :mod:`~stagetune.results.loading`: a study read back from MLflow (trials, curves);
* :mod:`~stagetune.results.stats`, :mod:`~stagetune.results.matched`: statistics over seeds and
  the compute-matched comparison with the baseline (pure numpy);
* :mod:`~stagetune.results.verdict`: what the outcomes answer;
* :mod:`~stagetune.results.formatting`, :mod:`~stagetune.results.render`,
  :mod:`~stagetune.results.plots`, :mod:`~stagetune.results.report`: numbers as text, tables and
  documents, figures, and the report files built from all of them;
* :mod:`~stagetune.results.store`, :mod:`~stagetune.results.ui`: access to a tracking store and
  the MLflow UI on it.
"""

from stagetune.results.loading import Curve, StudyResults, TrialResult, load_study
from stagetune.results.matched import Outcome, TrialOutcome, compute_matched, pareto_front
from stagetune.results.plots import PlotFiles, write_plots
from stagetune.results.render import format_table
from stagetune.results.report import Report, build_report, to_json
from stagetune.results.stats import Stat
from stagetune.results.tracking import MlflowTracker, SyncResult, TrackerStats
from stagetune.results.ui import UiServer, experiment_url, start_ui
from stagetune.results.verdict import verdict

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
    "start_ui",
    "to_json",
    "verdict",
    "write_plots",
]

"""Logging a study to MLflow as it runs: one parent run per study, one child run per trial.

* :mod:`~stagetune.results.tracking.tracker`: :class:`MlflowTracker`, the API the driver calls;
* :mod:`~stagetune.results.tracking.delivery`: each event delivered now (bounded retries) or
  spooled, MLflow's offline state, the spool replayed in order;
* :mod:`~stagetune.results.tracking.runs`: the MLflow operations an event becomes (idempotent);
* :mod:`~stagetune.results.tracking.spool`: the JSONL files undelivered events wait in.

Every module logs under ``stagetune.results.tracking``, the one logger name a stopping study
silences once the disk is full.
"""

from stagetune.results.tracking.delivery import SyncResult, TrackerStats
from stagetune.results.tracking.tracker import MlflowTracker

__all__ = ["MlflowTracker", "SyncResult", "TrackerStats"]

"""A sweep's MLflow parent run: the run its studies' parent runs nest under (sweep → study →
trial), found again by its tags on ``--resume``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from stagetune.results.naming import STATUS_RUNNING, TAG_ROLE, TAG_STATUS
from stagetune.results.store import artifact_location, make_client

__all__ = ["ROLE_SWEEP", "TAG_SWEEP", "SweepRun"]

TAG_SWEEP: Final = "stagetune.sweep"
ROLE_SWEEP: Final = "sweep"
"""The sweep's run; a study's parent run has role ``parent``, so loading a study ignores it."""
_MAX_PARAM_LEN: Final = 6000


class SweepRun:
    """Open (or reopen) the sweep's run in ``experiment`` at ``tracking_uri``."""

    def __init__(self, tracking_uri: str, experiment: str, sweep: str) -> None:
        self.client = make_client(tracking_uri)
        exp = self.client.get_experiment_by_name(experiment)
        self.experiment_id = (
            exp.experiment_id
            if exp is not None
            else self.client.create_experiment(
                experiment, artifact_location=artifact_location(tracking_uri)
            )
        )
        found = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{TAG_SWEEP}` = '{sweep}' and tags.`{TAG_ROLE}` = '{ROLE_SWEEP}'",
            max_results=1,
        )
        if found:
            self.run_id = str(found[0].info.run_id)
            self.client.update_run(self.run_id, status="RUNNING")
            self.client.set_tag(self.run_id, TAG_STATUS, STATUS_RUNNING)
        else:
            tags = {TAG_SWEEP: sweep, TAG_ROLE: ROLE_SWEEP, TAG_STATUS: STATUS_RUNNING}
            run = self.client.create_run(self.experiment_id, tags=tags, run_name=sweep)
            self.run_id = str(run.info.run_id)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Params a first run set stay (MLflow params are immutable): only new keys are logged."""
        held = self.client.get_run(self.run_id).data.params
        for key, value in params.items():
            if key not in held:
                self.client.log_param(self.run_id, key, str(value)[:_MAX_PARAM_LEN])

    def log_results(
        self, metrics: Mapping[str, float], tags: Mapping[str, str], files: list[Path]
    ) -> None:
        for key, value in metrics.items():
            self.client.log_metric(self.run_id, key, float(value))
        for key, text in tags.items():
            self.client.set_tag(self.run_id, key, text)
        for path in files:
            self.client.log_artifact(self.run_id, str(path), artifact_path="sweep_report")

    def end(self, status: str, mlflow_status: str) -> None:
        self.client.set_tag(self.run_id, TAG_STATUS, status)
        self.client.set_terminated(self.run_id, status=mlflow_status)

"""The MLflow vocabulary stagetune writes and reads: tag names, roles, statuses, schedule params.

Tracking writes these names and analysis reads them back, so they live in one place: a study is
found again (for ``--resume`` and for reports) only through them.
"""

from __future__ import annotations

from typing import Final

from stagetune.metrics import (
    STATUS_DIVERGED,
    STATUS_FAILED,
    STATUS_FINISHED,
    STATUS_INTERRUPTED,
    STATUS_STOPPED,
)

__all__ = [
    "BASELINE_LABEL",
    "EXPERIMENT_KIND_TRAINING",
    "MLFLOW_STATUS",
    "PARAM_NON_EMBEDDING_PARAMS",
    "PARAM_SCHEDULE_KEY",
    "PARAM_SCHEDULE_LABEL",
    "ROLE_PARENT",
    "ROLE_TRIAL",
    "STATUS_RUNNING",
    "TAG_ASHA_RUNG",
    "TAG_EXPERIMENT_KIND",
    "TAG_FULL_DEPTH",
    "TAG_IS_BASELINE",
    "TAG_LABEL",
    "TAG_PARENT_RUN",
    "TAG_PHASE",
    "TAG_ROLE",
    "TAG_RUN_NAME",
    "TAG_SCHEDULE_KEY",
    "TAG_SEED",
    "TAG_SPACE",
    "TAG_STATUS",
    "TAG_STUDY",
    "TAG_TRIAL_ID",
]

TAG_STUDY: Final = "stagetune.study"
TAG_ROLE: Final = "stagetune.role"
TAG_TRIAL_ID: Final = "stagetune.trial_id"
TAG_IS_BASELINE: Final = "stagetune.is_baseline"
"""``"true"`` on the full-depth baseline's runs, ``"false"`` on every other trial."""
TAG_SEED: Final = "stagetune.seed"
TAG_STATUS: Final = "stagetune.status"
"""``running`` or one of :data:`stagetune.metrics.STATUSES`."""
TAG_ASHA_RUNG: Final = "stagetune.asha_rung"
"""Where ASHA cut a ``stopped`` trial, as the caller identifies the rung (e.g. its FLOPs milestone)."""
TAG_LABEL: Final = "stagetune.label"
"""Human-readable schedule name (fallback for param :data:`PARAM_SCHEDULE_LABEL`)."""
TAG_SCHEDULE_KEY: Final = "stagetune.schedule_key"
"""Fallback for param :data:`PARAM_SCHEDULE_KEY`."""
TAG_SPACE: Final = "stagetune.space"
"""The search space a trial was sampled from (``paper`` marks a study of the paper's shape)."""
TAG_PHASE: Final = "stagetune.phase"
"""Which part of the study ran a trial: ``search``, ``reference`` (the full-depth lr sweep) or
``confirmation`` (a chosen recipe on a further seed); see :mod:`stagetune.trial`."""
TAG_FULL_DEPTH: Final = "stagetune.full_depth"
"""``"true"`` on every one-stage full-depth trial (any lr): the reference's candidates."""
TAG_PARENT_RUN: Final = "mlflow.parentRunId"
TAG_RUN_NAME: Final = "mlflow.runName"
TAG_EXPERIMENT_KIND: Final = "mlflow.experimentKind"
"""The experiment tag MLflow 3's UI reads to choose its view (GenAI traces or model training)."""
EXPERIMENT_KIND_TRAINING: Final = "custom_model_development"
""":data:`TAG_EXPERIMENT_KIND` of a model-training experiment: the UI opens the runs table."""

ROLE_PARENT: Final = "parent"
ROLE_TRIAL: Final = "trial"
STATUS_RUNNING: Final = "running"

PARAM_SCHEDULE_KEY: Final = "schedule_key"
"""Trials with equal keys ran the same schedule (with different seeds): analysis groups them."""
PARAM_SCHEDULE_LABEL: Final = "schedule_label"
PARAM_NON_EMBEDDING_PARAMS: Final = "non_embedding_params"
"""The target model's weights outside embeddings and head: tokens per parameter is the regime."""
BASELINE_LABEL: Final = "baseline"
"""The full-depth baseline's label; analysis pools every baseline trial under it as one row."""

MLFLOW_STATUS: Final = {
    STATUS_FINISHED: "FINISHED",
    STATUS_STOPPED: "KILLED",
    STATUS_DIVERGED: "FAILED",
    STATUS_FAILED: "FAILED",
    STATUS_INTERRUPTED: "KILLED",
}
"""stagetune trial status -> MLflow run status (the exact one is kept in :data:`TAG_STATUS`)."""

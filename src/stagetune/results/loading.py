"""A study read back from MLflow alone (no Ray): its trials, their tags and params, their curves.

What tracking wrote is found again through the names of :mod:`stagetune.results.naming`: the
study's runs by their tags, each trial's curve from its metric histories on MLflow's step axis
(cumulative compute, :data:`~stagetune.results.tracking.runs.STEP_UNIT`). The compute-matched maths on these curves is in
:mod:`stagetune.results.matched`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from stagetune.errors import ConfigError, StagetuneError, suggest
from stagetune.metrics import (
    FLOPS,
    FLOPS_PAPER,
    STATUS_FAILED,
    STATUS_FINISHED,
    STATUS_STOPPED,
)
from stagetune.results.naming import (
    BASELINE_LABEL,
    PARAM_SCHEDULE_KEY,
    PARAM_SCHEDULE_LABEL,
    ROLE_PARENT,
    ROLE_TRIAL,
    STATUS_RUNNING,
    TAG_IS_BASELINE,
    TAG_LABEL,
    TAG_ROLE,
    TAG_SCHEDULE_KEY,
    TAG_SEED,
    TAG_STATUS,
    TAG_STUDY,
    TAG_TRIAL_ID,
)
from stagetune.results.store import error_reason, is_http, make_client, search_all

__all__ = ["CURVE_METRICS", "Curve", "StudyResults", "TrialResult", "load_study"]

CURVE_METRICS: Final = ("tokens", FLOPS, FLOPS_PAPER, "eval_loss", "train_loss", "stage")
_MLFLOW_MAX_FLOAT: Final = 1.7976931348623157e308  # how MLflow's SQL store saves +inf
_MLFLOW_STATUS_NAMES: Final = {
    "RUNNING": STATUS_RUNNING,
    "SCHEDULED": STATUS_RUNNING,
    "FINISHED": STATUS_FINISHED,
    "KILLED": STATUS_STOPPED,
    "FAILED": STATUS_FAILED,
}
"""MLflow run status -> stagetune status, for a run without :data:`TAG_STATUS`."""


@dataclass(frozen=True)
class Curve:
    """A trial's metrics aligned on MLflow's step axis (cumulative compute); NaN where absent."""

    tokens: np.ndarray
    flops: np.ndarray
    flops_paper: np.ndarray
    eval_loss: np.ndarray
    train_loss: np.ndarray
    stage: np.ndarray

    def __len__(self) -> int:
        return len(self.tokens)

    def compute(self, convention: str = "standard") -> np.ndarray:
        """Cumulative FLOPs in the given convention (``standard`` or ``paper``)."""
        return self.flops_paper if convention == "paper" else self.flops

    def eval_points(self, convention: str = "standard") -> tuple[np.ndarray, np.ndarray]:
        """(compute, eval loss) at the points that have both, in training order."""
        c = self.compute(convention)
        keep = ~np.isnan(c) & ~np.isnan(self.eval_loss)
        return c[keep], self.eval_loss[keep]

    def total_compute(self, convention: str = "standard") -> float | None:
        """The last cumulative FLOPs the trial reported."""
        c = self.compute(convention)
        c = c[~np.isnan(c)]
        return float(c.max()) if len(c) else None

    def stage_boundaries(self, convention: str = "standard") -> list[tuple[float, int]]:
        """(compute, new stage) at each point where the reported ``stage`` changes."""
        c = self.compute(convention)
        out: list[tuple[float, int]] = []
        prev: float | None = None
        for ci, st in zip(c, self.stage):
            if np.isnan(st):
                continue
            if prev is not None and st != prev and not np.isnan(ci):
                out.append((float(ci), int(st)))
            prev = float(st)
        return out


@dataclass(frozen=True)
class TrialResult:
    """One trial (child run) as MLflow holds it."""

    trial_id: str
    run_id: str
    status: str
    """``running`` or one of :data:`stagetune.metrics.STATUSES`."""
    is_baseline: bool
    seed: str | None
    schedule_key: str
    label: str
    params: dict[str, str]
    tags: dict[str, str]
    curve: Curve


@dataclass(frozen=True)
class StudyResults:
    """A study read back from MLflow."""

    tracking_uri: str
    experiment: str
    experiment_id: str
    study_name: str
    parent_run_id: str | None
    trials: tuple[TrialResult, ...]
    parent_status: str | None = None
    """The parent run's ``stagetune.status``: ``finished`` once the whole study is over."""
    parent_params: dict[str, str] = field(default_factory=dict)
    """The parent run's params (the study's settings, its regime: see
    :class:`stagetune.results.regime.Regime`)."""

    @property
    def partial(self) -> bool:
        """The study has not finished (it runs, or was interrupted): no verdict yet."""
        return self.parent_status not in (None, STATUS_FINISHED)

    @property
    def baselines(self) -> list[TrialResult]:
        return [t for t in self.trials if t.is_baseline]

    def trial(self, trial_id: str) -> TrialResult:
        """The trial with this id (KeyError if absent)."""
        for t in self.trials:
            if t.trial_id == trial_id:
                return t
        raise KeyError(trial_id)


def _experiment_or_error(client: Any, tracking_uri: str, experiment: str) -> Any:
    try:
        exp = client.get_experiment_by_name(experiment)
        names = [] if exp is not None else [e.name for e in client.search_experiments()]
    except Exception as exc:  # connection refused, DNS, timeouts: say so in one line
        fix = "start the MLflow server or pass the right tracking URI"
        raise ConfigError(
            "tracking_uri", tracking_uri, f"MLflow is unreachable ({error_reason(exc)}); {fix}"
        ) from exc
    if exp is None or exp.lifecycle_stage == "deleted":
        existing = ", ".join(sorted(n for n in names if n != "Default")) or "none"
        raise ConfigError(
            "experiment",
            experiment,
            f"no such MLflow experiment at {tracking_uri} (existing: {existing}); "
            "pass one of those or the right tracking URI",
        )
    return exp


def _load_curve(client: Any, run_id: str) -> Curve:
    series: dict[str, dict[int, tuple[int, float]]] = {}
    for key in CURVE_METRICS:
        by_step: dict[int, tuple[int, float]] = {}
        for m in client.get_metric_history(run_id, key):
            v = float(m.value)
            if abs(v) >= _MLFLOW_MAX_FLOAT:
                v = math.copysign(math.inf, v)
            # The latest timestamp wins should a step appear twice.
            old = by_step.get(int(m.step))
            if old is None or m.timestamp >= old[0]:
                by_step[int(m.step)] = (int(m.timestamp), v)
        series[key] = by_step
    steps = sorted(set().union(*(s.keys() for s in series.values())))

    def col(key: str) -> np.ndarray:
        return np.array([series[key].get(s, (0, math.nan))[1] for s in steps], dtype=float)

    return Curve(
        tokens=col("tokens"),
        flops=col(FLOPS),
        flops_paper=col(FLOPS_PAPER),
        eval_loss=col("eval_loss"),
        train_loss=col("train_loss"),
        stage=col("stage"),
    )


def _trial_from_run(client: Any, run: Any) -> TrialResult:
    tags = dict(run.data.tags)
    params = dict(run.data.params)
    status = tags.get(TAG_STATUS) or _MLFLOW_STATUS_NAMES.get(run.info.status, STATUS_FAILED)
    trial_id = tags.get(TAG_TRIAL_ID, run.info.run_id)
    # Without a schedule key a trial cannot be pooled with other seeds: it stands alone.
    key = params.get(PARAM_SCHEDULE_KEY) or tags.get(TAG_SCHEDULE_KEY) or f"trial:{trial_id}"
    is_baseline = tags.get(TAG_IS_BASELINE, "false").lower() == "true"
    label = (
        params.get(PARAM_SCHEDULE_LABEL)
        or tags.get(TAG_LABEL)
        or (BASELINE_LABEL if is_baseline else key)
    )
    return TrialResult(
        trial_id=trial_id,
        run_id=run.info.run_id,
        status=status,
        is_baseline=is_baseline,
        seed=tags.get(TAG_SEED),
        schedule_key=key,
        label=label,
        params=params,
        tags=tags,
        curve=_load_curve(client, run.info.run_id),
    )


def load_study(tracking_uri: str, experiment: str, *, study: str | None = None) -> StudyResults:
    """Read a study's trials and curves from MLflow.

    Args:
        tracking_uri: the MLflow store the study logged to.
        experiment: the MLflow experiment name.
        study: the study name (tag ``stagetune.study``); may be left out when the experiment
            holds a single study.

    Raises:
        StagetuneError: unreachable store, unknown experiment (the message lists the existing
            ones), unknown or ambiguous study, or a study without a baseline run.
    """
    client = make_client(tracking_uri, must_exist=not is_http(tracking_uri))
    exp = _experiment_or_error(client, tracking_uri, experiment)
    exp_id = exp.experiment_id
    trial_runs = search_all(client, exp_id, f"tags.`{TAG_ROLE}` = '{ROLE_TRIAL}'")
    parent_runs = search_all(client, exp_id, f"tags.`{TAG_ROLE}` = '{ROLE_PARENT}'")
    studies = sorted({r.data.tags.get(TAG_STUDY, "") for r in [*trial_runs, *parent_runs]} - {""})
    if not studies:
        raise ConfigError("experiment", experiment, "holds no stagetune runs; run a study first")
    if study is None:
        if len(studies) > 1:
            raise ConfigError(
                "study",
                None,
                f"experiment {experiment!r} holds several studies: {', '.join(studies)}; name one",
            )
        study = studies[0]
    elif study not in studies:
        raise ConfigError("study", study, suggest(study, studies))
    parents = [r for r in parent_runs if r.data.tags.get(TAG_STUDY) == study]
    parents.sort(key=lambda r: r.info.start_time or 0)
    trials = tuple(
        sorted(
            (_trial_from_run(client, r) for r in trial_runs if r.data.tags.get(TAG_STUDY) == study),
            key=lambda t: t.trial_id,
        )
    )
    if not any(t.is_baseline for t in trials):
        raise StagetuneError(
            f"study {study!r} in experiment {experiment!r} has no baseline run "
            f"(tag {TAG_IS_BASELINE}=true): run the baseline schedule before comparing"
        )
    return StudyResults(
        tracking_uri=tracking_uri,
        experiment=experiment,
        experiment_id=exp_id,
        study_name=study,
        parent_run_id=parents[0].info.run_id if parents else None,
        trials=trials,
        parent_status=parents[0].data.tags.get(TAG_STATUS) if parents else None,
        parent_params=dict(parents[0].data.params) if parents else {},
    )

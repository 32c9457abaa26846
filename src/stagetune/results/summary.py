"""A study's outcomes as MLflow summary metrics, so the runs table sorts and filters by outcome.

Each trial's run gets its outcome against the reference of its seed
(:class:`~stagetune.results.matched.TrialOutcome`) as metrics named ``outcome/...``; the study's
parent run gets the verdict: its text as the run's description and a tag, the best schedule as
a tag, and the headline numbers as metrics. Logged with the report (they change when trials
are added by ``--resume``; MLflow keeps the latest value of a metric for its table).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any, Final

import numpy as np

from stagetune.results.loading import StudyResults, TrialResult
from stagetune.results.matched import Outcome, TrialOutcome
from stagetune.results.naming import PARAM_NON_EMBEDDING_PARAMS
from stagetune.results.store import make_client

__all__ = [
    "M_COMPUTE_FRACTION",
    "M_DELTA",
    "M_FINAL_LOSS",
    "M_REACHED",
    "M_SPEEDUP",
    "M_TOKENS_PER_PARAM",
    "M_TOTAL_TFLOPS",
    "SUMMARY_METRICS",
    "TAG_BEST",
    "TAG_VERDICT",
    "log_summaries",
    "study_summary",
    "trial_summary",
]

_P: Final = "outcome/"
M_FINAL_LOSS: Final = _P + "final_eval_loss"
M_DELTA: Final = _P + "delta_loss_equal_compute"
"""Eval loss minus the reference's at equal compute (negative: better)."""
M_COMPUTE_FRACTION: Final = _P + "compute_to_ref_loss"
"""Share of the reference's compute spent to first reach its final eval loss (absent: never)."""
M_SPEEDUP: Final = _P + "speedup"
M_TOTAL_TFLOPS: Final = _P + "total_tflops"
"""Training compute in TFLOPs (standard convention): readable beside the losses."""
M_TOKENS_PER_PARAM: Final = _P + "tokens_per_param"
"""Training tokens per non-embedding parameter (the regime: paper ≈ 60, Chinchilla ≈ 20)."""
M_REACHED: Final = _P + "reached_ref_loss"
"""1 when the trial reached the reference's final eval loss, else 0."""
SUMMARY_METRICS: Final = (M_FINAL_LOSS, M_DELTA, M_COMPUTE_FRACTION, M_SPEEDUP, M_TOTAL_TFLOPS,
                          M_TOKENS_PER_PARAM, M_REACHED)  # fmt: skip
"""Every trial summary metric, in the order a reader scans them."""

M_BEST_SPEEDUP: Final = _P + "best_speedup"
M_BEST_DELTA: Final = _P + "best_delta_loss_equal_compute"
M_SCHEDULES_REACHED: Final = _P + "schedules_reaching_ref_loss"
M_SCHEDULES: Final = _P + "schedules"
M_REF_LOSS: Final = _P + "ref_final_eval_loss"
TAG_VERDICT: Final = "stagetune.verdict"
TAG_BEST: Final = "stagetune.best_schedule"
TAG_NOTE: Final = "mlflow.note.content"
"""MLflow's run description: the parent run's page opens with the verdict."""
_MAX_TAG: Final = 5000
_TERA: Final = 1e12


def _finite(v: float | None) -> float | None:
    return v if v is not None and math.isfinite(v) else None


def trial_summary(o: TrialOutcome, trial: TrialResult) -> dict[str, float]:
    """The summary metrics of one trial (a metric it has no value for is left out)."""
    tokens = trial.curve.tokens[~np.isnan(trial.curve.tokens)]
    n_params = trial.params.get(PARAM_NON_EMBEDDING_PARAMS)
    values: dict[str, float | None] = {
        M_FINAL_LOSS: o.final_eval_loss,
        # The comparator's own run (the reference on that seed) is 0 by definition.
        M_DELTA: 0.0 if o.trial_id == o.baseline_trial_id else o.matched_delta,
        M_COMPUTE_FRACTION: o.compute_fraction,
        M_SPEEDUP: o.speedup,
        M_TOTAL_TFLOPS: None if o.total_compute is None else o.total_compute / _TERA,
        M_TOKENS_PER_PARAM: (
            float(tokens.max()) / float(n_params) if len(tokens) and n_params else None
        ),
        M_REACHED: 1.0 if o.reached else 0.0,
    }
    return {k: f for k, v in values.items() if (f := _finite(v)) is not None}


def study_summary(outcomes: Sequence[Outcome], verdict_text: str) -> tuple[dict[str, float],
                                                                            dict[str, str]]:  # fmt: skip
    """The parent run's verdict: (metrics, tags)."""
    scheds = [o for o in outcomes if not o.is_reference and not o.is_full_depth]
    speedups = [o.speedup.mean for o in scheds if o.reached and o.speedup.mean is not None]
    deltas = [o.matched_delta.mean for o in scheds if o.matched_delta.mean is not None]
    ref = next((o for o in outcomes if o.is_reference), None)
    metrics: dict[str, float | None] = {
        M_SCHEDULES: float(len(scheds)),
        M_SCHEDULES_REACHED: float(len(speedups)),
        M_BEST_SPEEDUP: max(speedups, default=None),
        M_BEST_DELTA: min(deltas, default=None),
        M_REF_LOSS: None if ref is None else ref.final_eval_loss.mean,
    }
    # The first incremental schedule is the best (compute_matched's order).
    best = scheds[0].label if scheds else "none"
    tags = {TAG_VERDICT: verdict_text[:_MAX_TAG], TAG_NOTE: verdict_text, TAG_BEST: best}
    return {k: f for k, v in metrics.items() if (f := _finite(v)) is not None}, tags


def log_summaries(study: StudyResults, outcomes: Sequence[Outcome], verdict_text: str) -> None:
    """Log every trial's summary metrics to its run and the verdict to the parent run.

    Raises whatever MLflow raises (the report turns it into one line).
    """
    from mlflow.entities import Metric, RunTag

    client = make_client(study.tracking_uri)
    now = int(time.time() * 1000)
    by_id = {t.trial_id: t for t in study.trials}
    for o in outcomes:
        for to in o.trials:
            trial = by_id[to.trial_id]
            metrics = [Metric(k, v, now, 0) for k, v in trial_summary(to, trial).items()]
            client.log_batch(trial.run_id, metrics=metrics)
    if study.parent_run_id is None:
        return
    values, tags = study_summary(outcomes, verdict_text)
    parent: list[Any] = [Metric(k, v, now, 0) for k, v in values.items()]
    client.log_batch(
        study.parent_run_id, metrics=parent, tags=[RunTag(k, v) for k, v in tags.items()]
    )

"""``stagetune train`` beside a study: its run in MLflow like a study's trial, and its
comparison at equal compute with an earlier ``train`` run given as the baseline.

Every ``train`` run of a work directory is a trial of one MLflow "study" named
:data:`TRAIN_STUDY` in the experiment ``<experiment>-train`` (kept apart from the search's own
experiment, whose report must not count them): the same params, tags, run name, compute step
and summary metrics as a trial of ``stagetune run``, so ``stagetune report --experiment
<experiment>-train`` compares them too.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from stagetune.config import ExperimentConfig
from stagetune.errors import ConfigError
from stagetune.metrics import EVAL_LOSS, FLOPS, METRIC_KEYS, STATUSES
from stagetune.models.size import param_counts
from stagetune.orchestration.trainable import tracking_info
from stagetune.results import MlflowTracker
from stagetune.results.matched import at_equal_compute, first_crossing
from stagetune.results.naming import TAG_RUN_NAME
from stagetune.trainables.launcher import METRICS_FILE
from stagetune.trial import TrialDescription

__all__ = [
    "TRAIN_STUDY",
    "Comparison",
    "check_baseline",
    "compare_runs",
    "log_train_run",
    "train_experiment",
]

TRAIN_STUDY: Final = "train"
_SPACE: Final = "train"
"""What a train run's ``stagetune.space`` tag says: it was not sampled from a search space."""


def train_experiment(cfg: ExperimentConfig) -> str:
    """The MLflow experiment of the work directory's ``train`` runs."""
    return f"{cfg.experiment_name}-train"


def _records(out: Path) -> list[dict[str, Any]]:
    path = out / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _trial_id(out: Path) -> str:
    """One id per output directory (a resumed run continues its MLflow run)."""
    digest = hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:8]
    name = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in out.name)[:60]
    return f"{name.lstrip('._') or 'train'}-{digest}"


def _non_embedding(cfg: ExperimentConfig) -> int:
    # Embeddings are left out of the count, so the tokenizer's exact vocabulary does not matter.
    return param_counts(cfg.model, vocab_size=cfg.model.vocab_size or cfg.data.vocab_size).non_embedding


def log_train_run(
    cfg: ExperimentConfig, trial: TrialDescription, out: Path, status: str
) -> tuple[str, str]:
    """Log the run trained into ``out`` (its ``metrics.jsonl``) to MLflow; returns (tracking
    URI, experiment). An MLflow outage spools the events in ``out/mlflow_spool``."""
    experiment = train_experiment(cfg)
    tracker = MlflowTracker(cfg.resolved_tracking_uri(), experiment, spool_dir=out / "mlflow_spool")
    tracker.start_study(study_name=TRAIN_STUDY, params={}, tags={})
    trial_id = _trial_id(out)
    info = tracking_info(trial, space=_SPACE, model_params=_non_embedding(cfg))
    info["tags"][TAG_RUN_NAME] = f"{trial.label} ({out.name})"
    tracker.start_trial(trial_id=trial_id, params=info["params"], tags=info["tags"])
    for rec in _records(out):
        tracker.log_report(trial_id, {k: rec[k] for k in METRIC_KEYS if rec.get(k) is not None})
    tracker.end_trial(trial_id, status if status in STATUSES else "failed")
    tracker.end_study("finished")
    return cfg.resolved_tracking_uri(), experiment


@dataclass(frozen=True)
class Comparison:
    """A run against a baseline run at equal compute (see :mod:`stagetune.results.matched`)."""

    compute: float
    """Where both were compared: the lesser of the two runs' last eval compute."""
    loss: float
    baseline_loss: float
    compute_fraction: float | None
    """Share of the baseline's compute spent to first reach its final eval loss (``None``:
    never)."""

    @property
    def delta(self) -> float:
        return self.loss - self.baseline_loss

    @property
    def speedup(self) -> float | None:
        return None if not self.compute_fraction else 1 / self.compute_fraction


def _curve(out: Path, field: str) -> tuple[np.ndarray, np.ndarray]:
    pts = [
        (float(r[FLOPS]), float(r[EVAL_LOSS]))
        for r in _records(out)
        if r.get(EVAL_LOSS) is not None and math.isfinite(float(r[EVAL_LOSS]))
    ]
    if not pts:
        raise ConfigError(
            field, str(out), f"holds no evaluated records ({METRICS_FILE}); give the --out "
            "directory of a 'stagetune train' run that evaluated at least once"
        )  # fmt: skip
    arr = np.array(pts)
    return arr[:, 0], arr[:, 1]


def check_baseline(baseline: Path) -> None:
    """Refuse a ``--baseline`` that is no evaluated ``train`` run, before anything trains."""
    _curve(baseline, "--baseline")


def compare_runs(out: Path, baseline: Path) -> Comparison | None:
    """The run in ``out`` against the one in ``baseline`` at equal compute; ``None`` when their
    curves do not overlap on the compute axis."""
    c, loss = _curve(out, "out")
    bc, bl = _curve(baseline, "--baseline")
    matched = at_equal_compute(c, loss, bc, bl)
    if matched is None:
        return None
    to = first_crossing(c, loss, float(bl[-1]))
    return Comparison(
        compute=matched.compute,
        loss=matched.loss,
        baseline_loss=matched.baseline_loss,
        compute_fraction=None if to is None else to / float(bc[-1]),
    )

"""Helpers shared by the results tests: in-memory trials and studies, metric records, a study
logged through MlflowTracker into SQLite.

In-memory curves (FLOPs in units of 1, eval loss): ``BASE0`` is the baseline of seed 0 at
(25, 4.0) (50, 3.5) (75, 3.2) (100, 3.0); ``BASE1`` the baseline of seed 1 at the same FLOPs
with 4.1 3.6 3.3 3.1.

The logged study (:data:`TRIALS`, FLOPs in units of 1e12; eval loss):

* baseline  seed 0: (25,4.0) (50,3.5) (75,3.2) (100,3.0); seed 1: same FLOPs, 4.1 3.6 3.3 3.1
* S2 fast   seed 0: (20,3.9) (40,3.4) (60,3.1) (80,2.9) (100,2.8), stages 1 1 2 2 3
            seed 1: same FLOPs, 4.0 3.5 3.25 3.05 2.95 -> reaches at 70 / 75 (70 % / 75 %)
* S4 slow   seed 0: (30,4.2) (60,3.8) (90,3.5), stopped by ASHA at rung 1
            seed 1: (30,4.3) (60,3.9) (90,3.6) (120,3.3) -> loss 3.5 at 100, never reaches 3.1
* S3 diverged seed 0: (20,3.95) (40,3.7), then train loss inf at 50
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.tracking import MlflowClient

from stagetune.metrics import FLOPS, FLOPS_PAPER
from stagetune.results import MlflowTracker
from stagetune.results.loading import Curve, StudyResults, TrialResult
from stagetune.results.naming import TAG_ASHA_RUNG, TAG_IS_BASELINE

NAN = math.nan
E12 = 1e12
EXPERIMENT = "stagetune-study"
STUDY = "study-a"


# -- in memory -----------------------------------------------------------------------------------


def trial(
    tid: str,
    key: str,
    seed: str,
    flops: list[float],
    loss: list[float],
    *,
    baseline: bool = False,
    stage: list[float] | None = None,
    status: str = "finished",
    label: str | None = None,
) -> TrialResult:
    n = len(flops)
    curve = Curve(
        tokens=np.arange(1, n + 1, dtype=float) * 1000,
        flops=np.array(flops, dtype=float),
        flops_paper=np.array(flops, dtype=float) * 0.5,
        eval_loss=np.array(loss, dtype=float),
        train_loss=np.full(n, NAN),
        stage=np.array(stage if stage is not None else [1.0] * n),
    )
    return TrialResult(
        trial_id=tid,
        run_id=f"run-{tid}",
        status=status,
        is_baseline=baseline,
        seed=seed,
        schedule_key=key,
        label=label or key.upper(),
        params={"schedule_key": key},
        tags={},
        curve=curve,
    )


def study(*trials: TrialResult, parent_status: str | None = None) -> StudyResults:
    return StudyResults(
        tracking_uri="sqlite:///unused.db",
        experiment="e",
        experiment_id="1",
        study_name="s",
        parent_run_id=None,
        trials=trials,
        parent_status=parent_status,
    )


BASE0 = trial("b0", "base", "0", [25, 50, 75, 100], [4.0, 3.5, 3.2, 3.0], baseline=True)
BASE1 = trial("b1", "base", "1", [25, 50, 75, 100], [4.1, 3.6, 3.3, 3.1], baseline=True)


# -- logged through MlflowTracker ----------------------------------------------------------------


def records(flops: list[float], loss: list[float], stage: list[int] | None = None) -> list[dict]:
    out = []
    for i, (f, lo) in enumerate(zip(flops, loss)):
        out.append({
            "step": (i + 1) * 10,
            "tokens": int(f * 1000),
            FLOPS: f * E12,
            FLOPS_PAPER: f * E12 * 0.5,
            "seconds": float(i),
            "train_loss": lo + 0.05,
            "eval_loss": lo,
            "lr": 6e-4,
            "stage": (stage or [1] * len(flops))[i],
            "phase_id": 2,
            "active_depth": 4,
            "done": False,  # Tune bookkeeping: not logged
            "config": {"x": 1},  # not numeric: not logged
        })  # fmt: skip
    return out


TRIALS: list[dict[str, Any]] = [
    {"id": "base_0", "key": "kbase", "label": "baseline", "seed": 0, "baseline": True,
     "recs": records([25, 50, 75, 100], [4.0, 3.5, 3.2, 3.0]), "end": ("finished", None)},
    {"id": "base_1", "key": "kbase", "label": "baseline", "seed": 1, "baseline": True,
     "recs": records([25, 50, 75, 100], [4.1, 3.6, 3.3, 3.1]), "end": ("finished", None)},
    {"id": "fast_0", "key": "kfast", "label": "S2 fast", "seed": 0, "baseline": False,
     "recs": records([20, 40, 60, 80, 100], [3.9, 3.4, 3.1, 2.9, 2.8], [1, 1, 2, 2, 3]),
     "end": ("finished", None)},
    {"id": "fast_1", "key": "kfast", "label": "S2 fast", "seed": 1, "baseline": False,
     "recs": records([20, 40, 60, 80, 100], [4.0, 3.5, 3.25, 3.05, 2.95], [1, 1, 2, 2, 3]),
     "end": ("finished", None)},
    {"id": "slow_0", "key": "kslow", "label": "S4 slow", "seed": 0, "baseline": False,
     "recs": records([30, 60, 90], [4.2, 3.8, 3.5]), "end": ("stopped", 1)},
    {"id": "slow_1", "key": "kslow", "label": "S4 slow", "seed": 1, "baseline": False,
     "recs": records([30, 60, 90, 120], [4.3, 3.9, 3.6, 3.3]), "end": ("finished", None)},
    {"id": "div_0", "key": "kdiv", "label": "S3 diverged", "seed": 0, "baseline": False,
     "recs": [*records([20, 40], [3.95, 3.7]),
              {"tokens": 50_000, FLOPS: 50 * E12, FLOPS_PAPER: 25 * E12,
               "train_loss": float("inf"), "stage": 1}],
     "end": ("diverged", None)},
]  # fmt: skip


def log_trial(tr: MlflowTracker, t: dict[str, Any]) -> str:
    """Start one trial of a ``TRIALS``-like list and log its records (it is not ended)."""
    params = {"schedule_key": t["key"], "schedule_label": t["label"], "seed": t["seed"]}
    run = tr.start_trial(trial_id=t["id"], params=params, tags={TAG_IS_BASELINE: t["baseline"]})
    for rec in t["recs"]:
        tr.log_report(t["id"], rec)
    return run


def log_study(root: Path) -> dict[str, Any]:
    """:data:`TRIALS` as study ``STUDY`` of experiment ``EXPERIMENT`` under ``root``, with an
    artifact on a trial and on the study; beside it, experiment ``no-baseline`` whose study never
    ran its baseline. Returns the store's ``uri``, ``root``, ``parent`` run id and ``runs``."""
    uri = f"sqlite:///{root / 'work' / 'mlflow.db'}"
    tr = MlflowTracker(uri, EXPERIMENT, spool_dir=root / "spool")
    parent = tr.start_study(study_name=STUDY, params={"model.n_layer": 4}, tags={"k": "v"})
    runs = {}
    for t in TRIALS:
        runs[t["id"]] = log_trial(tr, t)
        status, rung = t["end"]
        tr.end_trial(t["id"], status, tags={TAG_ASHA_RUNG: rung} if rung else None)
    note = root / "trial_note.txt"
    note.write_text("checkpoint meta")
    tr.log_trial_artifacts("fast_0", [note])
    cfg = root / "config.yaml"
    cfg.write_text("name: study-a\n")
    tr.log_study_artifacts([cfg])
    tr.end_study()
    assert tr.stats.spooled == 0 and tr.stats.rejected == 0, tr.stats
    # A second experiment whose study never ran its baseline.
    other = MlflowTracker(uri, "no-baseline", spool_dir=root / "spool2")
    other.start_study(study_name="nb", params={}, tags={})
    other.start_trial(trial_id="x_0", params={"seed": 0}, tags={})
    other.log_report("x_0", records([10], [3.0])[0])
    return {"uri": uri, "root": root, "parent": parent, "runs": runs}


# -- tracker records ------------------------------------------------------------------------------


def rec(i: int, loss: float | None = None) -> dict[str, float]:
    """Record ``i`` of a trial: ``i`` thousand tokens, ``i`` TFLOPs."""
    return {
        "tokens": i * 1000,
        "flops": i * 1e12,
        "flops_paper": i * 0.5e12,
        "eval_loss": 5.0 - 0.1 * i if loss is None else loss,
        "train_loss": 5.1 - 0.1 * i,
        "stage": 1,
    }


def history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    """A metric's (step, value) history, in step order."""
    # MLflow returns history in logging order, not step order.
    hist = MlflowClient(uri).get_metric_history(run_id, key)
    return sorted((m.step, m.value) for m in hist)

"""The metric record every trial reports: one schema shared by the trainer, Tune and MLflow.

A trial reports one record per evaluation point (evaluations sit at fixed compute intervals,
the same FLOPs for every schedule of a study) and a last one when training ends.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "EVAL_LOSS",
    "FLOPS",
    "FLOPS_BY_CONVENTION",
    "FLOPS_PAPER",
    "METRIC_KEYS",
    "PHASE_IDS",
    "STATUSES",
    "STATUS_DIVERGED",
    "STATUS_INTERRUPTED",
]

FLOPS: Final = "flops"
"""Cumulative training FLOPs, standard convention (ASHA's ``time_attr`` by default)."""
FLOPS_PAPER: Final = "flops_paper"
"""Cumulative training FLOPs, the paper's convention."""
FLOPS_BY_CONVENTION: Final = {"standard": FLOPS, "paper": FLOPS_PAPER}
"""The cumulative-FLOPs metric of each FLOPs convention (``budget.convention``)."""
EVAL_LOSS: Final = "eval_loss"
"""Held-out loss at a compute point: what the search minimises."""

METRIC_KEYS: Final = (
    "step",  # optimizer steps done
    "tokens",  # cumulative training tokens (MLflow step axis)
    FLOPS,
    FLOPS_PAPER,
    "seconds",  # cumulative training wall-clock seconds (eval excluded)
    "train_loss",  # mean training loss since the previous record
    EVAL_LOSS,  # held-out loss at this compute point
    "lr",  # the learning rate the last step before this record trained with: lr_at(step - 1)
    "stage",  # 1-based stage; continual training is num_stages + 1
    "phase_id",  # see PHASE_IDS
    "active_depth",
)

PHASE_IDS: Final = {"phase1": 1, "phase2": 2, "continual": 3}

STATUS_FINISHED: Final = "finished"
STATUS_STOPPED: Final = "stopped"  # stopped early by ASHA
STATUS_DIVERGED: Final = "diverged"
STATUS_FAILED: Final = "failed"
STATUS_INTERRUPTED: Final = "interrupted"
"""The study stopped (signal, full disk, dead driver) while the trial ran; see
:mod:`stagetune.orchestration.interrupt` for what each store holds and what ``--resume`` does."""
STATUSES: Final = (
    STATUS_FINISHED,
    STATUS_STOPPED,
    STATUS_DIVERGED,
    STATUS_FAILED,
    STATUS_INTERRUPTED,
)

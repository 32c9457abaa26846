"""Sane bounds of the config's counts, each with the reason an error gives.

A value past one of these is a typo or a misunderstanding, not a study anyone can run: it is
refused by the config (so a YAML file, ``--set`` and the command-line flags share the bound)
before anything starts. The budget factor's bounds are in :mod:`stagetune.budget`.
"""

from __future__ import annotations

__all__ = [
    "EVAL_POINTS_REASON",
    "MAX_EVAL_POINTS",
    "MAX_SEED",
    "MAX_SEEDS",
    "MAX_STEPS",
    "MAX_TRIALS",
    "SEEDS_REASON",
    "SEED_REASON",
    "STEPS_REASON",
    "TRIALS_REASON",
]

MAX_STEPS = 10_000_000
"""Most optimizer steps of any one setting (baseline, warm-up, checkpoint interval)."""
STEPS_REASON = (
    f"more than {MAX_STEPS:,} optimizer steps is beyond any run stagetune plans (the paper's "
    "GPT-2 baseline has 9,536); check the value"
)

MAX_TRIALS = 10_000
"""Most trials of one search."""
TRIALS_REASON = (
    f"more than {MAX_TRIALS:,} trials is not a laptop or cluster search (each trial trains a "
    "model); narrow the search space or split the study"
)

MAX_SEEDS = 100
"""Most seeds of the confirmation round."""
SEEDS_REASON = (
    f"each seed retrains the reference and the repeated schedules; more than {MAX_SEEDS} seeds "
    "narrows a 95% interval by little (it shrinks with the square root of the count)"
)

MAX_SEED = 2**31 - 1
"""Largest seed: NumPy, PyTorch and Optuna's samplers all take any seed in [0, 2³¹ − 1]."""
SEED_REASON = f"use a seed in [0, {MAX_SEED}] (NumPy, PyTorch and Optuna all accept those)"

MAX_EVAL_POINTS = 10_000
"""Most evaluations of one run."""
EVAL_POINTS_REASON = (
    f"more than {MAX_EVAL_POINTS:,} evaluations per run (each of data.eval_batches batches) "
    "would cost more than the training; use fewer"
)

MAX_REFERENCE_LRS = 8
"""Most learning rates of the reference sweep (each is a whole full-depth training run)."""
MAX_LR_FACTOR = 100.0
"""Largest multiple of ``train.lr`` the reference sweep may try."""

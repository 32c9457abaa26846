"""The ``paper`` recipe: what a config must hold to be the procedure of arXiv 2411.18700.

``train.recipe: paper`` is a promise the config is checked against, not a switch that rewrites
it: every setting the paper fixes is listed here with the reason, and a config that deviates is
refused naming the field. stagetune's own options (clipping, ``new_only`` freezing, ``zero``
growth, optimizer resets, ...) stay available under ``train.recipe: stagetune``. What remains
different from the paper's code is listed in docs/paper-recipe.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from stagetune.errors import ConfigError

if TYPE_CHECKING:
    from stagetune.config.schema import ExperimentConfig

__all__ = ["PAPER_RECIPE", "PAPER_SETTINGS", "check_paper_recipe"]

PAPER_RECIPE = "paper"

PAPER_SETTINGS: tuple[tuple[str, str, str, Any, str], ...] = (
    ("train", "grad_clip", "train.grad_clip", 0.0, "the paper's code does not clip gradients"),
    ("train", "lr_schedule", "train.lr_schedule", "constant", "the paper trains at a constant lr"),
    ("train", "weight_decay", "train.weight_decay", 0.1, "the paper's AdamW decays by 0.1"),
    ("train", "beta1", "train.beta1", 0.9, "the paper's AdamW betas are 0.9/0.95"),
    ("train", "beta2", "train.beta2", 0.95, "the paper's AdamW betas are 0.9/0.95"),
    ("train", "decay_embeddings", "train.decay_embeddings", True,
     "the paper's code decays every >= 2-D tensor, embeddings included"),
    ("schedule", "optimizer_policy", "schedule.optimizer_policy", "carry_then_reset",
     "the paper's code keeps AdamW's state through growth and unfreezing and starts a fresh "
     "optimizer for continual training"),
    ("schedule", "phase1_fraction", "schedule.phase1_fraction", 0.5,
     "the paper's phases are T/(2S) steps each"),
    ("schedule", "step_spread", "schedule.step_spread", "uniform",
     "the paper's stages are T/S steps each"),
    ("schedule", "growth", "schedule.growth", "random", "the paper's new layers start at random"),
    ("schedule", "freeze_policy", "schedule.freeze_policy", "paper",
     "the paper's code leaves embeddings and head trainable in phase 1"),
)  # fmt: skip
"""What ``train.recipe: paper`` requires: (section, field, dotted name, value, why)."""


def check_paper_recipe(cfg: ExperimentConfig) -> None:
    """Refuse a config that says ``train.recipe: paper`` but deviates from the paper's
    procedure, naming the field (raises :class:`~stagetune.errors.ConfigError`)."""
    for section, name, dotted, value, why in PAPER_SETTINGS:
        got = getattr(getattr(cfg, section), name)
        if got != value:
            raise ConfigError(
                dotted,
                got,
                f"train.recipe=paper needs {value!r} ({why}); set it, or train.recipe=stagetune "
                "to use this option",
            )



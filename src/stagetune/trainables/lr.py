"""Learning-rate schedules over the whole run (all stages and continual training)."""

from __future__ import annotations

import math

__all__ = ["lr_at"]


def lr_at(
    step: int,
    *,
    peak: float,
    total_steps: int,
    schedule: str = "constant",
    warmup_steps: int = 0,
    min_lr_ratio: float = 0.1,
    decay_fraction: float = 0.2,
) -> float:
    """LR for optimizer step ``step`` (0-based): linear warm-up, then constant, cosine or WSD."""
    if warmup_steps and step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    if schedule == "constant":
        return peak
    floor = peak * min_lr_ratio
    span = max(1, total_steps - warmup_steps)
    t = min(1.0, max(0.0, (step - warmup_steps) / span))
    if schedule == "cosine":
        return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * t))
    if schedule == "wsd":
        decay_start = 1.0 - decay_fraction
        if t <= decay_start:
            return peak
        return peak - (peak - floor) * (t - decay_start) / decay_fraction
    raise ValueError(f"unknown lr schedule {schedule!r}")

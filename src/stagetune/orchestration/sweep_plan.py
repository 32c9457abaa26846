"""A sweep's plan: the same study at several training lengths (and model sizes), as configs.

A sweep point is an ordinary study (:mod:`.study`) of the ``wide`` space whose points are all
fixed in advance (``search.points_to_evaluate``, ``num_trials`` = their count + the baseline, no
early stopping); its confirmation round repeats the reference and every schedule on every seed:

* the full-depth reference: the study's own reference lr sweep (``search.reference_lr_factors``
  = 1 and each of ``reference_lrs``; the best of them is the reference,
  :mod:`stagetune.results.reference`), never stopped early;
* the paper's S ∈ {2, 4}: uniform stages, random growth, the ``paper`` freeze policy, phases
  of T/(2S) steps, budget-matched continual training;
* G_stack-style: L/4 layers, then grown to L by ``stack`` with no freezing, budget-matched
  continual training (Du et al. 2024);
* optionally the best incremental schedule of a prior ``wide`` study (``--from-study``).

Every schedule gets the same lr tuning as the reference (``lr_factors``, by default the
reference's: each schedule at each multiple of its lr on the study's seed) and the
confirmation round repeats the best ``len(schedules)`` incremental points on the other seeds:
a reference tuned alone would be compared with untuned schedules, and part of any gap would be
the lr, not the growth (``stagetune sweep --untuned-schedules`` keeps the schedules at the
configured lr).

A training length is given in tokens per non-embedding parameter (:mod:`stagetune.models.size`):
``baseline_steps = round(x · N / tokens per step)``; the length actually run is reported.
The data default to the environment corpus (``pysources``) with a cap that holds the longest
length's tokens without repeating (:func:`corpus_cap_mb`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from stagetune.config import ExperimentConfig, config_from_dict, config_to_dict
from stagetune.errors import ConfigError
from stagetune.models.size import param_counts

__all__ = [
    "BYTES_PER_TOKEN",
    "DEFAULT_REFERENCE_LRS",
    "DEFAULT_TOKENS_PER_PARAM",
    "MIN_BASELINE_STEPS",
    "SWEEP_SOURCE",
    "PlannedStudy",
    "corpus_cap_mb",
    "parse_floats",
    "parse_sizes",
    "plan_studies",
    "schedule_count",
    "study_points",
]

DEFAULT_TOKENS_PER_PARAM: Final = (0.3, 3.0, 30.0)
DEFAULT_REFERENCE_LRS: Final = (0.5, 2.0)
"""The reference's lr sweep: the configured lr and these multiples of it (full depth)."""
MIN_BASELINE_STEPS: Final = 8
"""Shorter, and S = 4's phases of T/(2S) steps would be under a step each."""
SWEEP_SOURCE: Final = "pysources"
BYTES_PER_TOKEN: Final = 2.43
"""Bytes of Python source per token of the built-in BPE at vocab 1024 on ``pysources``
(benchmarks/RESULTS.md, corpus size); larger vocabularies pack more, so this is conservative."""
_CAP_MARGIN: Final = 1.3
_CAP_STEPS_MB: Final = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
"""Caps are rounded up to one of these, so sweeps of nearby lengths share one tokenized corpus."""
_MIB: Final = 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class PlannedStudy:
    """One point of the sweep: a study at one training length and model size."""

    name: str
    size: str
    """``L<layers>d<width>``."""
    tokens_per_param: float
    """As asked for."""
    actual_tokens_per_param: float
    """As run (whole steps)."""
    non_embedding_params: int
    baseline_steps: int
    config: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "size": self.size,
            "tokens_per_param": self.tokens_per_param,
            "actual_tokens_per_param": self.actual_tokens_per_param,
            "non_embedding_params": self.non_embedding_params,
            "baseline_steps": self.baseline_steps,
            "config": self.config,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PlannedStudy:
        return cls(**data)


def parse_floats(text: str, flag: str) -> tuple[float, ...]:
    """``0.3,3,30`` → positive floats, or a one-line error naming ``flag``."""
    try:
        vals = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        vals = ()
    if not vals or any(not math.isfinite(v) or v <= 0 for v in vals):
        raise ConfigError(flag, text, "use comma-separated positive numbers, e.g. 0.3,3,30")
    return vals


def parse_sizes(text: str) -> tuple[tuple[int, int], ...]:
    """``4x128,6x128`` → ((layers, width), ...)."""
    try:
        sizes = tuple(
            (int(a), int(b)) for a, b in (s.lower().split("x") for s in text.split(",") if s)
        )
    except ValueError:
        sizes = ()
    if not sizes or any(a < 1 or b < 1 for a, b in sizes):
        raise ConfigError("--sizes", text, "use LAYERSxWIDTH pairs, e.g. 4x128,6x128")
    return sizes


def corpus_cap_mb(tokens: float, eval_fraction: float) -> float:
    """A ``data.max_corpus_mb`` whose train split holds ``tokens`` with a margin (rounded up to
    a shared step)."""
    need = tokens * BYTES_PER_TOKEN * _CAP_MARGIN / (1 - eval_fraction) / _MIB
    return float(next((s for s in _CAP_STEPS_MB if s >= need), math.ceil(need)))


def study_points(
    cfg: ExperimentConfig,
    *,
    extra: Sequence[dict[str, Any]] = (),
    lr_factors: Sequence[float] = (1.0,),
) -> list[dict[str, Any]]:
    """The fixed incremental schedules of one sweep study (params of the ``wide`` space), each
    at every multiple ``lr_factors`` of its lr; the full-depth reference comes from the study's
    reference lr sweep."""
    n = cfg.model.n_layer
    lr, warmup = cfg.train.lr, cfg.train.warmup_steps
    common: dict[str, Any] = {"lr": lr, "warmup_steps": warmup}
    points: list[dict[str, Any]] = []
    for s in (2, 4):
        if s > n:
            continue
        point: dict[str, Any] = {"num_stages": s}
        if 1 < s < n:
            point["uniform_increments"] = True
        point.update(
            freeze_policy="paper",
            phase1_fraction=0.5,
            step_spread="uniform",
            growth="random",
            continual_multiple=1.0,
            **common,
        )
        points.append(point)
    if n >= 4:
        points.append(
            {
                "num_stages": 2,
                "uniform_increments": False,
                "inc_1": n // 4,
                "freeze_policy": "none",
                "step_spread": "uniform",
                "growth": "stack",
                "continual_multiple": 1.0,
                **common,
            }
        )
    points.extend(dict(p) for p in extra)
    return [{**p, "lr": p["lr"] * f} for p in points for f in sorted(set(lr_factors))]


def schedule_count(points: Sequence[dict[str, Any]]) -> int:
    """How many schedules ``points`` hold, whatever their lrs (the confirmation round repeats
    that many incremental points)."""
    return len({tuple(sorted((k, repr(v)) for k, v in p.items() if k != "lr")) for p in points})


def plan_studies(
    base: ExperimentConfig,
    *,
    sweep: str,
    tokens_per_param: Sequence[float],
    sizes: Sequence[tuple[int, int]],
    seeds: int,
    vocab_size: int,
    reference_lrs: Sequence[float] = DEFAULT_REFERENCE_LRS,
    points_for: Any = study_points,
    tracking: dict[str, Any],
    study_dir: Any,
) -> list[PlannedStudy]:
    """Every study of the sweep (sizes × lengths), validated, nothing created.

    ``reference_lrs``: the lr factors of each study's reference sweep besides 1;
    ``points_for(cfg)`` gives a study's fixed points; ``tracking`` is the studies' shared
    tracking section; ``study_dir(name)`` their work directories.
    """
    out = []
    tokens_per_step = base.train.batch_size * base.data.seq_len
    for layers, width in sizes:
        size = f"L{layers}d{width}"
        model = {**config_to_dict(base.model), "n_layer": layers, "n_embd": width}
        sized = config_from_dict({**config_to_dict(base), "model": model})
        n_params = param_counts(sized.model, vocab_size=vocab_size).non_embedding
        for x in sorted(tokens_per_param):
            steps = round(x * n_params / tokens_per_step)
            if steps < MIN_BASELINE_STEPS:
                raise ConfigError(
                    "--tokens-per-param",
                    x,
                    f"gives {steps} baseline steps for {size} ({n_params} non-embedding "
                    f"parameters, {tokens_per_step} tokens a step); use at least "
                    f"{MIN_BASELINE_STEPS * tokens_per_step / n_params:.3g}",
                )
            name = f"{sweep}-{size}-tpp{x:g}"
            points = points_for(sized)
            data = config_to_dict(sized)
            data.update(name=name, workdir=str(study_dir(name)), tracking=dict(tracking))
            data["schedule"] = {**data["schedule"], "baseline_steps": steps}
            data["search"] = {
                **data["search"],
                "space": "wide",
                "points_to_evaluate": points,
                "num_trials": len(points) + 1,
                "seeds": seeds,
                "repeat_top_k": max(1, schedule_count(points)),
                "reference_lr_factors": sorted({1.0, *map(float, reference_lrs)}),
                "early_stopping": False,
            }
            cfg = config_from_dict(data)
            out.append(
                PlannedStudy(
                    name=name,
                    size=size,
                    tokens_per_param=x,
                    actual_tokens_per_param=steps * tokens_per_step / n_params,
                    non_embedding_params=n_params,
                    baseline_steps=steps,
                    config=config_to_dict(cfg),
                )
            )
    return out

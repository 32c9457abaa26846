"""The training regime of a study: how long its reference trains relative to its size.

Incremental training's advantage depends on it. Far below compute-optimal training (≈ 20 tokens
per parameter, Hoffmann et al. 2022) a full-depth model is nowhere near converged and loses to
shallower ones at equal compute whatever the schedule, so a study states its regime next to the
paper's (GPT-2 124M on ≈ 5.0 B tokens: ≈ 60 tokens per non-embedding parameter) and the verdict
says when its answer cannot carry to longer training.

A :class:`Regime` is computed once when a study is prepared (the model's parameter counts,
the prepared data's size), recorded on the MLflow parent run as params
(:meth:`Regime.to_params`) and read back from them for the report (:meth:`Regime.from_params`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

__all__ = [
    "COMPUTE_OPTIMAL_TOKENS_PER_PARAM",
    "FAR_BELOW_FACTOR",
    "PAPER_TOKENS_PER_PARAM",
    "REGIME_PARAMS",
    "Regime",
]

PAPER_TOKENS_PER_PARAM: Final = 60.0
"""The paper's regime: ≈ 5.0 B tokens over GPT-2 124M's ≈ 85 M non-embedding parameters."""
COMPUTE_OPTIMAL_TOKENS_PER_PARAM: Final = 20.0
"""Compute-optimal training (Hoffmann et al. 2022, "Chinchilla")."""
FAR_BELOW_FACTOR: Final = 10.0
"""A study this many times below compute-optimal is told its result does not carry over."""

_PREFIX: Final = "regime."
REGIME_PARAMS: Final = (
    "params_total",
    "params_non_embedding",
    "tokens_trained",
    "train_tokens",
)
"""The MLflow parent-run params (each prefixed ``regime.``) a regime is stored in."""


@dataclass(frozen=True, kw_only=True)
class Regime:
    """The reference's size and training length (the reference is full depth and trains the
    configured T steps, whatever its learning rate)."""

    params_total: int
    """Parameters of the full-depth model (a tied head counted once)."""
    params_non_embedding: int
    """Without the token and position embeddings (and an untied LM head): the count scaling
    laws are written in."""
    tokens_trained: int
    """Tokens the reference trains on: T × batch size × sequence length."""
    train_tokens: int
    """Tokens of the training split (the data minus the held-out eval share)."""

    @property
    def tokens_per_param(self) -> float:
        """Tokens trained per non-embedding parameter."""
        return self.tokens_trained / max(1, self.params_non_embedding)

    @property
    def epochs(self) -> float:
        """Passes over the training split."""
        return self.tokens_trained / max(1, self.train_tokens)

    @property
    def far_below_optimal(self) -> bool:
        """More than :data:`FAR_BELOW_FACTOR` × below compute-optimal."""
        return self.tokens_per_param * FAR_BELOW_FACTOR < COMPUTE_OPTIMAL_TOKENS_PER_PARAM

    @property
    def repeats_data(self) -> bool:
        """The reference sees its training data more than once."""
        return self.epochs > 1.0

    def line(self) -> str:
        """One line for the CLI summary and the report."""
        return (
            f"Regime: the reference has {self.params_total:,} parameters "
            f"({self.params_non_embedding:,} non-embedding) and trains on "
            f"{self.tokens_trained:,} tokens: {self.tokens_per_param:.3g} tokens per "
            f"non-embedding parameter (the paper ≈{PAPER_TOKENS_PER_PARAM:g}, compute-optimal "
            f"≈{COMPUTE_OPTIMAL_TOKENS_PER_PARAM:g}), {self.epochs:.3g} epochs over the "
            f"{self.train_tokens:,} training tokens."
        )

    def warnings(self) -> list[str]:
        """Plain sentences about what limits the study's answer (empty when nothing does)."""
        out = []
        if self.far_below_optimal:
            out.append(
                f"At {self.tokens_per_param:.2g} tokens per non-embedding parameter this study "
                f"trains more than {FAR_BELOW_FACTOR:g}× below compute-optimal "
                f"(≈{COMPUTE_OPTIMAL_TOKENS_PER_PARAM:g}), where shallower-first schedules are "
                "favoured because the full-depth model is far from converged; the result does "
                "not carry to longer training (measure the trend with 'stagetune sweep', "
                "issue 12)."
            )
        if self.repeats_data:
            out.append(
                f"The reference repeats its training data: {self.epochs:.3g} epochs over "
                f"{self.train_tokens:,} tokens; losses then also measure memorisation. Use more "
                "data (data.source, data.max_corpus_mb) or fewer steps."
            )
        return out

    def to_dict(self) -> dict[str, float | int]:
        """Counts and ratios, for report.json and MLflow metrics."""
        return {
            "params_total": self.params_total,
            "params_non_embedding": self.params_non_embedding,
            "tokens_trained": self.tokens_trained,
            "train_tokens": self.train_tokens,
            "tokens_per_param": self.tokens_per_param,
            "epochs": self.epochs,
            "paper_tokens_per_param": PAPER_TOKENS_PER_PARAM,
            "compute_optimal_tokens_per_param": COMPUTE_OPTIMAL_TOKENS_PER_PARAM,
        }

    def to_params(self) -> dict[str, str]:
        """The MLflow parent-run params (see :data:`REGIME_PARAMS`), ratios included for the
        UI's columns."""
        out = {f"{_PREFIX}{k}": str(getattr(self, k)) for k in REGIME_PARAMS}
        out[f"{_PREFIX}tokens_per_param"] = f"{self.tokens_per_param:.4g}"
        out[f"{_PREFIX}epochs"] = f"{self.epochs:.4g}"
        return out

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> Regime | None:
        """Read back :meth:`to_params`; ``None`` for a study recorded without them."""
        try:
            return cls(**{k: int(params[f"{_PREFIX}{k}"]) for k in REGIME_PARAMS})
        except (KeyError, ValueError):
            return None

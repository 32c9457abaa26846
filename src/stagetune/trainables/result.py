"""How a training run ended (:class:`TrainResult`): what the launcher hands back, whether the
loop ran in this process or on Ray Train workers.

Its own module, apart from the loop: a Tune trial that drives a multi-worker Ray Train run
reads its result here without importing the loop and, through it, the model families (their
Hugging Face imports cost seconds per trial process).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from stagetune.metrics import EVAL_LOSS, FLOPS, FLOPS_PAPER

__all__ = ["TrainResult"]


@dataclass(frozen=True, kw_only=True)
class TrainResult:
    """How a run ended."""

    status: str
    final_eval_loss: float
    flops: float
    flops_paper: float
    tokens: int
    seconds: float
    steps: int
    resumed_from_step: int | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, record: dict[str, Any], *, resumed_from_step: int | None) -> TrainResult:
        """The result a run's last metric record describes (``failed`` without a status)."""
        return cls(
            status=str(record.get("status", "failed")),
            final_eval_loss=float(record.get(EVAL_LOSS, float("nan"))),
            flops=float(record.get(FLOPS, 0.0)),
            flops_paper=float(record.get(FLOPS_PAPER, 0.0)),
            tokens=int(record.get("tokens", 0)),
            seconds=float(record.get("seconds", 0.0)),
            steps=int(record.get("step", 0)),
            resumed_from_step=resumed_from_step,
        )

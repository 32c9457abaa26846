"""OptunaSearch that tolerates a resumed Tune experiment being behind its Optuna storage.

Tune snapshots its experiment state every few seconds, Optuna's RDB storage commits at once.
After a driver crash, Tune may resume a trial that Optuna already recorded as finished;
stock ``OptunaSearch`` then raises ``UpdateFinishedTrialError`` on the next report and takes
the whole search down. Here those reports are ignored: Optuna already holds the outcome.
"""

from __future__ import annotations

import logging
from typing import Any

from optuna.exceptions import UpdateFinishedTrialError
from ray.tune.search.optuna import OptunaSearch

__all__ = ["ResumableOptunaSearch"]

log = logging.getLogger(__name__)


class ResumableOptunaSearch(OptunaSearch):
    """``OptunaSearch`` whose result/complete hooks skip trials Optuna already finished."""

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        try:
            super().on_trial_result(trial_id, result)
        except UpdateFinishedTrialError:
            log.info("trial %s is already finished in the Optuna study; report ignored", trial_id)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        try:
            super().on_trial_complete(trial_id, result=result, error=error)
        except UpdateFinishedTrialError:
            log.info("trial %s is already finished in the Optuna study", trial_id)

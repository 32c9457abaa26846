"""A study read back from MLflow: its trials, tags, curves and status; refused stores and names.

The study of :mod:`tests.results.helpers`, logged through MlflowTracker into SQLite.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from stagetune.errors import ConfigError, StagetuneError
from stagetune.results import load_study
from stagetune.results.loading import StudyResults
from tests.results.helpers import E12, EXPERIMENT, STUDY, TRIALS, trial


def test_load_study_curves(results: StudyResults) -> None:
    assert results.study_name == STUDY
    assert len(results.trials) == len(TRIALS)
    assert {t.trial_id for t in results.baselines} == {"base_0", "base_1"}
    fast0 = results.trial("fast_0")
    assert fast0.status == "finished" and fast0.seed == "0" and fast0.label == "S2 fast"
    c, loss = fast0.curve.eval_points()
    assert list(c / E12) == pytest.approx([20, 40, 60, 80, 100])
    assert list(loss) == pytest.approx([3.9, 3.4, 3.1, 2.9, 2.8])
    assert list(fast0.curve.tokens) == [20_000, 40_000, 60_000, 80_000, 100_000]
    assert fast0.curve.stage_boundaries() == [(60 * E12, 2), (100 * E12, 3)]
    div = results.trial("div_0")
    assert div.status == "diverged"
    assert div.curve.train_loss[-1] == float("inf")  # MLflow stores +inf as max float
    assert div.curve.total_compute() == 50 * E12
    assert results.trial("slow_0").status == "stopped"


def test_unknown_experiment_lists_existing(store: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as err:
        load_study(store["uri"], "nope")
    msg = str(err.value)
    assert "\n" not in msg and "nope" in msg
    assert EXPERIMENT in msg and "no-baseline" in msg


def test_study_without_baseline(store: dict[str, Any]) -> None:
    with pytest.raises(StagetuneError, match=r"'nb'.*no baseline run \(tag stagetune.is_baseline"):
        load_study(store["uri"], "no-baseline")


def test_unreachable_stores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    from stagetune.results.ui import free_port

    with pytest.raises(ConfigError, match="MLflow is unreachable") as err:
        load_study(f"http://127.0.0.1:{free_port()}", EXPERIMENT)
    assert "\n" not in str(err.value)
    missing = tmp_path / "typo.db"
    with pytest.raises(ConfigError, match="no MLflow database"):
        load_study(f"sqlite:///{missing}", EXPERIMENT)
    assert not missing.exists()  # a reader never creates a store


def test_a_finished_study_is_not_partial(results: StudyResults) -> None:
    assert results.parent_status == "finished" and not results.partial


def test_stage_boundaries() -> None:
    t = trial("a", "a", "0", [20, 40, 60, 80], [4, 3.5, 3.2, 3.0], stage=[1, 1, 2, 3])
    assert t.curve.stage_boundaries() == [(60.0, 2), (80.0, 3)]

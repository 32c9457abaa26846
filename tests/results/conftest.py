"""Fixtures of the results tests: the study of :mod:`tests.results.helpers`, logged to SQLite.

Module-scoped: a test module may add to the store (a report logged to the parent run), so
each module starts from the study as logged.
"""

from __future__ import annotations

from typing import Any

import pytest

from stagetune.results import StudyResults, load_study
from tests.results.helpers import EXPERIMENT, log_study


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return log_study(tmp_path_factory.mktemp("study"))


@pytest.fixture(scope="module")
def results(store: dict[str, Any]) -> StudyResults:
    return load_study(store["uri"], EXPERIMENT)

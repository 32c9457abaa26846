"""Fixtures of the tracking tests: fresh SQLite stores, fast failures against a dead server."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient


@pytest.fixture(scope="module")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An initialised empty MLflow DB: copying it skips MLflow's schema migrations per test."""
    db = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def uri(tmp_path: Path, template_db: Path) -> str:
    db = tmp_path / "work" / "mlflow.db"
    db.parent.mkdir()
    shutil.copy(template_db, db)
    return f"sqlite:///{db}"


@pytest.fixture
def fast_http_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    # What the tracker would set itself; set here so the test process gets them back after.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")

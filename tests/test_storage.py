"""What a new study's work directory may hold (read-only checks; no study is run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stagetune.errors import ConfigError
from stagetune.orchestration.lock import LOCK_FILE
from stagetune.orchestration.storage import StudyPaths, check_fresh_workdir


def test_what_stagetune_leaves_behind_is_no_study(tmp_path: Path) -> None:
    """A stale lock, ``train`` runs, Tune results or a spool of an unfinished start are fine."""
    paths = StudyPaths(tmp_path)
    (tmp_path / LOCK_FILE).write_text("{}")
    for d in ("train", "ray_results", "mlflow_spool", "report"):
        (tmp_path / d).mkdir()
    check_fresh_workdir(paths)
    check_fresh_workdir(StudyPaths(tmp_path / "missing"))


@pytest.mark.parametrize(
    ("files", "held"),
    [
        ({"study.json": json.dumps({"name": "L4"}), "optuna.db": ""}, "holds study 'L4'"),
        ({"study.json": '{"name": "tor'}, "holds a study (study.json)"),
        ({"optuna.db": "", "notes.txt": "x"}, "holds a study (optuna.db)"),
        ({"mlflow.db": ""}, "holds a study (mlflow.db)"),
        ({"notes.txt": "x"}, "not empty (notes.txt) and holds no study"),
    ],
)
def test_a_study_or_foreign_files_are_refused(
    tmp_path: Path, files: dict[str, str], held: str
) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match=r"^workdir=") as err:
        check_fresh_workdir(StudyPaths(tmp_path))
    assert held in str(err.value)

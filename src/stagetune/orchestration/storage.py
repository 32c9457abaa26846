"""The study's work directory: its layout, and checks that it is usable before anything starts."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from stagetune.errors import ConfigError
from stagetune.orchestration.library_logs import LIBRARY_LOG
from stagetune.orchestration.lock import LOCK_FILE

__all__ = [
    "MIN_FREE_BYTES",
    "MLFLOW_DB",
    "MODELS_DIR",
    "TRAIN_DIR",
    "StudyPaths",
    "check_fresh_workdir",
    "check_own_directory",
    "check_writable",
]

MIN_FREE_BYTES = 64 * 1024 * 1024
"""Refuse a work directory with less free space than this: a search writes checkpoints."""
MLFLOW_DB: Final = "mlflow.db"
"""The default MLflow store of a study (``sqlite:///<workdir>/mlflow.db``)."""
MLFLOW_ARTIFACTS: Final = "mlartifacts"
"""Artifacts of the default store, beside it (see ``results.store.artifact_location``)."""
MODELS_DIR: Final = "models"
"""Under the work directory: a finished study's exported models (:mod:`.study_models`)."""
TRAIN_DIR: Final = "train"
"""Where ``stagetune train`` writes without ``--out`` (``<workdir>/train/<name>``)."""
_SQLITE_SIDE_FILES: Final = ("-journal", "-wal", "-shm")
_SHOWN_NAMES: Final = 3


@dataclass(frozen=True)
class StudyPaths:
    """Where a study keeps its state (all under ``workdir``)."""

    workdir: Path

    @property
    def study_file(self) -> Path:
        """The study's config as first run; ``--resume`` reads it."""
        return self.workdir / "study.json"

    @property
    def optuna_db(self) -> Path:
        return self.workdir / "optuna.db"

    @property
    def optuna_url(self) -> str:
        return f"sqlite:///{self.optuna_db}"

    @property
    def ray_storage(self) -> Path:
        return self.workdir / "ray_results"

    @property
    def train_storage(self) -> Path:
        return self.workdir / "ray_train"

    @property
    def spool_dir(self) -> Path:
        """Metrics MLflow could not take yet (delivered by ``report --sync`` / ``--resume``)."""
        return self.workdir / "mlflow_spool"

    @property
    def report_dir(self) -> Path:
        return self.workdir / "report"

    @property
    def study_markers(self) -> tuple[Path, ...]:
        """Files whose presence means the directory holds a study (config or a store of one)."""
        return (self.study_file, self.optuna_db, self.workdir / MLFLOW_DB)

    @property
    def own_names(self) -> frozenset[str]:
        """Names of everything stagetune itself creates in a work directory."""
        made = (
            self.ray_storage,
            self.train_storage,
            self.spool_dir,
            self.report_dir,
            self.workdir / MODELS_DIR,
            self.workdir / LIBRARY_LOG,
        )
        return frozenset(
            {p.name for p in (*self.study_markers, *made)}
            | {self.study_file.with_suffix(".tmp").name, MLFLOW_ARTIFACTS, TRAIN_DIR, LOCK_FILE}
            | {m.name + s for m in self.study_markers for s in _SQLITE_SIDE_FILES}
        )

    def save_study(self, config: dict[str, Any]) -> None:
        tmp = self.study_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(config, indent=1, sort_keys=True))
        os.replace(tmp, self.study_file)

    def load_study(self) -> dict[str, Any]:
        if not self.study_file.is_file():
            raise ConfigError(
                "--resume",
                str(self.workdir),
                "no study in this work directory; run 'stagetune run' without --resume first "
                "or pass the --workdir of an earlier run",
            )
        try:
            data = json.loads(self.study_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(
                "--resume",
                str(self.study_file),
                f"the study file is unreadable ({exc}); restore it or start a new study "
                "in another --workdir",
            ) from None
        if not isinstance(data, dict):
            raise ConfigError(
                "--resume",
                str(self.study_file),
                "the study file holds no config mapping; start a new study in another --workdir",
            )
        return data


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists():
        if p.parent == p:
            break
        p = p.parent
    return p


_REASONS = {
    errno.ENOSPC: "the file system is full",
    errno.EROFS: "the file system is read-only",
    errno.EPERM: "writing is not permitted there (an immutable directory?)",
    errno.EACCES: "permission denied",
    errno.ENOTDIR: "a part of the path is a file",
    errno.EDQUOT: "the disk quota is exhausted",
}


def check_writable(path: Path, field: str, *, min_free: int = MIN_FREE_BYTES) -> None:
    """Refuse ``path`` unless it (or the ancestor it would be created in) is a writable
    directory with room; creates nothing."""
    base = _nearest_existing(path)
    if not base.is_dir():
        raise ConfigError(
            field, str(path), f"{base} is a file, not a directory; choose another path"
        )
    # os.access can lie (root ignores permission bits) and cannot say why: a probe file can.
    try:
        fd, probe = tempfile.mkstemp(prefix=".stagetune-probe-", dir=base)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = _REASONS.get(exc.errno or 0) or exc.strerror or str(exc)
        raise ConfigError(
            field, str(path), f"{base} is not writable ({reason}); choose another path"
        ) from None
    free = shutil.disk_usage(base).free
    if free < min_free:
        raise ConfigError(
            field,
            str(path),
            f"only {free // (1024 * 1024)} MiB free in {base} (need {min_free // (1024 * 1024)} MiB); "
            "free space or choose another path",
        )


def check_own_directory(path: Path, field: str) -> None:
    """Refuse the root, a top-level directory (``/usr``, ``/etc``, ``/tmp``, ``/home``...) and
    the home directory or its ancestors: stagetune fills the directory with its own files."""
    p = path.expanduser().resolve()
    try:
        home: Path | None = Path.home().resolve()
    except (RuntimeError, KeyError):  # no HOME and no passwd entry
        home = None
    if p.parent == p:
        what = "the root directory"
    elif home is not None and p == home:
        what = "your home directory"
    elif p.parent.parent == p.parent:
        what = "a top-level system directory"
    elif home is not None and p in home.parents:
        what = "an ancestor of your home directory"
    else:
        return
    example = (home or Path("/srv/me")) / "stagetune-work"
    raise ConfigError(
        field,
        str(path),
        f"{p} is {what}; stagetune fills the directory with its own files (and you may want to "
        f"delete it later), so give it one of its own, e.g. {example}",
    )


def _held_study(paths: StudyPaths) -> str | None:
    """'study NAME' (or 'a study (FILES)') when the directory holds one, else ``None``."""
    held = [p.name for p in paths.study_markers if p.exists()]
    if not held:
        return None
    with contextlib.suppress(OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        name = json.loads(paths.study_file.read_text(encoding="utf-8")).get("name")
        if isinstance(name, str) and name:
            return f"study {name!r}"
    return f"a study ({', '.join(held)})"


def check_fresh_workdir(paths: StudyPaths, field: str = "workdir") -> None:
    """Refuse a work directory for a new study unless it is missing, empty, or holds only
    what stagetune itself leaves there (a stale lock, ``train/`` runs); reads only."""
    if not paths.workdir.is_dir():
        return  # created later; a file in the way is check_writable's to refuse
    try:
        names = sorted(e.name for e in paths.workdir.iterdir())
    except OSError:
        return  # unreadable: check_writable says why
    study = _held_study(paths)
    if study is not None:
        raise ConfigError(
            field,
            str(paths.workdir),
            f"holds {study}; continue it with --resume or choose another --workdir",
        )
    foreign = [n for n in names if n not in paths.own_names]
    if foreign:
        shown = ", ".join(foreign[:_SHOWN_NAMES]) + (", ..." if len(foreign) > _SHOWN_NAMES else "")
        raise ConfigError(
            field,
            str(paths.workdir),
            f"the directory is not empty ({shown}) and holds no study; choose an empty or "
            "new --workdir",
        )

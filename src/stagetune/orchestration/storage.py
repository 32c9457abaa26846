"""The study's work directory: its layout, and checks that it is usable before anything starts."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stagetune.errors import ConfigError

__all__ = ["MIN_FREE_BYTES", "StudyPaths", "check_writable"]

MIN_FREE_BYTES = 64 * 1024 * 1024
"""Refuse a work directory with less free space than this: a search writes checkpoints."""


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

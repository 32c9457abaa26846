"""Library start-up chatter goes to a log file in the work directory, not the terminal.

Ray warns about token authentication on every local start, MLflow announces the tables it
creates in a new SQLite store, alembic the migrations it runs, and Optuna that a study was
created and then found again. None of it needs the user's attention, and seven lines of it
before the first progress line hide what does; it is kept in ``<workdir>/stagetune.log``. Every
other message of these libraries (their warnings about real problems) still reaches stderr.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Final

__all__ = ["LIBRARY_LOG", "QUIET_LOGGERS", "route_library_logs"]

LIBRARY_LOG: Final = "stagetune.log"
"""The log file under the work directory."""
QUIET_LOGGERS: Final = (
    "ray._private.authentication",  # "Token authentication is disabled/enabled ..."
    "mlflow.store.db.utils",  # "Creating initial MLflow database tables ..."
    "alembic",  # "Context impl SQLiteImpl", "Will assume non-transactional DDL"
    "optuna.study.study",  # "A new study created in RDB with name ..."
    "optuna.storages",  # "Using an existing study with name ..."
)
"""Loggers whose records go to the log file only."""


class _FileInWorkdir(logging.FileHandler):
    """A log file opened at its first record, its directory made then: a command refused
    before it starts leaves nothing behind."""

    def _open(self):  # type: ignore[no-untyped-def]
        Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        return super()._open()


def route_library_logs(workdir: Path) -> Path:
    """Send :data:`QUIET_LOGGERS` to ``workdir/stagetune.log`` (idempotent); returns its path."""
    path = (Path(workdir).expanduser() / LIBRARY_LOG).resolve()
    for name in QUIET_LOGGERS:
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if isinstance(h, _FileInWorkdir)]:
            logger.removeHandler(old)
            old.close()
        handler = _FileInWorkdir(path, delay=True, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return path

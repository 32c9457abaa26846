"""The spool: tracking events MLflow could not take yet, kept in JSONL files until delivered.

One file per key: ``<trial_id>.jsonl`` for a trial's events, ``_study.jsonl`` for the study's
(trial ids never start with ``_``). Each event is appended and fsynced on its own, since the spool
exists to survive crashes; an artifact upload keeps copies of its files (``<key>.files/``), as
the caller may delete them before MLflow is back. Events MLflow refused go to
``<key>.rejected.jsonl`` and are never replayed. This module only keeps the files:
:mod:`~stagetune.results.tracking.delivery` decides what to spool and delivers it, in order.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import uuid
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

__all__ = ["STUDY_KEY", "Op", "Spool"]

_log = logging.getLogger(__name__)

STUDY_KEY: Final = "_study"
"""The key of study-level events (trial ids never start with ``_``)."""
_EVENTS: Final = ".jsonl"
_REJECTED: Final = ".rejected"
_FILES: Final = ".files"


class Op(StrEnum):
    """What an event does (its ``op``): the tracker writes events, the spool keeps them (as
    plain strings), :class:`~stagetune.results.tracking.runs.MlflowRuns` applies them."""

    START_STUDY = "start_study"
    END_STUDY = "end_study"
    START_TRIAL = "start_trial"
    REPORT = "report"
    END_TRIAL = "end_trial"
    ARTIFACTS = "artifacts"
    """An upload of files: they are copied into the spool with the event."""


class Spool:
    """The spooled events of one tracker, under ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def path(self, key: str) -> Path:
        """The file that holds the events spooled under ``key``."""
        return self.directory / f"{key}{_EVENTS}"

    def has(self, key: str) -> bool:
        """Events wait under ``key``."""
        return self.path(key).exists()

    def append(self, key: str, event: dict[str, Any]) -> None:
        """Spool ``event`` after the others of ``key`` (an upload with copies of its files)."""
        if event["op"] == Op.ARTIFACTS and not event.get("spooled_copy"):
            # The caller may delete its files before MLflow is back: keep copies.
            dest = self.directory / f"{key}{_FILES}" / uuid.uuid4().hex
            dest.mkdir(parents=True, exist_ok=True)
            copies = []
            for f in event["files"]:
                src = Path(f)
                target = dest / src.name
                if src.is_dir():
                    shutil.copytree(src, target)
                elif src.is_file():
                    shutil.copy2(src, target)
                else:
                    continue
                copies.append(str(target))
            event = {**event, "files": copies, "spooled_copy": str(dest)}
        self._append(self.path(key), event)

    def reject(self, key: str, event: dict[str, Any], reason: str) -> None:
        """Keep an event MLflow refused, with ``reason``, where it is never replayed."""
        self._append(self.directory / f"{key}{_REJECTED}{_EVENTS}", {**event, "error": reason})

    def read(self, key: str) -> list[dict[str, Any]]:
        """The events of ``key`` in the order they were spooled (none if there is no file)."""
        return self._read(self.path(key))

    def keep(self, key: str, events: list[dict[str, Any]]) -> None:
        """Replace the events of ``key`` by ``events`` (those still to deliver), atomically."""
        path = self.path(key)
        tmp = path.with_suffix(f"{_EVENTS}.tmp")
        tmp.write_text("".join(json.dumps(e) + "\n" for e in events), encoding="utf-8")
        os.replace(tmp, path)

    def clear(self, key: str) -> None:
        """Forget the events of ``key``: all delivered (its file copies went with them)."""
        self.path(key).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            (self.directory / f"{key}{_FILES}").rmdir()  # only if empty

    def trial_keys(self) -> list[str]:
        """The keys of trials with spooled events, in name order."""
        if not self.directory.is_dir():
            return []
        names = (p.name[: -len(_EVENTS)] for p in sorted(self.directory.glob(f"*{_EVENTS}")))
        return [k for k in names if k != STUDY_KEY and not k.endswith(_REJECTED)]

    def pending(self) -> int:
        """Number of spooled events waiting for delivery."""
        if not self.directory.is_dir():
            return 0
        total = 0
        for path in self.directory.glob(f"*{_EVENTS}"):
            if not path.name.endswith(f"{_REJECTED}{_EVENTS}"):
                total += len(self._read(path))
        return total

    def open_trials(self) -> set[str]:
        """Trials whose spooled start has no spooled end after it."""
        open_ids = set()
        for key in self.trial_keys():
            ops = [e.get("op") for e in self.read(key)]
            if Op.START_TRIAL in ops and Op.END_TRIAL not in ops[ops.index(Op.START_TRIAL) :]:
                open_ids.add(key)
        return open_ids

    @staticmethod
    def _append(path: Path, event: dict[str, Any]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(event, allow_nan=True) + "\n"
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())  # the spool exists to survive crashes

    @staticmethod
    def _read(path: Path) -> list[dict[str, Any]]:
        events = []
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                # A torn last line from a crash mid-write: nothing recoverable in it.
                _log.warning("skipping a corrupt line in %s", path)
        return events

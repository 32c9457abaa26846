"""A full disk in the middle of a run: recognising it, and naming the file system that filled up.

A full file system reaches the driver in many shapes: ``OSError`` ENOSPC/EDQUOT from a write,
SQLite's "database or disk is full" wrapped by SQLAlchemy, Optuna or MLflow, a trial's
``RayTaskError`` around the worker's ``OSError``, or a ``TuneError`` that carries the original
traceback only as text. :func:`disk_full_in` sees through all of them; :func:`first_full` asks
the file systems themselves (``statvfs``), so a study can stop before its writes start failing.
A component that meets a full disk and carries on (the searcher, the tracker) says so with
:func:`report_full`; the running study, :func:`listening`, stops at its next safe point.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = [
    "MIN_FREE_RUNNING",
    "DiskFull",
    "disk_full_in",
    "first_full",
    "listening",
    "mount_point",
    "report_full",
]

MIN_FREE_RUNNING: Final = 1024 * 1024
"""A running study stops when a file system it writes to has less free space than this: the
statuses that mark the stop still fit, a checkpoint no longer would."""

_ERRNOS: Final = frozenset({errno.ENOSPC, errno.EDQUOT})
_PHRASES: Final = (
    os.strerror(errno.ENOSPC),  # "No space left on device"
    os.strerror(errno.EDQUOT),
    "database or disk is full",  # SQLITE_FULL, as sqlite3 words it
)
_MAX_CHAIN: Final = 32


@dataclass(frozen=True)
class DiskFull:
    """A write failed, or would fail, for lack of space."""

    path: Path | None
    """What could not be written (a file or a watched directory); ``None`` when the error did
    not say (SQLite names no file)."""

    def located(self, watched: Iterable[Path]) -> DiskFull:
        """This event with a path: its own, else the first of ``watched`` that is full, else
        the first of ``watched``."""
        if self.path is not None:
            return self
        candidates = list(watched)
        full = first_full(candidates)
        if full is not None:
            return full
        return DiskFull(candidates[0] if candidates else None)

    def describe(self) -> str:
        """``"no space left on /mnt (writing to /mnt/work/optuna.db)"``."""
        if self.path is None:
            return "no space left on the device"
        mount = mount_point(self.path)
        if mount == self.path:
            return f"no space left on {mount}"
        return f"no space left on {mount} (writing to {self.path})"

    def error(self) -> OSError:
        """The event as the ``OSError`` (ENOSPC) a failed write raises."""
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path or ""))


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def mount_point(path: Path) -> Path:
    """The mount point of the file system holding ``path`` (or its nearest existing parent)."""
    p = _nearest_existing(Path(path).absolute())
    try:
        dev = p.stat().st_dev
        while p.parent != p and p.parent.stat().st_dev == dev:
            p = p.parent
    except OSError:
        pass
    return p


def first_full(paths: Iterable[Path], *, min_free: int = MIN_FREE_RUNNING) -> DiskFull | None:
    """The first of ``paths`` whose file system has less than ``min_free`` bytes free."""
    for path in paths:
        try:
            st = os.statvfs(_nearest_existing(Path(path)))
        except OSError:
            continue
        if st.f_bavail * st.f_frsize < min_free:
            return DiskFull(Path(path))
    return None


def disk_full_in(exc: BaseException | None) -> DiskFull | None:
    """The full disk behind ``exc`` (following causes, contexts and Ray's wrapped causes),
    or ``None`` when it is some other error."""
    seen: set[int] = set()
    todo = [exc]
    while todo and len(seen) < _MAX_CHAIN:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _ERRNOS:
            name = e.filename if isinstance(e.filename, (str, os.PathLike)) else None
            return DiskFull(Path(name) if name else None)
        if any(p in str(e) for p in _PHRASES):
            return DiskFull(None)
        cause = getattr(e, "cause", None)  # ray.exceptions.RayTaskError keeps the worker's error
        todo += [e.__cause__, e.__context__, cause if isinstance(cause, BaseException) else None]
    return None


_listeners: list[Callable[[DiskFull], object]] = []


@contextlib.contextmanager
def listening(callback: Callable[[DiskFull], object]) -> Iterator[None]:
    """Call ``callback`` for every full disk :func:`report_full` hears of while inside."""
    _listeners.append(callback)
    try:
        yield
    finally:
        _listeners.remove(callback)


def report_full(event: DiskFull) -> None:
    """Tell the running study that a write failed for lack of space (the writer carries on:
    the study stops at its next safe point)."""
    for callback in list(_listeners):
        callback(event)

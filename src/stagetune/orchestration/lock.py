"""An exclusive lock on a directory, held by one stagetune process for its whole life.

A study's driver (``stagetune run``, fresh or ``--resume``) holds it on its work directory and
``stagetune train`` on its ``--out`` directory, so two of them never write into the same
stores. ``report`` and ``ui`` only read and take no lock.

The lock is an OS lock, ``fcntl.flock`` on ``<dir>/.stagetune.lock``: the kernel drops it when
its holder dies, however it dies (SIGKILL included). The same file holds a JSON record of the
holder (pid, host, since when, command), read to name the holder in a refusal and to say that
a lock left behind by a dead holder (*stale*: the record is there, the OS lock is not) was
taken over.

Other hosts: on NFS, Linux implements ``flock`` with the server's byte-range locks, so a
holder on another host that shares the directory is seen too. Its pid cannot be checked from
here, so the OS lock alone decides: a lock is stale exactly when ``flock`` says it is free,
never because a recorded pid looks dead. (An NFS mount with ``nolock`` keeps locks local to
each host; stagetune cannot see a holder elsewhere there.) A file system that refuses locks
(``ENOLCK``) is refused with one line.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Final

from stagetune.errors import ConfigError

__all__ = ["LOCK_FILE", "DirectoryLock", "Holder", "check_unlocked"]

LOCK_FILE: Final = ".stagetune.lock"
"""The lock file in the locked directory (left behind only by a holder that died)."""
_RECORD_MAX: Final = 4096
_ATTEMPTS: Final = 5
"""Tries when a releasing holder removes the lock file between our open and our flock."""


@dataclass(frozen=True)
class Holder:
    """Who holds (or held) a directory's lock."""

    pid: int
    host: str
    since: str
    """When it took the lock: ISO 8601, local time with its UTC offset."""
    command: str

    @classmethod
    def me(cls, command: str) -> Holder:
        """This process, taking a lock now to run ``command``."""
        since = datetime.now().astimezone().isoformat(timespec="seconds")
        return cls(pid=os.getpid(), host=socket.gethostname(), since=since, command=command)

    def describe(self) -> str:
        """E.g. ``stagetune run (pid 12 on host h, since 2025-01-02T03:04:05+01:00)``."""
        return f"{self.command} (pid {self.pid} on host {self.host}, since {self.since})"

    def exited(self) -> bool:
        """True only when the pid is known to be gone: on this host and no such process."""
        if self.host != socket.gethostname():
            return False  # another host's pid cannot be checked from here
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # it exists, under another user
            return False
        return False


def _read_record(fd: int) -> Holder | None:
    try:
        data = json.loads(os.pread(fd, _RECORD_MAX, 0).decode("utf-8"))
        return Holder(
            pid=int(data["pid"]),
            host=str(data["host"]),
            since=str(data["since"]),
            command=str(data["command"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None  # empty (being written), torn or foreign: no holder to name


def _in_use(directory: Path, field: str, holder: Holder | None, lock_file: Path) -> ConfigError:
    if holder is None:
        who = "another process (it has not recorded who it is yet)"
    elif holder.exited():
        who = (
            f"{holder.describe()}, which has exited, but a process it started still holds the "
            f"lock (find it with 'fuser -v {lock_file}')"
        )
    else:
        who = holder.describe()
    return ConfigError(
        field,
        str(directory),
        f"in use by {who}; wait for it to end or stop it, or choose another directory",
    )


def _lock_error(directory: Path, field: str, exc: OSError) -> ConfigError:
    if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP):
        why = "its file system cannot lock files (NFS without a lock service?)"
    else:
        why = exc.strerror or str(exc)
    return ConfigError(
        field, str(directory), f"cannot lock {LOCK_FILE} there ({why}); choose another directory"
    )


def check_unlocked(directory: Path, *, field: str) -> None:
    """Refuse ``directory`` while a live process holds its lock; creates and changes nothing.

    Lets a command refuse a directory in use before it validates (and prepares) anything
    else; the lock itself is taken later by :class:`DirectoryLock`.
    """
    lock_file = directory / LOCK_FILE
    try:
        # Read-write: on NFS flock is a POSIX write lock, which needs a writable descriptor.
        fd = os.open(lock_file, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return  # no lock file (free), or a directory that the writability checks refuse
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _in_use(directory, field, _read_record(fd), lock_file) from None
    except OSError as exc:
        raise _lock_error(directory, field, exc) from None
    finally:
        os.close(fd)  # also drops the probe's own lock


class DirectoryLock:
    """Holds ``directory``'s lock from :meth:`acquire` (or ``with``) until :meth:`release`.

    Acquiring creates the directory if needed and refuses, with a :class:`ConfigError`
    naming the holder, when a live process holds it; a stale lock is taken over with one line
    on stderr (and kept in :attr:`previous`). Releasing removes the lock file, and the
    directories the lock created when nothing else was written into them.
    """

    def __init__(self, directory: Path, *, field: str, command: str) -> None:
        self.directory = directory
        self.field = field
        self.command = command
        self.previous: Holder | None = None
        """The dead holder whose stale lock was taken over, if any."""
        self._fd: int | None = None
        self._created: list[Path] = []

    @property
    def path(self) -> Path:
        """The lock file."""
        return self.directory / LOCK_FILE

    def acquire(self) -> DirectoryLock:
        """Take the lock (see the class); returns ``self``."""
        missing = []
        p = self.directory
        while not p.exists() and p.parent != p:
            missing.append(p)
            p = p.parent
        self.directory.mkdir(parents=True, exist_ok=True)
        self._created = missing  # innermost first: the order they can be removed in
        try:
            fd = self._lock()
        except BaseException:
            if missing:  # a directory of our own: the lock file in it is ours too
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
            self._remove_created()
            raise
        self.previous = _read_record(fd)
        record = json.dumps(asdict(Holder.me(self.command))).encode("utf-8")
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
        os.fsync(fd)
        self._fd = fd
        if self.previous is not None:
            print(
                f"stagetune: took over the stale lock of {self.directory} left by "
                f"{self.previous.describe()}: that process is gone",
                file=sys.stderr,
                flush=True,
            )
        return self

    def _lock(self) -> int:
        for _ in range(_ATTEMPTS):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_record(fd)
                os.close(fd)
                raise _in_use(self.directory, self.field, holder, self.path) from None
            except OSError as exc:
                os.close(fd)
                raise _lock_error(self.directory, self.field, exc) from None
            # A releasing holder unlinks the file before it lets go: the lock we got may be
            # on a file that is no longer the lock file. Then try again on the new one.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                return fd
            os.close(fd)
        raise ConfigError(
            self.field,
            str(self.directory),
            f"its lock file {LOCK_FILE} keeps being replaced; is another stagetune starting "
            "and stopping there? choose another directory",
        )

    def release(self) -> None:
        """Remove the lock file (while still holding it, so no one locks a removed file)."""
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self._fd)
        self._fd = None
        self._remove_created()

    def _remove_created(self) -> None:
        for d in self._created:
            try:
                d.rmdir()
            except OSError:  # something was written there: it stays
                break
        self._created = []

    def __enter__(self) -> DirectoryLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

"""Cache helpers shared by the data layer: stable hashing, atomic writes and a file lock.

Several Ray workers on one machine may prepare the same data at the same moment. Every cache
entry is therefore written to a private temporary file and renamed into place (``os.replace``
is atomic on POSIX), and its construction runs under an exclusive ``flock`` so that only one
process does the work while the others wait and then read the finished entry.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "file_lock", "stable_hash", "write_json_atomic"]

try:  # POSIX only; the project targets Linux/macOS (Ray).
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


def stable_hash(*parts: Any, length: int = 16) -> str:
    """A short hex digest of ``parts`` that is identical across processes and machines.

    ``hash()`` is salted per process, so it cannot key a cache shared by Ray workers; the parts
    are serialised as canonical JSON (``str`` for anything JSON does not know) and hashed.
    """
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:length]


@contextlib.contextmanager
def file_lock(target: Path) -> Iterator[None]:
    """Hold an exclusive lock associated with ``target`` (a ``<target>.lock`` file beside it).

    The OS releases ``flock`` locks when a process dies, so a crashed worker cannot leave the
    cache locked forever. On platforms without ``fcntl`` this is a no-op (atomic renames still
    prevent torn files; at worst two processes build the same entry).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.with_name(target.name + ".lock")
    with open(lock_path, "a+b") as handle:
        if fcntl is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success rename it onto ``target``.

    The temporary file lives in the same directory so the rename never crosses file systems
    (which would make it a non-atomic copy). On error the temporary file is removed.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_json_atomic(target: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str), encoding="utf-8")

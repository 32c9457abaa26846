"""Fault: the work directory (or Ray's storage, or the MLflow SQLite store) cannot be written.

Injection, as root-proof as possible (CI runs as root, and root ignores permission bits):

* a path below a regular *file* (ENOTDIR);
* a tiny ``tmpfs`` (``mount -t tmpfs -o size=1m``): too little free space; with
  ``nr_inodes=2`` it is full (ENOSPC); mounted ``ro`` it is read-only (EROFS);
* ``chattr +i``: an immutable directory (EPERM even for root);
* ``chmod 0500`` when the tests do not run as root.

Mounting needs CAP_SYS_ADMIN and ``chattr`` an ext2/3/4-like file system: where either is
missing the case is skipped with the reason. Every refusal happens before any trial starts:
exit code 2, one line naming the path and why, and nothing created.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stagetune.cli import main
from tests.faults.conftest import fast_args, tmpfs


@contextlib.contextmanager
def _immutable(where: Path) -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    if shutil.which("chattr") is None:
        pytest.skip("chattr is not installed")
    done = subprocess.run(["chattr", "+i", str(where)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"chattr +i is not supported here ({done.stderr.strip()})")
    try:
        yield where
    finally:
        subprocess.run(["chattr", "-i", str(where)], check=False)


def _under_a_file(tmp: Path) -> contextlib.AbstractContextManager[Path]:
    f = tmp / "a-file"
    f.write_text("not a directory")
    return contextlib.nullcontext(f)


def _small_fs(tmp: Path) -> contextlib.AbstractContextManager[Path]:
    return tmpfs(tmp / "small", "size=1m")


@contextlib.contextmanager
def _full_fs(tmp: Path) -> Iterator[Path]:
    with tmpfs(tmp / "full", "size=1m,nr_inodes=2") as where:
        # Use up the last inode and every block: nothing more can be created there.
        with open(where / "filler", "wb") as f, contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        yield where


def _read_only_fs(tmp: Path) -> contextlib.AbstractContextManager[Path]:
    return tmpfs(tmp / "ro", "ro,size=1m")


def _immutable_dir(tmp: Path) -> contextlib.AbstractContextManager[Path]:
    return _immutable(tmp / "immutable")


@contextlib.contextmanager
def _no_permission(tmp: Path) -> Iterator[Path]:
    if os.geteuid() == 0:
        pytest.skip("running as root: permission bits do not stop root (the other cases do)")
    d = tmp / "locked"
    d.mkdir()
    d.chmod(0o500)
    try:
        yield d
    finally:
        d.chmod(0o700)


# (how to make the unusable parent, the words the message must hold)
FAULTS: dict[str, tuple[Callable[[Path], contextlib.AbstractContextManager[Path]], str]] = {
    "under-a-file": (_under_a_file, "is a file, not a directory"),
    "too-little-space": (_small_fs, "MiB free in"),
    "full": (_full_fs, "the file system is full"),
    "read-only": (_read_only_fs, "the file system is read-only"),
    "immutable": (_immutable_dir, "not permitted"),
    "no-permission": (_no_permission, "not writable"),
}


def _refused(
    argv: list[str], capsys: pytest.CaptureFixture[str], field: str, path: Path, why: str
) -> None:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    line = lines[0]
    assert line.startswith(f"stagetune: error: {field}=") and str(path) in line and why in line


def _nothing_created(root: Path, *, allowed: set[Path]) -> None:
    made = {p for p in root.rglob("*") if p not in allowed}
    assert not made, sorted(made)


@pytest.mark.parametrize("fault", list(FAULTS))
def test_workdir_unusable_is_refused(
    fault: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make, why = FAULTS[fault]
    with make(tmp_path) as parent:
        before = set(tmp_path.rglob("*"))
        workdir = parent / "work"
        argv = ["run", "--workdir", str(workdir), "--trials", "2", *fast_args()]
        _refused(argv, capsys, "workdir", workdir, why)
        _nothing_created(tmp_path, allowed=before)


@pytest.mark.parametrize("fault", ["under-a-file", "full", "read-only", "immutable"])
def test_storage_path_unusable_is_refused(
    fault: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make, why = FAULTS[fault]
    with make(tmp_path) as parent:
        before = set(tmp_path.rglob("*"))
        storage = parent / "ray"
        workdir = tmp_path / "work"
        argv = ["run", "--workdir", str(workdir), *fast_args(f"resources.storage_path={storage}")]
        _refused(argv, capsys, "resources.storage_path", storage, why)
        _nothing_created(tmp_path, allowed=before)  # not even the (usable) work directory


@pytest.mark.parametrize("fault", ["under-a-file", "read-only"])
def test_mlflow_store_unusable_is_refused(
    fault: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make, why = FAULTS[fault]
    with make(tmp_path) as parent:
        before = set(tmp_path.rglob("*"))
        db = parent / "store" / "mlflow.db"
        argv = ["run", "--workdir", str(tmp_path / "work"), "--tracking-uri", f"sqlite:///{db}",
                *fast_args()]  # fmt: skip
        _refused(argv, capsys, "tracking.tracking_uri", db.parent, why)
        _nothing_created(tmp_path, allowed=before)


@pytest.mark.parametrize("fault", ["under-a-file", "read-only", "immutable"])
def test_train_out_unusable_is_refused(
    fault: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make, why = FAULTS[fault]
    with make(tmp_path) as parent:
        before = set(tmp_path.rglob("*"))
        out = parent / "out"
        _refused(["train", "--out", str(out), *fast_args()], capsys, "--out", out, why)
        _nothing_created(tmp_path, allowed=before)

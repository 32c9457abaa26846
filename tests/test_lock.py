"""The directory lock with real processes: a live holder is named, a SIGKILLed one's lock is
taken over, a holder on another host is judged by the OS lock alone, and ``train --out`` is
refused while another process holds the directory."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from stagetune.cli import main
from stagetune.errors import ConfigError
from stagetune.orchestration.lock import LOCK_FILE, DirectoryLock, check_unlocked
from tests.faults.conftest import fast_args

# argv: directory, mode ("plain", "fork": the holder forks and exits, its child keeps the
# lock; "elsewhere": the record names another host). Prints the pid that holds the lock.
HOLDER = """
import json, os, sys, time
from pathlib import Path
from stagetune.orchestration.lock import DirectoryLock

lock = DirectoryLock(Path(sys.argv[1]), field="workdir", command="test holder").acquire()
if sys.argv[2] == "elsewhere":
    record = json.loads(lock.path.read_text())
    lock.path.write_text(json.dumps({**record, "host": "elsewhere.example"}))
if sys.argv[2] == "fork" and os.fork() > 0:
    os._exit(0)
print(os.getpid(), flush=True)
time.sleep(600)
"""


class Holder:
    def __init__(self, directory: Path, mode: str = "plain") -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(directory), mode],
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.strip(), "the holder did not take the lock"
        self.pid = int(line)
        """The process that holds the lock now (the child, with ``fork``)."""

    def kill(self) -> None:
        """SIGKILL the holder's process group (a forked child included)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)


@pytest.fixture
def holder() -> Iterator[list[Holder]]:
    held: list[Holder] = []
    yield held
    for h in held:
        h.kill()


def _state(d: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p): (p.read_bytes(), p.stat().st_mtime_ns) for p in d.rglob("*") if p.is_file()}


def test_live_holder_is_named_and_nothing_changes(tmp_path: Path, holder: list[Holder]) -> None:
    d = tmp_path / "work"
    holder.append(h := Holder(d))
    (d / "keep.txt").write_text("x")
    before = _state(d)
    for attempt in (
        lambda: check_unlocked(d, field="workdir"),
        lambda: DirectoryLock(d, field="workdir", command="second").acquire(),
    ):
        with pytest.raises(ConfigError) as err:
            attempt()
        msg = str(err.value)
        assert f"pid {h.pid} on host {socket.gethostname()}" in msg and "in use by" in msg
        assert "test holder" in msg and "since " in msg and "exited" not in msg
    assert _state(d) == before


def test_sigkilled_holder_is_taken_over(
    tmp_path: Path, holder: list[Holder], capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "work"
    holder.append(h := Holder(d))
    h.kill()
    assert json.loads((d / LOCK_FILE).read_text())["pid"] == h.pid  # left behind
    check_unlocked(d, field="workdir")  # stale: not refused
    with DirectoryLock(d, field="workdir", command="me") as lock:
        assert lock.previous is not None and lock.previous.pid == h.pid
        assert json.loads((d / LOCK_FILE).read_text())["pid"] == os.getpid()
        with pytest.raises(ConfigError, match=f"pid {os.getpid()}"):
            DirectoryLock(d, field="workdir", command="again").acquire()  # same process too
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and f"pid {h.pid}" in lines[0] and "took over the stale lock" in lines[0]
    assert d.is_dir() and not (d / LOCK_FILE).exists()


def test_lock_kept_by_a_child_of_an_exited_holder(tmp_path: Path, holder: list[Holder]) -> None:
    d = tmp_path / "work"
    holder.append(h := Holder(d, "fork"))
    h.proc.wait(30)  # the recorded pid is gone (reaped); its child holds the lock
    with pytest.raises(ConfigError) as err:
        check_unlocked(d, field="workdir")
    assert f"pid {h.proc.pid} " in str(err.value)
    assert "has exited, but a process it started still holds the lock" in str(err.value)


def test_holder_on_another_host_is_judged_by_the_os_lock(
    tmp_path: Path, holder: list[Holder], capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "work"
    holder.append(h := Holder(d, "elsewhere"))
    with pytest.raises(ConfigError) as err:
        DirectoryLock(d, field="workdir", command="me").acquire()
    assert "on host elsewhere.example" in str(err.value) and "exited" not in str(err.value)
    h.kill()
    # Its pid cannot be checked from here, but flock says the lock is free: stale.
    with DirectoryLock(d, field="workdir", command="me") as lock:
        assert lock.previous is not None and lock.previous.host == "elsewhere.example"
    assert "elsewhere.example" in capsys.readouterr().err


def test_release_removes_what_the_lock_created(tmp_path: Path) -> None:
    d = tmp_path / "a" / "b"
    with DirectoryLock(d, field="workdir", command="me"):
        assert (d / LOCK_FILE).is_file()
    assert not (tmp_path / "a").exists()
    with DirectoryLock(d, field="workdir", command="me"):
        (d / "result.txt").write_text("kept")
    assert (d / "result.txt").is_file() and not (d / LOCK_FILE).exists()


def test_train_out_in_use_is_refused(
    tmp_path: Path, holder: list[Holder], capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    holder.append(h := Holder(out))
    before = _state(out)
    assert main(["train", "--out", str(out), "--resume", *fast_args()]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stagetune: error: --out=")
    assert f"pid {h.pid}" in lines[0]
    assert _state(out) == before

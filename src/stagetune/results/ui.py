"""Starting the MLflow UI (``mlflow server``) on a tracking store, and links into it.

The server binds to 127.0.0.1 unless told otherwise: a study's store may hold paths and
configs that should not be published to the network by default.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Final

from stagetune.errors import ConfigError, StagetuneError
from stagetune.results.store import is_http, sqlite_path

__all__ = ["UiServer", "experiment_url", "free_port", "start_ui"]

DEFAULT_PORT: Final = 5000


@dataclass
class UiServer:
    """A running ``mlflow server`` (``process`` is ``None`` when the URI already was a server)."""

    process: subprocess.Popen[bytes] | None
    url: str
    log_path: Path | None = None

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server and everything it spawned (it runs in its own process group)."""
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout)

    def __enter__(self) -> UiServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _family(host: str) -> socket.AddressFamily:
    """The address family of ``host``; refuses names that do not resolve."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise ConfigError(
            "ui.host",
            host,
            "not a resolvable address; use 127.0.0.1 (the default) or an address of this machine",
        ) from None
    return infos[0][0]


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(_family(host), socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                raise ConfigError(
                    "ui.host",
                    host,
                    "not an address of this machine; use 127.0.0.1 (the "
                    "default) or one of this machine's addresses",
                ) from None
            return True
    return False


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _tail(path: Path, n: int = 5) -> str:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip() for line in lines[-n:])


def start_ui(
    tracking_uri: str,
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    wait: bool = True,
    timeout: float = 90.0,
    log_path: Path | None = None,
    must_exist: bool = True,
) -> UiServer:
    """Start ``mlflow server --backend-store-uri <uri> --host <host> --port <port>``.

    Args:
        tracking_uri: the study's store; an ``http(s)://`` URI already is a server, so nothing
            is started and its URL is returned.
        host: interface to bind; loopback by default.
        port: TCP port; 0 picks a free one.
        wait: block until the server answers ``/health``.
        timeout: how long to wait for it.
        log_path: server output (default: ``mlflow-server.log`` beside a SQLite store, else a
            temporary file); a pipe nobody reads would eventually stall the server.
        must_exist: refuse a SQLite store that does not exist yet (a typo would otherwise
            open an empty UI); ``False`` serves a fresh store.

    Returns:
        The server handle with its ``url``; call ``stop()`` (or use it as a context manager).

    Raises:
        StagetuneError: port in use, server exited or did not answer in time.
    """
    if is_http(tracking_uri):
        return UiServer(process=None, url=tracking_uri.rstrip("/"))
    if not 0 <= port <= 65535:
        raise ConfigError("ui.port", port, "use a TCP port in 0-65535 (0: any free port)")
    if port == 0:
        _port_in_use(host, 0)  # refuses a host that is no address of this machine
        port = free_port(host)
    elif _port_in_use(host, port):
        raise ConfigError(
            "ui.port", port, f"port {port} on {host} is in use; pick another (0: any free)"
        )
    db = sqlite_path(tracking_uri)
    if db is not None and must_exist and not db.is_file():
        raise ConfigError(
            "tracking_uri", tracking_uri, f"no MLflow database at {db}; run a study first"
        )
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", tracking_uri,
           "--host", host, "--port", str(port), "--workers", "1"]  # fmt: skip
    if db is not None:
        # Artifacts of experiments created from the UI go beside the store, not into the cwd.
        cmd += ["--artifacts-destination", str(db.parent / "mlartifacts")]
    if log_path is None:
        if db is not None:
            log_path = db.parent / "mlflow-server.log"
        else:
            fd, name = tempfile.mkstemp(prefix="mlflow-server-", suffix=".log")
            os.close(fd)
            log_path = Path(name)
    env = dict(os.environ)
    # The GenAI job runners (7 huey processes) are of no use to a training study's UI.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    log: IO[bytes] = open(log_path, "ab")  # noqa: SIM115 - handed to the child process
    try:
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=str(db.parent) if db is not None else None,
            start_new_session=True,  # own process group: stop() reaches uvicorn's children
        )
    finally:
        log.close()
    display_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    server = UiServer(process=proc, url=f"http://{display_host}:{port}", log_path=log_path)
    if not wait:
        return server
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise StagetuneError(
                    f"mlflow server exited with code {proc.returncode}: {_tail(log_path)} "
                    f"(log: {log_path})"
                )
            if _answers(server.url):
                return server
            time.sleep(0.3)
    except BaseException:
        # Interrupted while waiting (Ctrl-C, SIGTERM): the server must not outlive us.
        server.stop()
        raise
    server.stop()
    raise StagetuneError(
        f"mlflow server did not answer at {server.url} within {timeout:.0f} s (log: {log_path})"
    )


def experiment_url(base_url: str, experiment_id: str) -> str:
    """Link to an experiment in the MLflow UI."""
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}"

"""Access to an MLflow tracking store: URI kinds, client construction, error classification.

MLflow's HTTP client retries a dead server for minutes by default (7 retries, exponential
backoff, 120 s timeouts). stagetune retries on its own terms (bounded, then spool), so for HTTP
stores it asks MLflow, through its environment variables, for a single attempt with a short
timeout; a user who sets those variables keeps theirs. They are process-wide.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from stagetune.errors import ConfigError

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

__all__ = [
    "artifact_location",
    "check_tracking_uri",
    "error_reason",
    "is_http",
    "is_permanent",
    "make_client",
    "search_all",
    "sqlite_path",
]

HTTP_RETRIES_ENV: Final = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"
HTTP_TIMEOUT_ENV: Final = "MLFLOW_HTTP_REQUEST_TIMEOUT"
SUPPRESS_URL_ENV: Final = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"
DEFAULT_HTTP_TIMEOUT_S: Final = 10
PROBE_TIMEOUT_S: Final = 5
"""How long :func:`check_tracking_uri` waits for a tracking server (one attempt, no retries)."""
_FIX_URI: Final = "use sqlite:///PATH/mlflow.db or http://HOST:PORT of a running MLflow server"

# Errors that say the request itself is wrong: retrying or spooling cannot make them succeed.
_PERMANENT_CODES: Final = frozenset(
    {
        "INVALID_PARAMETER_VALUE",
        "BAD_REQUEST",
        "INVALID_STATE",
        "RESOURCE_ALREADY_EXISTS",
        "RESOURCE_DOES_NOT_EXIST",
    }
)


def is_http(uri: str) -> bool:
    """True for a tracking server URI (``http://`` / ``https://``)."""
    return uri.startswith(("http://", "https://"))


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (``sqlite:////abs`` or ``sqlite:///rel``)."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return None
    rest = uri[len(prefix) :].split("?", 1)[0]
    if not rest or rest == ":memory:":
        return None
    return Path(rest).expanduser().resolve() if rest.startswith("/") else Path(rest).resolve()


def artifact_location(uri: str) -> str | None:
    """Where new experiments of a SQLite store keep artifacts: ``mlartifacts/`` beside the DB.

    MLflow's default for SQL stores is ``./mlruns`` relative to the *current directory*, which
    scatters artifacts wherever a command happens to run; ``None`` leaves servers their default.
    """
    db = sqlite_path(uri)
    return (db.parent / "mlartifacts").as_uri() if db is not None else None


def _bound_http_retries() -> None:
    os.environ.setdefault(HTTP_RETRIES_ENV, "0")
    os.environ.setdefault(HTTP_TIMEOUT_ENV, str(DEFAULT_HTTP_TIMEOUT_S))
    # Otherwise every finished trial prints two "View run ... at" lines into the driver's stdout
    # (and costs an extra GET): the UI link belongs in stagetune's own output.
    os.environ.setdefault(SUPPRESS_URL_ENV, "true")


def make_client(uri: str, *, must_exist: bool = False) -> MlflowClient:
    """An :class:`MlflowClient` for ``uri`` with bounded HTTP retries.

    Args:
        uri: tracking URI (``sqlite:///...``, ``http(s)://...``, ``file:...``).
        must_exist: for a SQLite URI, refuse a missing database file instead of letting MLflow
            create an empty one (readers must not conjure stores out of typos).
    """
    from mlflow.tracking import MlflowClient

    if is_http(uri):
        _bound_http_retries()
    db = sqlite_path(uri)
    if db is not None:
        if must_exist and not db.is_file():
            raise ConfigError(
                "tracking_uri",
                uri,
                f"no MLflow database at {db}; run a study first or pass the right tracking URI",
            )
        # SQLite creates the file but not its directory.
        db.parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri)


def search_all(client: MlflowClient, experiment_id: str, filter_string: str) -> list[Any]:
    """Every run of the experiment that matches ``filter_string``, page after page."""
    runs: list[Any] = []
    token = None
    while True:
        page = client.search_runs(
            [experiment_id], filter_string=filter_string, max_results=1000, page_token=token
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def is_permanent(exc: BaseException) -> bool:
    """True when MLflow rejected the request itself (bad value, missing run, ...).

    Everything else (connection refused, timeouts, 5xx, ``database is locked``) is treated as
    transient: worth retrying and, failing that, spooling.
    """
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException):
        return exc.error_code in _PERMANENT_CODES
    return isinstance(exc, (TypeError, ValueError, KeyError))


def error_reason(exc: BaseException) -> str:
    """The first line of an error, short enough for a one-line message."""
    return str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__


def _http_reason(exc: BaseException) -> str:
    """Why a request failed, from the causes MLflow wraps: refused, timed out, or its error."""
    import requests
    import urllib3.exceptions

    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or e in seen:
            continue
        seen.append(e)
        todo += [e.__cause__, e.__context__, getattr(e, "reason", None)]
        todo += [a for a in e.args if isinstance(a, BaseException)]
    # Before the timeouts: urllib3's connection errors are ConnectTimeoutError subclasses.
    for e in seen:
        if isinstance(e, urllib3.exceptions.NameResolutionError):
            return "the host name does not resolve"
        if isinstance(e, urllib3.exceptions.NewConnectionError):
            return f"cannot connect: {str(e).rsplit(': ', 1)[-1]}"
    if any(isinstance(e, (TimeoutError, requests.Timeout, urllib3.exceptions.TimeoutError))
           for e in seen):  # fmt: skip
        return f"no answer within {PROBE_TIMEOUT_S} s"
    return error_reason(exc)


@contextlib.contextmanager
def _one_short_attempt() -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in (HTTP_RETRIES_ENV, HTTP_TIMEOUT_ENV)}
    os.environ[HTTP_RETRIES_ENV] = "0"
    os.environ[HTTP_TIMEOUT_ENV] = str(PROBE_TIMEOUT_S)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def check_tracking_uri(uri: str, field: str = "tracking.tracking_uri") -> None:
    """Refuse a tracking URI MLflow cannot use, in seconds and without creating anything.

    A SQLite store is only checked to be a SQLite database when its file exists (the caller
    checks that its directory is writable); a tracking server must answer one request within
    :data:`PROBE_TIMEOUT_S`, whatever retries are configured for the study itself; a plain
    path or ``file:`` URI (a file store: MLflow 3 refuses those unless
    ``MLFLOW_ALLOW_FILE_STORE=true``) and unknown schemes are refused.
    Other database URIs (PostgreSQL, MySQL...) are opened the way the study will open them.
    """
    db = sqlite_path(uri)
    if db is not None:
        if db.is_file():
            try:
                with contextlib.closing(sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)) as c:
                    c.execute("select count(*) from sqlite_master").fetchone()
            except sqlite3.Error as exc:
                raise ConfigError(
                    field, uri, f"{db} is not a usable SQLite database ({exc}); {_FIX_URI}"
                ) from None
        return
    if uri.startswith("sqlite:"):
        raise ConfigError(field, uri, f"an in-memory store keeps nothing; {_FIX_URI}")
    from mlflow.environment_variables import MLFLOW_ALLOW_FILE_STORE
    from mlflow.utils.uri import get_uri_scheme, is_databricks_uri

    if get_uri_scheme(uri) in ("", "file") and not is_databricks_uri(uri):
        if MLFLOW_ALLOW_FILE_STORE.get():
            return  # the user opted in to MLflow's file store, which makes its own directory
        raise ConfigError(
            field,
            uri,
            "a path or file: URI means a file store, which MLflow 3 refuses (unless "
            f"MLFLOW_ALLOW_FILE_STORE=true); {_FIX_URI}",
        )
    if is_http(uri):
        try:
            with _one_short_attempt():
                make_client(uri).search_experiments(max_results=1)
        except Exception as exc:
            raise ConfigError(
                field,
                uri,
                f"no MLflow server answers there ({_http_reason(exc)}); start it or fix the URI",
            ) from None
        return
    try:
        make_client(uri)
    except Exception as exc:  # unknown scheme, a database that refuses: one line
        raise ConfigError(
            field, uri, f"MLflow cannot use it ({error_reason(exc)}); {_FIX_URI}"
        ) from None

"""Access to an MLflow tracking store: URI kinds, client construction, error classification.

MLflow's HTTP client retries a dead server for minutes by default (7 retries, exponential
backoff, 120 s timeouts). stagetune retries on its own terms (bounded, then spool), so for HTTP
stores it asks MLflow, through its environment variables, for a single attempt with a short
timeout; a user who sets those variables keeps theirs. They are process-wide.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Final

from stagetune.errors import ConfigError

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

__all__ = [
    "artifact_location",
    "is_http",
    "is_permanent",
    "make_client",
    "sqlite_path",
]

HTTP_RETRIES_ENV: Final = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"
HTTP_TIMEOUT_ENV: Final = "MLFLOW_HTTP_REQUEST_TIMEOUT"
SUPPRESS_URL_ENV: Final = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"
DEFAULT_HTTP_TIMEOUT_S: Final = 10

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


def is_permanent(exc: BaseException) -> bool:
    """True when MLflow rejected the request itself (bad value, missing run, ...).

    Everything else (connection refused, timeouts, 5xx, ``database is locked``) is treated as
    transient: worth retrying and, failing that, spooling.
    """
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException):
        return exc.error_code in _PERMANENT_CODES
    return isinstance(exc, (TypeError, ValueError, KeyError))

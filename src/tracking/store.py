"""Where runs go: the tracking URI, the SQLite store, reachability, the experiment, masked secrets.

mlflow is imported inside functions: config errors are reported before its ~2 s import.
"""

from __future__ import annotations

import os
import random
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlparse

from omegaconf import DictConfig, OmegaConf

from src.infra.errors import ConfigError
from src.infra.masking import mask_log_records, mask_uri  # their home; imported from here by tracking/ and its callers
from src.infra.network import bypass_proxy_for_loopback, is_loopback

T = TypeVar("T")


# `host:port[/path]` with no scheme: MLflow would take it for a local folder and quietly write there.
_NO_SCHEME = re.compile(r"^[A-Za-z0-9.-]+:\d+(/.*)?$")


def check_reachable(tracking_uri: str, timeout: float = 3.0, key: str = "mlflow.tracking_uri") -> None:
    """Fail within seconds, with a clear message, when a tracking server or PostgreSQL store does not
    answer or refuses the password, or when a server address lacks its scheme.

    MLflow itself retries a dead server with exponential backoff for minutes, and a database for as long.
    """
    if _NO_SCHEME.match(tracking_uri):
        raise ConfigError(
            f"{key}={mask_uri(tracking_uri)!r} has no scheme: write http://{mask_uri(tracking_uri)} "
            "for a tracking server (or sqlite:///path/mlflow.db, postgresql://user@host:port/db for a database)"
        )
    parsed = urlparse(tracking_uri)
    if parsed.scheme.split("+")[0] == "postgresql":
        check_postgres(tracking_uri, timeout, key)
        return
    if parsed.scheme not in ("http", "https"):
        return
    import socket

    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            pass
    except OSError as error:
        reason = getattr(error, "strerror", None) or type(error).__name__
        raise ConfigError(
            f"{key}={mask_uri(tracking_uri)!r}: no MLflow server answers there ({reason}); "
            "start one with `make server`, or unset MLFLOW_TRACKING_URI to use the local SQLite store"
        ) from None


def check_postgres(uri: str, timeout: float = 3.0, key: str = "mlflow.tracking_uri") -> None:
    """Connect once (psycopg, what SQLAlchemy uses for postgresql://) and name what is wrong in one line:
    the driver missing, nothing listening, or the password refused. The password is never printed."""
    parsed = urlparse(uri)
    where = f"{key}={mask_uri(uri)!r}"
    try:
        import psycopg
    except ImportError:
        raise ConfigError(
            f"{where}: the PostgreSQL driver is missing; install it with `pip install -e '.[postgres]'` "
            "(make install does)"
        ) from None
    conninfo = parsed._replace(scheme="postgresql").geturl()  # postgresql+psycopg:// is SQLAlchemy's spelling
    try:
        with psycopg.connect(conninfo, connect_timeout=max(1, round(timeout))):
            pass
    except psycopg.Error as error:
        message = str(error)
        if parsed.password:
            message = message.replace(parsed.password, "***")
        if "password authentication failed" in message or "no password supplied" in message:
            what = "refused the password" if "authentication failed" in message else "needs a password"
            raise ConfigError(
                f"{where}: PostgreSQL {what} of user {parsed.username!r}; fix it in the URI or "
                "in the password file (PGPASSFILE, ~/.pgpass; make db writes <DB_DIR>/pgpass)"
            ) from None
        if "Connection refused" in message or "timeout expired" in message or "could not translate" in message:
            reason = "connection refused" if "refused" in message else message.strip().splitlines()[-1].strip()
            raise ConfigError(
                f"{where}: no PostgreSQL answers at {parsed.hostname}:{parsed.port or 5432} ({reason}); "
                "start it (`make db` for the project's own) or fix the host and port"
            ) from None
        detail = " ".join(message.split())[-200:]
        raise ConfigError(f"{where}: cannot use the PostgreSQL store ({detail})") from None


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a `sqlite:///...` URI, else None.

    As SQLAlchemy reads it: `sqlite:///mlflow.db` is relative to the cwd, `sqlite:////abs/mlflow.db`
    absolute. (The URL path keeps one slash too many: an artifact location `//abs/...` would be read
    as a host name `abs` when MLflow loads a model from it.)
    """
    if not tracking_uri.startswith("sqlite:"):
        return None
    return Path(unquote(urlparse(tracking_uri).path)[1:])


def artifact_location(mlflow_cfg: DictConfig) -> str | None:
    """Where a new experiment keeps artifacts: the configured place, else `mlartifacts/` beside the
    SQLite file (MLflow's own default is relative to the cwd); None lets a tracking server decide."""
    if mlflow_cfg.artifact_location:
        return str(mlflow_cfg.artifact_location)
    database = sqlite_path(str(mlflow_cfg.tracking_uri))
    if database is None:
        return None
    folder = re.sub(r"[^A-Za-z0-9._-]+", "_", str(mlflow_cfg.experiment_name))
    return str(database.parent / "mlartifacts" / folder)


def _prepare_sqlite(database: Path) -> None:
    """Create the folder and switch the database to write-ahead logging, so that parallel sweep jobs
    (joblib launcher) read while another writes; MLflow already waits up to 20 s for a write lock.

    MLflow creates a new store's tables on its first connection, and two processes doing it at once
    collide ("table ... already exists"): the first connection is made under a lock, `<db>-lock`."""
    import sqlite3

    from mlflow import MlflowClient

    from src.infra.files import exclusive_lock

    try:
        database.parent.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(database.with_name(f"{database.name}-lock")):
            with sqlite3.connect(database, timeout=20) as connection:
                connection.execute("PRAGMA journal_mode=WAL")
            MlflowClient(f"sqlite:///{database}").search_experiments(max_results=1)  # creates the tables
    except (OSError, sqlite3.Error) as error:
        raise ConfigError(f"mlflow.tracking_uri: cannot open the SQLite store {database} ({error})") from None


def use_experiment(mlflow_cfg: DictConfig) -> str:
    """Point MLflow at the configured store and experiment (created if new); return the experiment id."""
    # MLflow's Keras callback logs each epoch asynchronously. By default its logging thread polls an
    # empty queue with a 1 s timeout, and every end_run waits for that poll to time out (~0.5 s per
    # job). With a buffer it waits on its stop event instead, ends at once, and writes a batch per
    # second rather than a transaction per call. The environment variable still wins.
    os.environ.setdefault("MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS", "1")
    # MLflow's usage telemetry phones home (no network on an air-gapped cluster) and its thread deletes an
    # environment variable while others read the environment: a client died of KeyError
    # '_MLFLOW_TELEMETRY_SESSION_ID' under load (benchmarks/server_load.py). Off unless the user sets it.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    mask_log_records()  # before a launcher logs the jobs' overrides (the sweep calls this first)
    tracking_uri = str(mlflow_cfg.tracking_uri)
    if is_loopback(urlparse(tracking_uri).hostname or ""):
        bypass_proxy_for_loopback()  # a local `make server` behind a corporate http_proxy
    check_reachable(tracking_uri)
    database = sqlite_path(tracking_uri)
    if database is not None:
        _prepare_sqlite(database)
    mlflow.set_tracking_uri(tracking_uri)
    name = str(mlflow_cfg.experiment_name)

    def get_or_create() -> str:
        experiment = mlflow.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        return mlflow.create_experiment(name, artifact_location=artifact_location(mlflow_cfg))

    with _refused_login(tracking_uri):
        return retry_duplicate_insert(get_or_create)  # two commands may create the same experiment at once


# How MLflow's SQL store reports a row another client inserted between its look-up and its insert:
# IntegrityError as BAD_REQUEST (PostgreSQL, SQLite), or RESOURCE_ALREADY_EXISTS where it names the case.
_DUPLICATE_INSERT = ("UniqueViolation", "duplicate key value violates unique constraint", "UNIQUE constraint failed")


def is_duplicate_insert(error: Exception) -> bool:
    """True for an MLflow error saying that the row it meant to insert is there already."""
    code = getattr(error, "error_code", None)
    if code in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
        return True
    return code == "BAD_REQUEST" and any(marker in str(error) for marker in _DUPLICATE_INSERT)


def retry_duplicate_insert(call: Callable[[], T], attempts: int = 5) -> T:
    """Run an idempotent MLflow call again when another client inserted the same shared row first.

    MLflow's SQL store looks a shared row up, then inserts it if missing (a dataset input's dataset, an
    experiment): parallel sweep jobs logging the same dataset at once both miss it and the second insert
    violates the key (`BAD_REQUEST ... UniqueViolation ... dataset_pk`). By then the row exists, so the
    same call, run again, finds it and succeeds. Any other error, or the last attempt's, is raised.
    """
    from mlflow.exceptions import MlflowException

    for attempt in range(1, attempts + 1):
        try:
            return call()
        except MlflowException as error:
            if attempt == attempts or not is_duplicate_insert(error):
                raise
            time.sleep(random.uniform(0.05, 0.25) * attempt)  # jitter: the racers do not meet again
    raise AssertionError("unreachable")


@contextmanager
def _refused_login(tracking_uri: str) -> Iterator[None]:
    """A server with access control (`make server AUTH=1`) answering 401 or 403: one line naming the
    user and the variables to fix, instead of MLflow's traceback. The password is never printed."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as error:
        user = os.environ.get("MLFLOW_TRACKING_USERNAME")
        where = f"mlflow.tracking_uri={mask_uri(tracking_uri)!r}"
        if error.error_code == "UNAUTHENTICATED":
            who = f"user {user!r}" if user else "no user (MLFLOW_TRACKING_USERNAME is not set)"
            raise ConfigError(
                f"{where}: the server refused the login of {who} (401); set MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD to an account the server's admin created"
            ) from None
        if error.error_code == "PERMISSION_DENIED":
            raise ConfigError(
                f"{where}: user {user!r} may not use this experiment (403); ask the server's admin for EDIT on "
                "it, or pick another with mlflow.experiment_name=..."
            ) from None
        raise


def masked_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as a dict, with the password of every URI in any string value masked (the
    tracking URI, an artifact location, a user's tag)."""

    def masked(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: masked(item) for key, item in value.items()}
        if isinstance(value, list):
            return [masked(item) for item in value]
        return mask_uri(value) if isinstance(value, str) else value

    return masked(OmegaConf.to_container(cfg, resolve=True))

"""Where runs go: the tracking URI, the SQLite store, reachability, the experiment, masked secrets.

mlflow is imported inside functions: config errors are reported before its ~2 s import.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from omegaconf import DictConfig, OmegaConf

from src.errors import ConfigError


def mask_uri(uri: str) -> str:
    """`scheme://user:secret@host/...` -> `scheme://user:***@host/...`: safe to print, log or store."""
    parsed = urlparse(uri)
    if parsed.password is None:
        return uri
    netloc = parsed.netloc.replace(f":{parsed.password}@", ":***@", 1)
    return parsed._replace(netloc=netloc).geturl()


def check_reachable(tracking_uri: str, timeout: float = 3.0) -> None:
    """Fail within seconds, with a clear message, when a tracking server does not answer.

    MLflow itself retries a dead server with exponential backoff for minutes.
    """
    import socket

    parsed = urlparse(tracking_uri)
    if parsed.scheme not in ("http", "https"):
        return
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            pass
    except OSError as error:
        reason = getattr(error, "strerror", None) or type(error).__name__
        raise ConfigError(
            f"mlflow.tracking_uri={mask_uri(tracking_uri)!r}: no MLflow server answers there ({reason}); "
            "start one with `make server`, or unset MLFLOW_TRACKING_URI to use the local SQLite store"
        ) from None


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a `sqlite:///...` URI, else None."""
    if not tracking_uri.startswith("sqlite:"):
        return None
    return Path(unquote(urlparse(tracking_uri).path))


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
    (joblib launcher) read while another writes; MLflow already waits up to 20 s for a write lock."""
    import sqlite3

    try:
        database.parent.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(database, timeout=20) as connection:
            connection.execute("PRAGMA journal_mode=WAL")
    except (OSError, sqlite3.Error) as error:
        raise ConfigError(f"mlflow.tracking_uri: cannot open the SQLite store {database} ({error})") from None


def use_experiment(mlflow_cfg: DictConfig) -> str:
    """Point MLflow at the configured store and experiment (created if new); return the experiment id."""
    # MLflow's Keras callback logs each epoch asynchronously. By default its logging thread polls an
    # empty queue with a 1 s timeout, and every end_run waits for that poll to time out (~0.5 s per
    # job). With a buffer it waits on its stop event instead, ends at once, and writes a batch per
    # second rather than a transaction per call. The environment variable still wins.
    os.environ.setdefault("MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS", "1")
    import mlflow

    tracking_uri = str(mlflow_cfg.tracking_uri)
    check_reachable(tracking_uri)
    database = sqlite_path(tracking_uri)
    if database is not None:
        _prepare_sqlite(database)
    mlflow.set_tracking_uri(tracking_uri)
    name = str(mlflow_cfg.experiment_name)
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return mlflow.create_experiment(name, artifact_location=artifact_location(mlflow_cfg))


def masked_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as a dict, with any password in the tracking URI masked."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    if "mlflow" in resolved:
        resolved["mlflow"]["tracking_uri"] = mask_uri(str(resolved["mlflow"]["tracking_uri"]))
    return resolved

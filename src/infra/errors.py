"""Errors a user can fix, and how the command-line entry points report them."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from src.infra.masking import mask_uri


class UserError(Exception):
    """Bad input the user can fix: reported as one line, without a traceback."""


class ConfigError(UserError):
    """A config value is invalid; the message names the key, the value and what is allowed."""


class DataError(UserError):
    """MNIST is missing, corrupt, or could not be fetched."""


@contextmanager
def exit_on_user_error() -> Iterator[None]:
    """Turn a UserError into a clean exit (code 1) with a one-line message, every URI's password masked (a
    message may quote the user's input, `mlflow.tracking_uri=postgresql://user:password@...` included).

    `HYDRA_FULL_ERROR=1` shows the full traceback instead, as Hydra users expect (unmasked: docs/security.md).
    """
    try:
        yield
    except UserError as error:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        raise SystemExit(f"error: {mask_uri(str(error))}") from None


def sigterm_as_interrupt(signum: int, frame: Any) -> None:
    """A SIGTERM handler: stop like Ctrl-C, so the run in progress ends KILLED in its `finally`."""
    raise KeyboardInterrupt(f"signal {signum}")


def command(body: Callable[[], None]) -> None:
    """Run an entry point's body: SIGTERM behaves like Ctrl-C (the run in progress ends KILLED, finished
    work stays recorded), a user error prints one line and exits 1."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    previous = signal.signal(signal.SIGTERM, sigterm_as_interrupt)
    try:
        with exit_on_user_error():
            body()
    finally:
        signal.signal(signal.SIGTERM, previous)

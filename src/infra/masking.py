"""Secrets out of what the project prints, logs and stores: the one rule that masks a URI's password.

At the bottom of the layers (nothing from src/ below it), so that errors.py can mask what it prints
without importing tracking/; src/tracking/store.py re-exports both names.
"""

from __future__ import annotations

import logging
import re
from typing import Any, TextIO

# The password of a `scheme://user:password@host` anywhere in a text. Greedy up to the last `@` before a
# `/` or a blank, as urllib splits it: a raw `@` inside the password is masked too, not half shown. Hydra
# writes a job's overrides back escaped (`postgresql\://user\:password@host\:5432/db`): `\:` counts as `:`.
_URI_PASSWORD = re.compile(r"(?P<user>\b[A-Za-z][A-Za-z0-9+.-]*\\?://[^\s/:@]*:)(?P<password>[^\s/]+)(?=@)")


def mask_uri(text: str) -> str:
    """`scheme://user:secret@host/...` -> `scheme://user:***@host/...`, for every URI in `text` (one URI,
    an override `key=postgresql://...`, a YAML file, a log line): safe to print, log or store. The one
    masking rule of the project; everything it writes into MLflow or prints passes through it."""
    return _URI_PASSWORD.sub(r"\g<user>***", text)


def mask_log_records() -> None:
    """Mask every log record of this process from now on (Hydra's launchers log each job's overrides,
    `mlflow.tracking_uri=postgresql://user:password@...` included). A record factory, not a handler
    filter: Hydra replaces the handlers when each job starts."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "masks_secrets", False):
        return

    def masked_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a malformed call: logging reports it when a handler formats the record
            return record
        masked = mask_uri(message)
        if masked != message:
            record.msg, record.args = masked, ()
        return record

    masked_record.masks_secrets = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(masked_record)


class MaskedStream:
    """A text stream that masks every write (`sys.stderr = MaskedStream(sys.stderr)`): for what libraries
    print before the project's code runs, such as Hydra's own error for an override it cannot parse, which
    repeats the override, password included. Everything else is the wrapped stream's."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(mask_uri(text))
        return len(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

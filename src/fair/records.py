"""A trial's record file, `trial.json`: written by src/fair/trials.py once the trial's run ended FINISHED, read
by the phases (which trials are done) and the report (what they measured). Apart from trials.py so that the
report stage reads records without depending on the training code."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RECORD = "trial.json"


def read_record(folder: Path, config_hash: str | None = None) -> dict[str, Any] | None:
    """The finished trial recorded in `folder` (of `config_hash`, when given), or None."""
    path = folder / RECORD
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    if config_hash is not None and record.get("config_hash") != config_hash:
        return None
    return record

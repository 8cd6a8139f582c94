"""A run's record file, `trial.json`: written by runs.py once the run's MLflow run ended FINISHED, read by runs.py
(which runs are done) and by the report (what they measured). Apart from runs.py so that the report stage reads
records without importing the training code."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RECORD = "trial.json"


def read_record(folder: Path, config_hash: str | None = None) -> dict[str, Any] | None:
    """The finished run recorded in `folder` (of `config_hash`, when given), or None."""
    path = folder / RECORD
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    return record if config_hash is None or record.get("config_hash") == config_hash else None

"""Resuming interrupted jobs and skipping finished ones.

A job's identity is its *config hash*: the resolved training config without the keys that only say where
things go (paths, the MLflow store, verbosity: `src.training.config.NOT_TRAINING_KEYS`), plus the sha256 of the
MNIST file and the Keras backend.
Every run is tagged with it. Before a job trains:

- if the store already has a FINISHED run with the same hash, the job is skipped and that run reused
  (`train.skip_finished`);
- else if `<train.state_dir>/<hash>/` holds a backup of an interrupted run, training continues from its
  last completed epoch, in the same MLflow run (`train.resume`);
- else it starts fresh.

`train.force=true` turns both off. The state folder is deleted once the run has ended FINISHED.

One job at a time per config: a job holds an exclusive lock on `<hash>.lock` (beside the state folder)
from before it looks for a finished or interrupted run until its run has ended. An identical job started
meanwhile logs one line naming the running one and waits; it then finds that run FINISHED and reuses
it. The lock is the kernel's (flock): it goes with its process, so a SIGKILLed job never blocks the next
one, which resumes from the backup instead (docs/reliability.md).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from src.infra.files import TEMP_PREFIX, exclusive_lock, write_text_atomic
from src.training.config import training_tree

log = logging.getLogger(__name__)


def keras_backend_name() -> str:
    """The backend Keras will use, read as Keras reads it (KERAS_BACKEND, then ~/.keras/keras.json) without
    importing Keras: a skipped job should not pay for a TensorFlow import."""
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    settings = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "keras.json"
    try:
        return json.loads(settings.read_text()).get("backend", "tensorflow")
    except (OSError, ValueError):
        return "tensorflow"


def config_hash(cfg: DictConfig, data_sha256: str, backend: str | None = None) -> str:
    """16 hex digits identifying what a job trains (see the module docstring): the same config on another
    Keras backend is another job."""
    tree = training_tree(OmegaConf.to_container(cfg, resolve=True))
    tree["data_sha256"] = data_sha256
    tree["keras_backend"] = backend or keras_backend_name()
    canonical = json.dumps(tree, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


@dataclass
class JobState:
    """`<state_dir>/<config hash>/`: the backup of an interrupted job and the run it belongs to."""

    folder: Path

    @property
    def config_hash(self) -> str:
        return self.folder.name

    @property
    def backup_dir(self) -> Path:
        return self.folder / "backup"

    @property
    def has_backup(self) -> bool:
        return (self.backup_dir / "training_metadata.json").is_file()

    def previous(self) -> dict[str, str]:
        """{"run_id", "output_dir"} of the interrupted attempt, or {}."""
        record = self.folder / "run.json"
        return json.loads(record.read_text()) if record.is_file() else {}

    def record(self, run_id: str, output_dir: Path) -> None:
        write_text_atomic(self.folder / "run.json", json.dumps({"run_id": run_id, "output_dir": str(output_dir)}))

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    @property
    def lock_path(self) -> Path:
        """Beside the folder, not in it: `clear` deletes the folder, and a lock file must never be deleted."""
        return self.folder.with_name(f"{self.folder.name}.lock")

    @contextmanager
    def exclusive(self, output_dir: Path) -> Iterator[None]:
        """Hold this config's state for this job alone; if another job holds it, say which and wait."""
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        holder = f"pid {os.getpid()} on {socket.gethostname()} since {started}, outputs in {output_dir}"

        def announce(running: str) -> None:
            log.warning(
                "another job is training this config (config_hash %s: %s); waiting for it to end",
                self.config_hash,
                running or "holder unknown",
            )

        with exclusive_lock(self.lock_path, holder, announce):
            yield


def carry_outputs(previous_output_dir: Path, output_dir: Path) -> None:
    """Copy what an interrupted attempt wrote (best checkpoint, TensorBoard logs) into this attempt's
    output folder, so that the resumed run's artifacts cover all its epochs. Logs and Hydra's own
    record stay with the attempt that wrote them."""
    if not previous_output_dir.is_dir() or previous_output_dir.resolve() == output_dir.resolve():
        return
    skipped = shutil.ignore_patterns(".hydra", "*.log", f"{TEMP_PREFIX}*")  # temp: a write a kill cut short
    shutil.copytree(previous_output_dir, output_dir, dirs_exist_ok=True, ignore=skipped)

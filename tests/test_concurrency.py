"""Several processes at once: a new SQLite store, one config's resume state, two identical commands.

Real processes throughout (the kernel's locks are what is under test). Each `python -m src.train` pays for
a TensorFlow import, so the command line is started only where it is what is under test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from src.training import resume
from src.training.config import PROJECT_ROOT, compose
from src.training.data import FILE_NAME, sha256_file
from tests.conftest import all_runs, store_args, store_with_tables

pytestmark = pytest.mark.slow

ENVIRONMENT = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
ENVIRONMENT.pop("MLFLOW_TRACKING_URI", None)
ENVIRONMENT.pop("HYDRA_FULL_ERROR", None)
WAITING = "another job is training this config"


def _python(code: str, *args: str, **popen: object) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *args], env=ENVIRONMENT, text=True, **popen)


# A job mid-training, as src.train leaves its state: under the lock, a backup and the record of its run
# (a run of another store: the store is not part of the config hash, so stores share a state folder).
HOLD_THE_LOCK = """
import sys, time
from pathlib import Path
from src.training.resume import JobState
state = JobState(Path(sys.argv[1]))
with state.exclusive(Path("/runs/first")):
    state.backup_dir.mkdir(parents=True)
    (state.backup_dir / "training_metadata.json").write_text('{"epoch": 1}')
    state.record("f" * 32, Path("/runs/first"))
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_second_job_waits_naming_the_first_and_a_sigkilled_holder_blocks_no_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "resume" / "0123456789abcdef"
    holder = _python(HOLD_THE_LOCK, str(folder), stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == "held\n"
        threading.Timer(2.0, holder.kill).start()  # SIGKILL: the holder cannot release anything itself
        started = time.monotonic()
        with (
            caplog.at_level("WARNING", logger="src.training.resume"),
            resume.JobState(folder).exclusive(tmp_path / "second"),
        ):
            waited = time.monotonic() - started
    finally:
        holder.kill()
        holder.wait()
    assert holder.returncode == -signal.SIGKILL
    assert 1.5 < waited < 60, waited  # it waited for the holder, and the kill released it
    [message] = [record.getMessage() for record in caplog.records if WAITING in record.getMessage()]
    assert f"pid {holder.pid} " in message and "outputs in /runs/first" in message and "0123456789abcdef" in message


OPEN_THE_STORE = """
import sys
from omegaconf import OmegaConf
from src.tracking import use_experiment
cfg = OmegaConf.create({"tracking_uri": sys.argv[1], "experiment_name": "race", "artifact_location": None})
print(use_experiment(cfg))
"""


def test_processes_opening_a_new_sqlite_store_at_once_all_get_the_same_experiment(tmp_path: Path) -> None:
    """Without the lock, MLflow's schema creation collides ("table ... already exists"): 3 of 4 failed."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    processes = [_python(OPEN_THE_STORE, uri, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(4)]
    results = [process.communicate(timeout=300) for process in processes]
    assert [process.returncode for process in processes] == [0] * 4, [err[-2000:] for _, err in results]
    assert len({out.strip() for out, _ in results}) == 1  # one experiment, created once


TINY = ("data.limit=500", "train.epochs=2", "data.fetch_if_missing=false", "train.verbose=2")


def _two_identical_commands(folder: Path, mnist_dir: Path) -> list[str]:
    """Start `python -m src.train ...` twice at once, as two terminals or two queue workers would (same
    output folder too: Hydra's default is per second); return each one's output once both ended."""
    command = [sys.executable, "-m", "src.train", *TINY, *store_args(folder, mnist_dir)]
    logs = [folder / f"twin{index}.log" for index in (1, 2)]
    processes = []
    for log in logs:
        with log.open("w") as stream:
            processes.append(
                subprocess.Popen(command, cwd=folder, env=ENVIRONMENT, stdout=stream, stderr=subprocess.STDOUT)
            )
    codes = [process.wait(timeout=900) for process in processes]
    outputs = [log.read_text() for log in logs]
    assert codes == [0, 0], [output[-3000:] for output in outputs]
    return outputs


def _check_one_finished_run_trained_once_and_reused_by_the_other_twin(folder: Path, outputs: list[str]) -> None:
    """One twin trains; the other either waits on the lock then reuses that run, or, when it reaches the
    lock only after the first has finished (a TensorFlow import can lag by seconds under load), finds the
    FINISHED run and skips at once. Both are right; a second run, a traceback or a crash are not."""
    assert not any("Traceback" in output for output in outputs), [output[-3000:] for output in outputs]
    [run] = all_runs(folder)  # the second job never created a run of its own
    assert run.info.status == "FINISHED"
    started = f"MLflow run {run.info.run_name} ({run.info.run_id}) started"
    skipped = f"skipped: run {run.info.run_name} ({run.info.run_id})"
    [trained] = [output for output in outputs if started in output]
    [reused] = [output for output in outputs if output is not trained]
    assert skipped in reused and skipped not in trained, reused[-3000:]
    assert WAITING not in trained  # only the twin that found the lock taken may wait
    assert not any((folder / "state").glob("*/")), "the finished run's state was not cleared"


def test_two_identical_commands_at_once_on_a_new_store(tmp_path: Path, mnist_dir: Path) -> None:
    outputs = _two_identical_commands(tmp_path, mnist_dir)
    _check_one_finished_run_trained_once_and_reused_by_the_other_twin(tmp_path, outputs)


def test_two_identical_commands_at_once_on_an_existing_store(tmp_path: Path, mnist_dir: Path) -> None:
    client = MlflowClient(store_with_tables(tmp_path))  # the store an earlier command left
    client.create_experiment("mnist-optimizers", artifact_location=str(tmp_path / "mlartifacts"))
    outputs = _two_identical_commands(tmp_path, mnist_dir)
    _check_one_finished_run_trained_once_and_reused_by_the_other_twin(tmp_path, outputs)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def test_a_job_waiting_for_the_lock_never_touches_the_holders_backup(tmp_path: Path, mnist_dir: Path) -> None:
    """src.train deletes a config's state folder in two places (a backup it cannot resume, before a fresh
    start; the whole state once its run is FINISHED), both under the config's lock. Here the holder's
    backup is one the second job cannot resume (its run is in another store): a second job that got past
    the lock would clear it at once. It must wait instead, touching nothing, until it is stopped.

    The second job is the real command (its lock, its log line, its SIGTERM); it is stopped before it
    would import TensorFlow, so it costs an MLflow import, not a training."""
    output_paths = ["callbacks.model_checkpoint.filepath=/o/best.keras", "callbacks.tensorboard.log_dir=/o"]
    cfg = compose([*TINY, *output_paths])  # outside a Hydra job the output dir has no value: given here
    folder = tmp_path / "state" / resume.config_hash(cfg, sha256_file(mnist_dir / FILE_NAME))
    holder = _python(HOLD_THE_LOCK, str(folder), stdout=subprocess.PIPE)
    log = tmp_path / "second.log"
    try:
        assert holder.stdout.readline() == "held\n"
        backup = _files(folder)
        assert "backup/training_metadata.json" in backup and "run.json" in backup
        command = [sys.executable, "-m", "src.train", *TINY, *store_args(tmp_path, mnist_dir)]
        store_with_tables(tmp_path)
        with log.open("w") as stream:
            second = subprocess.Popen(command, cwd=tmp_path, env=ENVIRONMENT, stdout=stream, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while WAITING not in log.read_text() and second.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(2)  # waiting, not merely slow: it is still there and has done nothing
        assert second.poll() is None, log.read_text()[-3000:]
        assert _files(folder) == backup
        second.send_signal(signal.SIGTERM)  # Ctrl-C's path: a waiting job stops cleanly
        assert second.wait(timeout=120) == 130, log.read_text()[-3000:]
        assert holder.poll() is None  # the holder kept its lock throughout
    finally:
        holder.kill()
        holder.wait()
    output = log.read_text()
    assert f"{WAITING} (config_hash {folder.name}: pid {holder.pid} " in output, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert _files(folder) == backup
    assert all_runs(tmp_path) == []  # the second job created no run

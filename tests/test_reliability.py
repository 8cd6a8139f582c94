"""Reliability: resuming killed runs and sweeps, parallel writers, files never half-written, safe defaults.

The resume tests kill real training subprocesses with SIGKILL and run the same command again (src.train's
entry point, in process: what is tested is the resume, not the command line).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
from mlflow import MlflowClient
from mlflow.entities import Run

from src import tracking
from src.infra.errors import ConfigError
from src.training import callbacks, resume
from src.training.config import PROJECT_ROOT, compose
from tests.conftest import all_runs, run_cli, run_main, split_parent, store_args, store_with_tables

# ------------------------------------------------------------------------------------------------
# Fast: the pieces, in process


# Outside a Hydra job `${hydra:runtime.output_dir}` has no value: give the output paths explicitly.
OUTPUT_PATHS = ["callbacks.model_checkpoint.filepath=/tmp/out/best.keras", "callbacks.tensorboard.log_dir=/tmp/out/tb"]


def test_mask_uri_hides_only_the_password() -> None:
    assert tracking.mask_uri("postgresql://ana:s3cret@db:5432/mlflow") == "postgresql://ana:***@db:5432/mlflow"
    assert tracking.mask_uri("http://ana:s3cret@127.0.0.1:5000") == "http://ana:***@127.0.0.1:5000"
    assert tracking.mask_uri("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"


def test_params_and_logged_config_never_hold_the_tracking_password() -> None:
    cfg = compose(["mlflow.tracking_uri=postgresql://ana:s3cret@db/mlflow", *OUTPUT_PATHS])
    params = tracking.config_params(cfg, {"optimizer": "adam"})
    tags = tracking.job.config_tags(cfg)  # the tracking URI is a location: a tag, not a param
    assert tags["config.mlflow.tracking_uri"] == "postgresql://ana:***@db/mlflow"
    assert not any("s3cret" in value for value in [*params.values(), *tags.values()])
    assert "s3cret" not in json.dumps(tracking.masked_config(cfg))


def test_unreachable_tracking_server_fails_within_seconds() -> None:
    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"no MLflow server answers there") as error:
        tracking.check_reachable("http://ana:s3cret@127.0.0.1:9")
    assert time.monotonic() - started < 5
    assert "s3cret" not in str(error.value) and "make server" in str(error.value)


def test_config_hash_ignores_where_things_go_but_not_what_is_trained() -> None:
    def config_hash(*overrides: str) -> str:
        return resume.config_hash(compose([*OUTPUT_PATHS, *overrides]), "0" * 64)

    base = config_hash()
    assert base == config_hash("mlflow.experiment_name=other", "data.dir=/elsewhere", "train.verbose=0")
    assert base == config_hash("train.force=true", "train.state_dir=/tmp/x", "+report_dir=/tmp/reports")
    assert base != config_hash("optimizer.learning_rate=0.01")
    assert base != config_hash("callbacks.early_stopping.patience=0")
    assert base == config_hash("callbacks.model_checkpoint.filepath=/elsewhere/best.keras")
    assert base != resume.config_hash(compose(OUTPUT_PATHS), "1" * 64)  # other data
    other_backend = "jax" if resume.keras_backend_name() != "jax" else "tensorflow"
    assert base != resume.config_hash(compose(OUTPUT_PATHS), "0" * 64, other_backend)


def _tiny_model() -> keras.Model:
    model = keras.Sequential([keras.Input(shape=(4,)), keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.optimizer.build(model.trainable_variables)  # as after a first training step: its state is saved too
    return model


def _crash_while_writing(path: str, *args, **kwargs) -> None:
    Path(path).write_bytes(b"half a file")  # what a kill in the middle of a save leaves behind
    raise OSError("simulated crash in the middle of a save")


def test_checkpoint_crash_mid_save_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    # A crash cannot be timed to land inside model.save, so the save itself is made to crash half way.
    best = tmp_path / "best.keras"
    model = _tiny_model()
    checkpoint = callbacks.ModelCheckpoint(str(best), monitor="val_accuracy", mode="max", save_best_only=True)
    checkpoint.set_model(model)
    checkpoint.on_epoch_end(0, {"val_accuracy": 0.5})
    saved = best.read_bytes()
    model.save = _crash_while_writing
    with pytest.raises(OSError, match="simulated crash"):
        checkpoint.on_epoch_end(1, {"val_accuracy": 0.9})
    assert best.read_bytes() == saved
    keras.saving.load_model(best, safe_mode=True)


def test_a_stale_temp_checkpoint_is_never_renamed_into_place(tmp_path: Path) -> None:
    best = tmp_path / "best.keras"
    checkpoint = callbacks.ModelCheckpoint(str(best), monitor="val_accuracy", mode="max", save_best_only=True)
    checkpoint.set_model(_tiny_model())
    checkpoint.on_epoch_end(0, {"val_accuracy": 0.9})
    saved = best.read_bytes()
    (tmp_path / ".tmp-best.keras").write_bytes(b"left by a crash")
    checkpoint.on_epoch_end(1, {"val_accuracy": 0.5})  # no improvement: nothing is saved
    assert best.read_bytes() == saved


def test_backup_crash_mid_save_resumes_from_the_previous_epoch(tmp_path: Path) -> None:
    model = _tiny_model()
    backup = callbacks.BackupAndRestore(str(tmp_path / "backup"))
    backup.set_model(model)
    backup.set_params({"epochs": 5})
    backup.on_train_begin()
    backup.on_epoch_end(0, {"loss": 1.0, "val_accuracy": 0.4})
    weights_after_epoch_1 = [w.copy() for w in model.get_weights()]
    model.set_weights([w + 1 for w in weights_after_epoch_1])
    model.save_weights = _crash_while_writing
    with pytest.raises(OSError, match="simulated crash"):
        backup.on_epoch_end(1, {"loss": 0.5, "val_accuracy": 0.6})

    restored_model = _tiny_model()
    restored = callbacks.BackupAndRestore(str(tmp_path / "backup"))
    restored.set_model(restored_model)
    restored.set_params({"epochs": 5})
    restored.on_train_begin()
    assert restored_model._initial_epoch == 1
    assert restored.restored_history == [{"loss": 1.0, "val_accuracy": 0.4}]
    for actual, expected in zip(restored_model.get_weights(), weights_after_epoch_1, strict=True):
        np.testing.assert_array_equal(actual, expected)


def test_backup_restores_early_stopping_and_checkpoint_state(tmp_path: Path) -> None:
    model = _tiny_model()
    backup = callbacks.BackupAndRestore(str(tmp_path / "backup"))
    backup.set_model(model)
    backup.set_params({"epochs": 9})
    for epoch, accuracy in enumerate([0.5, 0.8, 0.7, 0.75]):
        backup.on_epoch_end(epoch, {"val_accuracy": accuracy})

    stopping = keras.callbacks.EarlyStopping(monitor="val_accuracy", patience=3)
    checkpoint = callbacks.ModelCheckpoint(str(tmp_path / "best.keras"), monitor="val_accuracy", save_best_only=True)
    restored = callbacks.BackupAndRestore(str(tmp_path / "backup"))
    restored.peers = [stopping, checkpoint]  # as from_config wires them
    for callback in (stopping, checkpoint, restored):
        callback.set_model(_tiny_model())
        callback.set_params({"epochs": 9})
        callback.on_train_begin()
    assert (stopping.best, stopping.best_epoch, stopping.wait) == (0.8, 1, 2)
    assert checkpoint.best == 0.8  # a resumed epoch at 0.78 must not overwrite the best checkpoint


# ------------------------------------------------------------------------------------------------
# Slow: real training processes, killed and rerun


def _popen(arguments: list[str], log: Path) -> subprocess.Popen:
    environment = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    environment.pop("MLFLOW_TRACKING_URI", None)
    stream = log.open("w")
    return subprocess.Popen(
        [sys.executable, "-m", "src.train", *arguments], cwd=log.parent, env=environment, stdout=stream, stderr=stream
    )


def _backed_up_epochs(state_dir: Path) -> int:
    epochs = 0
    for metadata in state_dir.glob("*/backup/training_metadata.json"):
        with contextlib.suppress(OSError, ValueError):  # replaced while reading: look again next time
            epochs = max(epochs, json.loads(metadata.read_text())["epoch"])
    return epochs


def _kill_when(process: subprocess.Popen, ready, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None:
            pytest.fail(f"the run ended (code {process.returncode}) before it could be killed")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"not ready to be killed within {timeout} s")
        time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)


def _metric_steps(folder: Path, run: Run, name: str) -> list[int]:
    history = MlflowClient(f"sqlite:///{folder}/mlflow.db").get_metric_history(run.info.run_id, name)
    return sorted(metric.step for metric in history)


RESUME = ("data.limit=3000", "train.epochs=5", "data.fetch_if_missing=false", "train.verbose=2")


@pytest.mark.slow
def test_sigkilled_run_resumes_in_the_same_mlflow_run_with_the_same_result(tmp_path: Path, mnist_dir: Path) -> None:
    killed, reference = tmp_path / "killed", tmp_path / "reference"
    store_with_tables(killed), store_with_tables(reference)
    process = _popen([*RESUME, *store_args(killed, mnist_dir)], killed / "first.log")
    _kill_when(process, lambda: _backed_up_epochs(killed / "state") >= 2)
    assert process.returncode == -signal.SIGKILL
    [interrupted] = all_runs(killed)
    assert interrupted.info.status == "RUNNING"  # SIGKILL: nothing could end it

    second = run_main("src.train", *RESUME, *store_args(killed, mnist_dir), cwd=killed)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from its backup" in second.stdout
    [resumed] = all_runs(killed)
    assert resumed.info.run_id == interrupted.info.run_id and resumed.info.status == "FINISHED"
    for name in ("loss", "val_accuracy", "learning_rate"):
        assert _metric_steps(killed, resumed, name) == [0, 1, 2, 3, 4], name
    assert not [p for p in (killed / "state").iterdir() if p.is_dir()]  # backup gone once FINISHED (lock file stays)
    assert resumed.data.metrics["stopped_epoch"] == 5

    uninterrupted = run_main("src.train", *RESUME, *store_args(reference, mnist_dir), cwd=reference)
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]
    [expected] = all_runs(reference)
    for name in ("test_accuracy", "best_val_accuracy"):
        assert abs(resumed.data.metrics[name] - expected.data.metrics[name]) <= 0.001, name
    assert resumed.data.params == expected.data.params  # the first attempt's, settings only
    assert len(resumed.inputs.dataset_inputs) == 3  # logged again on resume: still one per context


def _runs_by_parent(folder: Path) -> tuple[list[Run], dict[str, list[Run]]]:
    runs = all_runs(folder)
    parents = sorted((r for r in runs if r.data.tags.get("sweep") == "parent"), key=lambda r: r.info.start_time)
    children = {
        p.info.run_id: [r for r in runs if r.data.tags.get("mlflow.parentRunId") == p.info.run_id] for p in parents
    }
    return parents, children


@pytest.mark.slow
def test_rerun_of_a_killed_sweep_skips_finished_resumes_killed_runs_missing(tmp_path: Path, mnist_dir: Path) -> None:
    sweep = ["-m", "optimizer=adam,adagrad,rmsprop", "data.limit=2000", "train.epochs=3", "data.fetch_if_missing=false"]
    sweep += ["train.verbose=2", *store_args(tmp_path, mnist_dir)]
    store_with_tables(tmp_path)
    process = _popen(sweep, tmp_path / "first.log")
    first_log = tmp_path / "first.log"

    def adagrad_backed_up() -> bool:
        return "optimizer=adagrad" in first_log.read_text() and _backed_up_epochs(tmp_path / "state") >= 1

    _kill_when(process, adagrad_backed_up)
    [first_parent], first_children = _runs_by_parent(tmp_path)
    by_name = {r.info.run_name: r for r in first_children[first_parent.info.run_id]}
    assert by_name["optimizer=adam"].info.status == "FINISHED"
    assert by_name["optimizer=adagrad"].info.status == "RUNNING"
    assert "optimizer=rmsprop" not in by_name

    rerun = run_main("src.train", *sweep, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "skipped: run optimizer=adam" in rerun.stdout
    parents, children = _runs_by_parent(tmp_path)
    old_parent, new_parent = parents
    assert old_parent.info.status == "KILLED"
    assert old_parent.data.tags["resumed_by_parent_run_id"] == new_parent.info.run_id
    assert new_parent.info.status == "FINISHED"
    linked = {r.info.run_name: r for r in children[new_parent.info.run_id]}
    assert sorted(linked) == ["optimizer=adagrad", "optimizer=adam", "optimizer=rmsprop"]
    assert all(r.info.status == "FINISHED" for r in linked.values())
    assert linked["optimizer=adam"].info.run_id == by_name["optimizer=adam"].info.run_id  # reused, not retrained
    assert linked["optimizer=adam"].info.end_time == by_name["optimizer=adam"].info.end_time
    assert linked["optimizer=adagrad"].info.run_id == by_name["optimizer=adagrad"].info.run_id  # resumed
    assert _metric_steps(tmp_path, linked["optimizer=adagrad"], "val_accuracy") == [0, 1, 2]

    forced = run_main("src.train", "optimizer=adam", *sweep[2:], "train.force=true", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr[-3000:]
    adam_runs = [r for r in all_runs(tmp_path) if r.data.params.get("optimizer") == "adam"]
    assert len(adam_runs) == 2 and all(r.info.status == "FINISHED" for r in adam_runs)


@pytest.mark.slow
def test_joblib_launcher_runs_jobs_in_parallel_into_one_sqlite_store(tmp_path: Path, mnist_dir: Path) -> None:
    store_with_tables(tmp_path)
    result = run_cli(
        "src.train",
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "optimizer=adam,adagrad,rmsprop,sgd",
        "data.limit=2000",
        "train.epochs=2",
        "data.fetch_if_missing=false",
        *store_args(tmp_path, mnist_dir),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "database is locked" not in result.stdout + result.stderr
    parent, children = split_parent(all_runs(tmp_path))
    assert parent.info.status == "FINISHED"
    assert sorted(c.data.params["optimizer"] for c in children) == ["adagrad", "adam", "rmsprop", "sgd"]
    assert all(c.info.status == "FINISHED" for c in children)
    spans = sorted((c.info.start_time, c.info.end_time) for c in children)
    assert any(later_start < end for (_, end), (later_start, _) in itertools.pairwise(spans)), "no two jobs overlapped"
    for child in children:
        for name in ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "epoch_seconds"):
            assert _metric_steps(tmp_path, child, name) == [0, 1], (child.info.run_name, name)

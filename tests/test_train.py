"""What a user does: sweeps from the command line, read back from a real MLflow store (SQLite in tmp_path).

The main sweep is conftest's `optimizer_sweep` (one real command line, shared with other modules); the
other sweeps run src.train's entry point in process, the SIGTERM test a real process.
"""

from __future__ import annotations

import csv
import io
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from src.training.config import PROJECT_ROOT
from tests.conftest import (
    SMALL,
    Sweep,
    all_runs,
    run_cli,
    run_main,
    split_parent,
    store_args,
    store_with_tables,
    tracking_uri,
)


@pytest.mark.slow
def test_sweep_is_one_parent_with_three_finished_children(optimizer_sweep: Sweep) -> None:
    parent, children = optimizer_sweep.parent, optimizer_sweep.children
    assert parent.info.status == "FINISHED"
    assert parent.info.run_name == "optimizer=adam,adagrad,rmsprop"
    assert [c.info.status for c in children] == ["FINISHED"] * 3
    assert [c.data.params["optimizer"] for c in children] == ["adam", "adagrad", "rmsprop"]
    assert [c.data.params["optimizer._target_"] for c in children] == [
        "keras.optimizers.Adam",
        "keras.optimizers.Adagrad",
        "keras.optimizers.RMSprop",
    ]
    assert [c.info.run_name for c in children] == ["optimizer=adam", "optimizer=adagrad", "optimizer=rmsprop"]
    assert "Sweep summary" in optimizer_sweep.stdout


@pytest.mark.slow
def test_children_hold_params_metrics_and_artifacts(optimizer_sweep: Sweep) -> None:
    client = MlflowClient(optimizer_sweep.uri)
    for child in optimizer_sweep.children:
        params = child.data.params
        assert params["train.epochs"] == "2" and params["data.limit"] == "2000"
        assert params["callbacks.early_stopping.patience"] == "3" and "optimizer.epsilon" in params
        for name in ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "epoch_seconds"):
            assert [m.step for m in client.get_metric_history(child.info.run_id, name)] == [0, 1], name
        metrics = child.data.metrics
        assert 0 < metrics["test_accuracy"] <= 1 and metrics["stopped_epoch"] == 2
        assert metrics["best_epoch"] in (1, 2) and metrics["train_seconds"] > 0
        tags = child.data.tags
        assert len(tags["data_sha256"]) == 64 and tags["hydra_overrides"].startswith(child.info.run_name)
        assert len(tags["mlflow.source.git.commit"]) == 40
        artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {"checkpoints", "config", "tensorboard", "history.json", "model_summary.txt"} <= artifacts
        checkpoints = {a.path for a in client.list_artifacts(child.info.run_id, "checkpoints")}
        assert checkpoints == {"checkpoints/best.keras", "checkpoints/last.keras"}
        configs = {a.path for a in client.list_artifacts(child.info.run_id, "config/hydra")}
        assert "config/hydra/overrides.yaml" in configs


@pytest.mark.slow
def test_adam_learns_and_adagrad_lags(optimizer_sweep: Sweep) -> None:
    accuracy = {c.data.params["optimizer"]: c.data.metrics["test_accuracy"] for c in optimizer_sweep.children}
    assert accuracy["adam"] > 0.8 and accuracy["adagrad"] < accuracy["adam"]


@pytest.mark.slow
def test_parent_summary_has_one_row_per_child_and_names_the_best(optimizer_sweep: Sweep, tmp_path: Path) -> None:
    parent, children = optimizer_sweep.parent, optimizer_sweep.children
    client = MlflowClient(optimizer_sweep.uri)
    local = client.download_artifacts(parent.info.run_id, "summary.csv", str(tmp_path))
    rows = list(csv.DictReader(io.StringIO(Path(local).read_text())))
    assert [row["optimizer"] for row in rows] == ["adam", "adagrad", "rmsprop"]
    assert all(row["status"] == "FINISHED" and float(row["test_accuracy"]) > 0 for row in rows)
    best = max(children, key=lambda c: c.data.metrics["best_val_accuracy"])
    assert parent.data.tags["best_child_run_id"] == best.info.run_id and parent.data.tags["best_resolved"] == "false"
    assert parent.data.metrics["best_val_accuracy"] == best.data.metrics["best_val_accuracy"]


@pytest.mark.slow
def test_logged_model_and_checkpoint_load_back_and_predict_digits(
    optimizer_sweep: Sweep, mnist_dir: Path, tmp_path: Path
) -> None:
    import keras
    import mlflow

    from src.training import data

    adam = optimizer_sweep.children[0]
    arrays = data.read_npz(mnist_dir / "mnist.npz")
    images, labels = arrays["x_test"][:500], arrays["y_test"][:500]  # uint8 pixels, as in mnist.npz
    model_id = adam.outputs.model_outputs[0].model_id
    with tracking_uri(optimizer_sweep.uri):
        model = mlflow.pyfunc.load_model(f"models:/{model_id}")
    signature = model.metadata.signature.to_dict()  # raw 28x28 images in, 10 probabilities out, any batch
    assert json.loads(signature["inputs"]) == [
        {"type": "tensor", "tensor-spec": {"dtype": "uint8", "shape": [-1, 28, 28]}}
    ]
    assert json.loads(signature["outputs"]) == [
        {"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 10]}}
    ]
    digits = np.argmax(np.asarray(model.predict(images)), axis=1)
    assert (digits == labels).mean() > 0.8
    client = MlflowClient(optimizer_sweep.uri)
    best = client.download_artifacts(adam.info.run_id, "checkpoints/best.keras", str(tmp_path))
    checkpoint = keras.saving.load_model(best, safe_mode=True)
    assert (np.argmax(checkpoint.predict(images, verbose=0), axis=1) == labels).mean() > 0.8


@pytest.mark.slow
def test_one_run_one_model_one_number(optimizer_sweep: Sweep, mnist_dir: Path) -> None:
    """A run's model is its best checkpoint (the default ModelCheckpoint keeps the best val_accuracy): its
    MLflow metric test_accuracy, its metrics.json and the logged MLflow model's accuracy on the whole test
    set, loaded as a user loads it, are one number; the predictions the DVC stage gathers are that model's."""
    import mlflow

    from src.training import data

    arrays = data.read_npz(mnist_dir / "mnist.npz")
    for child in optimizer_sweep.children:
        tags, metrics = child.data.tags, child.data.metrics
        assert (tags["model_weights"], tags["model_file"]) == ("best_checkpoint", "checkpoints/best.keras")
        assert tags["model_epoch"] == str(int(metrics["best_epoch"]))
        with tracking_uri(optimizer_sweep.uri):
            model = mlflow.pyfunc.load_model(f"models:/{child.outputs.model_outputs[0].model_id}")
        predicted = np.argmax(np.asarray(model.predict(arrays["x_test"])), axis=1)
        assert np.mean(predicted == arrays["y_test"]) == metrics["test_accuracy"]
        output_dir = Path(tags["output_dir"])
        recorded = json.loads((output_dir / "metrics.json").read_text())
        assert (recorded["test_accuracy"], recorded["model_weights"]) == (metrics["test_accuracy"], "best_checkpoint")
        np.testing.assert_array_equal(np.load(output_dir / "test_predictions.npy"), predicted)


@pytest.mark.slow
def test_callback_sweep_gives_children_differing_in_that_setting(tmp_path: Path, mnist_dir: Path) -> None:
    store_with_tables(tmp_path)
    result = run_main(
        "src.train",
        "-m",
        "optimizer=sgd",
        "callbacks.early_stopping.patience=0,1",
        "callbacks.tensorboard.enabled=false",
        *SMALL,
        *store_args(tmp_path, mnist_dir),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    parent, children = split_parent(all_runs(tmp_path))
    assert parent.info.run_name == "optimizer=sgd callbacks.early_stopping.patience=0,1"
    assert [c.data.params["callbacks.early_stopping.patience"] for c in children] == ["0", "1"]
    assert [c.info.status for c in children] == ["FINISHED", "FINISHED"]
    assert all(
        "tensorboard"
        not in {a.path for a in MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").list_artifacts(c.info.run_id)}
        for c in children
    )


@pytest.mark.parametrize(
    "arguments",
    [
        ["optimizer.learning_rate=-1"],
        ["-m", "optimizer=adam,rmsprop", "optimizer.learning_rate=0.1,-1"],
        ["callbacks.early_stopping.monitor=val_acc"],
        ["+optimizer.momentum_typo=0.5"],
    ],
    ids=["single", "one-bad-job-in-a-sweep", "monitor-never-logged", "argument-keras-rejects"],
)
def test_bad_value_fails_before_any_run_exists(tmp_path: Path, mnist_dir: Path, arguments: list[str]) -> None:
    result = run_main("src.train", *arguments, *SMALL, *store_args(tmp_path, mnist_dir), cwd=tmp_path)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1
    assert any(word in error_lines[0] for word in ("learning_rate", "monitor", "momentum_typo"))
    assert all_runs(tmp_path) == []


@pytest.mark.slow
def test_a_failing_job_ends_failed_and_so_does_its_parent(tmp_path: Path, mnist_dir: Path) -> None:
    # A folder where the checkpoint file should go: every check passes, saving fails after epoch 1. A real
    # process: Hydra skips on_multirun_end when a job fails, the parent is closed when the process exits.
    blocker = tmp_path / "best.keras"
    blocker.mkdir()
    store_with_tables(tmp_path)
    result = run_cli(
        "src.train",
        "-m",
        "optimizer=adam,sgd",
        f"callbacks.model_checkpoint.filepath={blocker}",
        *SMALL,
        *store_args(tmp_path, mnist_dir),
        cwd=tmp_path,
    )
    assert result.returncode != 0
    parent, children = split_parent(all_runs(tmp_path))
    assert [c.info.status for c in children] == ["FAILED", "FAILED"]
    assert parent.info.status == "FAILED" and parent.data.tags["failed_jobs"] == "2"


@pytest.mark.slow
def test_sigterm_ends_the_running_child_and_the_parent_killed(tmp_path: Path, mnist_dir: Path) -> None:
    command = [sys.executable, "-m", "src.train", "-m", "optimizer=adam,rmsprop", "train.epochs=200"]
    command += ["data.limit=20000", "data.fetch_if_missing=false", *store_args(tmp_path, mnist_dir)]
    store_with_tables(tmp_path)  # the tables exist before polling them
    process = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            runs = all_runs(tmp_path)
            child = [r for r in runs if "mlflow.parentRunId" in r.data.tags and "val_accuracy" in r.data.metrics]
            if child:
                break
            time.sleep(0.5)
        else:
            pytest.fail("no child run logged an epoch within 120 s")
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, output[-2000:]
    parent, children = split_parent(all_runs(tmp_path))
    assert [c.info.status for c in children] == ["KILLED"]
    assert parent.info.status == "KILLED"

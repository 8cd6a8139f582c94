"""Scaling out: a team tracking server (`make server`), sweeps on a Ray cluster, an Optuna search."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import keras
import numpy as np
import pytest
from mlflow import MlflowClient

from src import data
from src.server import free_port, stop_group, wait_healthy
from tests.conftest import SMALL, all_runs, run_cli, split_parent, store_args

pytestmark = pytest.mark.slow


@pytest.fixture
def tracking_server(tmp_path: Path):
    """`mlflow server` as `make server` starts it: SQLite backend, proxied artifacts, 127.0.0.1."""
    port = free_port()
    command = [
        "make",
        "-s",
        "-o",
        ".venv/.installed",
        "server",
        f"SERVER_PORT={port}",
        f"SERVER_DIR={tmp_path / 'server'}",
    ]
    environment = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    log = (tmp_path / "server.log").open("w")
    process = subprocess.Popen(
        command, cwd=Path(__file__).parent.parent, stdout=log, stderr=log, env=environment, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process, 120, tmp_path / "server.log")
        yield url, tmp_path / "server"
    finally:
        stop_group(process)


def test_sweep_logs_to_a_tracking_server_and_reads_back_through_it(
    tracking_server, tmp_path: Path, mnist_dir: Path
) -> None:
    url, server_dir = tracking_server
    arguments = [a for a in store_args(tmp_path, mnist_dir) if not a.startswith("mlflow.tracking_uri")]
    result = run_cli(
        "src.train", "-m", "optimizer=adam,sgd", *SMALL, *arguments, cwd=tmp_path, env={"MLFLOW_TRACKING_URI": url}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (tmp_path / "mlflow.db").exists() and (server_dir / "mlflow.db").is_file()

    client = MlflowClient(url)
    experiment = client.get_experiment_by_name("mnist-optimizers")
    assert experiment.artifact_location.startswith("mlflow-artifacts:")  # proxied by the server
    runs = client.search_runs([experiment.experiment_id])
    [parent] = [r for r in runs if r.data.tags.get("sweep") == "parent"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "FINISHED"
    assert sorted(c.data.params["optimizer"] for c in children) == ["adam", "sgd"]
    assert all(c.info.status == "FINISHED" for c in children)

    adam = next(c for c in children if c.data.params["optimizer"] == "adam")
    best = client.download_artifacts(adam.info.run_id, "checkpoints/best.keras", str(tmp_path / "download"))
    model = keras.saving.load_model(best, safe_mode=True)
    arrays = data.read_npz(mnist_dir / data.FILE_NAME)
    predicted = np.argmax(model.predict(arrays["x_test"][:500].astype("float32"), verbose=0), axis=1)
    assert (predicted == arrays["y_test"][:500]).mean() > 0.8
    assert any((server_dir / "artifacts").rglob("best.keras"))  # stored by the server, not by the client


@pytest.fixture
def ray_head():
    """A real Ray head node on 127.0.0.1, as `ray start --head` starts it on a cluster's head machine."""
    ray = str(Path(sys.executable).parent / "ray")
    port = free_port()
    environment = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    start = [ray, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2"]
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # Ray's socket paths must stay under 108 bytes
    start += ["--include-dashboard=false", f"--temp-dir={temp_dir}"]
    # Started from its own folder: the workers' cwd is not the driver's, as on another machine.
    started = subprocess.run(start, capture_output=True, text=True, env=environment, timeout=180, cwd=temp_dir)
    assert started.returncode == 0, started.stderr[-3000:]
    yield f"127.0.0.1:{port}"
    subprocess.run([ray, "stop", "--force"], capture_output=True, env=environment, timeout=120)
    shutil.rmtree(temp_dir, ignore_errors=True)


def test_sweep_on_a_ray_cluster_gives_children_of_one_parent(ray_head: str, tmp_path: Path, mnist_dir: Path) -> None:
    result = run_cli(
        "src.train",
        "-m",
        "hydra/launcher=ray_cluster",
        "optimizer=adam,sgd",
        *SMALL,
        *store_args(tmp_path, mnist_dir),
        cwd=tmp_path,
        env={"RAY_ADDRESS": ray_head, "RAY_USAGE_STATS_ENABLED": "0"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "(_run_job pid=" in result.stdout + result.stderr  # the jobs ran as Ray tasks, in Ray workers
    parent, children = split_parent(all_runs(tmp_path))
    assert parent.info.status == "FINISHED"
    assert sorted(c.data.params["optimizer"] for c in children) == ["adam", "sgd"]
    assert [c.info.status for c in children] == ["FINISHED", "FINISHED"]
    # No shared disk needed: the workers (started by `ray start`, not by the driver, so without its
    # environment) learned their parent from the job config Ray shipped them, not from a file.
    assert not list(tmp_path.rglob("mlflow_sweep.json"))
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)


def test_optuna_search_is_one_parent_with_a_child_per_trial(tmp_path: Path, mnist_dir: Path) -> None:
    result = run_cli(
        "src.train",
        "hparams_search=learning_rate",
        "optimizer=rmsprop",
        "hydra.sweeper.n_trials=3",
        "data.limit=2000",
        "train.epochs=1",
        "data.fetch_if_missing=false",
        *store_args(tmp_path, mnist_dir),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    parent, children = split_parent(all_runs(tmp_path))
    assert parent.info.run_name.startswith("hparams_search=learning_rate optimizer=rmsprop")
    rates = [float(c.data.params["optimizer.learning_rate"]) for c in children]
    assert len(set(rates)) == 3 and all(1e-4 <= rate <= 0.1 for rate in rates)
    assert all(c.data.params["optimizer"] == "rmsprop" and c.info.status == "FINISHED" for c in children)
    best = max(children, key=lambda c: c.data.metrics["best_val_accuracy"])
    assert parent.data.tags["best_child_run_id"] == best.info.run_id
    assert "Best parameters" in result.stdout + result.stderr

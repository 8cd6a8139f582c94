"""The model registry and serving: register_best's versions, tags and champion rule (src/tracking/registry.py),
the logged model taking mnist.npz's uint8 images quietly, and `make serve` answering over HTTP."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from src.tracking.server import free_port, stop_group, wait_healthy
from src.training.config import PROJECT_ROOT, registered_model_name_problem
from tests.conftest import Sweep, run_main, store_with_tables, tracking_uri

NAMES = ["mnist-optimizers", "a b", "model.v2", "x..", "", "  ", "a/b", "a:b", ".", "..", "../x", "a@b", "it's"]


def test_a_name_mlflow_rejects_is_rejected_before_anything_runs(tmp_path: Path) -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.utils.validation import _validate_model_name

    for name in NAMES:
        try:
            _validate_model_name(name)
        except MlflowException:
            assert registered_model_name_problem(name), name
    assert registered_model_name_problem("mnist-optimizers") is None
    assert registered_model_name_problem("a@b")  # would break models:/<name>@champion

    result = run_main("src.train", "mlflow.registered_model_name=team/best", f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: invalid config: mlflow.registered_model_name='team/best' is invalid")
    assert not list(tmp_path.glob("*.db"))


def test_serve_without_a_champion_or_with_a_taken_port_says_what_to_do(tmp_path: Path) -> None:
    missing = run_main(
        "src.tracking.serve",
        "--port",
        str(free_port()),
        cwd=tmp_path,
        env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/none.db"},
    )
    assert missing.returncode == 1
    [line] = missing.stderr.strip().splitlines()
    assert line.startswith("error: no MLflow store at") and "make run" in line and "mlflow.register=true" in line
    assert not (tmp_path / "none.db").exists()  # looking did not create a store

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = run_main("src.tracking.serve", "--port", str(port), cwd=tmp_path)
    assert busy.returncode == 1
    [line] = busy.stderr.strip().splitlines()
    assert line.startswith(f"error: port {port} on 127.0.0.1 is not available") and "SERVE_PORT=" in line


@pytest.fixture
def store(tmp_path: Path):
    """A fresh SQLite store as the current tracking URI (what register_best uses), restored afterwards."""
    with tracking_uri(store_with_tables(tmp_path)) as uri:
        yield uri


def _logged_runs(count: int, artifacts: Path) -> list[str]:
    """`count` runs, each with the logged model of src.train (an untrained MLP: the registry does not care)."""
    import mlflow

    from src.tracking import log_keras_model
    from src.training.models import mlp

    # An experiment created without an artifact location keeps its artifacts in ./mlruns: the checkout.
    mlflow.set_experiment(experiment_id=mlflow.create_experiment("registry-test", artifact_location=artifacts.as_uri()))
    model = mlp()
    run_ids = []
    for index in range(count):
        tags = {"config_hash": f"hash{index}", "data_sha256": "sha", "setting": f"optimizer=opt{index}"}
        with mlflow.start_run(tags=tags) as run:
            log_keras_model(model)
        run_ids.append(run.info.run_id)
    return run_ids


@pytest.mark.slow
def test_champion_moves_only_on_a_resolved_improvement(store: str, mnist_dir: Path, tmp_path: Path, capfd) -> None:
    import mlflow
    from mlflow import MlflowClient

    from src.tracking.registry import champion, register_best
    from src.training import data

    first, unresolved, better, one_seed = _logged_runs(4, tmp_path / "artifacts")
    client = MlflowClient()

    message = register_best(first, [0.950, 0.952, 0.951])
    assert message.startswith("Registered mnist-optimizers version 1") and "champion (the first one)" in message
    assert str(champion("mnist-optimizers").version) == "1"

    message = register_best(unresolved, [0.953, 0.949, 0.955])  # higher mean, within the noise
    assert "champion stays version 1" in message and "not resolved" in message, message
    assert str(champion("mnist-optimizers").version) == "1"

    message = register_best(better, [0.970, 0.972, 0.971])
    assert "new champion" in message and "resolved" in message, message
    assert str(champion("mnist-optimizers").version) == "3"
    assert "already" in register_best(better, [0.970, 0.972, 0.971])  # the same run again: no new version
    assert len(client.search_model_versions("name = 'mnist-optimizers'")) == 3

    version = client.get_model_version("mnist-optimizers", "3")
    assert version.run_id == better
    assert version.tags["run_id"] == better and version.tags["config_hash"] == "hash2"
    assert version.tags["data_sha256"] == "sha" and version.tags["setting"] == "optimizer=opt2"
    assert json.loads(version.tags["test_accuracy_values"]) == [0.970, 0.972, 0.971]
    assert version.tags["test_accuracy_n"] == "3" and float(version.tags["test_accuracy_mean"]) == pytest.approx(0.971)
    assert float(version.tags["test_accuracy_std"]) == pytest.approx(0.001)

    # One seed on either side resolves nothing: the first version of a model is champion, the next is not.
    assert "the first one" in register_best(one_seed, [0.90], model_name="one-seed")
    message = register_best(better, [0.970, 0.972, 0.971], model_name="one-seed")
    assert "champion stays version 1" in message and "by hand" in message, message

    # The champion takes mnist.npz's uint8 images as they are, and predicts without a progress bar.
    images = data.read_npz(mnist_dir / data.FILE_NAME)["x_test"][:10]
    model = mlflow.pyfunc.load_model("models:/mnist-optimizers@champion")
    capfd.readouterr()
    assert np.asarray(model.predict(images)).shape == (10, 10)
    printed = capfd.readouterr()
    assert "/step" not in printed.out + printed.err


@pytest.mark.slow
def test_make_serve_answers_with_the_champions_classes(optimizer_sweep: Sweep, tmp_path: Path, mnist_dir: Path) -> None:
    import keras

    from src.tracking.registry import register_best
    from src.training import data

    run = optimizer_sweep.children[0]  # adam, trained by the shared sweep; registered in a copy of its store
    with tracking_uri(optimizer_sweep.copy_store(tmp_path)) as uri:
        assert "champion" in register_best(run.info.run_id, [run.data.metrics["test_accuracy"]])

    images = data.read_npz(mnist_dir / data.FILE_NAME)["x_test"][:10]
    kept = Path(run.data.tags["output_dir"]) / run.data.tags["model_file"]  # the run's one model (docs/mlflow.md)
    expected = np.argmax(keras.saving.load_model(kept, safe_mode=True).predict(images, verbose=0), axis=1)

    port = free_port()
    environment = {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log:
        server = subprocess.Popen(
            ["make", "-s", "-o", ".venv/.installed", "serve", f"SERVE_PORT={port}"],
            cwd=PROJECT_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environment,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, server, 240, log_path, path="/ping", what="make serve")

        status, answer = _post(f"{url}/invocations", {"inputs": images.tolist()})
        assert status == 200, answer
        assert np.argmax(np.asarray(answer["predictions"]), axis=1).tolist() == expected.tolist()

        status, answer = _post(f"{url}/invocations", {"inputs": [[1, 2, 3]]})  # not a 28x28 image
        assert 400 <= status < 500 and "shape" in answer["message"].lower(), answer
        status, answer = _post(f"{url}/invocations", b'{"inputs": [')  # not JSON
        assert 400 <= status < 500 and answer["message"], answer
        status, answer = _post(f"{url}/invocations", {"inputs": images[:2].tolist()})  # still serving
        assert status == 200 and len(answer["predictions"]) == 2

        again = run_main("src.tracking.serve", "--port", str(port), cwd=tmp_path, env={"MLFLOW_TRACKING_URI": uri})
        assert again.returncode == 1 and "is not available" in again.stderr
        log_text = log_path.read_text()
        assert f"Serving mnist-optimizers version 1 (run {run.info.run_id}" in log_text
        assert "/step" not in log_text  # predict is quiet
    finally:
        stop_group(server)


def _post(url: str, payload: object) -> tuple[int, dict]:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())

"""The team tracking server on real parts: PostgreSQL 15 (`make db`'s Cluster), `make server AUTH=1`
(MLflow's basic-auth app), sweeps and concurrent clients against it (jobs racing to insert the same
dataset included), a killed server, bad input.

One PostgreSQL cluster and one access-controlled server serve the whole module (their start-up is
the slow part); each test makes its own experiment. Every service binds 127.0.0.1 on a free port
and is stopped in a fixture's finally.
"""

from __future__ import annotations

import importlib.util
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import keras
import numpy as np
import pytest
import requests
from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag
from mlflow.exceptions import MlflowException

from benchmarks.server_load import check_runs, run_clients
from src.infra.postgres import PG_BIN, Cluster
from src.tracking.server import free_port, wait_healthy
from src.tracking.store import is_duplicate_insert, retry_duplicate_insert
from src.training import data
from tests.conftest import SMALL, run_cli

psycopg = pytest.importorskip("psycopg", reason="the postgres extra is not installed (make install installs it)")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("flask_wtf") is None,
        reason="the auth extra is not installed (make install installs it)",
    ),
    pytest.mark.skipif(
        not (PG_BIN / "initdb").is_file(),
        reason=f"no PostgreSQL server binaries in {PG_BIN} (apt-get install postgresql, or set PG_BIN)",
    ),
]

ROOT = Path(__file__).parent.parent
EPOCH_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")


@pytest.fixture(scope="module")
def postgres() -> Iterator[Cluster]:
    """A throwaway PostgreSQL cluster, as `make db` starts one. pytest's tmp_path is private to root
    (mode 700), out of reach of the `postgres` user, so the cluster lives in a folder of its own."""
    folder = Path(tempfile.mkdtemp(prefix="pg-test-", dir="/tmp"))
    folder.chmod(0o755)
    cluster = Cluster(folder / "db")
    try:
        yield cluster.start()
    finally:
        cluster.remove()
        shutil.rmtree(folder, ignore_errors=True)


class Server:
    """`make server AUTH=1` on the cluster, with proxied artifacts; the admin password is made up here
    and reaches the server through the environment only."""

    def __init__(self, folder: Path, cluster: Cluster) -> None:
        self.folder = folder
        self.cluster = cluster
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin = ("admin", secrets.token_urlsafe(16))
        self.log = folder / "server.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        command = ["make", "-s", "-o", ".venv/.installed", "server", f"SERVER_PORT={self.port}"]
        command += [f"SERVER_DIR={self.folder}", f"SERVER_STORE={self.cluster.uri()}", "AUTH=1"]
        command += [f"DB_DIR={self.cluster.folder}"]  # make server passes its pgpass as PGPASSFILE
        environment = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "MLFLOW_AUTH_ADMIN_PASSWORD": self.admin[1],
        }
        output = self.log.open("a")
        self.process = subprocess.Popen(
            command, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT, env=environment, start_new_session=True
        )
        wait_healthy(self.url, self.process, 180, self.log)

    def kill(self, signal_number: int = signal.SIGKILL) -> None:
        """Signal the server and everything it started (its process group), then reap it."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal_number)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def api(self, method: str, path: str, **json: object) -> dict:
        """The admin's REST API: users (/api/2.0/mlflow/users/...), permissions (/api/3.0/...)."""
        response = requests.request(method, f"{self.url}/api/{path}", json=json, auth=self.admin, timeout=120)
        assert response.ok, (path, response.status_code, response.text[:300])
        return response.json() if response.content else {}

    def user(self, experiment_id: str, permission: str) -> tuple[str, str]:
        """A new user holding `permission` (READ, EDIT, ...) on the experiment."""
        username, password = f"user-{secrets.token_hex(4)}", secrets.token_urlsafe(16)
        self.api("POST", "2.0/mlflow/users/create", username=username, password=password)
        self.api(
            "POST",
            "3.0/mlflow/users/permissions/grant",
            username=username,
            resource_type="experiment",
            resource_id=experiment_id,
            permission=permission,
        )
        return username, password

    def experiment(self, name: str) -> str:
        return self.api("POST", "2.0/mlflow/experiments/create", name=name)["experiment_id"]


@pytest.fixture(scope="module")
def server(postgres: Cluster) -> Iterator[Server]:
    folder = Path(tempfile.mkdtemp(prefix="server-test-"))
    server = Server(folder, postgres)
    try:
        server.start()
        yield server
    finally:
        server.kill(signal.SIGTERM)
        shutil.rmtree(folder, ignore_errors=True)


def as_user(monkeypatch: pytest.MonkeyPatch, credentials: tuple[str, str]) -> dict[str, str]:
    """Log in this process (MLflow's client reads the variables per request) and return them for others."""
    env = {"MLFLOW_TRACKING_USERNAME": credentials[0], "MLFLOW_TRACKING_PASSWORD": credentials[1]}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def sweep_args(folder: Path, mnist_dir: Path, experiment: str) -> list[str]:
    return [
        *SMALL,
        "callbacks.tensorboard.enabled=false",
        f"mlflow.experiment_name={experiment}",
        f"hydra.sweep.dir={folder}/multirun",
        f"hydra.run.dir={folder}/outputs",
        f"data.dir={mnist_dir}",
        f"train.state_dir={folder}/state",
    ]


def parent_and_children(client: MlflowClient, experiment_id: str):
    runs = client.search_runs([experiment_id], max_results=1000)
    [parent] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == len(runs) - 1
    return parent, sorted(children, key=lambda r: int(r.data.tags["job_num"]))


def epochs_logged(client: MlflowClient, run_id: str) -> dict[str, list[int]]:
    return {key: sorted(m.step for m in client.get_metric_history(run_id, key)) for key in EPOCH_METRICS}


def test_parallel_sweep_of_an_edit_user_lands_in_postgres(
    server: Server, postgres: Cluster, tmp_path: Path, mnist_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    experiment_id = server.experiment("sweep")
    env = as_user(monkeypatch, server.user(experiment_id, "EDIT"))
    result = run_cli(
        "src.train",
        "-m",
        "optimizer=adam,sgd,rmsprop",  # three jobs at once, logging the same dataset
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=3",
        *sweep_args(tmp_path, mnist_dir, "sweep"),
        cwd=tmp_path,
        env={"MLFLOW_TRACKING_URI": server.url, **env},
    )
    assert result.returncode == 0, result.stderr[-3000:]

    client = MlflowClient(server.url)
    parent, children = parent_and_children(client, experiment_id)
    assert parent.info.status == "FINISHED" and len(children) == 3
    assert all(child.info.status == "FINISHED" for child in children)
    for child in children:
        assert epochs_logged(client, child.info.run_id) == {key: [0, 1] for key in EPOCH_METRICS}
    with psycopg.connect(postgres.uri(with_password=True)) as connection:  # the runs are in PostgreSQL
        [(count,)] = connection.execute("SELECT count(*) FROM runs WHERE experiment_id = %s", (int(experiment_id),))
    assert count == 4

    adam = next(c for c in children if c.data.params["optimizer"] == "adam")
    best = client.download_artifacts(adam.info.run_id, "checkpoints/best.keras", str(tmp_path / "download"))
    model = keras.saving.load_model(best, safe_mode=True)
    arrays = data.read_npz(mnist_dir / data.FILE_NAME)
    predicted = np.argmax(model.predict(arrays["x_test"][:500], verbose=0), axis=1)
    assert (predicted == arrays["y_test"][:500]).mean() > 0.7
    assert any(server.folder.joinpath("artifacts").rglob("best.keras"))  # stored by the server


def test_jobs_logging_one_dataset_at_once_never_fail(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sweep's race, pinned down: clients released together by a barrier log the same new dataset to
    their own runs. MLflow's store looks the dataset up, then inserts it, so without a retry some of them
    die of dataset_pk; through retry_duplicate_insert (what log_datasets uses) every call succeeds and
    every run holds every input.

    A race is not a certainty: each half runs rounds until it has seen a collision (a raw call dying, a
    retried call needing a second attempt), up to 50 rounds. A half that saw none proves nothing, and
    the test says so (a skip naming it) rather than passing."""
    experiment_id = server.experiment("dataset-race")
    as_user(monkeypatch, server.user(experiment_id, "EDIT"))
    client = MlflowClient(server.url)
    clients, max_rounds = 4, 50
    run_ids = [client.create_run(experiment_id).info.run_id for _ in range(clients)]
    barrier = threading.Barrier(clients)

    def log(run_id: str, digest: str, retried: bool) -> tuple[int, MlflowException | None]:
        """(attempts made, the error that ended the call or None)."""
        dataset = Dataset("race", digest, source_type="local", source='{"uri": "mnist.npz"}')
        inputs = [DatasetInput(dataset, [InputTag("mlflow.data.context", "test")])]
        attempts = 0

        def call() -> None:
            nonlocal attempts
            attempts += 1
            client.log_inputs(run_id, inputs)

        barrier.wait(timeout=60)
        try:
            if retried:
                retry_duplicate_insert(call)
            else:
                call()
        except MlflowException as error:
            return attempts, error
        return attempts, None

    def race(retried: bool) -> tuple[int, int, list[MlflowException]]:
        """Rounds until one collided: (rounds run, calls that collided, errors)."""
        errors, collided = [], 0
        with ThreadPoolExecutor(clients) as pool:
            for round_number in range(1, max_rounds + 1):
                digest = f"{'retried' if retried else 'raw'}-{round_number}-{secrets.token_hex(4)}"
                results = list(pool.map(log, run_ids, [digest] * clients, [retried] * clients))
                errors += [error for _, error in results if error is not None]
                collided += sum(1 for attempts, error in results if error is not None or attempts > 1)
                if collided:
                    return round_number, collided, errors
        return max_rounds, 0, errors

    rounds, collided, raw = race(retried=False)
    if not collided:
        pytest.skip(f"no raw log_inputs call collided in {rounds} rounds of {clients}: the race was not provoked")
    assert all(is_duplicate_insert(error) for error in raw), raw[:1]  # the race is the only way to fail here
    print(f"without the retry, {len(raw)} of {clients * rounds} calls died of the race ({rounds} rounds)")

    rounds, collided, errors = race(retried=True)
    assert errors == [], errors[:1]
    if not collided:
        pytest.skip(f"no retried call collided in {rounds} rounds of {clients}: the retry was never exercised")
    print(f"with the retry, {collided} of {clients * rounds} calls collided and retried, none failed")
    for run_id in run_ids:
        digests = [i.dataset.digest for i in client.get_run(run_id).inputs.dataset_inputs]
        assert len([d for d in digests if d.startswith("retried-")]) == rounds


def test_access_control_refuses_strangers_and_readers(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    experiment_id = server.experiment("guarded")
    search = f"{server.url}/api/2.0/mlflow/experiments/get?experiment_id={experiment_id}"
    assert requests.get(search, timeout=60).status_code == 401  # no credentials
    assert requests.get(search, auth=(server.admin[0], "not-the-password"), timeout=60).status_code == 401

    reader = server.user(experiment_id, "READ")
    assert requests.get(search, auth=reader, timeout=60).status_code == 200  # may read
    as_user(monkeypatch, reader)
    client = MlflowClient(server.url)
    with pytest.raises(MlflowException) as refused:
        client.create_run(experiment_id)
    assert refused.value.error_code == "PERMISSION_DENIED"  # 403: may not log to it


def test_concurrent_clients_lose_nothing(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    experiment_id = server.experiment("load")
    env = as_user(monkeypatch, server.user(experiment_id, "EDIT"))
    clients, points = 4, 300
    result = run_clients(server.url, experiment_id, clients, points, batch=50, env=env)
    check_runs(server.url, result["run_ids"], points)
    print(
        f"{clients} clients x {points} values: {result['values_per_s']:.0f} values/s, "
        f"log_batch p95 {result['p95_ms']:.0f} ms"
    )


def test_server_killed_mid_job_and_restarted(
    server: Server, postgres: Cluster, tmp_path: Path, mnist_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL the whole server (as a crash or OOM kill would) while a job logs epochs, restart it at
    once: MLflow's client retries a refused connection for ~4 min (by default 7 retries, backoff factor 2),
    so the job rides it out and ends FINISHED with every epoch logged. The job here retries over the same
    window in finer steps (9 retries, factor 1: waits of 1, 2, 4, ... 128 s), so that it carries on within
    seconds of the restart instead of waiting out the default's next 16 or 32 s step."""
    experiment_id = server.experiment("fault")
    env = as_user(monkeypatch, server.user(experiment_id, "EDIT"))
    epochs = 8
    arguments = ["-m", "optimizer=adam", *sweep_args(tmp_path, mnist_dir, "fault"), f"train.epochs={epochs}"]
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": server.url, **env}
    environment |= {"MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "9"}
    log = tmp_path / "job.log"
    command = [sys.executable, "-m", "src.train", *arguments]
    job = subprocess.Popen(command, cwd=tmp_path, env=environment, stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        # Read PostgreSQL directly (the server is the thing under test) until the job has logged an epoch.
        deadline = time.monotonic() + 180
        query = (
            "SELECT count(*) FROM metrics m JOIN runs r ON m.run_uuid = r.run_uuid "
            "WHERE r.experiment_id = %s AND m.key = 'loss'"
        )
        with psycopg.connect(postgres.uri(with_password=True), autocommit=True) as connection:
            while connection.execute(query, (int(experiment_id),)).fetchone()[0] == 0:
                assert job.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
                time.sleep(0.2)
        server.kill(signal.SIGKILL)
        killed_at = time.monotonic()
        assert job.poll() is None, "the job ended before the server was killed: give it more epochs"
        server.start()
        restarted_after = time.monotonic() - killed_at
        returncode = job.wait(timeout=400)
    finally:
        if job.poll() is None:
            job.kill()
    output = log.read_text()
    print(f"server back after {restarted_after:.0f} s; job ended {time.monotonic() - killed_at:.0f} s after the kill")
    assert returncode == 0, output[-3000:]

    client = MlflowClient(server.url)
    parent, [child] = parent_and_children(client, experiment_id)
    assert parent.info.status == child.info.status == "FINISHED"
    assert epochs_logged(client, child.info.run_id) == {key: list(range(epochs)) for key in EPOCH_METRICS}
    assert "test_accuracy" in child.data.metrics
    assert "checkpoints/best.keras" in [f.path for f in client.list_artifacts(child.info.run_id, "checkpoints")]


def one_line_error(result: subprocess.CompletedProcess, secret: str) -> str:
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert secret not in output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    return lines[0]


def test_bad_server_and_database_input_fails_in_one_line_within_seconds(
    server: Server, postgres: Cluster, tmp_path: Path, mnist_dir: Path
) -> None:
    secret = "not-the-password-" + secrets.token_hex(4)
    down = free_port()
    cases = {
        "no scheme": ({}, f"mlflow.tracking_uri=127.0.0.1:{server.port}", r"has no scheme: write http://127\.0\.0\.1"),
        "postgres down": (
            {},
            f"mlflow.tracking_uri=postgresql://mlflow:{secret}@127.0.0.1:{down}/mlflow",
            r"no PostgreSQL answers at 127\.0\.0\.1:\d+ \(connection refused\); start it",
        ),
        "postgres password": (
            {},
            f"mlflow.tracking_uri=postgresql://mlflow:{secret}@127.0.0.1:{postgres.port}/mlflow",
            r"mlflow:\*\*\*@.*PostgreSQL refused the password of user 'mlflow'",
        ),
        "mlflow password": (
            {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": secret},
            f"mlflow.tracking_uri={server.url}",
            r"refused the login of user 'admin' \(401\); set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD",
        ),
    }
    for name, (env, override, expected) in cases.items():
        started = time.monotonic()
        result = run_cli("src.train", override, *sweep_args(tmp_path, mnist_dir, "bad"), cwd=tmp_path, env=env)
        seconds = time.monotonic() - started
        line = one_line_error(result, secret)
        assert re.search(expected, line), (name, line)
        # MLflow alone retries for minutes; ~5 s here idle, most of it imports: 120 s leaves room for a loaded CI
        assert seconds < 120, (name, seconds)

    # The server side: `make server` on a PostgreSQL that refuses the password stops at once, in one line.
    store = f"postgresql://mlflow:{secret}@127.0.0.1:{postgres.port}/mlflow"
    make = ["make", "-s", "-o", ".venv/.installed", "server", f"SERVER_STORE={store}", f"SERVER_PORT={free_port()}"]
    make += [f"SERVER_DIR={tmp_path / 'refused'}", f"DB_DIR={tmp_path / 'no-db'}"]
    environment = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(make, cwd=ROOT, capture_output=True, text=True, env=environment, timeout=60)
    assert secret not in result.stdout + result.stderr
    assert "SERVER_STORE='postgresql://mlflow:***@" in result.stderr and "refused the password" in result.stderr

"""No secret in the run store: a sweep given a PostgreSQL password on the command line leaves no trace
of it in anything MLflow keeps for its runs, nor in what the command prints.

First the masking rule in-process (every form a URI takes: an override, Hydra's escaped record, YAML, a
log record). Then one real set-up shared by the slow tests: a PostgreSQL cluster (`make db`'s Cluster)
as the tracking store, its password given as `mlflow.tracking_uri=postgresql://mlflow:<password>@...`,
and a sweep of two tiny jobs; every place is searched: the database itself (pg_dump), tags, params,
metric names, run names, dataset inputs, every artifact's bytes, the command's stdout and stderr.
"""

from __future__ import annotations

import importlib.util
import io
import logging
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from src.infra.errors import ConfigError, exit_on_user_error
from src.infra.masking import MaskedStream
from src.infra.postgres import PG_BIN, Cluster
from src.tracking.store import mask_log_records, mask_uri, masked_config
from tests.conftest import run_cli, run_main

EXPERIMENT = "secrets"


def test_mask_uri_masks_the_password_of_every_uri_in_a_text() -> None:
    cases = {
        "postgresql://ana:s3cret@db:5432/mlflow": "postgresql://ana:***@db:5432/mlflow",
        "mlflow.tracking_uri=postgresql+psycopg://ana:s3cret@db/mlflow train.epochs=1": (
            "mlflow.tracking_uri=postgresql+psycopg://ana:***@db/mlflow train.epochs=1"
        ),
        # how Hydra writes a job's overrides back (task overrides, overrides.yaml, the launcher's log line)
        r"mlflow.tracking_uri=postgresql\://ana\:s3cret@db\:5432/mlflow": r"mlflow.tracking_uri=postgresql\://ana\:***@db\:5432/mlflow",
        "  tracking_uri: 'http://ana:s3cret@host:5000'\n  x: http://bob:other@h": (
            "  tracking_uri: 'http://ana:***@host:5000'\n  x: http://bob:***@h"
        ),
        "postgresql://ana:s3@cret@db/mlflow": "postgresql://ana:***@db/mlflow",  # a raw @: all of it masked
    }
    for text, masked in cases.items():
        assert mask_uri(text) == masked
    for clean in ("sqlite:////tmp/mlflow.db", "postgresql://mlflow@127.0.0.1:5432/mlflow", "http://h:5000/a@b"):
        assert mask_uri(clean) == clean


def test_masked_config_masks_every_string_value() -> None:
    cfg = OmegaConf.create(
        {
            "mlflow": {"tracking_uri": "postgresql://ana:s3cret@db/m", "tags": {"backup": "s3://k:s3cret@b/x"}},
            "paths": ["http://ana:s3cret@h"],
            "train": {"epochs": 2},
        }
    )
    masked = masked_config(cfg)
    assert "s3cret" not in str(masked) and masked["train"]["epochs"] == 2
    assert masked["mlflow"]["tracking_uri"] == "postgresql://ana:***@db/m"


def test_log_records_are_masked_whoever_logs_them(caplog: pytest.LogCaptureFixture) -> None:
    previous = logging.getLogRecordFactory()
    try:
        mask_log_records()
        installed = logging.getLogRecordFactory()
        mask_log_records()  # a second call (every job calls it) installs nothing more
        assert logging.getLogRecordFactory() is installed
        with caplog.at_level(logging.INFO):
            logging.getLogger("hydra.launcher").info("\t#%d : %s", 0, "x=postgresql://ana:s3cret@db/m")
        assert caplog.messages == ["\t#0 : x=postgresql://ana:***@db/m"]
        # a malformed call still makes its record (logging, not the factory, reports the mistake)
        record = installed("other", logging.INFO, __file__, 1, "%d", ("not a number",), None)
        assert record.msg == "%d"
    finally:
        logging.setLogRecordFactory(previous)


def test_a_one_line_error_prints_a_password_masked() -> None:
    """What the entry points print for a UserError (SystemExit's message, which Python writes to stderr)."""
    with pytest.raises(SystemExit) as exited, exit_on_user_error():
        raise ConfigError("mlflow.tracking_uri='postgresql://ana:s3cret@db:5432/m' does not answer")
    assert exited.value.code == "error: mlflow.tracking_uri='postgresql://ana:***@db:5432/m' does not answer"


def test_a_bad_override_of_compare_is_one_masked_line(tmp_path: Path) -> None:
    """Hydra's parse error quotes the whole override, the password in it; its next lines repeat it."""
    done = run_main("src.stages.compare", "mlflow.tracking_uri=postgresql://ana:s3cret@db:5432/m[", cwd=tmp_path)
    assert done.returncode == 1 and "s3cret" not in done.stdout + done.stderr
    [line] = done.stderr.strip().splitlines()
    assert (
        line
        == "error: src.stages.compare: Error parsing override 'mlflow.tracking_uri=postgresql://ana:***@db:5432/m['"
    )


def test_a_masked_stream_masks_what_it_writes_and_passes_on_the_rest() -> None:
    written = io.StringIO()
    stream = MaskedStream(written)
    text = "override 'x=postgresql://ana:s3cret@db/m' is bad\n"
    assert stream.write(text) == len(text)  # what the caller wrote, as TextIO.write promises
    stream.flush()  # anything else is the wrapped stream's
    assert written.getvalue() == "override 'x=postgresql://ana:***@db/m' is bad\n"


@pytest.mark.slow  # the command line is what is under test: Hydra prints this error before any code of ours
@pytest.mark.parametrize("full_error", ["", "1"])
def test_hydras_own_parse_error_of_src_train_shows_the_password_masked(tmp_path: Path, full_error: str) -> None:
    done = run_cli(
        "src.train",
        "mlflow.tracking_uri=postgresql://ana:s3cret@db/m[",
        cwd=tmp_path,
        env={"HYDRA_FULL_ERROR": full_error},
    )
    assert done.returncode == 1 and "s3cret" not in done.stdout + done.stderr
    assert "Error parsing override 'mlflow.tracking_uri=postgresql://ana:***@db/m['" in done.stderr


@dataclass
class Sweep:
    cluster: Cluster
    password: str
    uri: str  # with the password: only this test may hold it
    artifacts: Path
    output: str  # the command's stdout and stderr
    returncode: int


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> Iterator[Sweep]:
    """`python -m src.train -m optimizer=adam,sgd` on 500 images for 1 epoch, the password on its command line."""
    if importlib.util.find_spec("psycopg") is None:
        pytest.skip("the postgres extra is not installed (make install installs it)")
    if not (PG_BIN / "initdb").is_file():
        pytest.skip(f"no PostgreSQL server binaries in {PG_BIN} (apt-get install postgresql, or set PG_BIN)")
    folder = Path(tempfile.mkdtemp(prefix="pg-secrets-", dir="/tmp"))  # reachable by the `postgres` user
    folder.chmod(0o755)
    cluster = Cluster(folder / "db")
    try:
        cluster.start()
        uri = cluster.uri(with_password=True)
        work = tmp_path_factory.mktemp("secrets")
        result = run_cli(
            "src.train",
            "-m",
            "optimizer=adam,sgd",
            "data.limit=500",
            "train.epochs=1",
            "data.fetch_if_missing=false",
            f"data.dir={mnist_dir}",
            f"mlflow.tracking_uri={uri}",
            f"++mlflow.tags.backup_store=postgresql://backup:{cluster.password}@127.0.0.1:1/b",  # a user's own tag
            f"mlflow.artifact_location={work / 'artifacts'}",
            f"mlflow.experiment_name={EXPERIMENT}",
            f"hydra.sweep.dir={work / 'multirun'}",
            f"hydra.run.dir={work / 'outputs'}",
            f"train.state_dir={work / 'state'}",
            cwd=work,
            env={"PGPASSFILE": str(folder / "no-such-file")},  # the password must come from the URI
        )
        output = result.stdout + result.stderr
        yield Sweep(cluster, cluster.password, uri, work / "artifacts", output, result.returncode)
    finally:
        cluster.remove()
        shutil.rmtree(folder, ignore_errors=True)


def runs(sweep: Sweep) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(sweep.uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    return client.search_runs([experiment.experiment_id], max_results=100)


@pytest.mark.slow
def test_the_sweep_ran_and_its_record_shows_the_password_masked(sweep: Sweep) -> None:
    """Not vacuous: the runs exist, and the override that carried the password is there, masked."""
    assert sweep.returncode == 0, sweep.output[-3000:]
    found = runs(sweep)
    assert len(found) == 3 and {run.info.status for run in found} == {"FINISHED"}
    masked = ":***@127.0.0.1"  # a job's overrides as Hydra escapes them: postgresql\://mlflow\:***@127.0.0.1\:...
    assert all(masked in run.data.tags["hydra_overrides"] for run in found)
    children = [run for run in found if "mlflow.parentRunId" in run.data.tags]
    assert {run.data.tags["backup_store"] for run in children} == {"postgresql://backup:***@127.0.0.1:1/b"}
    overrides = list(sweep.artifacts.rglob("config/hydra/overrides.yaml"))
    assert len(overrides) == 2 and all(masked in path.read_text() for path in overrides)


@pytest.mark.slow
def test_no_password_in_tags_params_metric_names_or_inputs(sweep: Sweep) -> None:
    for run in runs(sweep):
        seen = [run.info.run_name, run.info.artifact_uri, *run.data.metrics]
        seen += [f"{key}={value}" for key, value in {**run.data.tags, **run.data.params}.items()]
        for dataset_input in run.inputs.dataset_inputs:
            dataset = dataset_input.dataset
            seen += [dataset.name, dataset.digest, dataset.source, dataset.schema or "", dataset.profile or ""]
            seen += [f"{tag.key}={tag.value}" for tag in dataset_input.tags]
        assert not [text for text in seen if sweep.password in text], run.info.run_id


@pytest.mark.slow
def test_no_password_in_any_artifact(sweep: Sweep, tmp_path: Path) -> None:
    """Every artifact of every run, downloaded through MLflow, and every file under the artifact root."""
    from mlflow import MlflowClient

    client = MlflowClient(sweep.uri)
    for run in runs(sweep):
        client.download_artifacts(run.info.run_id, "", str(tmp_path / run.info.run_id))
    downloaded = [path for path in tmp_path.rglob("*") if path.is_file()]
    stored = [path for path in sweep.artifacts.rglob("*") if path.is_file()]
    assert len(downloaded) > 10 and len(stored) >= len(downloaded)  # config, hydra record, logs, model, ...
    secret = sweep.password.encode()
    assert [str(path) for path in downloaded + stored if secret in path.read_bytes()] == []


@pytest.mark.slow
def test_no_password_anywhere_in_the_database(sweep: Sweep) -> None:
    """The whole `mlflow` database, every table, as pg_dump writes it out."""
    dump = subprocess.run(
        [str(PG_BIN / "pg_dump"), "--data-only", "-d", sweep.uri],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert "hydra_overrides" in dump and "mlflow:***@" in dump  # the dump holds the runs' tags
    assert sweep.password not in dump


@pytest.mark.slow
def test_no_password_in_what_the_command_printed(sweep: Sweep) -> None:
    launched = [line for line in sweep.output.splitlines() if " : optimizer=" in line]  # Hydra lists each job
    assert len(launched) == 2 and all("mlflow.tracking_uri=" in line and ":***@" in line for line in launched)
    assert sweep.password not in sweep.output

"""Everything MLflow: where runs go, the run of one training job, and a sweep's parent run.

Run model:
- `python -m src.train ...` is one plain run.
- `python -m src.train -m ...` is one *parent* run (created by the Hydra callback `MlflowSweepCallback`
  on multirun start, named after the swept overrides) with every job a *child* (`mlflow.parentRunId`).
  When the sweep ends the parent gets `summary.csv`/`summary.md` (one row per child) and the best
  child's id as a tag.
- A job that raises ends FAILED, Ctrl-C/SIGTERM ends KILLED; the parent is closed in every case (on
  multirun end, or by an exit handler when Hydra stops early), so no run is ever left RUNNING.

mlflow is imported inside functions: config errors are reported before its ~2 s import.
"""

from __future__ import annotations

import atexit
import csv
import io
import json
import logging
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from src.config import flatten, validate
from src.errors import ConfigError, exit_on_user_error
from src.files import markdown_table, write_text_atomic

if TYPE_CHECKING:
    from mlflow import ActiveRun
    from mlflow.entities import Run

log = logging.getLogger(__name__)

# The sweep in progress, as JSON {"parent_run_id": ..., "swept": [keys]}: set by MlflowSweepCallback,
# read by each job. An environment variable reaches jobs in the same process (basic launcher) and in
# worker processes alike.
SWEEP_ENV = "MNIST_OPTIMIZERS_SWEEP"

# Overrides that say where things go or how the run is filed, not how it trains: left out of run names.
NOT_IN_RUN_NAMES = (
    "hydra.",
    "mlflow.",
    "data.dir",
    "data.fetch_if_missing",
    "data.cache_dir",
    "train.verbose",
    "train.resume",
    "train.skip_finished",
    "train.force",
    "train.state_dir",
)

# Columns of a sweep's summary, after the swept keys; all are metrics of the child runs.
SUMMARY_METRICS = ("test_accuracy", "best_val_accuracy", "best_epoch", "stopped_epoch", "train_seconds")


def mask_uri(uri: str) -> str:
    """`scheme://user:secret@host/...` -> `scheme://user:***@host/...`: safe to print, log or store."""
    parsed = urlparse(uri)
    if parsed.password is None:
        return uri
    netloc = parsed.netloc.replace(f":{parsed.password}@", ":***@", 1)
    return parsed._replace(netloc=netloc).geturl()


def check_reachable(tracking_uri: str, timeout: float = 3.0) -> None:
    """Fail within seconds, with a clear message, when a tracking server does not answer.

    MLflow itself retries a dead server with exponential backoff for minutes.
    """
    import socket

    parsed = urlparse(tracking_uri)
    if parsed.scheme not in ("http", "https"):
        return
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            pass
    except OSError as error:
        reason = getattr(error, "strerror", None) or type(error).__name__
        raise ConfigError(
            f"mlflow.tracking_uri={mask_uri(tracking_uri)!r}: no MLflow server answers there ({reason}); "
            "start one with `make server`, or unset MLFLOW_TRACKING_URI to use the local SQLite store"
        ) from None


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a `sqlite:///...` URI, else None."""
    if not tracking_uri.startswith("sqlite:"):
        return None
    return Path(unquote(urlparse(tracking_uri).path))


def artifact_location(mlflow_cfg: DictConfig) -> str | None:
    """Where a new experiment keeps artifacts: the configured place, else `mlartifacts/` beside the
    SQLite file (MLflow's own default is relative to the cwd); None lets a tracking server decide."""
    if mlflow_cfg.artifact_location:
        return str(mlflow_cfg.artifact_location)
    database = sqlite_path(str(mlflow_cfg.tracking_uri))
    if database is None:
        return None
    folder = re.sub(r"[^A-Za-z0-9._-]+", "_", str(mlflow_cfg.experiment_name))
    return str(database.parent / "mlartifacts" / folder)


def _prepare_sqlite(database: Path) -> None:
    """Create the folder and switch the database to write-ahead logging, so that parallel sweep jobs
    (joblib launcher) read while another writes; MLflow already waits up to 20 s for a write lock."""
    import sqlite3

    try:
        database.parent.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(database, timeout=20) as connection:
            connection.execute("PRAGMA journal_mode=WAL")
    except (OSError, sqlite3.Error) as error:
        raise ConfigError(f"mlflow.tracking_uri: cannot open the SQLite store {database} ({error})") from None


def use_experiment(mlflow_cfg: DictConfig) -> str:
    """Point MLflow at the configured store and experiment (created if new); return the experiment id."""
    # MLflow's Keras callback logs each epoch asynchronously. By default its logging thread polls an
    # empty queue with a 1 s timeout, and every end_run waits for that poll to time out (~0.5 s per
    # job). With a buffer it waits on its stop event instead, ends at once, and writes a batch per
    # second rather than a transaction per call. The environment variable still wins.
    os.environ.setdefault("MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS", "1")
    import mlflow

    tracking_uri = str(mlflow_cfg.tracking_uri)
    check_reachable(tracking_uri)
    database = sqlite_path(tracking_uri)
    if database is not None:
        _prepare_sqlite(database)
    mlflow.set_tracking_uri(tracking_uri)
    name = str(mlflow_cfg.experiment_name)
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return mlflow.create_experiment(name, artifact_location=artifact_location(mlflow_cfg))


def masked_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as a dict, with any password in the tracking URI masked."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    if "mlflow" in resolved:
        resolved["mlflow"]["tracking_uri"] = mask_uri(str(resolved["mlflow"]["tracking_uri"]))
    return resolved


def config_params(cfg: DictConfig, choices: Mapping[str, str]) -> dict[str, str]:
    """The resolved config flattened into MLflow params, plus each config group's choice.

    `optimizer=momentum` becomes the param `optimizer`, so a swept key and its param share a name.
    """
    resolved = masked_config(cfg)
    params = {key: str(value) for key, value in flatten(resolved)}
    params.update({group: str(choice) for group, choice in choices.items() if not group.startswith("hydra")})
    return params


# The same, as a file in the sweep dir: reaches jobs that a launcher starts in a fresh environment (Ray).
SWEEP_FILE = "mlflow_sweep.json"


def current_sweep() -> dict[str, Any]:
    """The sweep this process' jobs belong to: {"parent_run_id", "swept"}, or {} outside a sweep."""
    if os.environ.get(SWEEP_ENV):
        return json.loads(os.environ[SWEEP_ENV])
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        record = Path(HydraConfig.get().sweep.dir) / SWEEP_FILE
        if record.is_file():
            return json.loads(record.read_text())
    return {}


def override_key(override: str) -> str:
    """`+mlflow.tags.x=1` -> `mlflow.tags.x`: the config key a command-line override sets."""
    return override.split("=", 1)[0].lstrip("+~")


def job_run_name(task_overrides: Sequence[str], choices: Mapping[str, str]) -> str:
    """A short, readable run name: the swept overrides in a sweep (`optimizer=adam`), else the
    optimizer plus the command-line overrides."""
    swept = current_sweep().get("swept")
    if swept:
        return ",".join(o for o in task_overrides if override_key(o) in swept)
    shown = [o for o in task_overrides if not override_key(o).startswith(NOT_IN_RUN_NAMES)]
    if not any(override_key(o) == "optimizer" for o in shown):
        shown.insert(0, f"optimizer={choices.get('optimizer')}")
    return ",".join(shown)


def find_finished_run(experiment_id: str, config_hash: str) -> Run | None:
    """The newest FINISHED run of this config hash in the experiment, if any."""
    from mlflow import MlflowClient

    runs = MlflowClient().search_runs(
        [experiment_id],
        filter_string=f"tags.config_hash = '{config_hash}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def resumable_run_id(experiment_id: str, run_id: str | None) -> str | None:
    """`run_id` if it is an unfinished, undeleted run of this experiment (it may be from another store)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    if not run_id:
        return None
    try:
        run = MlflowClient().get_run(run_id)
    except MlflowException:
        return None
    ok = run.info.experiment_id == experiment_id and run.info.lifecycle_stage == "active"
    return run_id if ok and run.info.status != "FINISHED" else None


def adopt_into_sweep(run: Run) -> None:
    """Make a finished run a child of the sweep in progress (a rerun of a sweep links every job)."""
    from mlflow import MlflowClient

    parent_run_id = current_sweep().get("parent_run_id")
    previous_parent = run.data.tags.get("mlflow.parentRunId")
    if parent_run_id and parent_run_id != previous_parent:
        client = MlflowClient()
        if previous_parent:
            client.set_tag(run.info.run_id, "previous_parent_run_id", previous_parent)
        client.set_tag(run.info.run_id, "mlflow.parentRunId", parent_run_id)


def log_epoch_history(history: Sequence[Mapping[str, float]]) -> None:
    """Log to the active run the per-epoch metrics it lacks (step = epoch): after a kill between a
    backup and the logging of its epoch, a resumed run fills the gap instead of logging twice."""
    import mlflow
    from mlflow import MlflowClient

    run_id = mlflow.active_run().info.run_id
    logged = {metric.step for metric in MlflowClient().get_metric_history(run_id, "loss")}
    for epoch, logs in enumerate(history):
        if epoch not in logged:
            mlflow.log_metrics(dict(logs), step=epoch)


@contextmanager
def job_run(
    experiment_id: str,
    run_name: str,
    params: Mapping[str, str],
    tags: Mapping[str, str],
    resume_run_id: str | None = None,
) -> Iterator[ActiveRun]:
    """The MLflow run of one training job in the experiment that `use_experiment` set up: a child when a
    sweep is in progress, else a plain run. With `resume_run_id`, that (interrupted) run is reopened.

    Ends FINISHED, FAILED (exception) or KILLED (Ctrl-C/SIGTERM), whatever happens inside.
    """
    import mlflow
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    parent_run_id = current_sweep().get("parent_run_id")
    if resume_run_id:
        tags = {**tags, **({MLFLOW_PARENT_RUN_ID: parent_run_id} if parent_run_id else {})}
        run = mlflow.start_run(run_id=resume_run_id, tags=dict(tags))
    else:
        run = mlflow.start_run(
            experiment_id=experiment_id, run_name=run_name, parent_run_id=parent_run_id, tags=dict(tags)
        )
    try:
        if not run.data.params:  # a resumed run keeps the params of its first attempt
            mlflow.log_params(dict(params))
        yield run
    except KeyboardInterrupt:
        mlflow.end_run("KILLED")
        raise
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    mlflow.end_run("FINISHED")


def epoch_logger(restored_history: Callable[[], Sequence[Mapping[str, float]]] = list):
    """A Keras callback that logs every epoch's metrics (with step = epoch) to the active run.

    `restored_history` gives, once training has begun, the epochs a resumed run did before (from its
    backup): they are logged first where missing, and the optimizer params are not logged twice.
    Put it after the BackupAndRestore callback.
    """
    from mlflow.keras import MlflowCallback

    class EpochMetricsLogger(MlflowCallback):
        def on_train_begin(self, logs: dict | None = None) -> None:
            history = restored_history()
            if history:
                log_epoch_history(history)
            else:
                super().on_train_begin(logs)

        # MlflowCallback also logs each validation pass as `validation_*` at step 0; the per-epoch
        # `val_*` metrics already hold the same numbers.
        def on_test_end(self, logs: dict | None = None) -> None:
            return None

    return EpochMetricsLogger()


def model_requirements() -> list[str]:
    """Pinned requirements of a logged model: Keras and its backend. Passing them explicitly spares
    MLflow's requirement inference, which costs ~7 s per model."""
    from importlib.metadata import PackageNotFoundError, version

    import keras

    requirements = [f"keras=={keras.__version__}"]
    try:
        backend = keras.backend.backend()
        requirements.append(f"{backend}=={version(backend)}")
    except PackageNotFoundError:
        pass
    return requirements


def log_keras_model(model: Any) -> None:
    """Log `model` as an MLflow model (`model/`) whose signature says: raw 28x28 images in, 10 probabilities out.

    The signature comes from the model's declared input and output (any batch size), not from
    running it on examples: that would trace a predict function in every job for the same answer.
    """
    import mlflow
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    def spec(tensor: Any) -> Schema:
        return Schema([TensorSpec(np.dtype(tensor.dtype), (-1, *tensor.shape[1:]))])

    signature = ModelSignature(inputs=spec(model.inputs[0]), outputs=spec(model.outputs[0]))
    mlflow.keras.log_model(model, name="model", signature=signature, pip_requirements=model_requirements())


def log_job_files(cfg: DictConfig, output_dir: Path) -> None:
    """Log a job's files to the active run: checkpoints, TensorBoard logs, config, history, log file."""
    import mlflow

    callbacks = cfg.get("callbacks") or {}
    checkpoint_dirs = {output_dir / "checkpoints"}
    if callbacks.get("model_checkpoint", {}).get("enabled"):
        checkpoint_dirs.add(Path(callbacks.model_checkpoint.filepath).parent)
    for folder in sorted(checkpoint_dirs):
        if folder.is_dir():
            mlflow.log_artifacts(str(folder), "checkpoints")
    tensorboard = callbacks.get("tensorboard", {})
    if tensorboard.get("enabled") and Path(tensorboard.log_dir).is_dir():
        mlflow.log_artifacts(tensorboard.log_dir, "tensorboard")
    mlflow.log_text(OmegaConf.to_yaml(masked_config(cfg)), "config/config.yaml")
    if (output_dir / ".hydra").is_dir():  # Hydra's own record: config, hydra.yaml, overrides.yaml
        mlflow.log_artifacts(str(output_dir / ".hydra"), "config/hydra")
    for name in ("history.json", "metrics.json", *(p.name for p in output_dir.glob("*.log"))):
        if (output_dir / name).is_file():
            mlflow.log_artifact(str(output_dir / name))


# --------------------------------------------------------------------------------------------------
# Sweeps: one parent run per multirun


def _parse_sweep(config: DictConfig) -> tuple[list[str], list[list[str]]]:
    """(the swept keys, every job's override list) of a multirun, as Hydra's basic sweeper expands it."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    arguments = [f"{key}={value}" for key, value in (config.hydra.sweeper.get("params") or {}).items()]
    arguments += list(config.hydra.overrides.task)
    overrides = OverridesParser.create().parse_overrides(arguments)
    swept = [override.get_key_element() for override in overrides if override.is_sweep_override()]
    for override in overrides:
        if override.is_sweep_override() and not list(override.sweep_iterator()):
            raise ConfigError(f"{override.input_line!r} sweeps over nothing: give at least one value")
    batches = BasicSweeper.split_arguments(overrides, max_batch_size=None)
    return swept, [job for batch in batches for job in batch]


def validate_sweep(config: DictConfig) -> tuple[list[str], int]:
    """Compose and validate every job of the sweep before any of them starts or any run exists.

    Returns (swept keys, number of jobs). Only the basic sweeper's grid can be expanded up front;
    other sweepers' jobs are still validated one by one as they start.
    """
    from hydra.core.global_hydra import GlobalHydra

    if "BasicSweeper" not in str(config.hydra.sweeper.get("_target_", "")):
        return [], 0
    swept, jobs = _parse_sweep(config)
    loader = GlobalHydra.instance().config_loader()
    for job_overrides in jobs:
        try:
            validate(loader.load_sweep_config(config, job_overrides))
        except ConfigError as error:
            raise ConfigError(f"job {' '.join(job_overrides)}: {error}") from None
    return swept, len(jobs)


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if not value.is_integer() else str(int(value))
    return "" if value is None else str(value)


def summary_rows(children: Sequence[Run], swept: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    """One row per child run: its name, status, swept values, and SUMMARY_METRICS."""
    header = ["run", "status", *swept, *SUMMARY_METRICS, "run_id"]
    rows = []
    for child in children:
        values = [child.data.params.get(key, "") for key in swept]
        metrics = [_format(child.data.metrics.get(name)) for name in SUMMARY_METRICS]
        rows.append([child.info.run_name, child.info.status, *values, *metrics, child.info.run_id])
    return header, rows


class MlflowSweepCallback(Callback):
    """Hydra callback: a multirun is one MLflow parent run; each job's run becomes its child."""

    def __init__(self) -> None:
        self.parent_run_id: str | None = None
        self.experiment_id: str | None = None
        self.swept: list[str] = []

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from mlflow import MlflowClient
        from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

        with exit_on_user_error():
            self.swept, job_count = validate_sweep(config)
        if not self.swept:  # another sweeper (Optuna): it draws the values of its params
            self.swept = list((config.hydra.sweeper.get("params") or {}).keys())
        self.experiment_id = use_experiment(config.mlflow)
        task_overrides = list(config.hydra.overrides.task)
        # Named after what it sweeps and the config groups chosen on the command line (experiment preset,
        # search, optimizer, model), then the sweep params a preset or search adds.
        named = [
            o
            for o in task_overrides
            if override_key(o) in self.swept or ("." not in override_key(o) and not o.startswith("hydra"))
        ]
        overridden = {override_key(o) for o in task_overrides}
        params = (config.hydra.sweeper.get("params") or {}).items()
        named += [f"{key}={value}" for key, value in params if key not in overridden]
        run_name = " ".join(dict.fromkeys(named)) or "multirun"
        tags = {
            MLFLOW_RUN_NAME: run_name,
            "sweep": "parent",
            "hydra_overrides": " ".join(task_overrides),
            "sweep_dir": str(config.hydra.sweep.dir),
            "sweep_jobs": str(job_count),
        }
        client = MlflowClient()
        run = client.create_run(self.experiment_id, run_name=run_name, tags=tags)
        self.parent_run_id = run.info.run_id
        _close_killed_parents(client, self.experiment_id, tags["hydra_overrides"], self.parent_run_id)
        sweep = json.dumps({"parent_run_id": self.parent_run_id, "swept": self.swept})
        os.environ[SWEEP_ENV] = sweep
        write_text_atomic(Path(config.hydra.sweep.dir) / SWEEP_FILE, sweep)
        atexit.register(self.close, "FAILED")  # Hydra skips on_multirun_end when a job fails
        global _open_sweep
        _open_sweep = self
        print(f"MLflow parent run {run_name!r} ({self.parent_run_id}) in {mask_uri(str(config.mlflow.tracking_uri))}")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self.close("FINISHED")

    def close(self, status: str) -> None:
        """Write the summary to the parent run and end it with `status` (FAILED if a child failed)."""
        from mlflow import MlflowClient

        if self.parent_run_id is None:
            return
        parent_run_id, self.parent_run_id = self.parent_run_id, None
        os.environ.pop(SWEEP_ENV, None)
        client = MlflowClient()
        children = client.search_runs(
            [self.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'", max_results=10000
        )
        children = sorted(children, key=lambda run: int(run.data.tags.get("job_num", 0)))
        header, rows = summary_rows(children, self.swept)
        if rows:
            buffer = io.StringIO()
            csv.writer(buffer, lineterminator="\n").writerows([header, *rows])
            client.log_text(parent_run_id, buffer.getvalue(), "summary.csv")
            table = markdown_table(header, rows)
            client.log_text(parent_run_id, table, "summary.md")
            print("\nSweep summary (also in the parent run's summary.md):\n" + table)
        finished = [c for c in children if c.info.status == "FINISHED" and "best_val_accuracy" in c.data.metrics]
        if finished:
            best = max(finished, key=lambda run: run.data.metrics["best_val_accuracy"])
            client.set_tag(parent_run_id, "best_child_run_id", best.info.run_id)
            client.set_tag(parent_run_id, "best_child_run_name", best.info.run_name)
            client.log_metric(parent_run_id, "best_val_accuracy", best.data.metrics["best_val_accuracy"])
        statuses = {child.info.status for child in children}
        failed = sum(child.info.status != "FINISHED" for child in children)
        client.set_tag(parent_run_id, "failed_jobs", str(failed))
        if status == "FINISHED" and failed:
            status = "FAILED"
        if status == "FAILED" and "KILLED" in statuses:
            status = "KILLED"
        client.set_terminated(parent_run_id, status)


def _close_killed_parents(client: Any, experiment_id: str, hydra_overrides: str, new_parent_run_id: str) -> None:
    """A rerun of a sweep whose process died (SIGKILL, power loss) takes over: the dead sweep's parent,
    still RUNNING, ends KILLED, tagged with the parent that resumes its jobs."""
    if "'" in hydra_overrides:  # cannot be quoted in a filter string; leave such parents alone
        return
    stale = client.search_runs(
        [experiment_id],
        filter_string=(
            f"tags.sweep = 'parent' and tags.hydra_overrides = '{hydra_overrides}' and attributes.status = 'RUNNING'"
        ),
    )
    for run in stale:
        if run.info.run_id != new_parent_run_id:
            client.set_tag(run.info.run_id, "resumed_by_parent_run_id", new_parent_run_id)
            client.set_terminated(run.info.run_id, "KILLED")


_open_sweep: MlflowSweepCallback | None = None


def close_open_sweep(status: str) -> None:
    """End the sweep's parent run now, e.g. with KILLED when the user pressed Ctrl-C."""
    if _open_sweep is not None:
        _open_sweep.close(status)

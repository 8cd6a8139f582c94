"""One training job's MLflow run: its name, params and tags, finding a finished or interrupted run of
the same config, per-epoch logging, the logged model and the job's files.

A job inside a multirun is a child of the sweep's parent run (see sweep.py); it learns which sweep it
belongs to from `current_sweep()`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from src.config import flatten, shapes_training
from src.tracking.store import masked_config

if TYPE_CHECKING:
    from mlflow import ActiveRun
    from mlflow.entities import Run

# The sweep in progress, as JSON {"parent_run_id": ..., "swept": [keys]}: set by MlflowSweepCallback,
# read by each job. An environment variable reaches jobs in the same process (basic launcher) and in
# worker processes alike.
SWEEP_ENV = "MNIST_OPTIMIZERS_SWEEP"
# The same, as a file in the sweep dir: reaches jobs that a launcher starts in a fresh environment (Ray).
SWEEP_FILE = "mlflow_sweep.json"


def config_params(cfg: DictConfig, choices: Mapping[str, str]) -> dict[str, str]:
    """The resolved config flattened into MLflow params, plus each config group's choice.

    `optimizer=momentum` becomes the param `optimizer`, so a swept key and its param share a name.
    """
    resolved = masked_config(cfg)
    params = {key: str(value) for key, value in flatten(resolved)}
    params.update({group: str(choice) for group, choice in choices.items() if not group.startswith("hydra")})
    return params


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
    shown = [o for o in task_overrides if shapes_training(override_key(o))]
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
    """Log `model` as the run's MLflow model `model`: raw 28x28 uint8 images (pixels 0-255, as in mnist.npz)
    in, 10 class probabilities out, so `mlflow.pyfunc.load_model(uri).predict(d["x_test"])` and
    `mlflow models serve` take MNIST as it is, and predict draws no progress bar.

    A Python model (served_model.py, logged as code) around the saved Keras file rather than MLflow's keras
    flavor, whose predict always draws Keras' progress bar. The signature's input is uint8 because that is
    what the model is fed in training (it casts and rescales inside); MLflow checks inputs against it. Its
    shapes come from the model's declared input and output (any batch size), not from running it on
    examples: that would trace a predict function in every job for the same answer.
    """
    import tempfile
    import warnings

    import mlflow
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    def spec(tensor: Any, dtype: str) -> Schema:
        return Schema([TensorSpec(np.dtype(dtype), (-1, *tensor.shape[1:]))])

    output = model.outputs[0]
    signature = ModelSignature(inputs=spec(model.inputs[0], "uint8"), outputs=spec(output, output.dtype))
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*input example was not provided")  # the signature is explicit
        keras_file = Path(folder) / "model.keras"
        model.save(keras_file)
        mlflow.pyfunc.log_model(
            name="model",
            python_model=str(Path(__file__).with_name("served_model.py")),
            artifacts={"keras_model": str(keras_file)},
            signature=signature,
            pip_requirements=model_requirements(),
        )


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

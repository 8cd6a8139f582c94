"""One training job's MLflow run: its name, params and tags, finding a finished or interrupted run of
the same config, per-epoch logging, the logged model and the job's files.

A job inside a multirun is a child of the sweep's parent run (see sweep.py); it learns which sweep it
belongs to from `current_sweep()`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from src.tracking.store import mask_uri, masked_config, retry_duplicate_insert
from src.training.config import flatten, shapes_training
from src.training.data import dataset_of

if TYPE_CHECKING:
    from mlflow import ActiveRun
    from mlflow.entities import Run

    from src.training.data import Splits

# The sweep in progress, as JSON {"parent_run_id": ..., "swept": [keys]}: set by MlflowSweepCallback,
# read by each job. The callback sets it in its own process (basic launcher) and, through ship_to_jobs,
# in every job's config, which launchers hand to the job wherever it runs (joblib, Ray on other nodes).
SWEEP_ENV = "MNIST_OPTIMIZERS_SWEEP"
# Config keys that do not shape training are logged as tags `config.<key>` (config_tags), not params.
CONFIG_TAG_PREFIX = "config."


def config_params(cfg: DictConfig, choices: Mapping[str, str]) -> dict[str, str]:
    """The keys of the resolved config that shape training (`src.training.config.shapes_training`), flattened into
    MLflow params, plus each such config group's choice. The other keys are tags (`config_tags`), so that
    "show diff only" in MLflow's compare view lists settings, not the paths that differ between runs.

    `optimizer=momentum` becomes the param `optimizer`, so a swept key and its param share a name.
    """
    params = {key: str(value) for key, value in flatten(masked_config(cfg)) if shapes_training(key)}
    params.update({group: str(choice) for group, choice in choices.items() if shapes_training(group)})
    return params


def config_tags(cfg: DictConfig) -> dict[str, str]:
    """The keys of the resolved config that say where things go, how a run is filed or how chatty it is
    (paths, folders, URIs, `mlflow.*`, `hydra.*`): tags `config.<key>`. MLflow truncates a tag value past
    8000 characters; the whole config is the `config/config.yaml` artifact."""
    return {
        f"{CONFIG_TAG_PREFIX}{key}": str(value)
        for key, value in flatten(masked_config(cfg))
        if not shapes_training(key)
    }


def current_sweep() -> dict[str, Any]:
    """The sweep this process' jobs belong to: {"parent_run_id", "swept"}, or {} outside a sweep."""
    sweep = os.environ.get(SWEEP_ENV)
    return json.loads(sweep) if sweep else {}


def ship_to_jobs(config: DictConfig, sweep: str) -> None:
    """Put the sweep record into every job's environment by way of its config: no file, no shared disk.

    Hydra recomposes each job's config from the multirun's Hydra overrides plus the job's own
    (`load_sweep_config`), and a launcher sends that config to wherever the job runs (a Ray task on another
    node included); running the job sets `hydra.job.env_set` in its environment. So the callback appends
    `++hydra.job.env_set.<SWEEP_ENV>='<json>'` to the multirun's Hydra overrides before any job is launched.
    """
    from omegaconf import read_write

    override = f"++hydra.job.env_set.{SWEEP_ENV}='{sweep}'"  # ++: add the key, or replace it
    with read_write(config.hydra.overrides):
        config.hydra.overrides.hydra.append(override)


def override_key(override: str) -> str:
    """`+mlflow.tags.x=1` -> `mlflow.tags.x`: the config key a command-line override sets."""
    return override.split("=", 1)[0].lstrip("+~")


def job_run_name(task_overrides: Sequence[str], choices: Mapping[str, str]) -> str:
    """A short, readable run name: the swept overrides in a sweep (`optimizer=adam`), else the
    optimizer plus the command-line overrides."""
    swept = current_sweep().get("swept")
    if swept:
        return mask_uri(",".join(o for o in task_overrides if override_key(o) in swept))
    shown = [o for o in task_overrides if shapes_training(override_key(o))]
    if not any(override_key(o) == "optimizer" for o in shown):
        shown.insert(0, f"optimizer={choices.get('optimizer')}")
    return mask_uri(",".join(shown))


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

    from src.tracking.parent import adopt_run

    parent_run_id = current_sweep().get("parent_run_id")
    if parent_run_id:
        adopt_run(MlflowClient(), run, parent_run_id)


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


def dataset_digest(data_sha256: str, context: str, selection: Mapping[str, Any]) -> str:
    """16 hex digits naming the rows a run used in one context: the sha256 of the MNIST file's sha256, the
    context and `selection` (what picks those rows out of the file). A `data.limit` slice, another
    `data.val_split` or `train.seed` (it shuffles the validation split out) is another digest; the test set,
    always the whole file's 10000 test images, keeps one digest per file. 16 digits, like the config hash:
    MLflow stores at most 36."""
    recipe = json.dumps({"data_sha256": data_sha256, "context": context, **selection}, sort_keys=True)
    return hashlib.sha256(recipe.encode()).hexdigest()[:16]


def log_datasets(splits: Splits, source: Path, data_sha256: str, selection: Mapping[str, Any]) -> None:
    """Log to the active run what it trained and was scored on, as MLflow dataset inputs (the runs table's
    Dataset column): the data set (`mnist`, `fashion_mnist`) in the contexts training, validation and test, each
    with its own digest (`dataset_digest`; MLflow keeps one input per name and digest), the file as source, the row
    count as the input tag `rows` and the file's sha256 as `data_sha256`. No image is hashed again: the
    digest comes from the file's sha256. Logging twice (a resumed run, a retried race) adds nothing."""
    import mlflow
    from mlflow.data.sources import LocalArtifactDatasetSource

    file_source = LocalArtifactDatasetSource(str(source))  # resolving a path string warns (mlflow#9702)
    parts = {
        "training": (splits.x_train, splits.y_train, selection),
        "validation": (splits.x_val, splits.y_val, selection),
        "test": (splits.x_test, splits.y_test, {}),
    }
    datasets = [
        mlflow.data.from_numpy(
            images,
            source=file_source,
            targets=labels,
            name=dataset_of(source).name,
            digest=dataset_digest(data_sha256, context, picked),
        )
        for context, (images, labels, picked) in parts.items()
    ]
    tags = [{"rows": str(len(images)), "data_sha256": data_sha256} for images, _, _ in parts.values()]
    # Parallel jobs log the same test set (one digest per file) at once: retried when another inserted it first.
    retry_duplicate_insert(lambda: mlflow.log_inputs(datasets, contexts=list(parts), tags_list=tags))


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


def epoch_logger():
    """A Keras callback that logs every epoch's metrics (with step = epoch) to the active run, and the
    model summary when training begins. A resumed run continues at its next epoch; the epochs a kill cut
    off between their backup and their logging are the job's to fill in (`log_epoch_history`)."""
    from mlflow.keras import MlflowCallback

    class EpochMetricsLogger(MlflowCallback):
        def on_train_begin(self, logs: dict | None = None) -> None:
            import mlflow

            # MlflowCallback would also log the optimizer's Keras config as `optimizer_*` params: the
            # config's `optimizer.*` params say the same, and each argument twice crowds "show diff only".
            lines: list[str] = []
            self.model.summary(print_fn=lambda line, *args, **kwargs: lines.append(line))
            mlflow.log_text("\n".join(lines), "model_summary.txt")

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
    # Hydra's own record (config.yaml, hydra.yaml, overrides.yaml) and the log file hold the command line
    # as typed, a password in a URI included: they go up as masked copies (the local files stay as they are).
    hydra_record = output_dir / ".hydra"
    if hydra_record.is_dir():
        log_masked_copies(sorted(hydra_record.iterdir()), "config/hydra")
    log_masked_copies(sorted(output_dir.glob("*.log")), None)
    for name in ("history.json", "metrics.json"):
        if (output_dir / name).is_file():
            mlflow.log_artifact(str(output_dir / name))


def log_masked_copies(files: Sequence[Path], artifact_path: str | None) -> None:
    """Log text files to the active run with every URI's password masked (`mask_uri`)."""
    import tempfile

    import mlflow

    files = [path for path in files if path.is_file()]
    if not files:
        return
    with tempfile.TemporaryDirectory() as folder:
        for path in files:
            text = path.read_text(encoding="utf-8", errors="replace")
            Path(folder, path.name).write_text(mask_uri(text), encoding="utf-8")
        mlflow.log_artifacts(folder, artifact_path)

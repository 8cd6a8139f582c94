"""Everything MLflow, in parts that change for different reasons:

- store.py: where runs go (tracking URI, SQLite set-up, reachability, experiment, masked secrets);
- job.py: one training job's run (name, params/tags, resume lookup, epoch logging, model and files);
- parent.py: THE parent-run lifecycle (create, adopt children, summary files, best tags, ending status);
- sweep.py: a multirun's parent run (the Hydra callback on top of parent.py);
- registry.py, serve.py: the champion, registered and served.

Run model:
- `python -m src.train ...` is one plain run.
- `python -m src.train -m ...` is one *parent* run (created by the Hydra callback `MlflowSweepCallback`
  on multirun start, named after the swept overrides) with every job a *child* (`mlflow.parentRunId`).
  When the sweep ends the parent gets `summary.csv`/`summary.md` and the best child's id as a tag.
- A job that raises ends FAILED, Ctrl-C/SIGTERM ends KILLED; the parent is closed in every case (on
  multirun end, or by an exit handler when Hydra stops early), so no run is ever left RUNNING.

mlflow is imported inside functions: config errors are reported before its ~2 s import. The package's face
is one job's run and the store only: the sweep's callback is `src.tracking.sweep.MlflowSweepCallback`, so a
stage that logs runs does not depend on the sweep, its summary or the registry.
"""

from src.tracking.job import (
    adopt_into_sweep,
    config_params,
    current_sweep,
    epoch_logger,
    find_finished_run,
    job_run,
    job_run_name,
    log_epoch_history,
    log_job_files,
    log_keras_model,
    override_key,
    resumable_run_id,
)
from src.tracking.store import check_reachable, mask_uri, masked_config, sqlite_path, use_experiment

__all__ = [
    "adopt_into_sweep",
    "check_reachable",
    "config_params",
    "current_sweep",
    "epoch_logger",
    "find_finished_run",
    "job_run",
    "job_run_name",
    "log_epoch_history",
    "log_job_files",
    "log_keras_model",
    "mask_uri",
    "masked_config",
    "override_key",
    "resumable_run_id",
    "sqlite_path",
    "use_experiment",
]

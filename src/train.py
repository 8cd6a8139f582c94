"""`python -m src.train [-m] [key=value ...]`: train one MNIST classifier per job and log it to MLflow.

compose (Hydra) -> validate -> build optimizer, model and callbacks from `_target_` -> fit -> score the run's
model -> log -> return the best validation accuracy (what a Hydra sweeper would maximize). Building, fitting
and scoring are the fit core's (src/training/fit.py, shared with the fair protocol); this module is the job's
MLflow run and output folder.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

import hydra
import psutil
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from src import tracking
from src.infra.errors import ConfigError, exit_on_user_error, sigterm_as_interrupt
from src.infra.files import json_safe, write_atomic, write_text_atomic
from src.infra.masking import MaskedStream
from src.tracking.job import config_tags, log_datasets
from src.training import data, resume
from src.training.config import CONFIG_DIR, validate

log = logging.getLogger(__name__)
# Every test image's digit as the run's model predicts it (NumPy uint8), beside metrics.json: the DVC train
# stage's confusion matrices and predictions.csv come from it (src/stages/evaluate.py), not from a second pass.
PREDICTIONS = "test_predictions.npy"


def _write_json(path: Path, payload: Any) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2) + "\n")


def _check_writable(key: str, folder: Path) -> None:
    """A folder the job writes to must be creatable and writable: say so before training, not after."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        reason = error.strerror or error
        raise ConfigError(f"{key}={str(folder)!r} is not writable ({reason}); choose another folder") from None


def _writable_folders(cfg: DictConfig, state: resume.JobState) -> dict[str, Path]:
    folders = {"train.state_dir": state.folder}
    for name, settings in (cfg.get("callbacks") or {}).items():
        if not settings.get("enabled", True):
            continue
        if settings.get("filepath"):
            folders[f"callbacks.{name}.filepath"] = Path(settings.filepath).parent
        if settings.get("log_dir"):
            folders[f"callbacks.{name}.log_dir"] = Path(settings.log_dir)
        if settings.get("backup_dir"):
            folders[f"callbacks.{name}.backup_dir"] = Path(settings.backup_dir)
    return folders


def _reuse_finished(run: Any) -> float:
    """A finished run of the same config exists: link it to the sweep in progress and return its metric."""
    tracking.adopt_into_sweep(run)
    log.info(
        "skipped: run %s (%s) already trained this config (config_hash %s); train.force=true trains it again",
        run.info.run_name,
        run.info.run_id,
        run.data.tags.get("config_hash"),
    )
    return run.data.metrics.get("best_val_accuracy", float("nan"))


def _resumable_run(cfg: DictConfig, state: resume.JobState, experiment_id: str, output_dir: Path) -> str | None:
    """The id of the interrupted run this job continues, if its backup and its run are both there; the
    earlier attempt's checkpoints and TensorBoard logs are then copied into this job's output dir."""
    if not state.has_backup:
        return None
    previous = state.previous()
    run_id = tracking.resumable_run_id(experiment_id, previous.get("run_id"))
    if run_id:
        resume.carry_outputs(Path(previous["output_dir"]), output_dir)
    return run_id


def train(cfg: DictConfig, data_path: Path) -> float:
    """Train, evaluate and log one job; return its best validation accuracy.

    Skips a config that already has a FINISHED run and resumes an interrupted one (see src/training/resume.py).
    The job holds its config's lock throughout: an identical job started meanwhile waits, then skips.
    """
    data_sha256 = data.sha256_file(data_path)
    experiment_id = tracking.use_experiment(cfg.mlflow)
    _check_writable("train.state_dir", Path(cfg.train.state_dir))  # where the lock file goes
    state = resume.JobState(Path(cfg.train.state_dir) / resume.config_hash(cfg, data_sha256))
    with state.exclusive(Path(HydraConfig.get().runtime.output_dir)):
        if cfg.train.skip_finished and not cfg.train.force:
            finished = tracking.find_finished_run(experiment_id, state.config_hash)
            if finished is not None:
                return _reuse_finished(finished)
        return _fit_and_log(cfg, data_path, data_sha256, experiment_id, state)


def _fit_and_log(
    cfg: DictConfig, data_path: Path, data_sha256: str, experiment_id: str, state: resume.JobState
) -> float:
    """The job proper, under its config's lock: resume or start the run, fit and score (the fit core,
    src/training/fit.py), log. What is the job's own: the MLflow run (params, tags, per-epoch metrics, files,
    the run's model) and the job's folder (checkpoints, history.json, metrics.json, test_predictions.npy,
    run.json)."""
    hydra_cfg = HydraConfig.get()
    output_dir = Path(hydra_cfg.runtime.output_dir)
    config_hash = state.config_hash
    force = bool(cfg.train.force)
    resume_run_id = _resumable_run(cfg, state, experiment_id, output_dir) if cfg.train.resume and not force else None
    if resume_run_id is None:
        state.clear()  # a stale backup (finished, deleted or foreign run) must not leak into a fresh start
    for key, folder in _writable_folders(cfg, state).items():
        _check_writable(key, folder)

    import keras  # after the checks above: a bad path costs a second, not a TensorFlow import
    import mlflow
    import numpy as np

    from src.training import fit

    logger = [tracking.epoch_logger()]  # every epoch's metrics to the run as they come
    spec = fit.TrialSpec(cfg, data_path, score_test=True, callbacks=logger, backup_dir=state.backup_dir)
    splits = spec.splits()
    # Build everything before the MLflow run exists: a bad setting never leaves a run behind.
    trial = fit.build(spec)

    choices = dict(hydra_cfg.runtime.choices)
    run_name = tracking.job_run_name(list(hydra_cfg.overrides.task), choices)
    tags = {
        "config_hash": config_hash,
        "data_sha256": data_sha256,
        "hydra_overrides": tracking.mask_uri(" ".join(hydra_cfg.overrides.task)),  # no password in MLflow
        "job_num": str(hydra_cfg.job.get("num", 0)),
        "keras_backend": keras.backend.backend(),  # tensorflow, or jax with KERAS_BACKEND=jax
        "output_dir": str(output_dir),
        **config_tags(cfg),  # what does not shape training: paths, URIs, mlflow.*, verbosity
        **{str(key): tracking.mask_uri(str(value)) for key, value in (cfg.mlflow.get("tags") or {}).items()},
    }
    params = tracking.config_params(cfg, choices)
    with tracking.job_run(experiment_id, run_name, params, tags, resume_run_id=resume_run_id) as run:
        state.record(run.info.run_id, output_dir)
        action = "resumed from its backup" if resume_run_id else "started"
        log.info("MLflow run %s (%s) %s; outputs in %s", run_name, run.info.run_id, action, output_dir)
        try:
            selection = {
                "data.limit": cfg.data.limit,
                "data.val_split": cfg.data.val_split,
                "train.seed": cfg.train.seed,
            }
            log_datasets(splits, data_path, data_sha256, selection)  # what picks the training and validation rows
            result = fit.fit(trial)
            if result.restored_epochs:  # a kill between an epoch's backup and its logging left a gap: filled
                tracking.log_epoch_history(result.epochs()[: result.restored_epochs])
            diverged_at = result.diverged_epoch
            divergence = {"diverged": "true", "diverged_epoch": str(diverged_at)} if diverged_at else {}
            # which weights the run's model holds, and its Keras file among the run's artifacts
            kept = result.checkpoint_path.name if result.checkpoint_path else "last.keras"
            mlflow.set_tags(
                {"diverged": "false", **divergence, **result.model_tags(), "model_file": f"checkpoints/{kept}"}
            )
            if diverged_at:
                log.warning(
                    "the run diverged in epoch %d (training loss %.4g, validation loss %.4g): tagged diverged=true",
                    diverged_at,
                    result.history["loss"][diverged_at - 1],
                    result.history["val_loss"][diverged_at - 1],
                )
            results = {
                **result.metrics(),
                "process_rss_mb": psutil.Process().memory_info().rss / 2**20,  # grows across sweep jobs if memory leaks
            }
            mlflow.log_metrics(results)
            log.info("results: %s", json.dumps(results))
            log.info("the run's model: the %s weights of epoch %s", result.model_weights, result.model_epoch)
            write_atomic(output_dir / "checkpoints" / "last.keras", result.final_model.save)  # Keras wants .keras
            write_atomic(output_dir / PREDICTIONS, lambda temp: np.save(temp, result.test.predicted))
            _write_json(output_dir / "history.json", result.history)
            record = {
                **results,
                "diverged": diverged_at is not None,
                "diverged_epoch": diverged_at,
                "model_weights": result.model_weights,
                "model_epoch": result.model_epoch,
            }
            _write_json(output_dir / "metrics.json", json_safe(record))
            tracking.log_keras_model(result.model)
        finally:  # whatever happened, keep what the job wrote so far with its run
            tracking.log_job_files(cfg, output_dir)
    # Only once the run has ended FINISHED: the DVC train stage keeps a seed whose folder has it.
    _write_json(output_dir / "run.json", {"run_id": run.info.run_id, "run_name": run_name})
    if trial.backup is not None:  # the run ended FINISHED: nothing left to resume
        trial.backup.discard()
    state.clear()
    return results["best_val_accuracy"]


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def main(cfg: DictConfig) -> float:
    try:
        with exit_on_user_error():
            validate(cfg)
            tracking.check_reachable(str(cfg.mlflow.tracking_uri))
            _, data_path = data.load_for_training(  # fetches if allowed, verifies once per process
                cfg.data.dir,
                cfg.data.sources,
                cfg.data.local_path,
                cfg.data.cache_dir,
                cfg.data.fetch_if_missing,
                data.for_config(cfg.data),
            )
            return train(cfg, data_path)
    finally:
        if "keras" in sys.modules:  # free this job's graphs and weights (it runs gc.collect) before the next job
            sys.modules["keras"].backend.clear_session()


def cli() -> None:
    """Entry point: SIGTERM behaves like Ctrl-C, and either ends open runs as KILLED."""
    signal.signal(signal.SIGTERM, sigterm_as_interrupt)
    sys.stderr = MaskedStream(sys.stderr)  # Hydra prints its own errors, overrides and passwords included
    try:
        main()
    except KeyboardInterrupt:
        from src.tracking.sweep import close_open_sweep

        close_open_sweep("KILLED")
        print("interrupted: the runs in progress were ended as KILLED", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    cli()

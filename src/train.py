"""`python -m src.train [-m] [key=value ...]`: train one MNIST classifier per job and log it to MLflow.

compose (Hydra) -> validate -> build optimizer, model and callbacks from `_target_` -> fit -> evaluate ->
log -> return the best validation accuracy (what a Hydra sweeper would maximize).
"""

from __future__ import annotations

import gc
import json
import logging
import math
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
import psutil
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from src import tracking
from src.infra.errors import ConfigError, exit_on_user_error
from src.infra.files import write_atomic, write_text_atomic
from src.infra.masking import MaskedStream
from src.tracking.job import config_tags, log_datasets
from src.training import data, resume
from src.training.config import CONFIG_DIR, validate

log = logging.getLogger(__name__)


def _build(group: str, builder: Callable[[], Any]) -> Any:
    """Run `builder`, reporting what Keras rejects (it validates its own arguments) as a ConfigError
    that names the config group."""
    try:
        return builder()
    except Exception as error:
        cause = error.__cause__ or error  # Hydra wraps the Keras error in an InstantiationException
        raise ConfigError(f"{group} cannot be built: {cause}") from error


def _write_json(path: Path, payload: Any) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2) + "\n")


def _finite_or_null(results: dict[str, Any]) -> dict[str, Any]:
    """NaN and infinity (a diverged run's losses) as null: metrics.json stays strict JSON for DVC and others."""
    return {
        key: None if isinstance(value, float) and not math.isfinite(value) else value for key, value in results.items()
    }


def summarize_history(history: dict[str, list[float]]) -> dict[str, float]:
    """best_val_accuracy, best_epoch (1-based) and stopped_epoch (epochs actually run) of a fit. A NaN
    epoch (a diverged run) is never the best."""
    val_accuracy = history["val_accuracy"]
    ranked = [-math.inf if math.isnan(value) else value for value in val_accuracy]
    best_index = max(range(len(ranked)), key=ranked.__getitem__)
    return {
        "best_val_accuracy": float(val_accuracy[best_index]),
        "best_epoch": best_index + 1,
        "stopped_epoch": len(val_accuracy),
    }


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
    """The job proper, under its config's lock: resume or start the run, fit, evaluate, log."""
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
    from hydra.utils import instantiate

    from src.training.callbacks import BackupAndRestore, EpochStats, StopOnDivergence, diverged_epoch, from_config

    _freeze_imported_objects()

    keras.utils.set_random_seed(cfg.train.seed)
    splits = data.split_for_training(data_path, cfg.data.val_split, cfg.data.limit, cfg.train.seed)

    # Build everything before the MLflow run exists: a bad setting never leaves a run behind.
    optimizer = _build(f"optimizer ({cfg.optimizer._target_})", lambda: instantiate(cfg.optimizer))
    model = _build(f"model ({cfg.model._target_})", lambda: instantiate(cfg.model))
    configured_callbacks = _build("callbacks", lambda: from_config(cfg.get("callbacks"), state.backup_dir))
    backup = next((c for c in configured_callbacks if isinstance(c, BackupAndRestore)), None)
    guard = next((c for c in configured_callbacks if isinstance(c, StopOnDivergence)), None)
    model.compile(
        optimizer=optimizer,
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        steps_per_execution=cfg.train.steps_per_execution,
    )
    verbose = cfg.train.verbose
    if verbose == "auto":  # Keras' own "auto" draws a progress bar even into log files
        verbose = 1 if sys.stdout.isatty() else 2

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
            started = time.perf_counter()
            restored = (lambda: backup.restored_history) if backup else list
            fit_callbacks = [EpochStats(), *configured_callbacks, tracking.epoch_logger(restored)]
            history = model.fit(
                splits.x_train,
                splits.y_train,
                batch_size=cfg.train.batch_size,
                validation_batch_size=cfg.train.get("validation_batch_size"),
                epochs=cfg.train.epochs,
                steps_per_epoch=cfg.train.get("steps_per_epoch"),
                validation_data=(splits.x_val, splits.y_val),
                callbacks=fit_callbacks,
                verbose=verbose,
            )
            train_seconds = time.perf_counter() - started
            full_history = _merge_history(backup.restored_history if backup else [], history.history)
            # Diverged: a non-finite loss, or past StopOnDivergence's limit when it is on
            diverged_at = diverged_epoch(full_history.get("loss", []), guard.limit if guard else math.inf)
            mlflow.set_tags(
                {"diverged": "true", "diverged_epoch": str(diverged_at)} if diverged_at else {"diverged": "false"}
            )
            if diverged_at:
                loss = full_history["loss"][diverged_at - 1]
                log.warning(
                    "the run diverged in epoch %d (training loss %.4g): tagged diverged=true", diverged_at, loss
                )
            test_batch_size = cfg.train.get("validation_batch_size") or cfg.train.batch_size
            test_loss, test_accuracy = model.evaluate(
                splits.x_test, splits.y_test, batch_size=test_batch_size, verbose=0
            )
            results = {
                "test_loss": float(test_loss),
                "test_accuracy": float(test_accuracy),
                **summarize_history(full_history),
                "train_seconds": train_seconds,
                "process_rss_mb": psutil.Process().memory_info().rss / 2**20,  # grows across sweep jobs if memory leaks
            }
            mlflow.log_metrics(results)
            log.info("results: %s", json.dumps(results))
            write_atomic(output_dir / "checkpoints" / "last.keras", model.save)  # Keras wants the .keras suffix
            _write_json(output_dir / "history.json", full_history)
            divergence = {"diverged": diverged_at is not None, "diverged_epoch": diverged_at}
            _write_json(output_dir / "metrics.json", _finite_or_null({**results, **divergence}))
            tracking.log_keras_model(model)
        finally:  # whatever happened, keep what the job wrote so far with its run
            tracking.log_job_files(cfg, output_dir)
    # Only once the run has ended FINISHED: the DVC train stage keeps a seed whose folder has it.
    _write_json(output_dir / "run.json", {"run_id": run.info.run_id, "run_name": run_name})
    if backup is not None:  # the run ended FINISHED: nothing left to resume
        backup.discard()
    state.clear()
    return results["best_val_accuracy"]


def _freeze_imported_objects() -> None:
    """Move what exists now (TensorFlow, Keras, MLflow: ~550k objects) out of the garbage collector's
    sight, once per process. A full collection then takes milliseconds instead of ~0.25 s; Keras runs one
    after every job (clear_session) and Python runs them during training. Objects made later, such as
    each job's model, are collected as usual."""
    if gc.get_freeze_count() == 0:
        gc.freeze()


def _merge_history(restored: list[dict[str, float]], history: dict[str, list[float]]) -> dict[str, list[float]]:
    """The whole run's per-epoch history: epochs restored from a backup, then this fit's epochs."""
    keys = list(history) or list(restored[0] if restored else [])
    return {key: [epoch[key] for epoch in restored if key in epoch] + list(history.get(key, [])) for key in keys}


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def main(cfg: DictConfig) -> float:
    try:
        with exit_on_user_error():
            validate(cfg)
            tracking.check_reachable(str(cfg.mlflow.tracking_uri))
            _, data_path = data.load_for_training(  # fetches if allowed, verifies once per process
                cfg.data.dir, cfg.data.sources, cfg.data.local_path, cfg.data.cache_dir, cfg.data.fetch_if_missing
            )
            return train(cfg, data_path)
    finally:
        if "keras" in sys.modules:  # free this job's graphs and weights (it runs gc.collect) before the next job
            sys.modules["keras"].backend.clear_session()


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def cli() -> None:
    """Entry point: SIGTERM behaves like Ctrl-C, and either ends open runs as KILLED."""
    signal.signal(signal.SIGTERM, _interrupt)
    sys.stderr = MaskedStream(sys.stderr)  # Hydra prints its own errors, overrides and passwords included
    try:
        main()
    except KeyboardInterrupt:
        tracking.close_open_sweep("KILLED")
        print("interrupted: the runs in progress were ended as KILLED", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    cli()

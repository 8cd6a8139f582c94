"""`python -m src.train [-m] [key=value ...]`: train one MNIST classifier per job and log it to MLflow.

compose (Hydra) -> validate -> build optimizer, model and callbacks from `_target_` -> fit -> evaluate ->
log -> return the best validation accuracy (what a Hydra sweeper would maximize).
"""

from __future__ import annotations

import gc
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from src import data, tracking
from src.config import CONFIG_DIR, validate
from src.errors import ConfigError, exit_on_user_error
from src.files import write_text_atomic

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


def summarize_history(history: dict[str, list[float]]) -> dict[str, float]:
    """best_val_accuracy, best_epoch (1-based) and stopped_epoch (epochs actually run) of a fit."""
    val_accuracy = history["val_accuracy"]
    best_index = max(range(len(val_accuracy)), key=val_accuracy.__getitem__)
    return {
        "best_val_accuracy": float(val_accuracy[best_index]),
        "best_epoch": best_index + 1,
        "stopped_epoch": len(val_accuracy),
    }


def train(cfg: DictConfig, arrays: data.Arrays, data_path: Path) -> float:
    """Train, evaluate and log one job; return its best validation accuracy."""
    import keras
    import mlflow
    from hydra.utils import instantiate

    from src.callbacks import EpochStats, from_config

    hydra_cfg = HydraConfig.get()
    output_dir = Path(hydra_cfg.runtime.output_dir)
    keras.utils.set_random_seed(cfg.train.seed)
    splits = data.split(arrays, cfg.data.val_split, cfg.data.limit, cfg.train.seed)

    # Build everything before the MLflow run exists: a bad setting never leaves a run behind.
    optimizer = _build(f"optimizer ({cfg.optimizer._target_})", lambda: instantiate(cfg.optimizer))
    model = _build(f"model ({cfg.model._target_})", lambda: instantiate(cfg.model))
    configured_callbacks = _build("callbacks", lambda: from_config(cfg.get("callbacks")))
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
        "data_sha256": data.sha256_file(data_path),
        "hydra_overrides": " ".join(hydra_cfg.overrides.task),
        "job_num": str(hydra_cfg.job.get("num", 0)),
        "output_dir": str(output_dir),
        **{str(key): str(value) for key, value in (cfg.mlflow.get("tags") or {}).items()},
    }
    with tracking.job_run(cfg, run_name, tracking.config_params(cfg, choices), tags) as run:
        log.info("MLflow run %s (%s), outputs in %s", run_name, run.info.run_id, output_dir)
        try:
            started = time.perf_counter()
            history = model.fit(
                splits.x_train,
                splits.y_train,
                batch_size=cfg.train.batch_size,
                epochs=cfg.train.epochs,
                validation_data=(splits.x_val, splits.y_val),
                callbacks=[EpochStats(), *configured_callbacks, tracking.epoch_logger()],
                verbose=verbose,
            )
            train_seconds = time.perf_counter() - started
            test_loss, test_accuracy = model.evaluate(splits.x_test, splits.y_test, batch_size=1024, verbose=0)
            results = {
                "test_loss": float(test_loss),
                "test_accuracy": float(test_accuracy),
                **summarize_history(history.history),
                "train_seconds": train_seconds,
            }
            mlflow.log_metrics(results)
            log.info("results: %s", json.dumps(results))
            _save_keras_atomic(model, output_dir / "checkpoints" / "last.keras")
            _write_json(output_dir / "history.json", history.history)
            _write_json(output_dir / "metrics.json", results)
            _write_json(output_dir / "run.json", {"run_id": run.info.run_id, "run_name": run_name})
            tracking.log_keras_model(model, splits.x_test[:5])
        finally:  # whatever happened, keep what the job wrote so far with its run
            tracking.log_job_files(cfg, output_dir)
        return results["best_val_accuracy"]


def _save_keras_atomic(model: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.stem}.tmp.keras")  # Keras insists on the .keras suffix
    model.save(temp)
    os.replace(temp, path)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def main(cfg: DictConfig) -> float:
    try:
        with exit_on_user_error():
            validate(cfg)
            arrays, data_path = data.load_for_training(
                cfg.data.dir, cfg.data.sources, cfg.data.local_path, cfg.data.cache_dir, cfg.data.fetch_if_missing
            )
            return train(cfg, arrays, data_path)
    finally:
        if "keras" in sys.modules:  # free this job's graphs and weights before the next sweep job
            sys.modules["keras"].backend.clear_session()
        gc.collect()


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def cli() -> None:
    """Entry point: SIGTERM behaves like Ctrl-C, and either ends open runs as KILLED."""
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        main()
    except KeyboardInterrupt:
        tracking.close_open_sweep("KILLED")
        print("interrupted: the runs in progress were ended as KILLED", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    cli()

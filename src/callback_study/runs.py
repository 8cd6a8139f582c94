"""The study's runs, each once: real ones trained by the fit core, EarlyStopping and ModelCheckpoint ones replayed
from their seed's baseline (replay.py); one MLflow run and one record file (trial.json) per run.

Real runs (the baseline, ReduceLROnPlateau, the TensorBoard cost runs) train through src/training/fit.py on the
sequential engine: plain `model.fit` with the real Keras callbacks of their config, which is what the replay must
equal (the vectorized engine runs no callbacks, and a baseline trained by it would differ from a real run in
float32 rounding). A baseline also keeps its weights after every epoch (weights.npz) and the test accuracy they
score (`epoch_test_accuracy`), for the replays and for "the baseline's best epoch".

A run's folder holds trial.json once its MLflow run ended FINISHED, with the run's config hash
(src/training/resume.py; a replayed run's is its own config's, as if it were trained). A folder with the current
hash is kept: rerunning the stage after an interruption, or after adding a setting, trains and replays only what
is missing. Wall time: a real run's is its `model.fit` time; a replayed run's is its baseline's minus the epochs it
did not train (its callbacks' own cost, a checkpoint write per improvement, is not in it).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from src.analysis.replicates import FAILED, FINISHED, KILLED
from src.callback_study.replay import WEIGHTS, EpochWeights, Replayer, epoch_test_accuracy, load_weights, save_weights
from src.callback_study.settings import BASELINE, Setting, Trial, trial_config
from src.infra.files import json_safe, write_text_atomic
from src.training import resume

RECORD = "trial.json"


@dataclass(frozen=True)
class Context:
    """What every run of a stage shares: the data file, its hash and the MLflow experiment."""

    data_path: Path
    data_sha256: str
    experiment_id: str


def open_context(cfg: DictConfig) -> Context:
    """The verified MNIST file (fetched only if the config allows) and the study's MLflow experiment."""
    from src import tracking
    from src.training import data

    tracking.check_reachable(str(cfg.mlflow.tracking_uri))
    _, data_path = data.load_for_training(
        cfg.data.dir, cfg.data.sources, cfg.data.local_path, cfg.data.cache_dir, cfg.data.fetch_if_missing
    )
    return Context(data_path, data.sha256_file(data_path), tracking.use_experiment(cfg.mlflow))


def read_record(folder: Path, config_hash: str | None = None) -> dict[str, Any] | None:
    """The finished run recorded in `folder` (of `config_hash`, when given), or None."""
    path = folder / RECORD
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    return record if config_hash is None or record.get("config_hash") == config_hash else None


def run_all(trials: Sequence[Trial], base: DictConfig, context: Context, trials_dir: Path) -> list[dict[str, Any]]:
    """Train the real runs of `trials` that have no record of their current config, then replay the replayed ones
    that have none (from their seed's baseline, which must be among `trials`); return every run's record."""
    configs = {trial: trial_config(base, trial, trial.folder(trials_dir)) for trial in trials}
    hashes = {trial: resume.config_hash(configs[trial], context.data_sha256) for trial in trials}
    _remove_unowned(trials, trials_dir)
    missing = [trial for trial in trials if read_record(trial.folder(trials_dir), hashes[trial]) is None]
    for trial in missing:
        shutil.rmtree(trial.folder(trials_dir), ignore_errors=True)
    real = [trial for trial in missing if not trial.setting.replayed]
    replayed = [trial for trial in missing if trial.setting.replayed]
    print(f"{len(real)} to train, {len(replayed)} to replay, {len(trials) - len(missing)} kept", flush=True)
    _train(real, configs, hashes, context, trials_dir)
    replayers: dict[int, tuple[dict[str, Any], Replayer]] = {}  # per seed: its baseline, replayed
    for trial in replayed:
        if trial.seed not in replayers:
            replayers = {trial.seed: _replayer(trial, trials_dir)}  # one baseline in memory at a time
        _replay(trial, configs[trial], hashes[trial], context, trials_dir, *replayers[trial.seed])
    return [read_record(trial.folder(trials_dir)) for trial in trials]  # type: ignore[misc]


def _remove_unowned(trials: Sequence[Trial], trials_dir: Path) -> None:
    """Delete the setting and seed folders no listed run owns (a setting or seed dropped from the config)."""
    owned = {trial.folder(trials_dir) for trial in trials}
    for root in {folder.parent.parent for folder in owned}:
        for setting_dir in root.iterdir() if root.is_dir() else []:
            seeds = [path for path in setting_dir.iterdir() if path not in owned] if setting_dir.is_dir() else []
            for stale in seeds:
                shutil.rmtree(stale, ignore_errors=True)
            if setting_dir.is_dir() and not any(setting_dir.iterdir()):
                setting_dir.rmdir()


def _tags(trial: Trial, config_hash: str, context: Context) -> dict[str, str]:
    import keras

    return {
        "optimizer": trial.optimizer,
        "setting": trial.setting.label,
        "setting_name": trial.setting.name,
        "callback": trial.setting.kind,
        "seed": str(trial.seed),
        "config_hash": config_hash,
        "data_sha256": context.data_sha256,
        "keras_backend": keras.backend.backend(),
    }


def _train(
    trials: Sequence[Trial],
    configs: Mapping[Trial, DictConfig],
    hashes: Mapping[Trial, str],
    context: Context,
    trials_dir: Path,
) -> None:
    """Train `trials` on the sequential engine, each an MLflow run logged and recorded as soon as it ends."""
    import logging

    from mlflow import MlflowClient

    from src.training import fit

    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # every run traces its train step anew: expected
    recorders = {index: EpochWeights() for index, trial in enumerate(trials) if trial.setting.kind == BASELINE}
    specs = [
        fit.TrialSpec(
            configs[trial],
            context.data_path,
            score_test=True,
            callbacks=[recorders[index]] if index in recorders else [],
            verbose=0,
        )
        for index, trial in enumerate(trials)
    ]
    client = MlflowClient()
    open_runs: dict[int, str] = {}

    def start(index: int) -> None:
        trial = trials[index]
        tags = _tags(trial, hashes[trial], context) | {"replayed": "false"}
        open_runs[index] = client.create_run(context.experiment_id, run_name=trial.run_name, tags=tags).info.run_id

    def finish(index: int, result: fit.FitResult) -> None:
        trial, run_id = trials[index], open_runs[index]
        folder = trial.folder(trials_dir)
        extra: dict[str, Any] = {}
        if index in recorders:
            save_weights(folder / WEIGHTS, recorders[index].epochs)
            extra["epoch_test_accuracy"] = epoch_test_accuracy(specs[index], recorders[index].epochs)
        log_dir = folder / "tensorboard"
        if log_dir.is_dir():  # measured, then deleted: the cost study keeps the time, not the logs
            extra["tensorboard_bytes"] = sum(path.stat().st_size for path in log_dir.rglob("*") if path.is_file())
        for written in ("tensorboard", "checkpoint"):
            shutil.rmtree(folder / written, ignore_errors=True)
        record = _record(trial, hashes[trial], run_id, result.status, result.diverged_epoch, result.history)
        record["metrics"] |= {
            "test_accuracy": result.test.accuracy if result.test else None,
            "test_loss": result.test.loss if result.test else None,
            "wall_seconds": result.train_seconds,
            "model_epoch": result.model_epoch,
        }
        record |= {"model_weights": result.model_weights, "replayed": False} | extra
        _log(client, run_id, configs[trial], record, result.model_tags())
        client.set_terminated(run_id, FINISHED)
        del open_runs[index]
        write_text_atomic(folder / RECORD, json.dumps(json_safe(record), indent=1) + "\n")
        accuracy = record["metrics"]["test_accuracy"]
        shown = "n/a" if accuracy is None else f"{accuracy:.4f}"
        print(f"{trial.run_name}: test accuracy {shown}, {result.train_seconds:.1f} s", flush=True)

    try:
        fit.fit_trials(specs, fit.SequentialEngine(), on_start=start, on_result=finish)
    except BaseException as error:
        for run_id in open_runs.values():
            client.set_terminated(run_id, KILLED if isinstance(error, KeyboardInterrupt) else FAILED)
        raise


def _replayer(trial: Trial, trials_dir: Path) -> tuple[dict[str, Any], Replayer]:
    """The baseline record of `trial`'s optimizer and seed, and a Replayer over its recorded epochs and weights."""
    folder = Trial(trial.optimizer, Setting(BASELINE), trial.seed, trial.epochs).folder(trials_dir)
    baseline = read_record(folder)
    if baseline is None:
        raise FileNotFoundError(f"{trial.run_name}: no baseline run in {folder} to replay from")
    history = baseline["history"]
    epochs = [{key: values[epoch] for key, values in history.items()} for epoch in range(len(history["loss"]))]
    return baseline, Replayer(epochs, load_weights(folder / WEIGHTS))


def _replay(
    trial: Trial,
    cfg: DictConfig,
    config_hash: str,
    context: Context,
    trials_dir: Path,
    baseline: Mapping[str, Any],
    replayer: Replayer,
) -> None:
    """Replay `trial` over its seed's baseline: an MLflow run (tagged `replayed`, `replayed_from`) and a record."""
    from mlflow import MlflowClient

    from src.training import fit

    started = time.perf_counter()
    outcome = replayer.replay(fit.TrialSpec(cfg, context.data_path, score_test=True, verbose=0))
    shutil.rmtree(trial.folder(trials_dir) / "checkpoint", ignore_errors=True)
    skipped = sum(baseline["history"]["epoch_seconds"][outcome.epochs_trained :])
    client = MlflowClient()
    tags = _tags(trial, config_hash, context) | {"replayed": "true", "replayed_from": baseline["run_id"]}
    run_id = client.create_run(context.experiment_id, run_name=trial.run_name, tags=tags).info.run_id
    status = "diverged" if outcome.diverged_epoch else FINISHED
    record = _record(trial, config_hash, run_id, status, outcome.diverged_epoch, outcome.history)
    record["metrics"] |= {
        "test_accuracy": outcome.test.accuracy if outcome.test else None,
        "test_loss": outcome.test.loss if outcome.test else None,
        "wall_seconds": baseline["metrics"]["wall_seconds"] - skipped,
        "model_epoch": outcome.model_epoch,
        "replay_seconds": time.perf_counter() - started,
    }
    record |= {"model_weights": outcome.model_weights, "replayed": True, "replayed_from": baseline["run_id"]}
    model_tags = {"model_weights": outcome.model_weights, "model_epoch": str(outcome.model_epoch)}
    try:
        _log(client, run_id, cfg, record, model_tags)
    except BaseException:
        client.set_terminated(run_id, FAILED)
        raise
    client.set_terminated(run_id, FINISHED)
    write_text_atomic(trial.folder(trials_dir) / RECORD, json.dumps(json_safe(record), indent=1) + "\n")


def _record(
    trial: Trial,
    config_hash: str,
    run_id: str,
    status: str,
    diverged: int | None,
    history: Mapping[str, Sequence[float]],
) -> dict[str, Any]:
    """trial.json: what the report reads of a finished run."""
    from src.training.fit import summarize_history

    metrics = summarize_history(history) if history.get("val_accuracy") else {}
    metrics["epochs_trained"] = len(history.get("loss", []))
    return {
        "config_hash": config_hash,
        "optimizer": trial.optimizer,
        "setting": trial.setting.name,
        "label": trial.setting.label,
        "kind": trial.setting.kind,
        "seed": trial.seed,
        "budget_epochs": trial.epochs,
        "status": status,
        "diverged_epoch": diverged,
        "run_id": run_id,
        "run_name": trial.run_name,
        "metrics": metrics,
        "history": {key: [float(v) for v in values] for key, values in history.items()},
    }


def _log(client: Any, run_id: str, cfg: DictConfig, record: Mapping[str, Any], model_tags: Mapping[str, str]) -> None:
    from src.tracking import config_params
    from src.tracking.parent import log_batched

    choices = {"optimizer": record["optimizer"], "model": str(cfg.model._target_).rsplit(".", 1)[-1], "data": "mnist"}
    metrics = {key: float(value) for key, value in record["metrics"].items() if value is not None}
    tags = {"diverged": "true" if record["diverged_epoch"] else "false", **model_tags}
    log_batched(
        client, run_id, metrics=metrics, params=config_params(cfg, choices), tags=tags, history=record["history"]
    )

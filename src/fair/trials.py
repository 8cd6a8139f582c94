"""Train the protocol's runs in this process, each once: one MLflow run and one record file per trial.

A trial trains through the same fit core as `src.train`'s job (src/training/fit.py: build, fit, the one
rule of "diverged", the run's model, its test scores) and differs in what it logs and where: it is lean,
because the protocol trains a hundred of them and the time outside `fit` is its overhead. The data split
is read once per seed, the protocol's config keeps the divergence guards only (no checkpoint, so a trial's
model is its final weights), and its MLflow run gets its params, tags and every epoch's metrics in one
batch at the end (no TensorBoard, no checkpoints, no logged MLflow model). What each phase logs:

- tune: params, tags (phase, optimizer, workload, learning_rate, seed), per-epoch metrics, final
  validation metrics. The test set is never evaluated: tuning selects on validation only;
- judge: the same, plus test_loss/test_accuracy of the run's model (its final weights), that model as a
  `.keras` file artifact (`model/model.keras`; load it with `keras.saving.load_model`) and the tags
  `model_weights` and `model_epoch` that say so.

A trial's folder holds `trial.json` once its run ended FINISHED: the trial's config hash (src/training/resume.py:
the resolved training config, the MNIST file's sha256, the Keras backend), its metrics and history. A
folder with the current hash is kept; any other is trained again. So an interrupted protocol resumes
without retraining finished trials, and a wider grid trains only the new learning rates.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
from omegaconf import DictConfig

from src.analysis.replicates import FAILED, FINISHED, KILLED
from src.fair.protocol import JUDGE, Trial, lr_text
from src.infra.files import RECORD, json_safe, read_record, write_text_atomic
from src.training import resume

if TYPE_CHECKING:
    from src.training.fit import Engine, FitResult

log = logging.getLogger(__name__)


def trial_config(base: DictConfig, trial: Trial) -> DictConfig:
    """The training config of one trial: the optimizer x workload's config at this learning rate and seed."""
    cfg = base.copy()
    cfg.optimizer.learning_rate = trial.learning_rate
    cfg.train.seed = trial.seed
    return cfg


@dataclass
class Context:
    """What every trial of a stage shares: the data file, its hash and the MLflow experiment."""

    data_path: Path
    data_sha256: str
    experiment_id: str
    choices: Mapping[str, str]


def open_context(cfg: DictConfig, optimizer: str, model: str) -> Context:
    """The workload's verified data file (fetched if the config allows) and the protocol's MLflow experiment."""
    from src import tracking
    from src.training import data

    tracking.check_reachable(str(cfg.mlflow.tracking_uri))
    dataset = data.for_config(cfg.data)
    _, data_path = data.load_for_training(
        cfg.data.dir, cfg.data.sources, cfg.data.local_path, cfg.data.cache_dir, cfg.data.fetch_if_missing, dataset
    )
    experiment_id = tracking.use_experiment(cfg.mlflow)
    choices = {"optimizer": optimizer, "model": model, "data": dataset.name}
    return Context(data_path, data.sha256_file(data_path), experiment_id, choices)


def plan(trials: Sequence[Trial], hashes: Mapping[Trial, str], trials_dir: Path) -> list[Trial]:
    """The trials to train (no finished record of their config hash); empties their folders and removes
    the folders in their phases that no listed trial owns (a rate dropped from the grid, an old tuned rate)."""
    owned = {trial.folder(trials_dir) for trial in trials}
    for phase_dir in {folder.parent for folder in owned}:
        for old in phase_dir.iterdir() if phase_dir.is_dir() else []:
            if old.is_dir() and old not in owned:
                shutil.rmtree(old)
    to_train = [trial for trial in trials if read_record(trial.folder(trials_dir), hashes[trial]) is None]
    for trial in to_train:
        shutil.rmtree(trial.folder(trials_dir), ignore_errors=True)
    return to_train


def train_trials(
    trials: Sequence[Trial], base: DictConfig, context: Context, trials_dir: Path, engine: Engine | None = None
) -> list[dict[str, Any]]:
    """Train every trial of `trials` that has no finished record of its current config; return all records.

    The fit core trains them (src/training/fit.py; `engine`, sequential by default). Each trial's MLflow run
    is opened when it starts and logged, ended FINISHED and recorded as soon as its result is ready. A trial
    that diverges is recorded like any other (status `diverged`); an exception ends the runs in progress
    FAILED (KILLED on Ctrl-C) and stops the stage, and the finished trials before it stay recorded."""
    import keras
    from mlflow import MlflowClient

    from src.tracking import config_params
    from src.training import fit

    began = time.perf_counter()
    configs = {trial: trial_config(base, trial) for trial in trials}
    hashes = {trial: resume.config_hash(configs[trial], context.data_sha256) for trial in trials}
    to_train = plan(trials, hashes, trials_dir)
    print(f"{len(to_train)} to train, {len(trials) - len(to_train)} kept from earlier runs", flush=True)
    # Every trial builds a new model, so TensorFlow traces its train step anew: expected, not worth a warning
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    specs = [
        fit.TrialSpec(configs[trial], context.data_path, score_test=trial.phase == JUDGE, verbose=0)
        for trial in to_train
    ]
    client = MlflowClient()
    _end_lost_runs(client, context.experiment_id, {hashes[trial] for trial in to_train})
    open_runs: dict[int, str] = {}
    fit_seconds = 0.0

    def start(index: int) -> None:
        trial = to_train[index]
        tags = {
            "phase": trial.phase,
            "optimizer": trial.optimizer,
            "workload": trial.workload,
            "learning_rate": lr_text(trial.learning_rate),
            "seed": str(trial.seed),
            "config_hash": hashes[trial],
            "data_sha256": context.data_sha256,
            "keras_backend": keras.backend.backend(),
        }
        open_runs[index] = client.create_run(context.experiment_id, run_name=trial.run_name, tags=tags).info.run_id

    def finish(index: int, result: fit.FitResult) -> None:
        nonlocal fit_seconds
        trial, run_id = to_train[index], open_runs[index]
        params = config_params(configs[trial], context.choices)
        _log_run(client, run_id, params, result, with_model=trial.phase == JUDGE)
        client.set_terminated(run_id, FINISHED)
        del open_runs[index]
        record = _record(trial, hashes[trial], run_id, result)
        write_text_atomic(trial.folder(trials_dir) / RECORD, json.dumps(record, indent=1) + "\n")
        fit_seconds += result.train_seconds
        if result.diverged_epoch:
            log.warning("%s diverged in epoch %d", trial.run_name, result.diverged_epoch)
        final = record["metrics"]["final_val_accuracy"]
        shown = "n/a" if final is None else f"{final:.4f}"
        print(f"{trial.run_name}: val accuracy {shown} ({result.train_seconds:.1f} s)", flush=True)

    try:
        fit.fit_trials(specs, engine, on_start=start, on_result=finish)
    except BaseException as error:
        for run_id in open_runs.values():
            client.set_terminated(run_id, KILLED if isinstance(error, KeyboardInterrupt) else FAILED)
        raise
    if to_train:  # the overhead to beat: time outside fit, in this phase and since start-up (docs/benchmarks.md)
        phase, wall = time.perf_counter() - began, time.time() - psutil.Process().create_time()
        print(f"{fit_seconds:.1f} s of training in {phase:.1f} s ({wall:.1f} s since this process started)", flush=True)
    return [read_record(trial.folder(trials_dir)) for trial in trials]  # type: ignore[misc]


def _end_lost_runs(client: Any, experiment_id: str, config_hashes: set[str]) -> None:
    """End KILLED, tagged `lost`, the runs of these trials still RUNNING: their process died (SIGKILL, out of
    memory) before it could end them, and a vectorized chunk opens a run for each of its members at once.
    They are trained again now, in new runs; nothing else would ever end the old ones."""
    if not config_hashes:
        return
    for run in client.search_runs([experiment_id], "attributes.status = 'RUNNING'", max_results=5000):
        if run.data.tags.get("config_hash") in config_hashes:
            client.set_tag(run.info.run_id, "lost", "still RUNNING when the trial was trained again")
            client.set_terminated(run.info.run_id, KILLED)


def _record(trial: Trial, config_hash: str, run_id: str, result: FitResult) -> dict[str, Any]:
    """trial.json: what the report reads of a finished trial (NaN and infinity as null)."""
    return {
        "config_hash": config_hash,
        "phase": trial.phase,
        "workload": trial.workload,
        "optimizer": trial.optimizer,
        "learning_rate": trial.learning_rate,
        "seed": trial.seed,
        "status": result.status,
        "diverged_epoch": result.diverged_epoch,
        "run_id": run_id,
        "run_name": trial.run_name,
        "engine": result.engine,
        "metrics": json_safe({key: float(value) for key, value in result.metrics().items()}),
        "history": json_safe({key: [float(v) for v in values] for key, values in result.history.items()}),
    }


def _log_run(client: Any, run_id: str, params: Mapping[str, str], result: FitResult, with_model: bool) -> None:
    """Params, per-epoch metrics (step = epoch, 0-based as src.train logs them), final metrics and the
    divergence tags, in as few store round trips as MLflow allows (100 params, 1000 metrics a call); with
    `with_model`, the run's model (`model/model.keras`) and the tags saying which weights it holds."""
    from src.tracking.parent import log_batched

    diverged_at = result.diverged_epoch
    tags = {"diverged": "true" if diverged_at else "false", "engine": result.engine}
    tags |= {"diverged_epoch": str(diverged_at)} if diverged_at else {}
    tags |= result.model_tags() if with_model else {}
    log_batched(client, run_id, metrics=result.metrics(), params=params, tags=tags, history=result.history)
    if with_model:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "model.keras"
            result.model.save(path)
            client.log_artifact(run_id, str(path), "model")

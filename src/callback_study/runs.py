"""The study's runs, each once, in three ways; one MLflow run and one record file (trial.json) per run.

- trained: the baselines and the TensorBoard cost runs, through src/training/fit.py on the sequential engine
  (plain `model.fit` with the real Keras callbacks of their config: the vectorized engine runs no callbacks, and
  a baseline trained by it would differ from a real run in float32 rounding). A baseline also keeps its weights
  and optimizer variables after every epoch (weights.npz, optimizer.npz), for the replays and the forks, and the
  test accuracy of its best validation epoch's weights (`best_epoch_test_accuracy`, "the baseline's best epoch");
- replayed: EarlyStopping and ModelCheckpoint, whose real callbacks are fed the baseline's recorded epochs
  (replay.py: a run with them is its baseline until they act);
- forked: ReduceLROnPlateau, a real run that starts from the baseline's state at the end of the epoch where it
  first changes the learning rate (the run is its baseline until then) and trains the remaining epochs. One that
  never changes it (or only after the last epoch) is its baseline.
tests/test_callback_study.py checks that replayed and forked runs equal runs trained from scratch.

A run's folder holds trial.json once its MLflow run ended FINISHED, with its config hash (src/training/resume.py;
a replayed or forked run's is its own config's, as if trained from scratch). A folder with the current hash is
kept: rerunning the stage after an interruption, or after adding a setting, runs only what is missing. Wall time:
a trained run's `model.fit` time; a replayed or forked run's is its baseline's with the epochs it did not share
replaced by its own (a replayed callback's own cost, a checkpoint write per improvement, is not in it).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from src.analysis.replicates import DIVERGED, FAILED, FINISHED, KILLED
from src.callback_study import replay
from src.callback_study.settings import BASELINE, REDUCE_LR, TENSORBOARD, Setting, Trial, trial_config
from src.infra.files import RECORD, json_safe, read_record, write_text_atomic
from src.training import resume

TRAINED, REPLAYED, FORKED = "trained", "replayed", "forked"  # how a run was had (record key `how`, tag `how`)


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


def how(trial: Trial) -> str:
    return REPLAYED if trial.setting.replayed else FORKED if trial.setting.kind == REDUCE_LR else TRAINED


def run_all(trials: Sequence[Trial], base: DictConfig, context: Context, trials_dir: Path) -> list[dict[str, Any]]:
    """Run every trial of `trials` that has no record of its current config: the trained ones first, then the
    replayed and forked ones from their seed's baseline (which must be among `trials`); return every record."""
    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # every run traces its train step anew: expected
    configs = {trial: trial_config(base, trial, trial.folder(trials_dir)) for trial in trials}
    hashes = {trial: resume.config_hash(configs[trial], context.data_sha256) for trial in trials}
    _remove_unowned(trials, trials_dir)
    missing = [trial for trial in trials if read_record(trial.folder(trials_dir), hashes[trial]) is None]
    for trial in missing:
        shutil.rmtree(trial.folder(trials_dir), ignore_errors=True)
    ways = {way: [trial for trial in missing if how(trial) == way] for way in (TRAINED, REPLAYED, FORKED)}
    counts = ", ".join(f"{len(ways[way])} {way}" for way in ways)
    print(f"{counts} now; {len(trials) - len(missing)} kept from earlier runs", flush=True)
    recorder = Recorder(context, trials_dir, configs, hashes)
    _train(ways[TRAINED], recorder)
    baselines: dict[int, Baseline] = {}
    for trial in ways[REPLAYED] + ways[FORKED]:
        if trial.seed not in baselines:
            baselines = {trial.seed: Baseline.read(trial, trials_dir)}  # one baseline in memory at a time
        (_replay if how(trial) == REPLAYED else _fork)(trial, baselines[trial.seed], recorder)
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


@dataclass
class Recorder:
    """Opens each run's MLflow run, and logs, ends and records it (trial.json) once its outcome is known."""

    context: Context
    trials_dir: Path
    configs: Mapping[Trial, DictConfig]
    hashes: Mapping[Trial, str]

    def __post_init__(self) -> None:
        from mlflow import MlflowClient

        self.client = MlflowClient()

    def start(self, trial: Trial, extra_tags: Mapping[str, str] | None = None) -> str:
        import keras

        tags = {
            "optimizer": trial.optimizer,
            "setting": trial.setting.label,
            "setting_name": trial.setting.name,
            "callback": trial.setting.kind,
            "seed": str(trial.seed),
            "how": how(trial),
            "config_hash": self.hashes[trial],
            "data_sha256": self.context.data_sha256,
            "keras_backend": keras.backend.backend(),
            **(extra_tags or {}),
        }
        return self.client.create_run(self.context.experiment_id, run_name=trial.run_name, tags=tags).info.run_id

    def fail(self, run_id: str, error: BaseException) -> None:
        self.client.set_terminated(run_id, KILLED if isinstance(error, KeyboardInterrupt) else FAILED)

    def finish(
        self,
        trial: Trial,
        run_id: str,
        result: Any,  # fit.FitResult or replay.Replayed: history, model_weights, model_epoch, test, diverged_epoch
        wall_seconds: float,
        extra: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Log the run's params, per-epoch metrics and outcome, end it FINISHED, write its record."""
        from src.tracking import config_params
        from src.tracking.parent import log_batched
        from src.training.fit import summarize_history

        folder = trial.folder(self.trials_dir)
        history = {key: [float(v) for v in values] for key, values in result.history.items()}
        metrics = summarize_history(history) if history.get("val_accuracy") else {}
        metrics |= {
            "epochs_trained": len(history.get("loss", [])),
            "model_epoch": result.model_epoch,
            "test_accuracy": result.test.accuracy if result.test else None,
            "test_loss": result.test.loss if result.test else None,
            "wall_seconds": wall_seconds,
        }
        record = {
            "config_hash": self.hashes[trial],
            "optimizer": trial.optimizer,
            "setting": trial.setting.name,
            "label": trial.setting.label,
            "kind": trial.setting.kind,
            "how": how(trial),
            "seed": trial.seed,
            "budget_epochs": trial.epochs,
            "status": DIVERGED if result.diverged_epoch else FINISHED,
            "diverged_epoch": result.diverged_epoch,
            "run_id": run_id,
            "run_name": trial.run_name,
            "model_weights": result.model_weights,
            "metrics": metrics,
            "history": history,
            **(extra or {}),
        }
        cfg = self.configs[trial]
        choices = {"optimizer": trial.optimizer, "model": str(cfg.model._target_).rsplit(".", 1)[-1], "data": "mnist"}
        tags = {"diverged": "true" if result.diverged_epoch else "false"}
        tags |= {"model_weights": result.model_weights, "model_epoch": str(result.model_epoch)}
        logged = {key: float(value) for key, value in metrics.items() if value is not None}
        log_batched(self.client, run_id, metrics=logged, params=config_params(cfg, choices), tags=tags, history=history)
        self.client.set_terminated(run_id, FINISHED)
        write_text_atomic(folder / RECORD, json.dumps(json_safe(record), indent=1) + "\n")
        accuracy = metrics["test_accuracy"]
        shown = "n/a" if accuracy is None else f"{accuracy:.4f}"
        print(f"{trial.run_name} ({how(trial)}): test accuracy {shown}, {wall_seconds:.1f} s", flush=True)
        return record


def _train(trials: Sequence[Trial], recorder: Recorder) -> None:
    """Train `trials` on the sequential engine, each recorded as soon as it ends; a baseline keeps its per-epoch
    weights and optimizer variables, and the test accuracy of its best validation epoch's weights."""
    from src.training import fit
    from src.training.fit import summarize_history

    recorders = {index: replay.EpochWeights() for index, trial in enumerate(trials) if trial.setting.kind == BASELINE}
    specs = [
        fit.TrialSpec(
            recorder.configs[trial],
            recorder.context.data_path,
            score_test=trial.setting.kind != TENSORBOARD,  # a cost run is timed, not scored
            callbacks=[recorders[index]] if index in recorders else [],
            verbose=0,
        )
        for index, trial in enumerate(trials)
    ]
    open_runs: dict[int, str] = {}

    def start(index: int) -> None:
        open_runs[index] = recorder.start(trials[index])

    def finish(index: int, result: fit.FitResult) -> None:
        trial = trials[index]
        folder = trial.folder(recorder.trials_dir)
        extra: dict[str, Any] = {}
        if index in recorders:
            replay.save_arrays(folder / replay.WEIGHTS, recorders[index].epochs)
            replay.save_arrays(folder / replay.OPTIMIZER_STATES, recorders[index].optimizer_states)
            best = summarize_history(result.history)["best_epoch"]
            weights = recorders[index].epochs[best - 1]
            extra["best_epoch_test_accuracy"] = replay.test_accuracy_of(specs[index], weights)
        log_dir = folder / "tensorboard"
        if log_dir.is_dir():  # measured, then deleted: the cost study keeps the time, not the logs
            extra["tensorboard_bytes"] = sum(path.stat().st_size for path in log_dir.rglob("*") if path.is_file())
            shutil.rmtree(log_dir)
        recorder.finish(trial, open_runs.pop(index), result, result.train_seconds, extra)

    try:
        fit.fit_trials(specs, fit.SequentialEngine(), on_start=start, on_result=finish)
    except BaseException as error:
        for run_id in open_runs.values():
            recorder.fail(run_id, error)
        raise


@dataclass
class Baseline:
    """A baseline run's record, its per-epoch logs, weights and optimizer variables, and one Replayer over them."""

    record: dict[str, Any]
    epochs: list[dict[str, float]]
    weights: list[list[Any]]
    optimizer_states: list[list[Any]]
    replayer: replay.Replayer

    @classmethod
    def read(cls, trial: Trial, trials_dir: Path) -> Baseline:
        folder = Trial(trial.optimizer, Setting(BASELINE), trial.seed, trial.epochs).folder(trials_dir)
        record = read_record(folder)
        if record is None:
            raise FileNotFoundError(f"{trial.run_name}: no baseline run in {folder} to start from")
        history = record["history"]
        epochs = [{key: values[epoch] for key, values in history.items()} for epoch in range(len(history["loss"]))]
        weights = replay.load_arrays(folder / replay.WEIGHTS)
        states = replay.load_arrays(folder / replay.OPTIMIZER_STATES)
        return cls(record, epochs, weights, states, replay.Replayer(epochs, weights))

    def wall_seconds(self, shared_epochs: int, own_seconds: float = 0.0) -> float:
        """The baseline's `model.fit` time with the epochs after the first `shared_epochs` replaced by
        `own_seconds`."""
        skipped = sum(self.record["history"]["epoch_seconds"][shared_epochs:])
        return self.record["metrics"]["wall_seconds"] - skipped + own_seconds


def _spec(trial: Trial, recorder: Recorder) -> Any:
    from src.training import fit

    return fit.TrialSpec(recorder.configs[trial], recorder.context.data_path, score_test=True, verbose=0)


def _replay(trial: Trial, baseline: Baseline, recorder: Recorder) -> None:
    """An EarlyStopping or ModelCheckpoint run, replayed over its baseline (tags `replayed_from`)."""
    run_id = recorder.start(trial, {"replayed_from": baseline.record["run_id"]})
    try:
        outcome = baseline.replayer.replay(_spec(trial, recorder))
        shutil.rmtree(trial.folder(recorder.trials_dir) / "checkpoint", ignore_errors=True)
        wall = baseline.wall_seconds(outcome.epochs_trained)
        recorder.finish(trial, run_id, outcome, wall, {"from_run_id": baseline.record["run_id"]})
    except BaseException as error:
        recorder.fail(run_id, error)
        raise


def _fork(trial: Trial, baseline: Baseline, recorder: Recorder) -> None:
    """A ReduceLROnPlateau run: forked from its baseline where it first changes the learning rate (tags
    `forked_from`, `forked_after_epoch`), or its baseline's outcome when it never changes it before the end."""
    spec = _spec(trial, recorder)
    branch = replay.first_change(spec, baseline.epochs)
    shared = len(baseline.epochs) if branch is None else branch + 1
    tags = {"forked_from": baseline.record["run_id"], "forked_after_epoch": str(shared)}
    run_id = recorder.start(trial, tags)
    extra = {"from_run_id": baseline.record["run_id"], "forked_after_epoch": shared}
    try:
        if shared >= len(baseline.epochs):  # no change, or only after the last epoch: the run is its baseline
            outcome = baseline.replayer.replay(spec)
            recorder.finish(trial, run_id, outcome, baseline.wall_seconds(shared), extra)
            return
        result = replay.fork(spec, baseline.epochs, baseline.weights, baseline.optimizer_states, branch)  # type: ignore[arg-type]
        own = sum(result.history["epoch_seconds"][shared:])  # its first own epoch traces the train step again
        recorder.finish(trial, run_id, result, baseline.wall_seconds(shared, own), extra)
    except BaseException as error:
        recorder.fail(run_id, error)
        raise

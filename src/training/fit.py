"""The one fit core: build, compile, fit and score trials with Keras, and say what came out.

Keras only (no MLflow, no Hydra runtime): the sweep job (src/train.py) and the fair protocol's trials
(src/fair/trials.py) both train through it and differ only in what they log and where.

- `TrialSpec`: one trial, i.e. its composed training config (optimizer, model, callbacks, train and data
  keys; `train.seed` seeds the weights and the validation split), the MNIST file and what else to do.
- `build(spec)` -> `BuiltTrial` (compiled model, configured callbacks), raising a ConfigError that names the
  config group Keras rejects: a caller builds before it creates anything (an MLflow run) that a bad setting
  would leave behind. `fit(built)` -> `FitResult`; `fit_one(spec)` does both.
- `Engine`: trains a list of trials and returns their results in order, telling the caller when each trial
  starts and when its result is ready. `SequentialEngine` is a loop over `fit_one`; a vectorized engine
  (N trials as one program) implements the same interface.

Decided here, once for every run of the project:
- diverged: `src.training.callbacks.diverged_epoch` over the whole history (training loss not finite or past
  StopOnDivergence's limit, or a validation metric not finite). A diverged fit returns normally, with status
  DIVERGED and `diverged_epoch`; an exception is no result (the caller ends its run FAILED or KILLED).
- the run's model: the best checkpoint when a ModelCheckpoint with `save_best_only` is configured (what it
  saved last, by its `monitor`), else the final weights (with EarlyStopping(restore_best_weights=True) those
  are the restored best epoch's). That one model is what a caller logs, serves and scores.
- test scores: one forward pass of that model over the test set, batch by batch (what the served model runs,
  src/tracking/served_model.py), giving the loss, the accuracy and every image's predicted digit.
"""

from __future__ import annotations

import gc
import logging
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import keras
import numpy as np
from omegaconf import DictConfig

from src.analysis.replicates import FINISHED, run_status
from src.infra.errors import ConfigError
from src.training import data
from src.training.callbacks import (
    BackupAndRestore,
    EpochStats,
    ModelCheckpoint,
    StopOnDivergence,
    diverged_epoch,
    from_config,
)

log = logging.getLogger(__name__)

BEST_CHECKPOINT, FINAL = "best_checkpoint", "final"  # which weights a run's model holds (tag `model_weights`)
LOSS = "sparse_categorical_crossentropy"
KERAS_CHECKPOINT, CHECKPOINT = "keras.callbacks.ModelCheckpoint", "src.training.callbacks.ModelCheckpoint"


@dataclass(frozen=True, eq=False)
class TrialSpec:
    """One trial: everything that decides what is trained, and what the caller wants besides.

    `callbacks`: extra Keras callbacks (loggers), run after the configured ones. `backup_dir` fills a
    BackupAndRestore whose `backup_dir` is null. `verbose`: Keras' fit verbosity; None = `train.verbose`
    ("auto" = a progress bar on a terminal, one line per epoch otherwise).
    """

    cfg: DictConfig
    data_path: Path
    score_test: bool = False
    callbacks: Sequence[keras.callbacks.Callback] = ()
    backup_dir: Path | None = None
    verbose: int | None = None

    @property
    def seed(self) -> int:
        return int(self.cfg.train.seed)

    def splits(self) -> data.Splits:
        """The trial's training, validation and test images (read and split once per file and seed)."""
        return data.split_for_training(self.data_path, self.cfg.data.val_split, self.cfg.data.limit, self.seed)


@dataclass(frozen=True)
class TestScores:
    """The run's model on the 10000 test images: mean loss, accuracy and each image's predicted digit."""

    __test__ = False  # a result, not a pytest test class
    loss: float
    accuracy: float
    predicted: np.ndarray


@dataclass(frozen=True, eq=False)
class BuiltTrial:
    """A trial's compiled model and configured callbacks (BackupAndRestore last), ready to fit."""

    spec: TrialSpec
    model: keras.Model
    callbacks: list[keras.callbacks.Callback]

    def _first(self, kind: type) -> Any:
        return next((callback for callback in self.callbacks if isinstance(callback, kind)), None)

    @property
    def backup(self) -> BackupAndRestore | None:
        return self._first(BackupAndRestore)

    @property
    def guard(self) -> StopOnDivergence | None:
        return self._first(StopOnDivergence)

    @property
    def best_checkpoint(self) -> ModelCheckpoint | None:
        """The ModelCheckpoint that keeps the best model (`save_best_only`), if one is configured."""
        checkpoint = self._first(ModelCheckpoint)
        return checkpoint if checkpoint is not None and checkpoint.save_best_only else None


@dataclass(frozen=True, eq=False)
class FitResult:
    """What one fit gave. `history`: every epoch's metrics of the whole run (a resumed run's earlier epochs
    first; `restored_epochs` of them). `model`: the run's model (module docstring), holding the weights
    `model_weights` (BEST_CHECKPOINT or FINAL) of epoch `model_epoch` (1-based; None when no epoch ran);
    `final_model`: the weights training ended with (the same object when `model_weights` is FINAL);
    `checkpoint_path`: the best checkpoint's file, when the model is that. `test`: the model's test scores,
    when the spec asked for them."""

    history: dict[str, list[float]]
    model: keras.Model
    final_model: keras.Model
    model_weights: str
    model_epoch: int | None
    train_seconds: float
    diverged_epoch: int | None
    checkpoint_path: Path | None = None
    restored_epochs: int = 0
    test: TestScores | None = None
    engine: str = "sequential"  # which engine trained it (a vectorized group's refused member: sequential)

    @property
    def status(self) -> str:
        """FINISHED, or DIVERGED (src/analysis/replicates.py holds the statuses and the counting rule)."""
        return run_status(FINISHED, self.diverged_epoch is not None)

    def epochs(self) -> list[dict[str, float]]:
        """The history as one {metric: value} per epoch."""
        return [
            {key: values[epoch] for key, values in self.history.items() if epoch < len(values)}
            for epoch in range(max(map(len, self.history.values()), default=0))
        ]

    def metrics(self) -> dict[str, float]:
        """The run's final metrics: best_val_accuracy, best_epoch, stopped_epoch, final_val_accuracy,
        final_val_loss, train_seconds, and test_loss/test_accuracy when scored."""
        metrics = summarize_history(self.history)
        metrics |= {
            "final_val_accuracy": self.history["val_accuracy"][-1],
            "final_val_loss": self.history["val_loss"][-1],
        }
        metrics["train_seconds"] = self.train_seconds
        if self.test is not None:
            metrics |= {"test_loss": self.test.loss, "test_accuracy": self.test.accuracy}
        return metrics

    def model_tags(self) -> dict[str, str]:
        """`model_weights` (best_checkpoint | final) and `model_epoch`: which weights the run's model is."""
        return {"model_weights": self.model_weights, "model_epoch": str(self.model_epoch)}


def summarize_history(history: Mapping[str, Sequence[float]]) -> dict[str, float]:
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


def merge_history(
    restored: Sequence[Mapping[str, float]], history: Mapping[str, Sequence[float]]
) -> dict[str, list[float]]:
    """The whole run's per-epoch history: epochs restored from a backup, then this fit's epochs."""
    keys = list(history) or list(restored[0] if restored else [])
    return {key: [epoch[key] for epoch in restored if key in epoch] + list(history.get(key, [])) for key in keys}


def resolve_verbose(verbose: int | str) -> int:
    """Keras' fit verbosity; "auto" as a progress bar on a terminal, one line per epoch otherwise (Keras'
    own "auto" draws a progress bar even into log files)."""
    if verbose == "auto":
        return 1 if sys.stdout.isatty() else 2
    return int(verbose)


def freeze_imported_objects() -> None:
    """Move what exists now (TensorFlow, Keras, MLflow: ~550k objects) out of the garbage collector's
    sight, once per process. A full collection then takes milliseconds instead of ~0.25 s; Keras runs one
    after every job (clear_session) and Python runs them during training. Objects made later, such as
    each trial's model, are collected as usual."""
    if gc.get_freeze_count() == 0:
        gc.freeze()


def _build(group: str, builder: Callable[[], Any]) -> Any:
    """Run `builder`, reporting what Keras rejects (it validates its own arguments) as a ConfigError
    that names the config group."""
    try:
        return builder()
    except Exception as error:
        cause = error.__cause__ or error  # Hydra wraps the Keras error in an InstantiationException
        raise ConfigError(f"{group} cannot be built: {cause}") from error


def _refuse_an_unknown_best_checkpoint(callbacks: Mapping[str, Any]) -> None:
    """Keras' own ModelCheckpoint with save_best_only does not say which file it saved last, so the run's
    model would be unknown: refused, naming the project's class (same parameters, records what it saved)."""
    for name, settings in callbacks.items():
        target = settings.get("_target_")
        if settings.get("enabled", True) and settings.get("save_best_only") and target == KERAS_CHECKPOINT:
            raise ConfigError(
                f"callbacks.{name}._target_={target!r} with save_best_only=true cannot say which checkpoint is"
                f" the run's model; use {CHECKPOINT!r} (the same parameters, and it records what it saved)"
            )


def build(spec: TrialSpec) -> BuiltTrial:
    """The trial's optimizer, model and callbacks, built from their `_target_`s, and the model compiled;
    Keras' seed set first, so the same spec gives the same initial weights. A ConfigError names the part
    that cannot be built."""
    from hydra.utils import instantiate

    cfg = spec.cfg
    _refuse_an_unknown_best_checkpoint(cfg.get("callbacks") or {})
    freeze_imported_objects()
    keras.utils.set_random_seed(spec.seed)
    optimizer = _build(f"optimizer ({cfg.optimizer._target_})", lambda: instantiate(cfg.optimizer))
    model = _build(f"model ({cfg.model._target_})", lambda: instantiate(cfg.model))
    callbacks = _build("callbacks", lambda: from_config(cfg.get("callbacks"), spec.backup_dir))
    model.compile(
        optimizer=optimizer, loss=LOSS, metrics=["accuracy"], steps_per_execution=cfg.train.steps_per_execution
    )
    return BuiltTrial(spec, model, callbacks)


def fit(trial: BuiltTrial) -> FitResult:
    """Fit a built trial (resuming from its backup, if it has one), choose the run's model, score it on the
    test set when the spec asks: the module docstring's rules."""
    spec, cfg = trial.spec, trial.spec.cfg
    splits = spec.splits()
    started = time.perf_counter()
    fitted = trial.model.fit(
        splits.x_train,
        splits.y_train,
        batch_size=cfg.train.batch_size,
        validation_batch_size=cfg.train.get("validation_batch_size"),
        epochs=cfg.train.epochs,
        steps_per_epoch=cfg.train.get("steps_per_epoch"),
        validation_data=(splits.x_val, splits.y_val),
        callbacks=[EpochStats(), *trial.callbacks, *spec.callbacks],  # EpochStats first: the others see its logs
        verbose=resolve_verbose(cfg.train.verbose if spec.verbose is None else spec.verbose),
    )
    train_seconds = time.perf_counter() - started
    restored = trial.backup.restored_history if trial.backup else []
    history = merge_history(restored, fitted.history)
    guard = trial.guard
    diverged_at = diverged_epoch(history, guard.limit if guard else math.inf)  # the limit is set in fit
    model, weights, epoch, checkpoint_path = kept_model(trial, history)
    test = None
    if spec.score_test:
        batch_size = cfg.train.get("validation_batch_size") or cfg.train.batch_size
        test = score(model, splits.x_test, splits.y_test, batch_size)
    return FitResult(
        history=history,
        model=model,
        final_model=trial.model,
        model_weights=weights,
        model_epoch=epoch,
        train_seconds=train_seconds,
        diverged_epoch=diverged_at,
        checkpoint_path=checkpoint_path,
        restored_epochs=len(restored),
        test=test,
    )


def kept_model(
    trial: BuiltTrial, history: Mapping[str, Sequence[float]]
) -> tuple[keras.Model, str, int | None, Path | None]:
    """(the run's model, which weights it holds, their 1-based epoch, the checkpoint file it was read from): the
    module docstring's rule, for a fit and for callbacks replayed over a run's recorded epochs
    (src/callback_study/replay.py)."""
    final = trial.model
    checkpoint = trial.best_checkpoint
    if checkpoint is not None:
        path = checkpoint.saved_path
        if path is not None and path.is_file():
            if checkpoint.save_weights_only:
                best = keras.models.clone_model(final)
                best.load_weights(str(path))
            else:
                best = keras.saving.load_model(path, safe_mode=True, compile=False)
            return best, BEST_CHECKPOINT, checkpoint.saved_epoch, path
        log.warning(
            "no best checkpoint to keep (%s never improved, or its file is gone): the run's model is its final weights",
            checkpoint.monitor,
        )
    stopping = next((c for c in trial.callbacks if isinstance(c, keras.callbacks.EarlyStopping)), None)
    if stopping is not None and stopping.restore_best_weights and stopping.best_weights is not None:
        return final, FINAL, stopping.best_epoch + 1, None
    epochs = len(history.get("loss", []))
    return final, FINAL, epochs or None, None


def score(model: keras.Model, images: np.ndarray, labels: np.ndarray, batch_size: int) -> TestScores:
    """The model's test loss (the training loss, Keras' sparse categorical cross-entropy of its softmax
    output), accuracy and predicted digits, from one forward pass in batches of `batch_size`: the computation the
    served model runs (src/tracking/served_model.py, at 1024 images a batch like `train.validation_batch_size`'s
    default), so the logged metric and the served model's accuracy are one number (tests/test_pipeline.py).

    The model is called, not `model.predict`: predict compiles a new graph for every model it sees (~0.1 s, more
    than the pass itself for these models, and the fair protocol scores 300 of them), the call runs the same
    layers eagerly, with the same result to the bit here."""
    batches = [model(images[begin : begin + batch_size], training=False) for begin in range(0, len(images), batch_size)]
    probabilities = np.concatenate([keras.ops.convert_to_numpy(batch) for batch in batches])
    losses = keras.losses.sparse_categorical_crossentropy(labels, probabilities)
    predicted = np.argmax(probabilities, axis=1)
    return TestScores(
        loss=float(np.mean(keras.ops.convert_to_numpy(losses))),
        accuracy=float(np.mean(predicted == labels)),
        predicted=predicted.astype(np.uint8),
    )


def fit_one(spec: TrialSpec) -> FitResult:
    """Build and fit one trial."""
    return fit(build(spec))


class Engine(Protocol):
    """Trains trials; returns one FitResult per spec, in the specs' order.

    `on_start(i)` is called before trial i trains and `on_result(i, result)` as soon as its result is ready
    (an engine that trains a group at once calls on_start for each member first): a caller opens a trial's
    run in one and logs and records it in the other, so a finished trial is kept even if a later one fails.
    An exception ends the call; the trials started and not finished are then the caller's to end.
    """

    name: str

    def fit_trials(
        self,
        specs: Sequence[TrialSpec],
        on_start: Callable[[int], None] | None = None,
        on_result: Callable[[int, FitResult], None] | None = None,
    ) -> list[FitResult]: ...


class SequentialEngine:
    """One `model.fit` per trial, one after another; Keras' global state is reset after each."""

    name = "sequential"

    def fit_trials(
        self,
        specs: Sequence[TrialSpec],
        on_start: Callable[[int], None] | None = None,
        on_result: Callable[[int, FitResult], None] | None = None,
    ) -> list[FitResult]:
        results = []
        for index, spec in enumerate(specs):
            if on_start:
                on_start(index)
            try:
                result = fit_one(spec)
                if on_result:
                    on_result(index, result)
            finally:  # no full collection per trial (Keras' advice for short loops)
                keras.backend.clear_session(free_memory=False)
            results.append(result)
        return results


def fit_trials(
    specs: Sequence[TrialSpec],
    engine: Engine | None = None,
    on_start: Callable[[int], None] | None = None,
    on_result: Callable[[int, FitResult], None] | None = None,
) -> list[FitResult]:
    """Train `specs` with `engine` (sequential by default): see `Engine`."""
    return (engine or SequentialEngine()).fit_trials(specs, on_start, on_result)

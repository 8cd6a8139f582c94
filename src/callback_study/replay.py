"""EarlyStopping and ModelCheckpoint replayed over a baseline's recorded epochs, instead of retrained.

Neither callback changes training until it acts: a run with one follows the baseline run of its seed epoch by epoch
(Keras on this CPU gives bitwise-equal weights for the same seed), until EarlyStopping stops it; ModelCheckpoint
never changes it, it only keeps a copy of the best epoch's weights. So the outcome of such a run can be had from the
baseline's per-epoch logs and weights, without training it again, if the callbacks see what they would have seen.

They do: the replay builds the run's real callbacks from its config (src/training/fit.py's `build`: the same
`keras.callbacks.EarlyStopping` and `src.training.callbacks.ModelCheckpoint` objects a real run gets), and calls
them through Keras' own `CallbackList`, as `model.fit` does, with the model holding that epoch's recorded weights
and the epoch's recorded logs. No rule of the callbacks is rewritten here. The run's model is then chosen by the
fit core's own rule (`kept_model`: the best checkpoint, else the final weights, restored ones included) and scored
by its `score`. tests/test_callback_study.py trains real runs with these callbacks and checks that the replay gives
the same stop epoch, kept epoch and test accuracy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from src.training import fit
from src.training.callbacks import diverged_epoch, from_config

WEIGHTS = "weights.npz"  # a baseline's weights after each epoch, in its trial folder
OPTIMIZER_STATES = "optimizer.npz"  # its optimizer's variables after each epoch (step, learning rate, slots)


class EpochWeights(keras.callbacks.Callback):
    """Keeps the model's weights and its optimizer's variables after every epoch (copies): what a replay sets the
    model to, and where a forked run starts. The MLP's ~100k parameters are 0.4 MB an epoch (Adam's two slots
    0.8 MB more)."""

    def __init__(self) -> None:
        super().__init__()
        self.epochs: list[list[np.ndarray]] = []
        self.optimizer_states: list[list[np.ndarray]] = []

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.epochs.append([np.array(weights, copy=True) for weights in self.model.get_weights()])
        variables = self.model.optimizer.variables
        self.optimizer_states.append([np.array(keras.ops.convert_to_numpy(v), copy=True) for v in variables])


def save_arrays(path: Path, epochs: Sequence[Sequence[np.ndarray]]) -> None:
    """Every epoch's arrays (weights, optimizer variables) in one .npz (`e<epoch>_<index>`), written atomically."""
    from src.infra.files import write_atomic

    arrays = {f"e{epoch}_{index}": w for epoch, weights in enumerate(epochs) for index, w in enumerate(weights)}
    write_atomic(path, lambda temp: np.savez(temp, **arrays))


def load_arrays(path: Path) -> list[list[np.ndarray]]:
    with np.load(path) as stored:
        epochs: dict[int, dict[int, np.ndarray]] = {}
        for key in stored.files:
            epoch, index = map(int, key[1:].split("_"))
            epochs.setdefault(epoch, {})[index] = stored[key]
    return [[weights[index] for index in sorted(weights)] for _, weights in sorted(epochs.items())]


@dataclass(frozen=True)
class Replayed:
    """What the replayed run would have given: its history (the baseline's first epochs), which weights it keeps
    (fit's BEST_CHECKPOINT or FINAL) of which 1-based epoch, their test scores, and whether it diverged."""

    history: dict[str, list[float]]
    model_weights: str
    model_epoch: int | None
    test: fit.TestScores | None
    diverged_epoch: int | None

    @property
    def epochs_trained(self) -> int:
        return len(self.history.get("loss", []))


class Replayer:
    """Replays runs over one baseline's recorded `epochs` (logs) and `weights` (after each epoch): the module
    docstring's method. One model serves every replay of the baseline (its weights are set at every epoch, and
    its prediction function is traced once); each replay gets new callbacks, built from its config as `build`
    builds them."""

    def __init__(self, epochs: Sequence[Mapping[str, float]], weights: Sequence[Sequence[np.ndarray]]) -> None:
        self.epochs, self.weights = epochs, weights
        self.model: keras.Model | None = None

    def _model(self, spec: fit.TrialSpec) -> keras.Model:
        if self.model is None:
            self.model = fit.build(spec).model
            splits = spec.splits()
            # What `fit` runs first: the model's metrics built from one batch's shapes (symbolic, no step taken),
            # so that a callback's mode "auto" infers its direction from them as in a real run
            self.model._symbolic_build(data_batch=(splits.x_train[:1], splits.y_train[:1]))
        return self.model

    def replay(self, spec: fit.TrialSpec) -> Replayed:
        """The run of `spec` (a config with EarlyStopping and/or ModelCheckpoint), as if trained; its test scores
        when the spec asks for them."""
        model = self._model(spec)
        built = fit.BuiltTrial(spec, model, from_config(spec.cfg.get("callbacks"), spec.backup_dir))
        callbacks = keras.callbacks.CallbackList(built.callbacks, model=model, epochs=len(self.epochs), verbose=0)
        model.stop_training = False
        callbacks.on_train_begin()
        ran: list[Mapping[str, float]] = []
        for epoch, logs in enumerate(self.epochs):
            model.set_weights(self.weights[epoch])
            callbacks.on_epoch_begin(epoch)
            callbacks.on_epoch_end(epoch, dict(logs))
            ran.append(logs)
            if model.stop_training:
                break
        callbacks.on_train_end()
        history = {key: [float(logs[key]) for logs in ran] for key in ran[0]} if ran else {}
        limit = built.guard.limit if built.guard else math.inf  # set by its on_train_begin, as in a fit
        kept, weights_kind, model_epoch, _ = fit.kept_model(built, history)
        test = None
        if spec.score_test:
            splits = spec.splits()
            batch_size = spec.cfg.train.get("validation_batch_size") or spec.cfg.train.batch_size
            test = fit.score(kept, splits.x_test, splits.y_test, batch_size)
        return Replayed(history, weights_kind, model_epoch, test, diverged_epoch(history, limit))


def test_accuracy_of(spec: fit.TrialSpec, weights: Sequence[np.ndarray]) -> float:
    """The test accuracy of the spec's model holding `weights` (one epoch's recorded weights): what "the
    baseline's best epoch" scored."""
    built = fit.build(spec)
    splits = spec.splits()
    batch_size = spec.cfg.train.get("validation_batch_size") or spec.cfg.train.batch_size
    built.model.set_weights(weights)
    return fit.score(built.model, splits.x_test, splits.y_test, batch_size).accuracy


# ------------------------------------------------------------------------------------------------
# ReduceLROnPlateau: forked from the baseline where it first acts
# ------------------------------------------------------------------------------------------------


def first_change(spec: fit.TrialSpec, epochs: Sequence[Mapping[str, float]]) -> int | None:
    """The 0-based epoch at whose end the spec's callbacks (ReduceLROnPlateau) first change the learning rate, fed
    the baseline's recorded logs; None if they never do. Until then the run is its baseline."""
    built = fit.build(spec)
    optimizer = built.model.optimizer
    callbacks = keras.callbacks.CallbackList(built.callbacks, model=built.model, epochs=len(epochs), verbose=0)
    callbacks.on_train_begin()
    for epoch, logs in enumerate(epochs):
        before = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
        callbacks.on_epoch_end(epoch, dict(logs))
        if float(keras.ops.convert_to_numpy(optimizer.learning_rate)) != before:
            return epoch
    return None


class ContinueFrom(keras.callbacks.Callback):
    """Put last in a fit's callbacks: after the others reset themselves (`on_train_begin`), feed `peers` the logs of
    the epochs already run (`epochs`: the baseline's, up to the fork) and start the fit after them, as Keras'
    BackupAndRestore resumes a run (`model._initial_epoch`). ReduceLROnPlateau thus gets back its best value, its
    patience count and cooldown, and makes its first change on the restored optimizer, as it did in the real run."""

    def __init__(self, epochs: Sequence[Mapping[str, float]]) -> None:
        super().__init__()
        self.epochs = epochs
        self.peers: list[keras.callbacks.Callback] = []

    def on_train_begin(self, logs: dict | None = None) -> None:
        for epoch, epoch_logs in enumerate(self.epochs):
            for peer in self.peers:
                peer.on_epoch_end(epoch, dict(epoch_logs))
        self.model._initial_epoch = len(self.epochs)


def fork(
    spec: fit.TrialSpec,
    epochs: Sequence[Mapping[str, float]],
    weights: Sequence[Sequence[np.ndarray]],
    optimizer_states: Sequence[Sequence[np.ndarray]],
    branch: int,
) -> fit.FitResult:
    """The real run of `spec` (a ReduceLROnPlateau config), trained from the end of its baseline's epoch `branch`
    (0-based; its first change, `first_change`) instead of from scratch: the model gets the baseline's weights and
    optimizer variables of that epoch, the callbacks its logs up to it (`ContinueFrom`), and `model.fit` trains the
    remaining epochs. The result's history is the whole run's (the baseline's first epochs, then the fit's), its
    model epoch the run's last. tests/test_callback_study.py checks it against runs trained from scratch."""
    resume = ContinueFrom(epochs[: branch + 1])
    forked = fit.TrialSpec(spec.cfg, spec.data_path, spec.score_test, [*spec.callbacks, resume], verbose=spec.verbose)
    built = fit.build(forked)
    resume.peers = list(built.callbacks)
    model = built.model
    model.set_weights(weights[branch])
    model.optimizer.build(model.trainable_variables)
    for variable, value in zip(model.optimizer.variables, optimizer_states[branch], strict=True):
        variable.assign(value)
    result = fit.fit(built)
    history = fit.merge_history(epochs[: branch + 1], result.history)
    guard = built.guard
    return fit.FitResult(
        history=history,
        model=result.model,
        final_model=result.final_model,
        model_weights=result.model_weights,
        model_epoch=len(history["loss"]),
        train_seconds=result.train_seconds,
        diverged_epoch=diverged_epoch(history, guard.limit if guard else math.inf),
        test=result.test,
    )

"""The one fit core (src/training/fit.py) in this process, on a 600-image MNIST slice: which weights a run's
model is, that the test scores are that model's, the sequential engine against fit_one, the one rule of
"diverged", and the refusals of `build` (before anything trains)."""

from __future__ import annotations

import math
from pathlib import Path

import keras
import numpy as np
import pytest

from src.analysis.replicates import DIVERGED, FINISHED
from src.infra.errors import ConfigError
from src.training import fit
from src.training.callbacks import diverged_epoch
from src.training.config import compose

TINY = ["data.limit=600", "train.epochs=3", "train.batch_size=64", "optimizer=sgd", "optimizer.learning_rate=0.05"]
QUIET = ["callbacks.tensorboard.enabled=false", "callbacks.backup_and_restore.enabled=false"]


def spec(mnist_dir: Path, *overrides: str) -> fit.TrialSpec:
    return fit.TrialSpec(compose([*TINY, *QUIET, *overrides]), mnist_dir / "mnist.npz", score_test=True, verbose=0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path):
    """Two trials through the sequential engine: the project's default callbacks (a best checkpoint on
    val_accuracy), and no checkpoint but EarlyStopping(restore_best_weights=True) on val_loss; with the
    engine's progress calls in order."""
    folder = tmp_path_factory.mktemp("fit")
    specs = [
        spec(mnist_dir, f"callbacks.model_checkpoint.filepath={folder}/best.keras"),
        spec(
            mnist_dir,
            "callbacks.model_checkpoint.enabled=false",
            "callbacks.early_stopping.restore_best_weights=true",
            "callbacks.early_stopping.patience=5",
            "train.seed=7",
        ),
    ]
    calls: list[tuple[str, int]] = []
    results = fit.fit_trials(
        specs,
        on_start=lambda index: calls.append(("start", index)),
        on_result=lambda index, result: calls.append(("result", index)),
    )
    return folder, specs, results, calls


@pytest.mark.slow
def test_with_a_best_checkpoint_the_run_s_model_is_that_checkpoint_and_its_scores(trained, mnist_dir: Path) -> None:
    folder, specs, (result, _), _ = trained
    assert (result.model_weights, result.checkpoint_path) == (fit.BEST_CHECKPOINT, folder / "best.keras")
    # ModelCheckpoint keeps the first epoch of highest val_accuracy: the history's best epoch
    assert result.model_epoch == result.metrics()["best_epoch"]
    assert result.model is not result.final_model and result.status == FINISHED
    # the scores are the checkpoint file's, computed as the served model computes them
    splits = specs[0].splits()
    from_file = fit.score(
        keras.saving.load_model(folder / "best.keras", compile=False), splits.x_test, splits.y_test, 1024
    )
    assert (result.test.loss, result.test.accuracy) == (from_file.loss, from_file.accuracy)
    np.testing.assert_array_equal(result.test.predicted, from_file.predicted)
    assert result.test.accuracy == np.mean(result.test.predicted == splits.y_test) > 0.5
    assert result.metrics()["test_accuracy"] == result.test.accuracy
    assert len(result.test.predicted) == 10000 and result.test.predicted.dtype == np.uint8


@pytest.mark.slow
def test_without_a_best_checkpoint_the_run_s_model_is_the_final_weights(trained) -> None:
    _, specs, (_, result), _ = trained
    assert result.model is result.final_model and result.checkpoint_path is None
    val_loss = result.history["val_loss"]
    # EarlyStopping(restore_best_weights=True) ends training on the weights of its best epoch
    assert (result.model_weights, result.model_epoch) == (fit.FINAL, val_loss.index(min(val_loss)) + 1)
    assert result.model_tags() == {"model_weights": "final", "model_epoch": str(result.model_epoch)}
    assert set(result.history) >= {"loss", "val_loss", "val_accuracy", "learning_rate", "epoch_seconds"}
    splits = specs[1].splits()
    assert result.test.accuracy == fit.score(result.model, splits.x_test, splits.y_test, 1024).accuracy


@pytest.mark.slow
def test_the_sequential_engine_reports_each_trial_and_trains_it_as_fit_one_does(trained) -> None:
    _, specs, results, calls = trained
    assert calls == [("start", 0), ("result", 0), ("start", 1), ("result", 1)]
    alone = fit.fit_one(specs[1])  # the same seed: the same initial weights and batches
    assert alone.history["loss"] == pytest.approx(results[1].history["loss"], rel=1e-6)
    assert alone.test.accuracy == pytest.approx(results[1].test.accuracy, abs=2e-4)  # at most 2 of 10000 images


@pytest.mark.slow
def test_a_run_that_diverges_returns_with_its_status_and_epoch(mnist_dir: Path) -> None:
    diverging = compose([*TINY, "optimizer.learning_rate=1e10", "callbacks=none"])  # no guard: NaN to the end
    result = fit.fit_one(fit.TrialSpec(diverging, mnist_dir / "mnist.npz", verbose=0))
    assert (result.status, result.diverged_epoch) == (DIVERGED, 1)
    assert (result.model_weights, result.model_epoch, result.test) == (fit.FINAL, 3, None)
    assert math.isnan(result.metrics()["final_val_loss"]) and "test_accuracy" not in result.metrics()


def test_one_rule_says_in_which_epoch_a_run_diverged() -> None:
    finite = {"loss": [2.3, 0.5, 0.3], "val_loss": [1.0, 0.4, 0.3], "val_accuracy": [0.5, 0.8, 0.9]}
    assert diverged_epoch(finite) is None
    assert diverged_epoch({**finite, "loss": [2.3, math.nan, 0.3]}) == 2
    assert diverged_epoch({**finite, "loss": [2.3, 0.5, math.inf]}) == 3
    # an update late in an epoch made the weights NaN: the epoch's mean loss is finite, its validation is not
    assert diverged_epoch({**finite, "val_loss": [1.0, math.nan, math.nan]}) == 2
    assert diverged_epoch({**finite, "val_accuracy": [0.5, 0.8, math.nan]}) == 3
    assert diverged_epoch({**finite, "loss": [4.6e29, 5e5, 1.0]}, limit=230.0) == 1  # StopOnDivergence's limit
    assert diverged_epoch({**finite, "loss": [4.6e29, 5e5, 1.0]}) is None  # without it only non-finite counts
    assert diverged_epoch({"loss": [], "val_loss": []}) is None
    assert diverged_epoch({}) is None


def test_keras_own_best_checkpoint_is_refused_before_anything_is_built(mnist_dir: Path, tmp_path: Path) -> None:
    keras_own = ["callbacks.model_checkpoint._target_=keras.callbacks.ModelCheckpoint"]
    keras_own += [f"callbacks.model_checkpoint.filepath={tmp_path}/best.keras"]
    with pytest.raises(ConfigError, match=r"callbacks.model_checkpoint._target_='keras.callbacks.ModelCheckpoint'"):
        fit.build(spec(mnist_dir, *keras_own))
    # saving every epoch, it names no best: the run's model is the final weights
    assert (
        fit.build(spec(mnist_dir, *keras_own, "callbacks.model_checkpoint.save_best_only=false")).best_checkpoint
        is None
    )


def test_a_resumed_run_knows_which_checkpoint_is_its_best(tmp_path: Path) -> None:
    """After a kill, the earlier epochs come back from the backup: the checkpoint of the best of them is the
    run's model unless a resumed epoch beats it (what fit reads from ModelCheckpoint.saved_*)."""
    from src.training.callbacks import BackupAndRestore, ModelCheckpoint

    model = keras.Sequential([keras.Input(shape=(4,)), keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer="adam", loss=fit.LOSS)
    model.optimizer.build(model.trainable_variables)
    backup = BackupAndRestore(str(tmp_path / "backup"))
    backup.set_model(model)
    backup.set_params({"epochs": 9})
    for epoch, accuracy in enumerate([0.5, 0.8, 0.7]):
        backup.on_epoch_end(epoch, {"val_accuracy": accuracy})
    checkpoint = ModelCheckpoint(str(tmp_path / "best-{epoch:02d}.keras"), monitor="val_accuracy", save_best_only=True)
    restored = BackupAndRestore(str(tmp_path / "backup"))
    restored.peers = [checkpoint]
    for callback in (checkpoint, restored):
        callback.set_model(model)
        callback.set_params({"epochs": 9})
        callback.on_train_begin()
    assert (checkpoint.saved_epoch, checkpoint.saved_path, checkpoint.best) == (2, tmp_path / "best-02.keras", 0.8)
    checkpoint.on_epoch_end(3, {"val_accuracy": 0.9})  # a resumed epoch that beats it is saved and kept
    assert (checkpoint.saved_epoch, checkpoint.saved_path) == (4, tmp_path / "best-04.keras")
    assert checkpoint.saved_path.is_file()

"""What a training run records in MLflow beyond its metrics: the data it used (dataset inputs), settings as
params and locations as tags, and whether it diverged. Read back through MlflowClient from a real SQLite
store after a real sweep; the pieces are checked first, without training."""

from __future__ import annotations

import json
import math
from pathlib import Path

import keras
import numpy as np
import pytest
from mlflow import MlflowClient

from src.infra.errors import ConfigError
from src.tracking.job import dataset_digest
from src.training.callbacks import StopOnDivergence, diverged_epoch
from src.training.config import compose as compose_config
from src.training.config import shapes_training, validate
from src.training.data import sha256_file
from src.training.fit import summarize_history
from tests.conftest import SMALL, all_runs, run_main, split_parent, store_args, store_with_tables

SELECTION = {"data.limit": None, "data.val_split": 0.1, "train.seed": 42}

# ------------------------------------------------------------------------------------------------
# Fast: the pieces, in process
# ------------------------------------------------------------------------------------------------


def test_dataset_digest_names_the_rows_a_run_used() -> None:
    full = {context: dataset_digest("a" * 64, context, SELECTION) for context in ("training", "validation")}
    sliced = {**SELECTION, "data.limit": 2000}
    assert len(set(full.values())) == 2 and all(len(d) == 16 for d in full.values())  # MLflow keeps <= 36
    assert dataset_digest("a" * 64, "training", sliced) != full["training"]
    assert dataset_digest("a" * 64, "training", {**SELECTION, "train.seed": 1}) != full["training"]
    assert dataset_digest("b" * 64, "training", SELECTION) != full["training"]  # another file
    assert dataset_digest("a" * 64, "training", dict(reversed(SELECTION.items()))) == full["training"]
    assert dataset_digest("a" * 64, "test", {}) != dataset_digest("b" * 64, "test", {})


def test_summarize_history_never_picks_a_nan_epoch() -> None:
    summary = summarize_history({"val_accuracy": [math.nan, 0.2, 0.1]})
    assert summary == {"best_val_accuracy": 0.2, "best_epoch": 2, "stopped_epoch": 3}


def test_the_dvc_stage_gathers_what_each_run_recorded(tmp_path: Path) -> None:
    """src.stages.evaluate scores nothing again: scores.json holds each run's own numbers, the confusion
    matrices come from its predictions, a diverged seed is listed and left out, a missing file is named."""
    from src.infra.errors import UserError
    from src.stages.evaluate import PREDICTIONS, evaluate_seeds

    labels = np.array([0, 1, 2, 3, 3], dtype=np.uint8)
    recorded = {"test_loss": 0.7, "test_accuracy": 0.8, "model_weights": "best_checkpoint", "model_epoch": 2}
    for seed, diverged in ((1, False), (2, True)):
        folder = tmp_path / "runs" / "adam" / f"seed{seed}"
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps({**recorded, "diverged": diverged, "best_epoch": 2}))
        np.save(folder / PREDICTIONS, np.array([0, 1, 2, 3, 0], dtype=np.uint8))
    scores = evaluate_seeds("adam", [1, 2], tmp_path / "runs", tmp_path / "eval", labels)
    assert scores["seed1"] == recorded and scores["seed2"] == {"diverged": True}
    assert json.loads((tmp_path / "eval" / "adam" / "scores.json").read_text())["seed1"] == recorded
    confusion = json.loads((tmp_path / "eval" / "adam" / "confusion.json").read_text())
    assert list(confusion) == ["1"] and confusion["1"][3][:4] == [1, 0, 0, 1]  # one 3 taken for a 0
    rows = (tmp_path / "eval" / "adam" / "predictions.csv").read_text().splitlines()
    assert rows == ["seed,actual,predicted", "1,0,0", "1,1,1", "1,2,2", "1,3,3", "1,3,0"]
    (tmp_path / "runs" / "adam" / "seed1" / PREDICTIONS).unlink()
    with pytest.raises(UserError, match=f"seed1/{PREDICTIONS} is missing; train it again"):
        evaluate_seeds("adam", [1, 2], tmp_path / "runs", tmp_path / "eval", labels)


def _guarded_model() -> tuple[keras.Model, StopOnDivergence]:
    """A three-class softmax regression with the guard at its defaults, set up as fit() sets it up."""
    model = keras.Sequential([keras.Input(shape=(4,)), keras.layers.Dense(3, activation="softmax")])
    model.stop_training = False  # what fit() sets before the first batch
    guard = StopOnDivergence()
    guard.set_model(model)
    guard.on_train_begin()
    return model, guard


@pytest.mark.parametrize(("loss", "stops"), [(7.8e4, True), (math.nan, True), (math.inf, True), (1.1, False)])
def test_stop_on_divergence_stops_past_its_limit_and_only_then(loss: float, stops: bool) -> None:
    model, guard = _guarded_model()
    assert guard.limit == pytest.approx(100 * math.log(3))  # baseline: guessing 1 of 3 classes
    guard.on_train_batch_end(0, {"loss": keras.ops.convert_to_tensor(loss)})  # a tensor, as fit() gives it
    assert model.stop_training is stops
    guard.on_train_batch_end(1, {})  # a call without a loss changes nothing
    assert model.stop_training is stops


def _fit(learning_rate: float, epochs: int = 4) -> tuple[StopOnDivergence, list[float]]:
    """A three-class softmax regression on random points, with the guard at its defaults."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(256, 4)).astype("float32"), rng.integers(0, 3, 256)
    model = keras.Sequential([keras.Input(shape=(4,)), keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate), loss="sparse_categorical_crossentropy")
    guard = StopOnDivergence()
    history = model.fit(x, y, epochs=epochs, batch_size=32, verbose=0, callbacks=[guard])
    return guard, history.history["loss"]


@pytest.mark.slow
def test_stop_on_divergence_stops_an_exploding_fit_and_only_that() -> None:
    guard, losses = _fit(1e6)  # finite (~7.8e4), so TerminateOnNaN would let it train on
    assert len(losses) == 1 and math.isfinite(losses[0]) and losses[0] > guard.limit
    assert diverged_epoch({"loss": losses}, guard.limit) == 1
    guard, losses = _fit(0.01)
    assert len(losses) == 4 and diverged_epoch({"loss": losses}, guard.limit) is None


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("callbacks.stop_on_divergence.max_ratio=1", "max_ratio=1 is invalid: use a number in (1, inf)"),
        ("callbacks.stop_on_divergence.baseline=-2", "baseline=-2 is invalid: use a number in (0, inf)"),
        ("callbacks.terminate_on_nan.raise_error=maybe", "raise_error='maybe' is invalid: use true or false"),
    ],
)
def test_bad_divergence_settings_are_named(override: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace("(", r"\(").replace(")", r"\)")):
        validate(compose_config([override]))


def test_both_divergence_callbacks_are_on_by_default() -> None:
    callbacks = compose_config([]).callbacks
    assert callbacks.terminate_on_nan.enabled and callbacks.stop_on_divergence.enabled
    assert callbacks.stop_on_divergence.max_ratio == 100.0 and callbacks.stop_on_divergence.baseline is None


# ------------------------------------------------------------------------------------------------
# Slow: one real sweep (src.train's entry point, in process), read back through MlflowClient
# ------------------------------------------------------------------------------------------------

# sgd at 1e10 makes the loss NaN in epoch 1 (TerminateOnNaN); at 1e6 it explodes to ~1e29 but stays finite
# (StopOnDivergence); at 0.1 it learns. Measured on the data.limit=2000 slice.
LEARNING_RATES = ("1e10", "1e6", "0.1")


@pytest.fixture(scope="module")
def diverging_sweep(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path):
    folder = tmp_path_factory.mktemp("diverging")
    store_with_tables(folder)
    result = run_main(
        "src.train",
        "-m",
        "optimizer=sgd",
        f"optimizer.learning_rate={','.join(LEARNING_RATES)}",
        *SMALL,
        *store_args(folder, mnist_dir),
        cwd=folder,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    parent, children = split_parent(all_runs(folder))
    return folder, result, parent, children


@pytest.mark.slow
def test_diverged_runs_finish_tagged_and_the_sweep_goes_on(diverging_sweep) -> None:
    folder, result, parent, children = diverging_sweep
    assert parent.info.status == "FINISHED"
    assert [float(c.data.params["optimizer.learning_rate"]) for c in children] == [float(lr) for lr in LEARNING_RATES]
    assert [c.info.status for c in children] == ["FINISHED"] * 3
    assert [c.data.tags["diverged"] for c in children] == ["true", "true", "false"]
    assert [c.data.tags.get("diverged_epoch") for c in children] == ["1", "1", None]
    assert [c.data.metrics["stopped_epoch"] for c in children] == [1, 1, 2]
    outputs = [json.loads((Path(c.data.tags["output_dir"]) / "metrics.json").read_text()) for c in children]
    assert [(m["diverged"], m["diverged_epoch"]) for m in outputs] == [(True, 1), (True, 1), (False, None)]
    assert outputs[0]["test_loss"] is None  # NaN: metrics.json stays strict JSON
    assert math.isnan(children[0].data.metrics["test_loss"])
    assert outputs[2]["test_accuracy"] == children[2].data.metrics["test_accuracy"] > 0.5
    # the run's model is its best checkpoint (the default ModelCheckpoint keeps the best val_accuracy)
    learned = children[2].data.tags
    assert (learned["model_weights"], learned["model_file"]) == ("best_checkpoint", "checkpoints/best.keras")
    assert learned["model_epoch"] == str(outputs[2]["model_epoch"]) == str(outputs[2]["best_epoch"])
    logs = [(Path(c.data.tags["output_dir"]) / "train.log").read_text() for c in children]
    assert "the run diverged in epoch 1" in logs[0] and "the run diverged in epoch 1" in logs[1]
    assert "max_ratio x baseline" in logs[1] and "Invalid loss" in result.stdout  # which callback stopped it
    assert "diverged" not in logs[2]
    assert not any((folder / "state").glob("*/backup"))  # FINISHED runs leave no backup behind


@pytest.mark.slow
def test_every_run_logs_its_data_as_mnist_dataset_inputs(diverging_sweep, mnist_dir: Path) -> None:
    _, _, _, children = diverging_sweep
    data_sha256 = sha256_file(mnist_dir / "mnist.npz")
    selection = {**SELECTION, "data.limit": 2000}
    expected = {
        "training": (dataset_digest(data_sha256, "training", selection), 1800),
        "validation": (dataset_digest(data_sha256, "validation", selection), 200),
        "test": (dataset_digest(data_sha256, "test", {}), 10000),
    }
    for child in children:  # as search_runs gives them: what the runs table's Dataset column shows
        inputs = child.inputs.dataset_inputs
        found = {}
        for dataset_input in inputs:
            tags = {tag.key: tag.value for tag in dataset_input.tags}
            dataset = dataset_input.dataset
            assert dataset.name == "mnist" and dataset.source_type == "local"
            assert json.loads(dataset.source) == {"uri": str(mnist_dir / "mnist.npz")}
            rows = int(tags["rows"])
            assert json.loads(dataset.profile)["features_shape"] == [rows, 28, 28]
            assert tags["data_sha256"] == data_sha256
            found[tags["mlflow.data.context"]] = (dataset.digest, rows)
        assert found == expected
        assert child.data.tags["data_sha256"] == data_sha256
    assert dataset_digest(data_sha256, "training", SELECTION) != expected["training"][0]  # a full run


@pytest.mark.slow
def test_params_are_settings_and_locations_are_tags(diverging_sweep) -> None:
    folder, _, _, children = diverging_sweep
    client = MlflowClient(f"sqlite:///{folder}/mlflow.db")
    for child in children:
        run = client.get_run(child.info.run_id)
        params, tags = run.data.params, run.data.tags
        assert all(shapes_training(key) for key in params), [k for k in params if not shapes_training(k)]
        assert {"optimizer", "optimizer.learning_rate", "train.seed", "data.limit"} <= set(params)
        assert not any(key.startswith("optimizer_") for key in params)  # MlflowCallback's copies: not logged
        assert "model_summary.txt" in {a.path for a in client.list_artifacts(child.info.run_id)}
        assert tags["config.callbacks.model_checkpoint.filepath"].startswith(tags["output_dir"])
        assert tags["config.mlflow.tracking_uri"] == f"sqlite:///{folder}/mlflow.db"
        assert tags["config.train.state_dir"] == str(folder / "state")
        assert "config.callbacks.tensorboard.log_dir" in tags and "config.data.dir" in tags
    # "show diff only" in MLflow's compare view: the swept setting, nothing else
    first, last = (client.get_run(c.info.run_id).data.params for c in (children[0], children[-1]))
    assert {key for key in first.keys() | last.keys() if first.get(key) != last.get(key)} == {"optimizer.learning_rate"}

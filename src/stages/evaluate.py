"""Scoring the best checkpoint of every seed of one optimizer on the MNIST test set.

The DVC stage train@<name> (src/stages/train.py) calls `evaluate_seeds` in its own process right after
training, so the pipeline pays one TensorFlow import per optimizer, not one per stage. To score again
without training: `python -m src.stages.evaluate <name>` (the seeds of params.yaml).

Writes `reports/eval/<name>/`:
- scores.json: per seed ("seed1", ...) test loss and accuracy; precision and recall per digit of the
  seeds' pooled predictions (a plain file: `dvc metrics show` shows only what src.stages.compare aggregates);
- predictions.csv: seed,actual,predicted for every seed (DVC's confusion plot counts the rows, so it
  shows the sum over the seeds);
- confusion.json: each seed's confusion matrix (src.stages.compare draws their sum).
A seed that diverged (its metrics.json says `"diverged": true`) is listed as diverged and not scored: its
weights are no model of MNIST, and its NaN loss would make scores.json invalid JSON.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from src.infra.errors import DataError, UserError, exit_on_user_error
from src.infra.files import write_text_atomic
from src.stages.params import EVAL_DIR, RUNS_DIR, read_params, seed_dir
from src.training import data
from src.training.config import PROJECT_ROOT


def confusion_matrix(actual: np.ndarray, predicted: np.ndarray, classes: int = 10) -> np.ndarray:
    """counts[i, j] = images of digit i predicted as j."""
    counts = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(counts, (actual, predicted), 1)
    return counts


def per_class_scores(counts: np.ndarray) -> dict[str, dict[str, float]]:
    true_positives = np.diag(counts).astype(float)
    precision = true_positives / np.maximum(counts.sum(axis=0), 1)
    recall = true_positives / np.maximum(counts.sum(axis=1), 1)
    return {
        "precision": {str(digit): round(float(value), 4) for digit, value in enumerate(precision)},
        "recall": {str(digit): round(float(value), 4) for digit, value in enumerate(recall)},
    }


def load_test_set(data_dir: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) of the verified MNIST test set."""
    mnist = (data_dir or PROJECT_ROOT / "data") / data.FILE_NAME
    if not mnist.is_file():
        raise DataError(f"{mnist} is missing; fetch it with `dvc repro fetch`")
    arrays = data.load_verified(mnist)
    return arrays["x_test"], arrays["y_test"]


def score_checkpoint(
    checkpoint: Path, images: np.ndarray, labels: np.ndarray, batch_size: int = 1024
) -> tuple[dict[str, float], np.ndarray]:
    """({test_loss, test_accuracy}, predicted digits) of a saved model (Keras `safe_mode=True`).

    One eager forward pass in batches, with the loss the model was trained with (Keras' sparse categorical
    cross-entropy of its softmax output): the same numbers as `model.evaluate`, without tracing an
    evaluate and a predict function for every checkpoint (~1 s each on this CPU, three checkpoints a stage).
    """
    import keras

    model = keras.saving.load_model(checkpoint, safe_mode=True, compile=False)
    batches = [model(images[start : start + batch_size], training=False) for start in range(0, len(images), batch_size)]
    probabilities = np.concatenate([keras.ops.convert_to_numpy(batch) for batch in batches])
    loss = keras.ops.mean(keras.losses.sparse_categorical_crossentropy(labels, probabilities))
    predicted = np.argmax(probabilities, axis=1)
    accuracy = float(np.mean(predicted == labels))
    return {
        "test_loss": round(float(keras.ops.convert_to_numpy(loss)), 5),
        "test_accuracy": round(accuracy, 5),
    }, predicted


def _diverged(run: Path) -> bool:
    metrics = run / "metrics.json"
    return metrics.is_file() and bool(json.loads(metrics.read_text()).get("diverged"))


def evaluate_seeds(
    name: str,
    seeds: Sequence[int],
    runs_dir: Path = RUNS_DIR,
    out_dir: Path = EVAL_DIR,
    test: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Score runs/<name>/seed<k>/checkpoints/best.keras for every seed; write reports/eval/<name>/."""
    images, labels = test if test is not None else load_test_set()
    per_seed: dict[str, Any] = {}
    confusions: dict[str, list[list[int]]] = {}
    prediction_rows: list[str] = []
    for seed in seeds:
        run = seed_dir(runs_dir, name, seed)
        checkpoint = run / "checkpoints" / "best.keras"
        if _diverged(run):  # counted in no statistic: not in the confusion matrix, no NaN loss in scores.json
            per_seed[f"seed{seed}"] = {"diverged": True}
            continue
        if not checkpoint.is_file():
            raise UserError(f"{checkpoint} is missing; train it first with `dvc repro train@{name}`")
        scores, predicted = score_checkpoint(checkpoint, images, labels)
        per_seed[f"seed{seed}"] = scores
        counts = confusion_matrix(labels, predicted)
        confusions[str(seed)] = counts.tolist()
        prediction_rows += [f"{seed},{a},{p}" for a, p in zip(labels.tolist(), predicted.tolist(), strict=True)]
    pooled = sum((np.array(c) for c in confusions.values()), np.zeros((10, 10), dtype=np.int64))
    metrics = per_seed | per_class_scores(pooled)

    target = out_dir / name
    target.mkdir(parents=True, exist_ok=True)
    write_text_atomic(target / "scores.json", json.dumps(metrics, indent=2) + "\n")
    write_text_atomic(target / "predictions.csv", "seed,actual,predicted\n" + "\n".join(prediction_rows) + "\n")
    write_text_atomic(target / "confusion.json", json.dumps(confusions) + "\n")
    return metrics


def seed_scores(metrics: Mapping[str, Any]) -> dict[int, dict[str, Any]]:
    """{seed: its entry} from an evaluation's scores.json (the keys "seed<k>")."""
    return {int(key[4:]): value for key, value in metrics.items() if key.startswith("seed")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", help="the optimizer config name, e.g. adam: reads runs/<name>/seed<k>/")
    args = parser.parse_args()
    with exit_on_user_error():
        _, seeds = read_params()
        metrics = evaluate_seeds(args.name, seeds)
    for seed, scores in seed_scores(metrics).items():
        shown = "diverged" if "test_accuracy" not in scores else f"test accuracy {scores['test_accuracy']:.4f}"
        print(f"{args.name} seed {seed}: {shown}")
    print(f"-> {EVAL_DIR / args.name}")


if __name__ == "__main__":
    main()

"""The test-set scores of every seed of one optimizer, gathered from what each seed's run recorded.

Every training job scores its run's model once (src/training/fit.py: the best checkpoint by the configured
ModelCheckpoint monitor, else the final weights) and writes the numbers beside its checkpoints:
runs/<name>/seed<k>/metrics.json (test_loss, test_accuracy, model_weights, model_epoch) and
test_predictions.npy (every test image's predicted digit). The same numbers are the run's MLflow metrics
and the accuracy of its logged MLflow model. This module scores nothing again: it gathers them, so
scores.json, the MLflow run, the registered model and the reports say one number.

The DVC stage train@<name> (src/stages/train.py) calls `evaluate_seeds` in its own process right after
training. To gather again without training: `python -m src.stages.evaluate <name>` (the seeds of params.yaml).

Writes `reports/eval/<name>/`:
- scores.json: per seed ("seed1", ...) test loss and accuracy and which weights scored them; precision and
  recall per digit of the seeds' pooled predictions (a plain file: `dvc metrics show` shows only what
  src.stages.compare aggregates);
- predictions.csv: seed,actual,predicted for every seed (DVC's confusion plot counts the rows, so it
  shows the sum over the seeds);
- confusion.json: each seed's confusion matrix (src.stages.compare draws their sum).
A seed that diverged (its metrics.json says `"diverged": true`) is listed as diverged and its scores left
out: its weights are no model of MNIST, and its NaN loss would make scores.json invalid JSON.
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

PREDICTIONS = "test_predictions.npy"  # written by src/train.py (its PREDICTIONS) beside metrics.json
SCORES = ("test_loss", "test_accuracy", "model_weights", "model_epoch")  # what scores.json takes from metrics.json


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


def load_test_labels(data_dir: Path | None = None) -> np.ndarray:
    """The verified MNIST test set's labels."""
    mnist = (data_dir or PROJECT_ROOT / "data") / data.FILE_NAME
    if not mnist.is_file():
        raise DataError(f"{mnist} is missing; fetch it with `dvc repro fetch`")
    return data.load_verified(mnist)["y_test"]


def _read_json(path: Path, name: str) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"{path} is missing; train it first with `dvc repro train@{name}`")
    return json.loads(path.read_text())


def evaluate_seeds(
    name: str,
    seeds: Sequence[int],
    runs_dir: Path = RUNS_DIR,
    out_dir: Path = EVAL_DIR,
    labels: np.ndarray | None = None,
) -> dict[str, Any]:
    """Gather every seed's recorded test scores and predictions (runs/<name>/seed<k>/); write reports/eval/<name>/."""
    labels = labels if labels is not None else load_test_labels()
    per_seed: dict[str, Any] = {}
    confusions: dict[str, list[list[int]]] = {}
    prediction_rows: list[str] = []
    for seed in seeds:
        run = seed_dir(runs_dir, name, seed)
        metrics = _read_json(run / "metrics.json", name)
        if metrics.get("diverged"):  # counted in no statistic: not in the confusion matrix, no NaN loss in scores.json
            per_seed[f"seed{seed}"] = {"diverged": True}
            continue
        if not (run / PREDICTIONS).is_file():
            raise UserError(f"{run / PREDICTIONS} is missing; train it again with `dvc repro train@{name}`")
        predicted = np.load(run / PREDICTIONS)
        if predicted.shape != labels.shape:
            raise DataError(f"{run / PREDICTIONS} holds {predicted.shape} predictions for {labels.shape} test images")
        per_seed[f"seed{seed}"] = {key: metrics.get(key) for key in SCORES}
        confusions[str(seed)] = confusion_matrix(labels, predicted).tolist()
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

"""`python -m src.evaluate <name>`: the DVC `evaluate@<name>` stage.

Loads the best checkpoint of `runs/<name>/` (Keras `safe_mode=True`), scores it on the MNIST test set and
writes `reports/eval/<name>/`: metrics.json (test loss/accuracy, per-class precision and recall),
predictions.csv (actual,predicted: DVC's confusion-matrix plot data) and confusion.png.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from src import data
from src.config import PROJECT_ROOT
from src.errors import DataError, UserError, exit_on_user_error
from src.files import save_figure_atomic, write_text_atomic

RUNS_DIR = PROJECT_ROOT / "runs"
EVAL_DIR = PROJECT_ROOT / "reports" / "eval"


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


def plot_confusion(counts: np.ndarray, title: str, axes) -> None:
    axes.imshow(counts, cmap="Blues")
    axes.set_title(title)
    axes.set_xlabel("predicted digit")
    axes.set_ylabel("actual digit")
    axes.set_xticks(range(10))
    axes.set_yticks(range(10))
    limit = counts.max() / 2
    for (row, column), value in np.ndenumerate(counts):
        axes.text(
            column, row, str(value), ha="center", va="center", fontsize=6, color="white" if value > limit else "black"
        )


def evaluate(name: str, runs_dir: Path = RUNS_DIR, out_dir: Path = EVAL_DIR, data_dir: Path | None = None) -> dict:
    checkpoint = runs_dir / name / "checkpoints" / "best.keras"
    if not checkpoint.is_file():
        raise UserError(f"{checkpoint} is missing; train it first with `dvc repro train@{name}`")
    mnist = (data_dir or PROJECT_ROOT / "data") / data.FILE_NAME
    if not mnist.is_file():
        raise DataError(f"{mnist} is missing; fetch it with `dvc repro fetch`")
    arrays = data.load_verified(mnist)

    import keras
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    model = keras.saving.load_model(checkpoint, safe_mode=True)
    images, labels = arrays["x_test"].astype("float32"), arrays["y_test"]
    loss, accuracy = model.evaluate(images, labels, batch_size=1024, verbose=0)
    predicted = np.argmax(model.predict(images, batch_size=1024, verbose=0), axis=1)
    counts = confusion_matrix(labels, predicted)
    metrics = {"test_loss": round(float(loss), 5), "test_accuracy": round(float(accuracy), 5)}
    metrics |= per_class_scores(counts)

    target = out_dir / name
    target.mkdir(parents=True, exist_ok=True)
    write_text_atomic(target / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    rows = "\n".join(f"{a},{p}" for a, p in zip(labels.tolist(), predicted.tolist(), strict=True))
    write_text_atomic(target / "predictions.csv", "actual,predicted\n" + rows + "\n")
    write_text_atomic(target / "confusion.json", json.dumps(counts.tolist()) + "\n")
    figure, axes = pyplot.subplots(figsize=(5, 5), layout="constrained")
    plot_confusion(counts, f"{name}: test accuracy {accuracy:.4f}", axes)
    save_figure_atomic(figure, target / "confusion.png")
    pyplot.close(figure)
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", help="the optimizer config name, e.g. adam: reads runs/<name>/")
    args = parser.parse_args()
    with exit_on_user_error():
        metrics = evaluate(args.name)
    print(f"{args.name}: test accuracy {metrics['test_accuracy']:.4f} -> {EVAL_DIR / args.name}")


if __name__ == "__main__":
    main()

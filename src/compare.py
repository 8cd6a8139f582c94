"""`python -m src.compare`: the DVC `compare` stage, the optimizers side by side.

Reads `runs/<name>/` (training) and `reports/eval/<name>/` (evaluation) for every optimizer listed in
params.yaml and writes:
- reports/comparison.md and .csv: one row per optimizer (test accuracy, best val accuracy, best epoch,
  stopped epoch, train seconds, and the settings that differ between the runs);
- reports/metrics.json: the same numbers for `dvc metrics show`;
- reports/curves.json (DVC plot data) and reports/curves.png: val_accuracy and val_loss per epoch;
- reports/confusion_grid.png: the test-set confusion matrices side by side.
In MLflow, it opens one parent run for the comparison, makes the training runs its children and logs
the reports to it, so the UI shows the pipeline's runs side by side.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import yaml

from src.config import PROJECT_ROOT, flatten, shapes_training
from src.errors import UserError, exit_on_user_error
from src.files import markdown_table, save_figure_atomic, write_text_atomic

PARAMS_FILE = PROJECT_ROOT / "params.yaml"
RUNS_DIR = PROJECT_ROOT / "runs"
REPORTS_DIR = PROJECT_ROOT / "reports"
COLUMNS = ("optimizer", "test_accuracy", "best_val_accuracy", "best_epoch", "stopped_epoch", "train_seconds")


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise UserError(f"{path} is missing; run the stage that makes it (`dvc repro`)")
    return path.read_text()


def _read_json(path: Path) -> Any:
    return json.loads(_read_text(path))


def load_results(names: list[str], runs_dir: Path, eval_dir: Path) -> list[dict[str, Any]]:
    results = []
    for name in names:
        run = runs_dir / name
        training = _read_json(run / "metrics.json")
        evaluation = _read_json(eval_dir / name / "metrics.json")
        config = yaml.safe_load(_read_text(run / ".hydra" / "config.yaml"))
        settings = {key: value for key, value in flatten(config) if shapes_training(key)}
        results.append(
            {
                "optimizer": name,
                "test_accuracy": evaluation["test_accuracy"],
                "best_val_accuracy": round(training["best_val_accuracy"], 5),
                "best_epoch": training["best_epoch"],
                "stopped_epoch": training["stopped_epoch"],
                "train_seconds": round(training["train_seconds"], 1),
                "settings": settings,
                "history": _read_json(run / "history.json"),
                "confusion": _read_json(eval_dir / name / "confusion.json"),
                "run": _read_json(run / "run.json") if (run / "run.json").is_file() else {},
            }
        )
    return results


def differing_settings(results: list[dict[str, Any]]) -> list[str]:
    """Settings every run has but not with the same value (e.g. learning_rate after `dvc exp run -S`).

    Keys only some optimizers have (amsgrad, rho, ...) are left out: the optimizer column says it all.
    """
    shared = set.intersection(*(set(result["settings"]) for result in results))
    shared.discard("optimizer._target_")
    return sorted(key for key in shared if len({repr(result["settings"][key]) for result in results}) > 1)


def table(results: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    differing = differing_settings(results)
    header = [*COLUMNS, *differing]
    rows = [[r[c] for c in COLUMNS] + [r["settings"][key] for key in differing] for r in results]
    return header, rows


def plot_curves(results: list[dict[str, Any]], path: Path) -> None:
    from matplotlib import pyplot
    from matplotlib.ticker import MaxNLocator

    figure, (accuracy_axes, loss_axes) = pyplot.subplots(1, 2, figsize=(11, 4), layout="constrained")
    for result in results:
        history = result["history"]
        epochs = range(1, len(history["val_accuracy"]) + 1)
        accuracy_axes.plot(epochs, history["val_accuracy"], marker="o", label=result["optimizer"])
        loss_axes.plot(epochs, history["val_loss"], marker="o", label=result["optimizer"])
    for axes, metric in ((accuracy_axes, "validation accuracy"), (loss_axes, "validation loss")):
        axes.set_xlabel("epoch")
        axes.set_ylabel(metric)
        axes.set_title(f"{metric} per epoch")
        axes.grid(alpha=0.3)
        axes.legend(title="optimizer")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    save_figure_atomic(figure, path)
    pyplot.close(figure)


def plot_confusion_grid(results: list[dict[str, Any]], path: Path) -> None:
    import numpy as np
    from matplotlib import pyplot

    from src.evaluate import plot_confusion

    figure, axes = pyplot.subplots(
        1, len(results), figsize=(4.5 * len(results), 4.8), squeeze=False, layout="constrained"
    )
    for result, cell in zip(results, axes[0], strict=True):
        plot_confusion(np.array(result["confusion"]), f"{result['optimizer']}: {result['test_accuracy']:.4f}", cell)
    save_figure_atomic(figure, path, dpi=110)
    pyplot.close(figure)


def log_to_mlflow(results: list[dict[str, Any]], reports_dir: Path) -> str | None:
    """One parent run per comparison; the training runs it compares become its children."""
    from mlflow import MlflowClient

    from src.data import compose_config
    from src.tracking import use_experiment

    run_ids = [r["run"].get("run_id") for r in results]
    if not all(run_ids):
        return None
    experiment_id = use_experiment(compose_config([]).mlflow)  # the store and experiment `src.train` used
    client = MlflowClient()
    name = "dvc compare: " + ",".join(r["optimizer"] for r in results)
    parent = client.create_run(experiment_id, run_name=name, tags={"dvc_stage": "compare", "sweep": "parent"})
    for run_id in run_ids:
        client.set_tag(run_id, "mlflow.parentRunId", parent.info.run_id)
    for report in ("comparison.md", "comparison.csv", "metrics.json", "curves.png", "confusion_grid.png"):
        client.log_artifact(parent.info.run_id, str(reports_dir / report))
    best = max(results, key=lambda r: r["test_accuracy"])
    client.set_tag(parent.info.run_id, "best_child_run_id", best["run"]["run_id"])
    client.set_terminated(parent.info.run_id, "FINISHED")
    return parent.info.run_id


def compare(names: list[str], runs_dir: Path = RUNS_DIR, reports_dir: Path = REPORTS_DIR) -> list[dict[str, Any]]:
    import matplotlib

    matplotlib.use("Agg")
    results = load_results(names, runs_dir, reports_dir / "eval")
    header, rows = table(results)
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows([header, *rows])
    write_text_atomic(reports_dir / "comparison.csv", buffer.getvalue())
    title = (
        "# Optimizers on MNIST\n\nOne row per optimizer (from `dvc repro`); accuracies on the 10000 test images.\n\n"
    )
    images = "\n![validation curves](curves.png)\n\n![confusion matrices](confusion_grid.png)\n"
    write_text_atomic(reports_dir / "comparison.md", title + markdown_table(header, rows) + images)
    metrics = {r["optimizer"]: {c: r[c] for c in COLUMNS[1:]} for r in results}
    write_text_atomic(reports_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    curves = [
        {"optimizer": r["optimizer"], "epoch": epoch + 1, "val_accuracy": accuracy, "val_loss": loss}
        for r in results
        for epoch, (accuracy, loss) in enumerate(
            zip(r["history"]["val_accuracy"], r["history"]["val_loss"], strict=True)
        )
    ]
    write_text_atomic(reports_dir / "curves.json", json.dumps(curves, indent=1) + "\n")
    plot_curves(results, reports_dir / "curves.png")
    plot_confusion_grid(results, reports_dir / "confusion_grid.png")
    return results


def main() -> None:
    with exit_on_user_error():
        params = yaml.safe_load(PARAMS_FILE.read_text())
        names = params.get("optimizers") or []
        if not names:
            raise UserError(f"{PARAMS_FILE}: `optimizers` lists no optimizer")
        results = compare(names)
        parent_run_id = log_to_mlflow(results, REPORTS_DIR)
    print(markdown_table(*table(results)))
    print(
        f"Report: {REPORTS_DIR / 'comparison.md'} (curves.png, confusion_grid.png beside it); `dvc plots show` for HTML"
    )
    if parent_run_id:
        print(f"MLflow: parent run {parent_run_id}; browse with `make ui` -> http://127.0.0.1:5000")


if __name__ == "__main__":
    main()

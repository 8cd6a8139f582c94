"""`python -m src.homework`: the homework's Q4 table beside this project's measurement (`make hw3`).

Reads the newest finished sweep of `experiment=hw3_q4` (3 optimizers x 3 seeds) from MLflow and writes:

- `reports/hw3_q4.md`: test accuracy per optimizer, mean ± std over the seeds, beside the homework's number;
- `reports/hw3_q4.png`: validation accuracy and the optimizer's effective step size (median over the
  parameters of what each gradient is multiplied by, see src/update_rules.py) per gradient step: the data
  behind "AdaGrad reached only ~53 %".

Both are also logged to the sweep's parent run. Exits 1 when an optimizer is off by more than 2 points.
Takes the same overrides as the sweep (e.g. `mlflow.tracking_uri=...`).
"""

from __future__ import annotations

import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from src.errors import DataError, exit_on_user_error
from src.files import markdown_table, save_figure_atomic, write_text_atomic

# Homework 3, Q4: test accuracy after training MNIST with each optimizer at Keras' defaults.
HOMEWORK_ACCURACY = {"adam": 0.9384, "adagrad": 0.5277, "rmsprop": 0.9349}
TOLERANCE_POINTS = 2.0


def latest_sweep(client: Any, experiment_name: str) -> tuple[Any, list[Any]]:
    """The newest FINISHED parent run of the experiment and its children."""
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        raise DataError(f"no MLflow experiment {experiment_name!r} yet: run `python -m src.train -m experiment=hw3_q4`")
    parents = client.search_runs(
        [experiment.experiment_id],
        filter_string="tags.sweep = 'parent' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not parents:
        raise DataError(f"no finished sweep in experiment {experiment_name!r}: run `make hw3`")
    parent = parents[0]
    children = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    return parent, [child for child in children if child.info.status == "FINISHED"]


def accuracy_rows(children: list[Any]) -> tuple[list[str], list[list[str]], list[str]]:
    """(header, one row per optimizer, optimizers off by more than TOLERANCE_POINTS)."""
    by_optimizer: dict[str, list[float]] = defaultdict(list)
    for child in children:
        by_optimizer[child.data.params["optimizer"]].append(100 * child.data.metrics["test_accuracy"])
    header = ["optimizer", "homework", "measured (mean ± std)", "seeds", "difference", f"within ±{TOLERANCE_POINTS:g}"]
    rows, off = [], []
    for optimizer, homework in HOMEWORK_ACCURACY.items():
        values = by_optimizer.get(optimizer, [])
        if not values:
            rows.append([optimizer, f"{100 * homework:.2f} %", "not run", "0", "", "no"])
            off.append(optimizer)
            continue
        mean = statistics.fmean(values)
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        difference = mean - 100 * homework
        within = abs(difference) <= TOLERANCE_POINTS
        if not within:
            off.append(optimizer)
        rows.append(
            [
                optimizer,
                f"{100 * homework:.2f} %",
                f"{mean:.2f} ± {std:.2f} %",
                str(len(values)),
                f"{difference:+.2f} pp",
                "yes" if within else "NO",
            ]
        )
    return header, rows, off


def curves(client: Any, children: list[Any], metric: str) -> dict[str, dict[int, list[float]]]:
    """{optimizer: {epoch: [value per seed]}} of a per-epoch metric."""
    result: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for child in children:
        for point in client.get_metric_history(child.info.run_id, metric):
            result[child.data.params["optimizer"]][point.step].append(point.value)
    return result


def plot(client: Any, children: list[Any], steps_per_epoch: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (accuracy_axis, step_axis) = plt.subplots(1, 2, figsize=(11, 4.2))
    for axis, metric in ((accuracy_axis, "val_accuracy"), (step_axis, "effective_step_size")):
        for optimizer, by_epoch in sorted(curves(client, children, metric).items()):
            epochs = sorted(by_epoch)
            steps = [(epoch + 1) * steps_per_epoch for epoch in epochs]
            axis.plot(steps, [statistics.fmean(by_epoch[e]) for e in epochs], marker="o", label=optimizer)
        axis.set_xlabel("gradient steps (batch 320)")
        axis.grid(alpha=0.3)
        axis.legend()
    accuracy_axis.set_ylabel("validation accuracy (mean of seeds)")
    accuracy_axis.set_title("Accuracy at Keras' default learning rate (0.001)")
    step_axis.set_yscale("log")
    step_axis.set_ylabel("effective step size (median over parameters)")
    step_axis.set_title("What each gradient is multiplied by")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure_atomic(figure, path)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    from mlflow import MlflowClient

    from src import tracking
    from src.data import compose_config

    with exit_on_user_error():
        cfg = compose_config(["experiment=hw3_q4", *(sys.argv[1:] if argv is None else argv)])
        tracking.check_reachable(str(cfg.mlflow.tracking_uri))
        client = MlflowClient(str(cfg.mlflow.tracking_uri))
        parent, children = latest_sweep(client, str(cfg.mlflow.experiment_name))
        header, rows, off = accuracy_rows(children)
        table = markdown_table(header, rows)
        steps = cfg.train.steps_per_epoch or 1
        report = (
            "# Homework 3, Q4: test accuracy on MNIST at Keras' default hyperparameters\n\n"
            f"Sweep `{parent.info.run_name}` (MLflow run {parent.info.run_id}): MLP 784-128-10, batch size "
            f"{cfg.train.batch_size}, {cfg.train.epochs * steps} gradient steps, seeds 1-3; "
            "test set of 10000 images.\n\n"
            + table
            + "\n![validation accuracy and effective step size per gradient step](hw3_q4.png)\n"
        )
        report_path, figure_path = Path(cfg.report_dir) / "hw3_q4.md", Path(cfg.report_dir) / "hw3_q4.png"
        write_text_atomic(report_path, report)
        plot(client, children, steps, figure_path)
        client.log_artifact(parent.info.run_id, str(report_path))
        client.log_artifact(parent.info.run_id, str(figure_path))
        print(table + f"\nReport: {report_path} (+ {figure_path.name})")
        if off:
            raise DataError(
                f"{', '.join(off)}: more than {TOLERANCE_POINTS:g} points from the homework's accuracy; "
                "the budget (batch size, steps) is set in conf/experiment/hw3_q4.yaml, see docs/homework.md"
            )


if __name__ == "__main__":
    main()

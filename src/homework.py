"""`python -m src.homework`: the homework's Q4 numbers beside this project's measurement (`make hw3`).

Reads the newest finished sweep of `experiment=hw3_q4` (3 optimizers x the preset's seeds) from MLflow and
writes:

- `reports/hw3_q4.md`: per optimizer n, mean ± std of test accuracy over the seeds, the homework's number,
  the difference, where the homework's number falls among the seeds, and whether it is reproduced;
- `reports/hw3_q4.png`: validation accuracy (mean ± std of the seeds) and the optimizer's effective step
  size (median over the parameters of what each gradient is multiplied by, see src/update_rules.py) per
  gradient step: the data behind "AdaGrad reached only ~53 %".

"Reproduced" needs both (docs/homework.md says why):
- the mean of the seeds within TOLERANCE_POINTS (2 pp) of the homework's number, and
- the homework's number inside the 95 % prediction interval of one run, mean ± t(0.975, n-1) · std · √(1 + 1/n):
  the range a single further seed of this setup lands in 95 % of the time. The homework's number is one
  run, so that is the question to ask of it. It needs n >= 2: one seed has no spread.
Failed or killed seeds and seeds tagged `diverged=true` count in no statistic; the table says how many
were left out. Both files are also logged to the sweep's parent run. An optimizer that is not reproduced
is named in the last line printed (exit code 0: a finding, not a failure). Takes the same overrides as the
sweep (e.g. `mlflow.tracking_uri=...`).
"""

from __future__ import annotations

import math
import sys
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from src import stats
from src.errors import DataError, exit_on_user_error
from src.files import markdown_table, save_figure_atomic, write_text_atomic

# Homework 3, Q4: test accuracy after training MNIST with each optimizer at Keras' defaults (one run each).
HOMEWORK_ACCURACY = {"adam": 0.9384, "adagrad": 0.5277, "rmsprop": 0.9349}
TOLERANCE_POINTS = 2.0
MNIST_TRAIN_IMAGES = 60000


@dataclass(frozen=True)
class Seed:
    """One child run of the sweep: its optimizer, seed, test accuracy (a fraction) and how it ended.

    `status` is the MLflow status in lower case (finished, failed, killed), or `diverged` for a finished
    run tagged diverged=true. Only `finished` seeds with a test accuracy count.
    """

    optimizer: str
    seed: str
    accuracy: float | None
    status: str


@dataclass(frozen=True)
class Assessment:
    """One optimizer's seeds against the homework's number (all accuracies as fractions)."""

    optimizer: str
    homework: float
    values: tuple[float, ...]
    excluded: Mapping[str, int]
    summary: stats.Summary | None  # None when no seed counts
    low: float  # the 95 % prediction interval of one run; nan when n < 2
    high: float
    reproduced: bool
    reason: str  # why not reproduced; empty when reproduced

    @property
    def n(self) -> int:
        return len(self.values)


def seed_of(run: Any) -> Seed:
    """A child run as a Seed (a diverged run finishes, but is tagged `diverged=true`)."""
    status = run.info.status.lower()
    if status == "finished" and run.data.tags.get("diverged") == "true":
        status = "diverged"
    accuracy = run.data.metrics.get("test_accuracy")
    if accuracy is not None and not math.isfinite(accuracy):
        accuracy = None
    return Seed(run.data.params.get("optimizer", "?"), run.data.params.get("train.seed", "?"), accuracy, status)


def counts(seed: Seed) -> bool:
    return seed.status == "finished" and seed.accuracy is not None


def prediction_interval(summary: stats.Summary) -> tuple[float, float]:
    """The 95 % prediction interval of one further run: mean ± t(0.975, n-1) · std · √(1 + 1/n).

    Wider than the mean's confidence interval (which shrinks with √n): it is where a *single* new seed
    falls, and the homework's number is a single run. (nan, nan) when n < 2.
    """
    from scipy import stats as scipy_stats

    if summary.n < 2:
        return math.nan, math.nan
    half_width = scipy_stats.t.ppf(1 - stats.ALPHA / 2, summary.n - 1) * summary.std * math.sqrt(1 + 1 / summary.n)
    return summary.mean - half_width, summary.mean + half_width


def assess(optimizer: str, homework: float, seeds: Sequence[Seed]) -> Assessment:
    """The verdict for one optimizer from its seeds (any status; only the ones that count are used)."""
    values = tuple(float(s.accuracy) for s in seeds if counts(s))  # type: ignore[arg-type]
    excluded: dict[str, int] = defaultdict(int)
    for s in seeds:
        if not counts(s):
            excluded["no test accuracy" if s.status == "finished" else s.status] += 1
    if not values:
        reason = "no seed finished" if seeds else "not run"
        return Assessment(optimizer, homework, values, dict(excluded), None, math.nan, math.nan, False, reason)
    summary = stats.summarize(values)
    low, high = prediction_interval(summary)
    difference = 100 * (summary.mean - homework)
    if summary.n < 2:
        reason = "one seed has no spread: run at least 2 (train.seed=1,2,3,4,5)"
    elif abs(difference) > TOLERANCE_POINTS:
        reason = f"mean {difference:+.2f} pp from the homework (more than {TOLERANCE_POINTS:g})"
    elif not low <= homework <= high:
        reason = "the homework's number is outside the 95 % range of one run"
    else:
        reason = ""
    return Assessment(optimizer, homework, values, dict(excluded), summary, low, high, not reason, reason)


def assess_all(seeds: Sequence[Seed]) -> list[Assessment]:
    """One Assessment per homework optimizer, in the homework's order."""
    by_optimizer: dict[str, list[Seed]] = defaultdict(list)
    for s in seeds:
        by_optimizer[s.optimizer].append(s)
    return [assess(name, homework, by_optimizer.get(name, [])) for name, homework in HOMEWORK_ACCURACY.items()]


def where_it_falls(a: Assessment) -> str:
    """`above 3 of 5 seeds (z = +0.42)`: the homework's number against the seeds' values."""
    if a.summary is None:
        return ""
    above = sum(v < a.homework for v in a.values)
    text = f"above {above} of {a.n} seed{'s' if a.n != 1 else ''}"
    if a.n >= 2 and a.summary.std > 0:
        text += f" (z = {(a.homework - a.summary.mean) / a.summary.std:+.2f})"
    return text


def accuracy_rows(assessments: Sequence[Assessment]) -> tuple[list[str], list[list[str]]]:
    """The report's table: header and one row per optimizer (accuracies in percent)."""
    header = [
        "optimizer",
        "n",
        "measured (mean ± std)",
        "seeds' min … max",
        "homework",
        "difference",
        "homework among the seeds",
        "95 % range of one run",
        "reproduced",
    ]
    rows = []
    for a in assessments:
        n = f"{a.n}" + (f" ({_excluded(a.excluded)} left out)" if a.excluded else "")
        if a.summary is None:
            rows.append([a.optimizer, n, a.reason, "", f"{100 * a.homework:.2f} %", "", "", "", "no"])
            continue
        rows.append(
            [
                a.optimizer,
                n,
                f"{stats.format_mean_std(a.summary)} %",
                stats.format_interval(min(a.values), max(a.values)),
                f"{100 * a.homework:.2f} %",
                f"{100 * (a.summary.mean - a.homework):+.2f} pp",
                where_it_falls(a),
                stats.format_interval(a.low, a.high),
                "yes" if a.reproduced else f"no: {a.reason}",
            ]
        )
    return header, rows


def _excluded(excluded: Mapping[str, int]) -> str:
    """`1 failed, 1 diverged`."""
    return ", ".join(f"{count} {status}" for status, count in sorted(excluded.items()))


def latest_sweep(client: Any, experiment_name: str) -> tuple[Any, list[Any]]:
    """The newest parent run of the experiment that has ended, and all its children whatever their status.

    A sweep with a failed job ends FAILED (src/tracking/sweep.py): it is still reported, with the failed
    seed left out of n, rather than silently falling back to an older sweep. A sweep still RUNNING is skipped.
    """
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        raise DataError(f"no MLflow experiment {experiment_name!r} yet: run `python -m src.train -m experiment=hw3_q4`")
    parents = client.search_runs(
        [experiment.experiment_id],
        filter_string="tags.sweep = 'parent' and attributes.status != 'RUNNING'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not parents:
        raise DataError(f"no ended sweep in experiment {experiment_name!r}: run `make hw3`")
    parent = parents[0]
    children = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    return parent, children


def gradient_steps(params: Mapping[str, str]) -> tuple[int, int]:
    """(batch size, gradient steps of the whole run) from a child's params: epochs x steps_per_epoch, or
    epochs x the batches of one pass over the training images when steps_per_epoch is null."""
    batch_size, epochs = int(params["train.batch_size"]), int(params["train.epochs"])
    if params.get("train.steps_per_epoch", "None") not in ("None", "null", ""):
        return batch_size, epochs * int(params["train.steps_per_epoch"])
    limit = params.get("data.limit", "None")
    images = MNIST_TRAIN_IMAGES if limit in ("None", "null", "") else int(limit)
    train_images = images - int(round(images * float(params.get("data.val_split", "0.1"))))
    return batch_size, epochs * math.ceil(train_images / batch_size)


def curves(client: Any, children: Sequence[Any], metric: str) -> dict[str, dict[int, list[float]]]:
    """{optimizer: {epoch: [value per seed]}} of a per-epoch metric."""
    result: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for child in children:
        for point in client.get_metric_history(child.info.run_id, metric):
            result[child.data.params["optimizer"]][point.step].append(point.value)
    return result


def plot(client: Any, children: Sequence[Any], batch_size: int, steps_per_epoch: float, path: Path) -> None:
    """Validation accuracy (mean ± std of the seeds, the homework's test accuracy dotted) and effective
    step size per gradient step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (accuracy_axis, step_axis) = plt.subplots(1, 2, figsize=(11, 4.2))
    for axis, metric in ((accuracy_axis, "val_accuracy"), (step_axis, "effective_step_size")):
        for optimizer, by_epoch in sorted(curves(client, children, metric).items()):
            epochs = sorted(by_epoch)
            steps = [(epoch + 1) * steps_per_epoch for epoch in epochs]
            summaries = [stats.summarize(by_epoch[e]) for e in epochs]
            means = [s.mean for s in summaries]
            (line,) = axis.plot(steps, means, marker="o", label=optimizer)
            if all(s.n >= 2 for s in summaries):
                axis.fill_between(
                    steps,
                    [s.mean - s.std for s in summaries],
                    [s.mean + s.std for s in summaries],
                    color=line.get_color(),
                    alpha=0.2,
                    linewidth=0,
                )
            if axis is accuracy_axis and optimizer in HOMEWORK_ACCURACY:
                axis.axhline(HOMEWORK_ACCURACY[optimizer], color=line.get_color(), linestyle=":", linewidth=1)
        axis.set_xlabel(f"gradient steps (batch {batch_size})")
        axis.grid(alpha=0.3)
        axis.legend()
    accuracy_axis.set_ylabel("validation accuracy (mean ± std of the seeds)")
    accuracy_axis.set_title("Keras' default learning rate (0.001); dotted: the homework")
    step_axis.set_yscale("log")
    step_axis.set_ylabel("effective step size (median over parameters)")
    step_axis.set_title("What each gradient is multiplied by")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure_atomic(figure, path)
    plt.close(figure)


def report_text(
    parent: Any, assessments: Sequence[Assessment], seeds: Sequence[str], batch_size: int, steps: int
) -> str:
    """The whole of reports/hw3_q4.md."""
    header, rows = accuracy_rows(assessments)
    seed_list = ", ".join(sorted(set(seeds), key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0, s)))
    return (
        "# Homework 3, Q4: test accuracy on MNIST at Keras' default hyperparameters\n\n"
        f"Sweep `{parent.info.run_name}` (MLflow run {parent.info.run_id}"
        + (f", ended {parent.info.status}" if parent.info.status != "FINISHED" else "")
        + "): MLP 784-128-10, batch size "
        f"{batch_size}, {steps} gradient steps, seeds {seed_list}; test set of 10000 images.\n\n"
        + markdown_table(header, rows)
        + "\n*Reproduced*: the mean within ±"
        f"{TOLERANCE_POINTS:g} pp of the homework's number **and** that number inside the 95 % range of one "
        "run (prediction interval mean ± t(0.975, n-1) · std · √(1 + 1/n)): the homework's number is a single "
        "run, so it is compared with where a single seed of this setup lands. *Above k of n seeds*: how many "
        "seeds scored lower than the homework; z = (homework - mean) / std. Failed, killed and diverged seeds "
        "count in no statistic (n). See docs/homework.md.\n\n"
        "![validation accuracy and effective step size per gradient step](hw3_q4.png)\n"
    )


def main(argv: list[str] | None = None) -> None:
    from mlflow import MlflowClient

    from src import tracking
    from src.data import compose_config

    with exit_on_user_error():
        cfg = compose_config(["experiment=hw3_q4", *(sys.argv[1:] if argv is None else argv)])
        tracking.check_reachable(str(cfg.mlflow.tracking_uri))
        client = MlflowClient(str(cfg.mlflow.tracking_uri))
        parent, children = latest_sweep(client, str(cfg.mlflow.experiment_name))
        seeds = [seed_of(child) for child in children]
        assessments = assess_all(seeds)
        counted = [child for child, s in zip(children, seeds, strict=True) if counts(s)]
        if not counted:
            raise DataError(f"sweep {parent.info.run_id} has no finished seed: run `make hw3`")
        batch_size, steps = gradient_steps(counted[0].data.params)
        epochs = int(counted[0].data.params["train.epochs"])
        report = report_text(parent, assessments, [s.seed for s in seeds if counts(s)], batch_size, steps)
        report_path, figure_path = Path(cfg.report_dir) / "hw3_q4.md", Path(cfg.report_dir) / "hw3_q4.png"
        write_text_atomic(report_path, report)
        plot(client, counted, batch_size, steps / epochs, figure_path)
        client.log_artifact(parent.info.run_id, str(report_path))
        client.log_artifact(parent.info.run_id, str(figure_path))
        header, rows = accuracy_rows(assessments)
        print(markdown_table(header, rows) + f"\nReport: {report_path} (+ {figure_path.name})")
        missed = [a for a in assessments if not a.reproduced]
        if missed:  # a finding, not a failure of the command: say it plainly and exit 0
            print(
                "Not reproduced: "
                + "; ".join(f"{a.optimizer} ({a.reason})" for a in missed)
                + ". Why a single homework number cannot be matched more closely: docs/homework.md"
            )


if __name__ == "__main__":
    main()

"""`python -m src.compare [mlflow.register=true]`: the DVC `compare` stage, the optimizers side by side.

Every optimizer of params.yaml was trained once per seed (`runs/<name>/seed<k>/`) and scored on the test
set (`reports/eval/<name>/metrics.json`). The seeds are replicates, so this stage reports each optimizer
as a group of seeds (src/stats.py does the statistics) and writes:
- reports/comparison.md: one row per optimizer (n, mean ± std and 95 % CI of test accuracy and best val
  accuracy, mean best/stopped epoch and train seconds, the seeds excluded and why), the verdict (each
  optimizer against the best one: difference of means, its 95 % CI, resolved or not by Welch's t-test),
  then one row per seed;
- reports/comparison.csv (per optimizer) and reports/comparison_seeds.csv (per seed);
- reports/metrics.json: per optimizer the means and stds, for `dvc metrics show` / `dvc metrics diff`;
- reports/curves.json: val_accuracy and val_loss per epoch and seed (DVC draws one line per seed,
  coloured per optimizer: .dvc/plots/by_seed.json);
- reports/curves.png: per optimizer the mean validation curve over the seeds with a ±1 std band;
- reports/confusion_grid.png: per optimizer the test-set confusion matrix summed over its seeds.
A seed that diverged (its metrics.json says `"diverged": true`) is listed but counted in no statistic.

In MLflow it opens one parent run for the comparison, makes every seed's training run its child (tagged
`setting=optimizer=<name>`, so the UI's "Group by tag: setting" groups the seeds), logs the aggregates as
metrics (`test_accuracy_mean/optimizer:adam`, ...) and the reports as artifacts, and tags the best run.
With `mlflow.register=true` (what dvc.yaml runs) the best run's model is registered (src/registry.py).
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from src import stats
from src.config import PROJECT_ROOT, flatten, shapes_training
from src.errors import UserError, exit_on_user_error
from src.evaluate import seed_scores
from src.files import markdown_table, save_figure_atomic, write_text_atomic
from src.pipeline import read_params, seed_dir

RUNS_DIR = PROJECT_ROOT / "runs"
REPORTS_DIR = PROJECT_ROOT / "reports"
# Per seed: what the tables show. SPREAD: summarized with mean ± std and CI; MEAN: with the mean only.
SEED_COLUMNS = ("test_accuracy", "best_val_accuracy", "best_epoch", "stopped_epoch", "train_seconds")
SPREAD = ("test_accuracy", "best_val_accuracy")
MEAN = ("best_epoch", "stopped_epoch", "train_seconds")
VERDICT_METRIC = "test_accuracy"
# A seed's status, as in sweep summaries: FINISHED counts, a diverged run is listed but not counted.
FINISHED, DIVERGED = stats.USABLE_STATUS, "diverged"


@dataclass
class Group:
    """One optimizer's seeds: the counted ones (finished, not diverged) make the Summaries."""

    optimizer: str
    seeds: list[dict[str, Any]]
    confusion: dict[str, list[list[int]]] = field(default_factory=dict)  # {seed: test-set confusion matrix}
    summaries: dict[str, stats.Summary] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return stats.setting_label(["optimizer"], [self.optimizer])

    @property
    def counted(self) -> list[dict[str, Any]]:
        return [seed for seed in self.seeds if seed["status"] == FINISHED]

    @property
    def excluded(self) -> str:
        return ", ".join(f"seed {s['seed']} ({s['status']})" for s in self.seeds if s["status"] != FINISHED)

    def values(self, metric: str) -> list[float]:
        return [float(seed[metric]) for seed in self.counted]


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise UserError(f"{path} is missing; run the stage that makes it (`dvc repro`)")
    return path.read_text()


def _read_json(path: Path) -> Any:
    return json.loads(_read_text(path))


def load_seed(name: str, seed: int, runs_dir: Path, evaluation: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """One seed's row: its training metrics, test scores, settings, history and MLflow run."""
    run = seed_dir(runs_dir, name, seed)
    training = _read_json(run / "metrics.json")
    if seed not in evaluation:
        raise UserError(f"reports/eval/{name}/metrics.json has no seed {seed}; rerun `dvc repro train@{name}`")
    scores = evaluation[seed]
    diverged = bool(training.get("diverged") or scores.get("diverged"))
    config = yaml.safe_load(_read_text(run / ".hydra" / "config.yaml"))
    return {
        "optimizer": name,
        "seed": seed,
        "status": DIVERGED if diverged else FINISHED,
        "test_accuracy": scores.get("test_accuracy"),
        "best_val_accuracy": training.get("best_val_accuracy"),
        "best_epoch": training.get("best_epoch"),
        "stopped_epoch": training.get("stopped_epoch"),
        "train_seconds": training.get("train_seconds"),
        "settings": {key: value for key, value in flatten(config) if shapes_training(key) and key != "train.seed"},
        "history": _read_json(run / "history.json"),
        "run": _read_json(run / "run.json") if (run / "run.json").is_file() else {},
    }


def load_groups(names: Sequence[str], seeds: Sequence[int], runs_dir: Path, eval_dir: Path) -> list[Group]:
    groups = []
    for name in names:
        evaluation = seed_scores(_read_json(eval_dir / name / "metrics.json"))
        group = Group(name, [load_seed(name, seed, runs_dir, evaluation) for seed in seeds])
        group.confusion = _read_json(eval_dir / name / "confusion.json")
        (setting,) = stats.summarize_settings(group.seeds, ["optimizer"], [*SPREAD, *MEAN])
        group.summaries = dict(setting.summaries)
        groups.append(group)
    return groups


def differing_settings(results: list[dict[str, Any]]) -> list[str]:
    """Settings every run has but not with the same value (e.g. learning_rate after `dvc exp run -S`).

    Keys only some optimizers have (amsgrad, rho, ...) are left out: the optimizer column says it all.
    """
    shared = set.intersection(*(set(result["settings"]) for result in results))
    shared.discard("optimizer._target_")
    return sorted(key for key in shared if len({repr(result["settings"][key]) for result in results}) > 1)


def _number(value: float, digits: int = 5) -> float | None:
    """A JSON/CSV-safe rounded number: None for nan (n = 1 has no std)."""
    return None if value is None or math.isnan(value) else round(float(value), digits)


def _mean(group: Group, metric: str, digits: int = 1) -> str:
    summary = group.summaries.get(metric)
    return f"{summary.mean:.{digits}f}" if summary else "n/a"


def summary_table(groups: list[Group]) -> tuple[list[str], list[list[Any]]]:
    """The per-optimizer table of comparison.md (accuracies in %)."""
    differing = differing_settings([g.seeds[0] for g in groups])
    header = [
        "optimizer",
        "n",
        "test accuracy % (mean ± std)",
        "95 % CI",
        "best val accuracy %",
        "95 % CI",
        "best epoch",
        "stopped epoch",
        "train s",
        "excluded",
        *differing,
    ]
    rows = []
    for group in groups:
        cells: list[Any] = [group.optimizer, len(group.counted)]
        for metric in SPREAD:
            summary = group.summaries.get(metric)
            cells += (
                [stats.format_mean_std(summary), stats.format_interval(summary.ci_low, summary.ci_high)]
                if summary
                else ["n/a", "n/a"]
            )
        cells += [_mean(group, "best_epoch"), _mean(group, "stopped_epoch"), _mean(group, "train_seconds")]
        cells += [group.excluded or "", *(group.seeds[0]["settings"][key] for key in differing)]
        rows.append(cells)
    return header, rows


def summary_csv_rows(groups: list[Group]) -> list[list[Any]]:
    """comparison.csv: the same per optimizer, as numbers (fractions, not %)."""
    differing = differing_settings([g.seeds[0] for g in groups])
    header: list[Any] = ["optimizer", "n"]
    for metric in SPREAD:
        header += [f"{metric}_{stat}" for stat in ("mean", "std", "ci_low", "ci_high")]
    header += [f"{metric}_mean" for metric in MEAN] + ["excluded", *differing]
    rows: list[list[Any]] = [header]
    for group in groups:
        row: list[Any] = [group.optimizer, len(group.counted)]
        for metric in SPREAD:
            s = group.summaries.get(metric)
            row += [_number(v) for v in (s.mean, s.std, s.ci_low, s.ci_high)] if s else [None] * 4
        row += [_number(group.summaries[m].mean, 3) if m in group.summaries else None for m in MEAN]
        row += [group.excluded, *(group.seeds[0]["settings"][key] for key in differing)]
        rows.append(row)
    return rows


def seeds_table(groups: list[Group], percent: bool = False) -> tuple[list[str], list[list[Any]]]:
    """One row per seed: comparison_seeds.csv (fractions) and the second table of comparison.md (percent)."""
    header = ["optimizer", "seed", *SEED_COLUMNS, "status", "run_id"]
    rows = []
    for group in groups:
        for seed in group.seeds:
            values = [_seed_value(seed[column], column, percent) for column in SEED_COLUMNS]
            rows.append([group.optimizer, seed["seed"], *values, seed["status"], seed["run"].get("run_id", "")])
    return header, rows


def _seed_value(value: Any, column: str, percent: bool) -> Any:
    if value is None:
        return ""
    if "accuracy" in column:
        return f"{value * 100:.2f}" if percent else _number(value)
    return round(value, 1) if isinstance(value, float) else value


def verdict(groups: list[Group]) -> tuple[str | None, list[stats.Difference], list[str]]:
    """(best optimizer label, each other one's Difference to it, the verdict lines) on test accuracy."""
    best, differences = stats.compare_to_best({g.label: g.values(VERDICT_METRIC) for g in groups})
    lines = stats.verdict_lines(best, differences)
    if best is not None and all(len(g.counted) < 2 for g in groups if g.counted):
        lines += [
            "",
            "With one seed per optimizer no difference can be resolved, so this names no winner: list more"
            " seeds in params.yaml (`seeds: [1, 2, 3]`).",
        ]
    return best, differences, lines


def _epoch_summaries(histories: list[list[float]]) -> list[stats.Summary]:
    """Per epoch, the Summary over the seeds that reached that epoch (runs stop at different epochs)."""
    longest = max(len(history) for history in histories)
    return [stats.summarize([h[epoch] for h in histories if len(h) > epoch]) for epoch in range(longest)]


def plot_curves(groups: list[Group], path: Path) -> None:
    from matplotlib import pyplot
    from matplotlib.ticker import MaxNLocator

    figure, (accuracy_axes, loss_axes) = pyplot.subplots(1, 2, figsize=(11, 4.3), layout="constrained")
    for group in groups:
        if not group.counted:
            continue
        for axes, metric in ((accuracy_axes, "val_accuracy"), (loss_axes, "val_loss")):
            summaries = _epoch_summaries([seed["history"][metric] for seed in group.counted])
            epochs = range(1, len(summaries) + 1)
            means = [s.mean for s in summaries]
            stds = [0.0 if math.isnan(s.std) else s.std for s in summaries]
            (line,) = axes.plot(epochs, means, marker="o", label=f"{group.optimizer} (n={len(group.counted)})")
            low = [m - s for m, s in zip(means, stds, strict=True)]
            high = [m + s for m, s in zip(means, stds, strict=True)]
            axes.fill_between(epochs, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    for axes, metric in ((accuracy_axes, "validation accuracy"), (loss_axes, "validation loss")):
        axes.set_xlabel("epoch")
        axes.set_ylabel(metric)
        axes.set_title(f"{metric}: mean over seeds ± 1 std")
        axes.grid(alpha=0.3)
        axes.legend(title="optimizer")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    figure.suptitle(
        "Each epoch averages the seeds that reached it (EarlyStopping ends seeds at different epochs)", fontsize=9
    )
    save_figure_atomic(figure, path)
    pyplot.close(figure)


def plot_confusion_grid(groups: list[Group], path: Path) -> None:
    import numpy as np
    from matplotlib import pyplot

    from src.evaluate import plot_confusion

    figure, axes = pyplot.subplots(
        1, len(groups), figsize=(4.5 * len(groups), 5.2), squeeze=False, layout="constrained"
    )
    for group, cell in zip(groups, axes[0], strict=True):
        counted = [str(seed["seed"]) for seed in group.counted]
        total = sum((np.array(group.confusion[seed]) for seed in counted), np.zeros((10, 10), dtype=np.int64))
        summary = group.summaries.get(VERDICT_METRIC)
        accuracy = stats.format_mean_std(summary) + " %" if summary else "n/a"
        plot_confusion(total, f"{group.optimizer}: {accuracy}\n(sum over {len(counted)} seeds)", cell)
    save_figure_atomic(figure, path, dpi=110)
    pyplot.close(figure)


def metrics_json(groups: list[Group]) -> dict[str, dict[str, Any]]:
    """reports/metrics.json: per optimizer n and the means and stds (null where n = 1 has no std)."""
    metrics: dict[str, dict[str, Any]] = {}
    for group in groups:
        entry: dict[str, Any] = {"n": len(group.counted)}
        for metric in SPREAD:
            if metric in group.summaries:
                entry[f"{metric}_mean"] = _number(group.summaries[metric].mean)
                entry[f"{metric}_std"] = _number(group.summaries[metric].std)
        for metric in MEAN:
            if metric in group.summaries:
                entry[f"{metric}_mean"] = _number(group.summaries[metric].mean, 2)
        metrics[group.optimizer] = entry
    return metrics


def curve_points(groups: list[Group]) -> list[dict[str, Any]]:
    """reports/curves.json: one point per optimizer, seed and epoch (the counted seeds)."""
    return [
        {
            "optimizer": group.optimizer,
            "seed": seed["seed"],
            "run": f"{group.optimizer}/seed{seed['seed']}",
            "epoch": epoch + 1,
            "val_accuracy": accuracy,
            "val_loss": loss,
        }
        for group in groups
        for seed in group.counted
        for epoch, (accuracy, loss) in enumerate(
            zip(seed["history"]["val_accuracy"], seed["history"]["val_loss"], strict=True)
        )
    ]


def _csv(rows: list[list[Any]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows([["" if v is None else v for v in row] for row in rows])
    return buffer.getvalue()


def compare(
    names: Sequence[str],
    seeds: Sequence[int],
    runs_dir: Path = RUNS_DIR,
    reports_dir: Path = REPORTS_DIR,
) -> tuple[list[Group], list[str]]:
    """Write every report; return the groups and the verdict lines."""
    import matplotlib

    matplotlib.use("Agg")
    groups = load_groups(names, seeds, runs_dir, reports_dir / "eval")
    _, _, lines = verdict(groups)
    write_text_atomic(reports_dir / "comparison.csv", _csv(summary_csv_rows(groups)))
    seed_header, seed_rows = seeds_table(groups)
    write_text_atomic(reports_dir / "comparison_seeds.csv", _csv([seed_header, *seed_rows]))
    seed_list = ", ".join(map(str, seeds))
    text = [
        "# Optimizers on MNIST",
        "",
        f"Each optimizer trained once per seed ({seed_list}; `seeds` in params.yaml) by `dvc repro`; accuracies"
        " in % on the 10000 test images. mean ± std is over the seeds (sample std); the 95 % CI is Student's t"
        " interval of the mean. Diverged seeds are listed under excluded and counted in no statistic.",
        "",
        markdown_table(*summary_table(groups)),
        "",
        "## Verdict",
        "",
        *lines,
        "",
        "Each optimizer against the one with the highest mean test accuracy: the difference of means with"
        " its 95 % confidence interval, resolved when Welch's t-test gives p < 0.05 (the interval excludes 0).",
        "",
        "## Per seed",
        "",
        markdown_table(*seeds_table(groups, percent=True)),
        "",
        "![validation curves: mean ± 1 std over the seeds](curves.png)",
        "",
        "![confusion matrices, summed over the seeds](confusion_grid.png)",
        "",
    ]
    write_text_atomic(reports_dir / "comparison.md", "\n".join(text))
    write_text_atomic(reports_dir / "metrics.json", json.dumps(metrics_json(groups), indent=2) + "\n")
    write_text_atomic(reports_dir / "curves.json", json.dumps(curve_points(groups), indent=1) + "\n")
    plot_curves(groups, reports_dir / "curves.png")
    plot_confusion_grid(groups, reports_dir / "confusion_grid.png")
    return groups, lines


def best_run(groups: list[Group], best: str | None) -> dict[str, Any] | None:
    """The best optimizer's seed with the highest best validation accuracy: the model one would keep (chosen
    on validation data, as in sweep summaries, not on the test set it is reported on)."""
    group = next((g for g in groups if g.label == best), None)
    if group is None or not group.counted:
        return None
    return max(group.counted, key=lambda seed: seed["best_val_accuracy"])


def log_to_mlflow(groups: list[Group], reports_dir: Path, settings: Any) -> str | None:
    """One parent run per comparison; every seed's training run found in the store becomes its child.
    `settings`: conf/'s `mlflow` group (store, experiment, register, registered_model_name)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from src.tracking import use_experiment

    experiment_id = use_experiment(settings)  # the store and experiment `src.train` used
    client = MlflowClient()
    children = []
    for group in groups:
        for seed in group.seeds:
            run_id = seed["run"].get("run_id")
            try:
                if run_id and client.get_run(run_id):
                    children.append((group, run_id))
            except MlflowException:  # runs/ came from `dvc pull`, the runs from another store
                continue
    if not children:
        return None
    seeds = sorted({seed["seed"] for group in groups for seed in group.seeds})
    name = f"dvc compare: {','.join(g.optimizer for g in groups)}, seeds {','.join(map(str, seeds))}"
    parent = client.create_run(experiment_id, run_name=name, tags={"dvc_stage": "compare", "sweep": "parent"})
    parent_id = parent.info.run_id
    try:
        _fill_parent(client, parent_id, groups, children, reports_dir, settings)
    except BaseException as error:  # never leave the comparison's parent RUNNING
        client.set_terminated(parent_id, "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")
        raise
    client.set_terminated(parent_id, "FINISHED")
    return parent_id


def _fill_parent(
    client: Any,
    parent_id: str,
    groups: list[Group],
    children: list[tuple[Group, str]],
    reports_dir: Path,
    settings: Any,
) -> None:
    """Link the seeds' runs to the comparison's parent run, log its aggregates, reports and best run."""
    from src.tracking.sweep import SETTING_TAG

    for group, run_id in children:
        client.set_tag(run_id, "mlflow.parentRunId", parent_id)
        client.set_tag(run_id, SETTING_TAG, group.label)
    for group in groups:
        for metric, summary in group.summaries.items():
            stats_of = {"mean": summary.mean}
            if metric in SPREAD:
                stats_of |= {"std": summary.std, "n": summary.n, "ci_low": summary.ci_low, "ci_high": summary.ci_high}
            for stat, value in stats_of.items():
                if not math.isnan(value):
                    client.log_metric(parent_id, stats.metric_name(metric, stat, group.label), value)
    for report in (
        "comparison.md",
        "comparison.csv",
        "comparison_seeds.csv",
        "metrics.json",
        "curves.png",
        "confusion_grid.png",
    ):
        client.log_artifact(parent_id, str(reports_dir / report))
    best, differences, _ = verdict(groups)
    winner = best_run(groups, best)
    client.set_tag(parent_id, "best_resolved", str(stats.best_is_resolved(differences)).lower())
    if best:
        client.set_tag(parent_id, "best_setting", best)
    if winner and winner["run"].get("run_id") in {run_id for _, run_id in children}:
        client.set_tag(parent_id, "best_child_run_id", winner["run"]["run_id"])
        if settings.get("register"):
            values = next(g for g in groups if g.label == best).values(VERDICT_METRIC)
            _register(winner["run"]["run_id"], values, settings.registered_model_name)


def _register(run_id: str, values: list[float], model_name: str) -> None:
    """Register the best run's model (src/registry.py moves the `champion` alias only when it is better)."""
    from src.registry import register_best

    message = register_best(run_id, values, model_name)
    if message:
        print(message)


def mlflow_config(overrides: list[str]) -> Any:
    """conf/'s `mlflow` group with the command line's overrides (`python -m src.compare mlflow.register=true`)."""
    from hydra.errors import HydraException

    from src.config import validate
    from src.data import compose_config

    try:
        cfg = compose_config(overrides)
    except HydraException as error:
        raise UserError(f"src.compare: {error}") from None
    validate(cfg)  # mlflow.register, mlflow.registered_model_name: before any run exists
    return cfg.mlflow


def main() -> None:
    with exit_on_user_error():
        names, seeds = read_params()
        settings = mlflow_config(sys.argv[1:])
        groups, lines = compare(names, seeds)
        parent_run_id = log_to_mlflow(groups, REPORTS_DIR, settings)
    print(markdown_table(*summary_table(groups)))
    print("\n".join(lines))
    print(f"Report: {REPORTS_DIR / 'comparison.md'} (curves.png, confusion_grid.png beside it); `make plots` for HTML")
    if parent_run_id:
        from src.tracking.links import children_url

        print(f"MLflow: parent run {parent_run_id}; its runs side by side (make ui): {children_url(parent_run_id)}")


if __name__ == "__main__":
    main()

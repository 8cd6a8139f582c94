"""The fair protocol's results, read from the trial records: the data model and every computation the report's
files (report_files.py) and MLflow parent run (report_mlflow.py) show. report.py puts them together.

The judged runs are replicates (src/analysis/replicates.py: which runs count, the comparison on the verdict
metric, the verdicts); the tuning trials give the learning-rate sensitivity and the expected best accuracy
against the tuning budget (src/analysis/stats.py). Per workload and optimizer: the one-shot row (Keras' default
learning rate, judged with the same seeds and budget as the tuned runs), the tuned learning rate, the tuned test
accuracy, the gain from tuning, the epochs to reach each validation-accuracy target, the verdict against the
best (Holm-corrected), and the trials that diverged.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig

from src.analysis import replicates, stats
from src.fair import protocol as fair
from src.fair.records import read_record
from src.fair.selection import Selection, select
from src.infra.errors import ConfigError


@dataclass
class OptimizerResult:
    """One optimizer on one workload: its tuning trials, the selection, and its judged runs."""

    optimizer: str
    selection: Selection
    default_lr: float
    trials: list[dict[str, Any]]
    tuned: list[replicates.Replicate]
    default: list[replicates.Replicate]


@dataclass
class WorkloadResult:
    workload: str
    targets: tuple[float, ...]
    optimizers: list[OptimizerResult]
    tuned: replicates.Comparison
    default: replicates.Comparison


def as_replicate(record: Mapping[str, Any]) -> replicates.Replicate:
    """A judged run as a replicate of its optimizer (the setting)."""
    return replicates.Replicate(
        setting=record["optimizer"],
        seed=record["seed"],
        status=record["status"],
        metrics=record["metrics"],
        run_id=record.get("run_id", ""),
        name=record.get("run_name", ""),
        values={"optimizer": record["optimizer"], "learning_rate": record["learning_rate"]},
        history=record["history"],
    )


def _records(settings: fair.Protocol, trials: Sequence[fair.Trial]) -> list[dict[str, Any]]:
    found = []
    for trial in trials:
        record = read_record(trial.folder(settings.trials_dir))
        if record is None:
            stage = f"{trial.phase} {trial.optimizer} {trial.workload}"
            raise ConfigError(
                f"{trial.folder(settings.trials_dir)} has no finished trial: run `python -m src.fair {stage}`"
            )
        found.append(record)
    return found


def collect(settings: fair.Protocol, bases: Mapping[tuple[str, str], DictConfig]) -> list[WorkloadResult]:
    """Every workload's results, read from the trial folders of the current protocol."""
    results = []
    for workload in settings.workloads:
        per_optimizer = []
        for optimizer in settings.optimizers:
            trials = _records(settings, fair.tune_trials(settings, optimizer, workload))
            best, scores, diverged = select(trials)
            selection = Selection(optimizer, workload, best, scores, diverged)
            default_lr = fair.default_learning_rate(bases[(optimizer, workload)])
            rates = [rate for rate in (best, default_lr) if rate is not None]
            judged = _records(settings, fair.judge_trials(settings, optimizer, workload, rates))
            tuned = [as_replicate(r) for r in judged if best is not None and r["learning_rate"] == best]
            default = [as_replicate(r) for r in judged if r["learning_rate"] == default_lr]
            per_optimizer.append(OptimizerResult(optimizer, selection, default_lr, trials, tuned, default))
        tuned_all = [r for result in per_optimizer for r in result.tuned]
        default_all = [r for result in per_optimizer for r in result.default]
        results.append(
            WorkloadResult(
                workload,
                settings.targets[workload],
                per_optimizer,
                replicates.compare(tuned_all, correction=replicates.HOLM),
                replicates.compare(default_all, correction=replicates.HOLM),
            )
        )
    return results


def epochs_to_target(runs: Sequence[replicates.Replicate], target: float) -> list[int | None]:
    """Per counted run, the first epoch whose validation accuracy reached `target` (None: never)."""
    return [first_epoch_reaching((r.history or {}).get("val_accuracy", []), target) for r in runs]


def epochs_cell(epochs: Sequence[int | None]) -> str:
    """`2.4 ± 0.5`, `3.0 ± 0.0 (1 of 5 not reached)`, `not reached (5 of 5)`: the runs that never got
    there are counted and shown, not dropped."""
    reached = [e for e in epochs if e is not None]
    missing = len(epochs) - len(reached)
    if not reached:
        return f"not reached ({missing} of {len(epochs)})" if epochs else "n/a"
    summary = stats.summarize(reached)
    text = f"{summary.mean:.1f}" + (f" ± {summary.std:.1f}" if summary.n > 1 else "")
    return text + (f" ({missing} of {len(epochs)} not reached)" if missing else "")


def _mean_std(setting: replicates.Setting | None) -> str:
    summary = setting.summaries.get(setting.metric) if setting else None
    return stats.format_mean_std(summary) if summary else "n/a"


def _counted_values(runs: Sequence[replicates.Replicate]) -> list[float]:
    """The verdict metric of the runs that count (src/analysis/replicates.py's rule and metric)."""
    return [value for setting in replicates.group(runs) for value in setting.values_of(setting.metric)]


def gain(result: OptimizerResult) -> stats.Difference | None:
    """Tuned minus default test accuracy (Welch), None when there is nothing tuned to compare."""
    tuned, default = _counted_values(result.tuned), _counted_values(result.default)
    if not tuned or not default:
        return None
    return stats.welch(tuned, default, f"{result.optimizer} tuned", f"{result.optimizer} default")


def at_grid_edge(result: OptimizerResult) -> bool:
    """The tuned rate is the grid's smallest or largest: the best rate may lie beyond the grid."""
    rates = list(result.selection.scores)
    return result.selection.best_lr is not None and result.selection.best_lr in (min(rates), max(rates))


def edge_lines(workload: WorkloadResult) -> list[str]:
    return [
        f"- {r.optimizer}: its tuned rate {fair.lr_text(r.selection.best_lr)} is at the edge of the grid, so"  # type: ignore[arg-type]
        " its best rate may lie beyond it: widen `fair.lr_grid` (only the new rates are trained)"
        for r in workload.optimizers
        if at_grid_edge(r)
    ]


def gain_cell(result: OptimizerResult) -> str:
    if result.selection.best_lr == result.default_lr:
        return "0 (the default won the tuning)"
    difference = gain(result)
    if difference is None:
        return "n/a"
    interval = stats.format_interval(difference.ci_low, difference.ci_high, signed=True)
    return f"{difference.diff * 100:+.2f} pp ({interval})"


def summary_table(workload: WorkloadResult) -> tuple[list[str], list[list[str]]]:
    """The per-optimizer table of fair.md (accuracies in %)."""
    header = ["optimizer", "default lr", "test acc % at default lr", "tuned lr", "n", "tuned test acc %", "95 % CI"]
    header += ["gain from tuning (95 % CI)", *(f"epochs to {t * 100:g} % val" for t in workload.targets)]
    header += ["excluded", "tuning trials diverged"]
    rows = []
    for result in workload.optimizers:
        label = result.optimizer
        tuned = workload.tuned.setting(label)
        summary = tuned.summaries.get(tuned.metric) if tuned else None
        interval = stats.format_interval(summary.ci_low, summary.ci_high) if summary and summary.n > 1 else "n/a"
        counted = tuned.counted if tuned else []
        row = [label, fair.lr_text(result.default_lr), _mean_std(workload.default.setting(label))]
        best = result.selection.best_lr
        tuned_lr = "none (all diverged)" if best is None else fair.lr_text(best)
        row += [tuned_lr + (" (grid edge)" if at_grid_edge(result) else ""), str(len(counted))]
        row += [_mean_std(tuned), interval, gain_cell(result)]
        row += [epochs_cell(epochs_to_target(counted, target)) for target in workload.targets]
        row += [tuned.excluded if tuned else "", result.selection.diverged_text()]
        rows.append(row)
    return header, rows


def ranking(comparison: replicates.Comparison) -> list[str]:
    """Setting labels by the mean of the compared metric (test accuracy), best first."""
    metric = comparison.metric
    means = {s.label: s.summaries[metric].mean for s in comparison.settings if metric in s.summaries}
    return sorted(means, key=lambda label: -means[label])


def ranking_lines(workload: WorkloadResult) -> list[str]:
    """What tuning changed in the order: both rankings, and each optimizer that moved."""
    before, after = ranking(workload.default), ranking(workload.tuned)
    lines = [
        f"- at Keras' default learning rates: {' > '.join(before)}",
        f"- each at its tuned rate: {' > '.join(after)}",
    ]
    moved = [
        f"{name} {before.index(name) + 1} → {after.index(name) + 1}"
        for name in after
        if name in before and before.index(name) != after.index(name)
    ]
    lines.append(f"- rank changes: {', '.join(moved)}" if moved else "- no optimizer changed rank")
    return lines


def budget_curves(workload: WorkloadResult, resamples: int) -> dict[str, dict[str, list[float]]]:
    """Per optimizer, the expected best final validation accuracy of k = 1 … K tuning trials drawn from
    its grid (Dodge et al. 2019) and its bootstrap band. A diverged trial scores 0: it is a draw that failed."""
    curves = {}
    for result in workload.optimizers:
        scores = [0.0 if value is None else value for value in result.selection.scores.values()]
        budgets = list(range(1, len(scores) + 1))
        low, high = stats.expected_max_band(scores, budgets, resamples)
        mean = [stats.expected_max(scores, k) for k in budgets]
        curves[result.optimizer] = {"budget": budgets, "expected": mean, "low": low, "high": high}
    return curves


def profile_costs(results: Sequence[WorkloadResult]) -> dict[str, dict[str, float]]:
    """costs[workload][optimizer]: the median over the tuned runs of the epochs to reach the workload's last
    target, a run that never reached it counted as infinitely slow."""
    costs: dict[str, dict[str, float]] = {}
    for workload in results:
        costs[workload.workload] = {}
        for result in workload.optimizers:
            setting = workload.tuned.setting(result.optimizer)
            epochs = epochs_to_target(setting.counted if setting else [], workload.targets[-1])
            values = [float("inf") if e is None else float(e) for e in epochs]
            costs[workload.workload][result.optimizer] = statistics.median(values) if values else float("inf")
    return costs


def first_epoch_reaching(val_accuracy: Sequence[float | None], target: float) -> int | None:
    """The 1-based epoch whose validation accuracy first reached `target`; None when none did."""
    for epoch, value in enumerate(val_accuracy, start=1):
        if value is not None and value >= target:
            return epoch
    return None

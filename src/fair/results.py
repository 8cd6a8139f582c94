"""The fair protocol's results, read from the trial records: the data model and every computation the report's
files (report_files.py, worded by report_text.py) and MLflow parent run (report_mlflow.py) show. report.py puts
them together.

The judged runs are replicates (src/analysis/replicates.py: which runs count, the comparison on the verdict
metric, the verdicts); the tuning trials give the learning-rate sensitivity and the expected best accuracy
against the tuning budget (src/analysis/stats.py). Per workload and optimizer: the one-shot row (Keras' default
learning rate, judged with the same seeds and budget as the tuned runs), the tuned learning rate, the tuned test
accuracy, the gain from tuning, the epochs to reach each validation-accuracy target, the trials that diverged,
and the ranking: every pair compared by seed, Holm-corrected over all pairs (replicates.rank).

A failure is a result: a judged run that diverged, failed or has no finite test accuracy (and every judge seed
of an optimizer that has no working learning rate on the grid) counts against its optimizer with
FAILURE_SCORE, chance accuracy on the ten classes, in the means, the gain and the ranking; the tables say
"k of n failed". It never shrinks n: an optimizer that diverged on 3 of 5 seeds is judged on 5.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from omegaconf import DictConfig

from src.analysis import replicates, stats
from src.fair import protocol as fair
from src.fair.selection import Selection, select
from src.infra.errors import ConfigError
from src.infra.files import read_record

FAILURE_SCORE = 0.1  # a failed judged run's test accuracy in the comparison: chance on the 10 classes


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
    judge_seeds: tuple[int, ...] = ()  # empty: the seeds the judged runs have

    @cached_property
    def tuned_ranking(self) -> replicates.Ranking:
        """The optimizers at their tuned rates, all pairs, failures counted (no tuned rate: all failed)."""
        return replicates.rank({r.optimizer: r.tuned for r in self.optimizers}, self._seeds(), FAILURE_SCORE)

    @cached_property
    def default_ranking(self) -> replicates.Ranking:
        """The one-shot ranking: each optimizer at Keras' default rate, failures counted."""
        return replicates.rank({r.optimizer: r.default for r in self.optimizers}, self._seeds(), FAILURE_SCORE)

    def _seeds(self) -> tuple[int, ...]:
        found = {run.seed for r in self.optimizers for run in [*r.tuned, *r.default]}
        return self.judge_seeds or tuple(sorted(found))  # type: ignore[arg-type]


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
            raise ConfigError(
                f"{trial.folder(settings.trials_dir)} has no finished trial: run `python -m src.fair optimizer"
                f" {trial.optimizer}` (or `dvc repro fair/dvc.yaml`)"
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
            selection = select(trials, optimizer, workload)
            best = selection.best_lr
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
                settings.judge_seeds,
            )
        )
    return results


def epochs_to_target(runs: Sequence[replicates.Replicate], target: float) -> list[int | None]:
    """Per counted run, the first epoch whose validation accuracy reached `target` (None: never)."""
    return [first_epoch_reaching((r.history or {}).get("val_accuracy", []), target) for r in runs]


def gain(workload: WorkloadResult, result: OptimizerResult) -> stats.Difference | None:
    """Tuned minus default test accuracy, paired by seed, failures at FAILURE_SCORE; None without a tuned rate."""
    if result.selection.best_lr is None:
        return None
    name = result.optimizer
    tuned, default = workload.tuned_ranking.scores[name], workload.default_ranking.scores[name]
    return stats.paired(tuned, default, f"{name} tuned", f"{name} default")


def at_grid_edge(result: OptimizerResult) -> bool:
    """The tuned rate is the grid's smallest or largest: the best rate may lie beyond the grid."""
    rates = list(result.selection.scores)
    return result.selection.best_lr is not None and result.selection.best_lr in (min(rates), max(rates))


def seconds_to_target(run: replicates.Replicate, target: float) -> float | None:
    """Training seconds until the end of the first epoch whose validation accuracy reached `target` (the
    run's own `epoch_seconds`; a vectorized member's is its share of its program's epoch); None: never."""
    history = run.history or {}
    epoch = first_epoch_reaching(history.get("val_accuracy", []), target)
    seconds = history.get("epoch_seconds", [])
    if epoch is None or len(seconds) < epoch:
        return None
    return float(sum(seconds[:epoch]))


def _per_judge_seed(
    workload: WorkloadResult, result: OptimizerResult, measure: Callable[[replicates.Replicate], Any]
) -> list[Any]:
    """`measure` of each judge seed's run at the tuned rate, in the ranking's seed order; None for a seed whose
    run failed or is missing (it never reached anything)."""
    by_seed = {run.seed: run for run in result.tuned}
    failed = workload.tuned_ranking.failures[result.optimizer]
    return [
        None if seed in failed or seed not in by_seed else measure(by_seed[seed])
        for seed in workload.tuned_ranking.scores[result.optimizer]
    ]


def judged_seconds(workload: WorkloadResult, result: OptimizerResult, target: float) -> list[float | None]:
    """Per judge seed of the tuned rate, the training seconds to `target` (None: never, or failed)."""
    return _per_judge_seed(workload, result, lambda run: seconds_to_target(run, target))


def judged_epochs(workload: WorkloadResult, result: OptimizerResult, target: float) -> list[int | None]:
    """Per judge seed of the tuned rate, the epoch it reached `target` (None: never, or failed)."""
    return _per_judge_seed(workload, result, lambda run: epochs_to_target([run], target)[0])


def budget_curves(workload: WorkloadResult) -> dict[str, dict[str, list[float]]]:
    """Per optimizer, the expected best final validation accuracy of k = 1 … N learning rates drawn without
    replacement from its N-rate grid (stats.expected_max, Tang et al. 2020): at k = N it is the grid's best.
    Computed per tuning study; the curve is their mean and the band their range (lowest to highest study), the
    seed noise of a whole tuning study. A diverged trial scores 0: it is a draw that failed."""
    curves = {}
    for result in workload.optimizers:
        per_study = [
            [0.0 if value is None else value for value in study.values()] for study in result.selection.studies.values()
        ]
        budgets = list(range(1, max(map(len, per_study), default=0) + 1))
        expected = [[stats.expected_max(scores, k) for k in budgets] for scores in per_study]
        columns = list(zip(*expected, strict=True)) if expected else []
        curves[result.optimizer] = {
            "budget": budgets,
            "expected": [statistics.fmean(column) for column in columns],
            "low": [min(column) for column in columns],
            "high": [max(column) for column in columns],
        }
    return curves


def profile_costs(results: Sequence[WorkloadResult]) -> dict[str, dict[str, float]]:
    """costs[workload][optimizer]: the median over the judge seeds of the epochs to reach the workload's last
    target at the tuned rate, a run that never reached it or failed counted as infinitely slow."""
    costs: dict[str, dict[str, float]] = {}
    for workload in results:
        costs[workload.workload] = {}
        for result in workload.optimizers:
            epochs = judged_epochs(workload, result, workload.targets[-1])
            values = [float("inf") if e is None else float(e) for e in epochs]
            costs[workload.workload][result.optimizer] = statistics.median(values) if values else float("inf")
    return costs


def first_epoch_reaching(val_accuracy: Sequence[float | None], target: float) -> int | None:
    """The 1-based epoch whose validation accuracy first reached `target`; None when none did."""
    for epoch, value in enumerate(val_accuracy, start=1):
        if value is not None and value >= target:
            return epoch
    return None

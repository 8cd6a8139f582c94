"""The fair protocol's results, read from the trial records: the data model and every computation the report's
files (report_files.py) and MLflow parent run (report_mlflow.py) show. report.py puts them together.

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

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from omegaconf import DictConfig

from src.analysis import replicates, stats
from src.fair import protocol as fair
from src.fair.records import read_record
from src.fair.selection import Selection, select
from src.infra.errors import ConfigError

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


def epochs_cell(epochs: Sequence[int | None]) -> str:
    """`median 3, reached 5 of 5`, `median ∞, reached 2 of 5`, `not reached (5 of 5)`: a run that never got
    there (or failed) counts as infinitely slow in the median, and the fraction reached is shown; a mean of
    the runs that got there would read faster the more runs miss."""
    if not epochs:
        return "n/a"
    reached = sum(e is not None for e in epochs)
    if not reached:
        return f"not reached ({len(epochs)} of {len(epochs)})"
    median = statistics.median([math.inf if e is None else float(e) for e in epochs])
    return f"median {'∞' if math.isinf(median) else f'{median:g}'}, reached {reached} of {len(epochs)}"


def _mean_std(ranking: replicates.Ranking, name: str) -> str:
    return stats.format_mean_std(ranking.summary(name)) if name in ranking.scores else "n/a"


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


def edge_lines(workload: WorkloadResult) -> list[str]:
    return [
        f"- {r.optimizer}: its tuned rate {fair.lr_text(r.selection.best_lr)} is at the edge of the grid, so"  # type: ignore[arg-type]
        " its best rate may lie beyond it: widen `fair.lr_grid` (only the new rates are trained)"
        for r in workload.optimizers
        if at_grid_edge(r)
    ]


def gain_cell(workload: WorkloadResult, result: OptimizerResult) -> str:
    if result.selection.best_lr == result.default_lr:
        return "0 (the default won the tuning)"
    difference = gain(workload, result)
    if difference is None:
        return "n/a"
    if math.isnan(difference.ci_low):
        return f"{difference.diff * 100:+.2f} pp (no interval)"
    interval = stats.format_interval(difference.ci_low, difference.ci_high, signed=True)
    return f"{difference.diff * 100:+.2f} pp ({interval})"


def summary_table(workload: WorkloadResult) -> tuple[list[str], list[list[str]]]:
    """The per-optimizer table of fair.md (accuracies in %, a failed run at FAILURE_SCORE)."""
    failure = f"{FAILURE_SCORE * 100:g} %"
    header = ["optimizer", "default lr", "test acc % at default lr", "failed at default lr", "tuned lr"]
    header += ["tuning studies that pick it alone"]
    header += ["failed at tuned lr", f"tuned test acc % (a failure = {failure})", "95 % CI", "rank"]
    header += ["gain from tuning (95 % CI)", "tuning trials diverged"]
    tuned, default = workload.tuned_ranking, workload.default_ranking
    rows = []
    for result in workload.optimizers:
        name = result.optimizer
        summary = tuned.summary(name)
        interval = stats.format_interval(summary.ci_low, summary.ci_high)
        row = [name, fair.lr_text(result.default_lr), _mean_std(default, name), default.failed_text(name)]
        best = result.selection.best_lr
        tuned_lr = "none: no working rate on the grid" if best is None else fair.lr_text(best)
        row += [tuned_lr + (" (grid edge)" if at_grid_edge(result) else ""), result.selection.stability_text()]
        row += [tuned.failed_text(name)]
        row += [_mean_std(tuned, name), interval, tuned.rank_text(name), gain_cell(workload, result)]
        row += [result.selection.diverged_text()]
        rows.append(row)
    return header, rows


def seconds_to_target(run: replicates.Replicate, target: float) -> float | None:
    """Training seconds until the end of the first epoch whose validation accuracy reached `target` (the
    run's own `epoch_seconds`; a vectorized member's is its share of its program's epoch); None: never."""
    history = run.history or {}
    epoch = first_epoch_reaching(history.get("val_accuracy", []), target)
    seconds = history.get("epoch_seconds", [])
    if epoch is None or len(seconds) < epoch:
        return None
    return float(sum(seconds[:epoch]))


def judged_seconds(workload: WorkloadResult, result: OptimizerResult, target: float) -> list[float | None]:
    """Per judge seed of the tuned rate, the training seconds to `target`; a failed or missing run never got there."""
    by_seed = {run.seed: run for run in result.tuned}
    failed = workload.tuned_ranking.failures[result.optimizer]
    return [
        None if seed in failed or seed not in by_seed else seconds_to_target(by_seed[seed], target)
        for seed in workload.tuned_ranking.scores[result.optimizer]
    ]


def seconds_cell(seconds: Sequence[float | None]) -> str:
    """`median 2.1 s, reached 5 of 5`, as epochs_cell: a miss counts as infinitely slow."""
    if not seconds:
        return "n/a"
    reached = sum(s is not None for s in seconds)
    if not reached:
        return f"not reached ({len(seconds)} of {len(seconds)})"
    median = statistics.median([math.inf if s is None else s for s in seconds])
    return f"median {'∞' if math.isinf(median) else f'{median:.2f} s'}, reached {reached} of {len(seconds)}"


def speed_table(workload: WorkloadResult) -> tuple[list[str], list[list[str]]]:
    """Per optimizer at its tuned rate: epochs and training seconds to each validation-accuracy target."""
    header = ["optimizer"]
    for target in workload.targets:
        header += [f"epochs to {target * 100:g} % val", f"seconds to {target * 100:g} % val"]
    rows = []
    for result in workload.optimizers:
        row = [result.optimizer]
        for target in workload.targets:
            row += [epochs_cell(judged_epochs(workload, result, target))]
            row += [seconds_cell(judged_seconds(workload, result, target))]
        rows.append(row)
    return header, rows


def judged_epochs(workload: WorkloadResult, result: OptimizerResult, target: float) -> list[int | None]:
    """Per judge seed of the tuned rate, the epoch it reached `target`; a failed or missing run never did."""
    by_seed = {run.seed: run for run in result.tuned}
    failed = workload.tuned_ranking.failures[result.optimizer]
    return [
        None if seed in failed else epochs_to_target([by_seed[seed]], target)[0]
        for seed in workload.tuned_ranking.scores[result.optimizer]
    ]


def ranking_lines(workload: WorkloadResult) -> list[str]:
    """What tuning changed in the order: both rankings with the rank ranges the data allow (failures counted),
    and each optimizer whose range moved."""
    before, after = workload.default_ranking, workload.tuned_ranking
    lines = [
        f"- at Keras' default learning rates: {before.ranking_text()}",
        f"- each at its tuned rate: {after.ranking_text()}",
    ]
    moved = [
        f"{name} {before.rank_text(name)} → {after.rank_text(name)}"
        for name in after.order
        if name in before.scores and before.rank_range(name) != after.rank_range(name)
    ]
    lines.append(
        f"- rank changes the data support: {', '.join(moved)}" if moved else "- no rank range changed with tuning"
    )
    lines.append("- a range (1-3) is a tie: the data cannot order the optimizers inside it (all pairs, Holm)")
    return lines


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


PROFILE_R_MAX = 4.0  # AlgoPerf's r_max: slower than 4x the fastest counts as not within reach


def profile_score_lines(results: Sequence[WorkloadResult]) -> list[str]:
    """The performance profile's integrated score per optimizer (AlgoPerf: area under the profile from 1 to
    r_max, over r_max - 1), best first."""
    scores = stats.profile_scores(profile_costs(results), PROFILE_R_MAX)
    ranked = sorted(scores, key=lambda name: -scores[name])
    return [
        f"Score (area under the profile from τ = 1 to r_max = {PROFILE_R_MAX:g}, over r_max - 1; 1 = fastest"
        f" on every workload, 0 = never within {PROFILE_R_MAX:g}x of the fastest): "
        + ", ".join(f"{name} {scores[name]:.2f}" for name in ranked)
        + f". Over {len(results)} workloads: a coarse summary, not a verdict.",
    ]


def _spread(ranking: replicates.Ranking) -> float:
    means = [ranking.summary(name).mean for name in ranking.scores]
    return (max(means) - min(means)) * 100 if means else 0.0


def _resolved_text(ranking: replicates.Ranking) -> str:
    """`no pair resolved`; `2 of 10 pairs resolved (a > b, c > d)`; `9 of 10 pairs resolved, all but b vs c`;
    `all 10 pairs resolved: a > b > c > d > e`: the shorter of the resolved and the unresolved lists."""
    resolved = [d for d in ranking.differences if d.resolved]
    total = len(ranking.differences)
    if not resolved:
        return f"no pair of {total} resolved"
    if len(resolved) == total:
        return f"all {total} pairs resolved: {' > '.join(ranking.order)}"
    if 2 * len(resolved) <= total:
        return f"{len(resolved)} of {total} pairs resolved ({', '.join(f'{d.best} > {d.setting}' for d in resolved)})"
    open_pairs = [f"{d.best} vs {d.setting}" for d in ranking.differences if not d.resolved]
    return f"{len(resolved)} of {total} pairs resolved, all but {', '.join(open_pairs)}"


def answer_lines(results: Sequence[WorkloadResult]) -> list[str]:
    """Five lines a student can read first: what the data separate at the defaults and once tuned, per
    workload; how much tuning mattered; how stable the tuning was; and who is fastest."""
    lines = []
    defaults = [
        f"{w.workload}: {_spread(w.default_ranking):.1f} points, {_resolved_text(w.default_ranking)}" for w in results
    ]
    lines.append("1. **At Keras' default learning rates** the optimizers span " + "; ".join(defaults) + ".")
    tuned = [f"{w.workload}: {_spread(w.tuned_ranking):.2f} points, {_resolved_text(w.tuned_ranking)}" for w in results]
    lines.append(
        "2. **Each at its tuned rate** they span " + "; ".join(tuned) + " (all pairs, Holm, failures counted)."
    )
    gains = []
    for w in results:
        measured = {r.optimizer: gain(w, r) for r in w.optimizers}
        known = {name: g.diff for name, g in measured.items() if g is not None}
        if known:
            most, least = max(known, key=known.get), min(known, key=known.get)  # type: ignore[arg-type]
            gains.append(
                f"{w.workload}: most {most} ({known[most] * 100:+.2f} pp), least {least} ({known[least] * 100:+.2f} pp)"
            )
    lines.append("3. **Tuning mattered**: " + ("; ".join(gains) or "no tuned rate") + ".")
    stable = []
    for w in results:
        shaky = [
            f"{r.optimizer} {r.selection.stability_text()}"
            for r in w.optimizers
            if r.selection.agreeing < len(r.selection.picks)
        ]
        stable.append(f"{w.workload}: " + (", ".join(shaky) if shaky else "every optimizer's studies agree"))
    lines.append(
        "4. **Selection stability** (tuning studies that pick the selected rate on their own), where not all"
        " agree: " + "; ".join(stable) + "."
    )
    fastest = []
    for w in results:
        costs = profile_costs([w])[w.workload]
        best = min(costs.values(), default=math.inf)
        leaders = [name for name, cost in costs.items() if cost == best and math.isfinite(best)]
        target = f"{w.targets[-1] * 100:g} %"
        fastest.append(
            f"{w.workload}: {', '.join(leaders)} ({best:g} epochs to {target})"
            if leaders
            else f"{w.workload}: nobody reaches {target}"
        )
    lines.append("5. **Fastest to the last target** (median epochs, a miss = ∞): " + "; ".join(fastest) + ".")
    return lines


def first_epoch_reaching(val_accuracy: Sequence[float | None], target: float) -> int | None:
    """The 1-based epoch whose validation accuracy first reached `target`; None when none did."""
    for epoch, value in enumerate(val_accuracy, start=1):
        if value is not None and value >= target:
            return epoch
    return None

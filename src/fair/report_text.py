"""What fair.md says, built from the results (results.py): the per-workload tables and their cells, the
ranking and edge lines, the performance profile's score, and the five-line answer that opens the report.
Numbers are computed in results.py; this module only words and formats them."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence

from src.analysis import replicates, stats
from src.fair import protocol as fair
from src.fair.results import (
    FAILURE_SCORE,
    OptimizerResult,
    WorkloadResult,
    at_grid_edge,
    gain,
    judged_epochs,
    judged_seconds,
    profile_costs,
)


def median_cell(values: Sequence[float | None], unit: Callable[[float], str]) -> str:
    """`median 3, reached 5 of 5`, `median ∞, reached 2 of 5`, `not reached (5 of 5)`: a run that never got
    there (None, or a failed run) counts as infinitely slow in the median, and the fraction reached is shown;
    a mean of the runs that got there would read faster the more runs miss. `unit` writes a finite median."""
    if not values:
        return "n/a"
    reached = sum(value is not None for value in values)
    if not reached:
        return f"not reached ({len(values)} of {len(values)})"
    median = statistics.median([math.inf if value is None else float(value) for value in values])
    return f"median {'∞' if math.isinf(median) else unit(median)}, reached {reached} of {len(values)}"


def epochs_cell(epochs: Sequence[int | None]) -> str:
    """Epochs to a target over the seeds: `median 3, reached 5 of 5`."""
    return median_cell(epochs, lambda median: f"{median:g}")


def seconds_cell(seconds: Sequence[float | None]) -> str:
    """Training seconds to a target over the seeds: `median 2.10 s, reached 5 of 5`."""
    return median_cell(seconds, lambda median: f"{median:.2f} s")


def _mean_std(ranking: replicates.Ranking, name: str) -> str:
    return stats.format_mean_std(ranking.summary(name)) if name in ranking.scores else "n/a"


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
        + f". Over {len(results)} workload{'' if len(results) == 1 else 's'}: a coarse summary, not a verdict.",
    ]


def _spread(ranking: replicates.Ranking) -> float:
    means = [ranking.summary(name).mean for name in ranking.scores]
    return (max(means) - min(means)) * 100 if means else 0.0


def _resolved_text(ranking: replicates.Ranking) -> str:
    """`no pair of 10 resolved`; `2 of 10 pairs resolved (a > b, c > d)`; `9 of 10 pairs resolved, all but b vs c`;
    `all 10 pairs resolved: a > b > c > d > e`: the shorter of the resolved and the unresolved lists."""
    resolved = [d for d in ranking.differences if d.resolved]
    total = len(ranking.differences)
    if not resolved:
        return "the one pair not resolved" if total == 1 else f"no pair of {total} resolved"
    if len(resolved) == total:
        return f"{'the one pair' if total == 1 else f'all {total} pairs'} resolved: {' > '.join(ranking.order)}"
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

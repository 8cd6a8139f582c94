"""Runs as replicates of settings: the one place that says which runs count, groups them by setting,
compares the settings on the verdict metric and gives the mean ± std curves.

The sweep summary (src/tracking/summary.py), the DVC comparison (src/stages/compare.py), the homework report
(src/homework/report.py) and the fair protocol read their runs into `Replicate` records and call this module;
src/analysis/stats.py does the numbers. The rules, once:
- a run *counts* when it ended FINISHED, did not diverge, and has a finite value of the compared metric;
  every other run is listed with the reason (`seed 3 (diverged)`) and counted in no statistic;
- settings are compared on the mean of the verdict metric (VERDICT_METRIC, test accuracy), each against the
  best, by Welch's t-test, optionally Holm-corrected over those pairs; the run to keep is the best setting's
  run with the highest best validation accuracy (runs are chosen on validation data, settings judged on test);
- a ranking (`rank`, the fair protocol's) keeps every run: a run that does not count is a *failure* of its
  setting and enters the comparison with a failure score (e.g. chance accuracy), never as a smaller n;
  every pair is compared by seed and Holm-corrected over all pairs (stats.all_pairs).
Its rows for markdown and CSV are in src/analysis/tables.py; what an MLflow parent run shows of a comparison
is src/tracking/parent.py's.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from src.analysis import stats
from src.infra.predicates import is_recorded_number

# A run's status, THE list: MLflow's end states, and DIVERGED for a run that ended FINISHED but diverged
# (src/training/callbacks.py's diverged_epoch decides that; the fit core, src/training/fit.py, applies it).
# The fit core's results, the fair trials' records and every reader of runs use these names and `run_status`.
FINISHED, FAILED, KILLED, DIVERGED = "FINISHED", "FAILED", "KILLED", "diverged"
RUN_METRICS = ("test_accuracy", "best_val_accuracy", "best_epoch", "stopped_epoch", "train_seconds")
SPREAD_METRICS = ("test_accuracy", "best_val_accuracy")  # summarized as mean ± std and 95 % CI
MEAN_METRICS = ("best_epoch", "stopped_epoch", "train_seconds")  # summarized by their mean
VERDICT_METRIC = "test_accuracy"  # settings are compared on it: THE verdict metric (a Comparison's default)
SELECT_METRIC = "best_val_accuracy"  # the run to keep is chosen on it
HOLM = "holm"
MORE_SEEDS = "`train.seed=1,2,3` in a sweep, `seeds: [1, 2, 3]` in params.yaml"


@dataclass(frozen=True)
class Replicate:
    """One run of one setting. `status`: MLflow's (FINISHED, FAILED, KILLED) or `diverged` for a run that
    finished with a NaN or exploding loss. `values`: the setting's keys and values (the tables' columns)."""

    setting: str
    seed: int | None
    status: str
    metrics: Mapping[str, float | None]
    run_id: str = ""
    name: str = ""
    values: Mapping[str, Any] = field(default_factory=dict)
    history: Mapping[str, Sequence[float]] | None = None  # per-epoch metrics, e.g. {"val_accuracy": [...]}

    @property
    def label(self) -> str:
        """`seed 3`, or the run's name when it has no seed."""
        return f"seed {self.seed}" if self.seed is not None else (self.name or self.run_id)

    def value(self, metric: str) -> float | None:
        found = self.metrics.get(metric)
        return float(found) if is_recorded_number(found) else None


def run_status(mlflow_status: str, diverged: bool) -> str:
    """A run's status: DIVERGED for a FINISHED run that diverged, else MLflow's own (FAILED, KILLED, ...)."""
    return DIVERGED if mlflow_status == FINISHED and diverged else mlflow_status


def exclusion_reason(status: str, value: float | None, metric: str = VERDICT_METRIC) -> str | None:
    """Why a run of this status, whose `metric` is `value`, counts in no statistic (`failed`, `diverged`,
    `no test accuracy`), or None when it counts: THE rule. A run counts when it ended FINISHED, did not
    diverge, and has a finite value of the compared metric. Replicates, the fair protocol's tuning
    selection (`final_val_accuracy`) and every table apply it."""
    if status != FINISHED:
        return status.lower()
    if value is None or not math.isfinite(value):
        return f"no {metric.replace('_', ' ')}"
    return None


def excluded_because(replicate: Replicate, metric: str = VERDICT_METRIC) -> str | None:
    """Why the replicate counts in no statistic, or None: `exclusion_reason` of its status and value."""
    return exclusion_reason(replicate.status, replicate.value(metric), metric)


def excluded_text(replicates: Iterable[Replicate], metric: str = VERDICT_METRIC, with_setting: bool = False) -> str:
    """`seed 2 (failed), seed 3 (diverged)`: the runs left out and why; empty when none is."""
    parts = []
    for replicate in replicates:
        why = excluded_because(replicate, metric)
        if why is not None:
            where = f"{replicate.setting} " if with_setting and replicate.seed is not None else ""
            parts.append(f"{where}{replicate.label} ({why})")
    return ", ".join(parts)


def setting_label(keys: Sequence[str], values: Sequence[Any]) -> str:
    """`optimizer=adam,train.batch_size=64`: a setting's name; `all` when only the seed varied."""
    return ",".join(f"{key}={value}" for key, value in zip(keys, values, strict=True)) or "all"


@dataclass(frozen=True)
class Setting:
    """The replicates of one setting; `counted` are the ones the rule lets into the statistics."""

    label: str
    replicates: tuple[Replicate, ...]
    metric: str = VERDICT_METRIC

    @property
    def counted(self) -> list[Replicate]:
        return [r for r in self.replicates if excluded_because(r, self.metric) is None]

    @property
    def n(self) -> int:
        return len(self.counted)

    @property
    def values(self) -> Mapping[str, Any]:
        return self.replicates[0].values

    @property
    def excluded(self) -> str:
        return excluded_text(self.replicates, self.metric)

    def values_of(self, metric: str) -> list[float]:
        """The counted runs' values of `metric` (runs without it skipped)."""
        return [value for r in self.counted if (value := r.value(metric)) is not None]

    @cached_property
    def summaries(self) -> dict[str, stats.Summary]:
        """Per metric the Summary over the counted runs; a metric no counted run has is absent."""
        metrics = dict.fromkeys(key for r in self.counted for key in r.metrics)
        return {m: stats.summarize(values) for m in metrics if (values := self.values_of(m))}

    @property
    def still_improving(self) -> bool:
        """Its best epoch was its last epoch on most counted seeds: training stopped while it still improved."""
        known = [r for r in self.counted if None not in (r.value("best_epoch"), r.value("stopped_epoch"))]
        return bool(known) and 2 * sum(map(_at_last_epoch, known)) > len(known)

    def bands(self, metric: str) -> list[stats.Summary]:
        """Mean ± std per epoch of `metric` over the counted runs' histories."""
        return epoch_bands([r.history[metric] for r in self.counted if r.history and metric in r.history])


def group(replicates: Iterable[Replicate], metric: str = VERDICT_METRIC) -> list[Setting]:
    """The replicates grouped by setting, in first-seen order."""
    members: dict[str, list[Replicate]] = {}
    for replicate in replicates:
        members.setdefault(replicate.setting, []).append(replicate)
    return [Setting(label, tuple(runs), metric) for label, runs in members.items()]


def epoch_bands(histories: Sequence[Sequence[float]]) -> list[stats.Summary]:
    """Per epoch, the Summary over the runs that reached it (EarlyStopping ends runs at different epochs)."""
    longest = max((len(history) for history in histories), default=0)
    return [stats.summarize([h[epoch] for h in histories if len(h) > epoch]) for epoch in range(longest)]


@dataclass(frozen=True)
class Comparison:
    """Settings compared on `metric`: the best one and each other's Difference to it.

    `replicated`: some setting has more than one run. Without replicates no setting is named best; the run
    to keep is the one with the highest SELECT_METRIC (what a sweeper maximizes)."""

    settings: list[Setting]
    best: str | None
    differences: list[stats.Difference]
    metric: str = VERDICT_METRIC
    correction: str | None = None
    replicated: bool = True

    @property
    def best_resolved(self) -> bool:
        return stats.best_is_resolved(self.differences)

    def setting(self, label: str | None) -> Setting | None:
        return next((s for s in self.settings if s.label == label), None)

    @property
    def replicates(self) -> list[Replicate]:
        return [r for s in self.settings for r in s.replicates]

    def best_run(self) -> Replicate | None:
        """The run to keep: the best setting's counted run with the highest best validation accuracy."""
        if self.replicated:
            best = self.setting(self.best)
            candidates = best.counted if best else []
        else:
            candidates = [r for s in self.settings for r in s.counted]
        if not candidates:
            return None
        return max(candidates, key=lambda r: _or_lowest(r.value(SELECT_METRIC)))

    def best_values(self) -> list[float]:
        """The compared metric's values of the best run's setting (what the model registry records)."""
        run = self.best_run()
        return self.setting(run.setting).values_of(self.metric) if run else []  # type: ignore[union-attr]

    def still_improving(self) -> list[Setting]:
        return [s for s in self.settings if s.still_improving]

    def verdict_lines(self) -> list[str]:
        """The verdict block: the best setting, whether that is resolved, one line per other setting."""
        what = self.metric.replace("_", " ")
        if not self.replicated:
            return self._unreplicated_lines(what)
        if self.best is None:
            return [f"No finished run to compare on {what}."]
        if not self.differences:
            return [f"Only one setting ({self.best}): nothing to compare."]
        if self.best_resolved:
            head = f"Best on {what}: **{self.best}**, ahead of every other setting by a resolved difference."
        else:
            head = f"Highest mean {what}: {self.best}, but not resolved against every other setting (see below)."
        lines = [head, "", *(f"- {stats.verdict_line(d)}" for d in self.differences)]
        if self.correction == HOLM:
            lines += ["", f"p-values Holm-adjusted over the {len(self.differences)} comparisons with the best."]
        return lines

    def _unreplicated_lines(self, what: str) -> list[str]:
        best = self.best_run()
        if best is None:
            return [f"No finished run to compare on {what}."]
        name = best.name or best.setting
        head = f"Highest best validation accuracy: {name} ({_percent(best.value(SELECT_METRIC))} %"
        head += f", {what} {_percent(best.value(self.metric))} %)."
        if len(self.settings) < 2:
            return [head]
        return [
            f"{head} With one run per setting (n = 1) no difference between settings can be resolved, so it is"
            f" not a winner: run more seeds ({MORE_SEEDS}) to compare settings."
        ]

    def improving_lines(self) -> list[str]:
        """One line per setting that was still improving when training stopped (empty when none was)."""
        return [
            f"- {s.label}: best epoch = last epoch on {sum(_at_last_epoch(r) for r in s.counted)} of {s.n}"
            " seeds (more epochs or a larger learning rate may change its rank)"
            for s in self.still_improving()
        ]


def compare(
    replicates: Iterable[Replicate],
    metric: str = VERDICT_METRIC,
    correction: str | None = None,
    replicated: bool | None = None,
) -> Comparison:
    """Group and compare. `correction="holm"` adjusts the p-values of the pairs against the best for
    multiple comparisons (a pair is resolved when its adjusted p < 0.05). `replicated` defaults to whether
    some setting has more than one counted run."""
    if correction not in (None, HOLM):
        raise ValueError(f"correction={correction!r}: allowed are None and {HOLM!r}")
    settings = group(replicates, metric)
    best, differences = stats.compare_to_best({s.label: s.values_of(metric) for s in settings})
    if correction == HOLM:
        differences = _holm(differences)
    if replicated is None:
        replicated = any(s.n > 1 for s in settings)
    return Comparison(settings, best, differences, metric, correction, replicated)


@dataclass(frozen=True)
class Ranking:
    """Settings ranked on `metric` with failures counted: per setting and seed its score (the metric of a run
    that counts, `failure_score` for one that does not or that is missing), all pairs compared paired by seed
    and Holm-corrected over the whole ranking (stats.all_pairs), and each setting's range of ranks."""

    scores: dict[str, dict[Any, float]]
    failures: dict[str, dict[Any, str]]  # per setting, {seed: why} of each failed run (`diverged`, `no run`)
    differences: list[stats.Difference]
    failure_score: float
    metric: str = VERDICT_METRIC

    @property
    def order(self) -> list[str]:
        """Best first, by the mean score (failures included); ties keep the given order."""
        means = {name: self.summary(name).mean for name in self.scores}
        return sorted(self.scores, key=lambda name: -means[name])

    def summary(self, name: str) -> stats.Summary:
        return stats.summarize(list(self.scores[name].values()))

    def failed_text(self, name: str) -> str:
        """`0 of 5`, `3 of 5 (seed 1 (diverged), ...)`: the runs that failed among the judged ones."""
        failed, total = self.failures[name], len(self.scores[name])
        listed = ", ".join(f"seed {seed}: {why}" for seed, why in failed.items())
        return f"{len(failed)} of {total}" + (f" ({listed})" if failed else "")

    def rank_range(self, name: str) -> tuple[int, int]:
        """(best, worst) rank the data allow: 1 + the settings resolved ahead of it, K - those resolved behind."""
        ahead = sum(1 for d in self.differences if d.resolved and d.setting == name)
        behind = sum(1 for d in self.differences if d.resolved and d.best == name)
        return 1 + ahead, len(self.scores) - behind

    def rank_text(self, name: str) -> str:
        low, high = self.rank_range(name)
        return str(low) if low == high else f"{low}-{high}"

    @property
    def best(self) -> str | None:
        return self.order[0] if self.scores else None

    @property
    def best_resolved(self) -> bool:
        """The top setting is ahead of every other one by a resolved difference."""
        return len(self.scores) > 1 and self.rank_range(self.best) == (1, 1)  # type: ignore[arg-type]

    def ranking_text(self) -> str:
        """`rmsprop (rank 1-3), adam (1-3), adagrad (1-3), sgd (4)`: a range where the data cannot separate."""
        return ", ".join(
            f"{name} ({'rank ' if i == 0 else ''}{self.rank_text(name)})" for i, name in enumerate(self.order)
        )

    def verdict_lines(self) -> list[str]:
        """The ranking with its ties, then every pair's verdict."""
        what = self.metric.replace("_", " ")
        if len(self.scores) < 2:
            return [f"Only {', '.join(self.scores) or 'no setting'}: nothing to compare."]
        if self.best_resolved:
            head = f"Best on {what}: **{self.best}**, ahead of every other optimizer by a resolved difference."
        else:
            head = f"Highest mean {what}: {self.best}, but the data do not separate it from every other one."
        tied = stats.tied_with(self.order, self.differences)
        ties = [f"- {name} is not separated from {', '.join(tied[name])}" for name in self.order if tied[name]]
        if not any(d.resolved for d in self.differences):
            ties = ["- no pair is resolved: the data cannot order these optimizers"]
        m = sum(1 for d in self.differences if not math.isnan(d.p_value))
        return [
            head,
            "",
            f"Ranking (rank ranges the data allow): {self.ranking_text()}.",
            "",
            *(ties or ["- every pair is resolved"]),
            "",
            *(f"- {stats.verdict_line(d)}" for d in self.differences),
            "",
            f"All {len(self.differences)} pairs compared by seed (paired t-test on the per-seed differences),"
            f" p-values Holm-adjusted over the {m} testable pairs (resolved: adjusted p < 0.05); each interval is"
            " at the level of its Holm step, so it excludes 0 exactly when the pair is resolved. A failed run"
            f" scores {self.failure_score:g} on {what}.",
        ]


def rank(
    runs: Mapping[str, Sequence[Replicate]],
    seeds: Sequence[Any],
    failure_score: float,
    metric: str = VERDICT_METRIC,
) -> Ranking:
    """The Ranking of `runs` (setting -> its judged runs) over `seeds`: a seed whose run does not count by the
    rule (`excluded_because`: failed, diverged, non-finite) or that has no run at all scores `failure_score`
    and is listed as a failure, so a setting that failed on 3 of 5 seeds is judged on 5, not on 2."""
    scores: dict[str, dict[Any, float]] = {}
    failures: dict[str, dict[Any, str]] = {}
    for name, replicates in runs.items():
        by_seed = {r.seed: r for r in replicates}
        scores[name], failures[name] = {}, {}
        for seed in seeds:
            run = by_seed.get(seed)
            why = "no run" if run is None else excluded_because(run, metric)
            scores[name][seed] = failure_score if why is not None else run.value(metric)  # type: ignore[union-attr,assignment]
            if why is not None:
                failures[name][seed] = why
    return Ranking(scores, failures, stats.all_pairs(scores), failure_score, metric)


def _holm(differences: list[stats.Difference]) -> list[stats.Difference]:
    tested = [i for i, d in enumerate(differences) if not math.isnan(d.p_value)]
    adjusted = stats.holm([differences[i].p_value for i in tested])
    result = list(differences)
    for i, p_value in zip(tested, adjusted, strict=True):
        result[i] = dataclasses.replace(result[i], p_adjusted=p_value, resolved=p_value < stats.ALPHA)
    return result


def _at_last_epoch(replicate: Replicate) -> bool:
    best, last = replicate.value("best_epoch"), replicate.value("stopped_epoch")
    return best is not None and last is not None and best >= last


def _or_lowest(value: float | None) -> float:
    return value if value is not None else -math.inf


def _percent(value: float | None) -> str:
    return f"{value * 100:.2f}" if value is not None else "n/a"


def from_mlflow_run(run: Any, keys: Sequence[str], seed_key: str = stats.SEED_KEY, tag_prefix: str = "") -> Replicate:
    """A finished or failed MLflow Run as a Replicate of the setting its `keys` define. A key's value is
    its param, else its tag `<tag_prefix><key>` (keys that do not shape training are logged as tags)."""
    params, tags = run.data.params, run.data.tags
    values = {key: params.get(key, tags.get(f"{tag_prefix}{key}", "")) for key in keys}
    status = run_status(run.info.status, tags.get("diverged") == "true")
    seed = params.get(seed_key)
    return Replicate(
        setting=setting_label(list(keys), list(values.values())),
        seed=int(seed) if seed is not None and str(seed).lstrip("-").isdigit() else None,
        status=status,
        metrics={name: run.data.metrics.get(name) for name in RUN_METRICS} | dict(run.data.metrics),
        run_id=run.info.run_id,
        name=run.info.run_name or "",
        values=values,
    )

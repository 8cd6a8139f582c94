"""The study's results, read from the run records (runs.py): per optimizer, each setting against the baseline of
the same seeds; the TensorBoard cost against no TensorBoard. Numbers only: report_files.py writes them.

The rules:
- the verdict metric is the test accuracy of the model the run keeps (its best checkpoint, its restored best
  epoch or its final weights: src/training/fit.py's one-model rule);
- a failure is a result: a run that diverged or has no test accuracy scores FAILURE_SCORE (chance on the 10
  digits) and counts in every statistic, never as a smaller n (as in the fair protocol);
- every setting is compared with the baseline paired by seed (stats.against_reference), Holm-corrected over the
  optimizer's family of settings (every setting of the study against its baseline), so that the chance of any
  false "resolved" among one optimizer's verdicts stays under 5 %; each interval is at its Holm step's level, so
  it excludes 0 exactly when the verdict says resolved. A setting that kept the baseline's very model on every
  seed (it never acted) is "the same model", not a statistic;
- "the baseline's best epoch" is the epoch of its highest validation accuracy (what a run can know), and the gap
  is the kept model's test accuracy minus the test accuracy of the baseline's weights at that epoch, per seed;
- the TensorBoard cost is the run's `model.fit` wall time minus that of the same seed without TensorBoard, paired
  by seed, Holm over the cost settings.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from src.analysis import stats
from src.analysis.replicates import FINISHED
from src.callback_study.settings import BASELINE, NO_TENSORBOARD, Setting, Study, Trial, budget_trials, cost_trials
from src.infra.files import read_record

FAILURE_SCORE = 0.1  # a failed run's test accuracy: chance on the 10 classes (the fair protocol's rule)


def failed(record: Mapping[str, Any]) -> bool:
    return record["status"] != FINISHED or record["metrics"].get("test_accuracy") is None


@dataclass
class SettingResult:
    """One setting of one optimizer over the seeds: its records (seed -> trial.json) and what they measured."""

    setting: Setting
    runs: dict[int, dict[str, Any]]
    difference: stats.Difference | None = None  # against the baseline (None for the baseline itself)

    @property
    def name(self) -> str:
        return self.setting.name

    @cached_property
    def scores(self) -> dict[int, float]:
        """Per seed, the kept model's test accuracy; FAILURE_SCORE for a failed run."""
        return {seed: FAILURE_SCORE if failed(r) else r["metrics"]["test_accuracy"] for seed, r in self.runs.items()}

    @property
    def failures(self) -> list[int]:
        return [seed for seed, record in self.runs.items() if failed(record)]

    def values(self, metric: str) -> list[float]:
        return [
            float(record["metrics"][metric])
            for record in self.runs.values()
            if record["metrics"].get(metric) is not None
        ]

    @property
    def accuracy(self) -> stats.Summary:
        return stats.summarize(list(self.scores.values()))

    @property
    def epochs(self) -> stats.Summary:
        return stats.summarize(self.values("epochs_trained"))

    @property
    def median_epochs(self) -> float:
        return statistics.median(self.values("epochs_trained"))

    @property
    def wall(self) -> stats.Summary:
        return stats.summarize(self.values("wall_seconds"))

    @property
    def kept_epoch(self) -> stats.Summary:
        return stats.summarize(self.values("model_epoch"))

    @property
    def how(self) -> str:
        """trained, replayed or forked (src/callback_study/runs.py), as its runs say."""
        return next(iter(self.runs.values())).get("how", "trained") if self.runs else "trained"


@dataclass
class OptimizerResult:
    optimizer: str
    learning_rate: float
    budget: int
    settings: list[SettingResult]  # the baseline first

    @property
    def baseline(self) -> SettingResult:
        return self.settings[0]

    def setting(self, name: str) -> SettingResult:
        return next(result for result in self.settings if result.name == name)

    @cached_property
    def best_epoch_accuracy(self) -> dict[int, float]:
        """Per seed, the test accuracy of the baseline's weights at its best validation-accuracy epoch."""
        return {
            seed: record["best_epoch_test_accuracy"]
            for seed, record in self.baseline.runs.items()
            if not failed(record)
        }

    def gap(self, result: SettingResult) -> stats.Summary | None:
        """The kept model's test accuracy minus the baseline's best epoch's, per seed (failures included)."""
        gaps = [result.scores[seed] - best for seed, best in self.best_epoch_accuracy.items() if seed in result.scores]
        return stats.summarize(gaps) if gaps else None

    def same_model(self, result: SettingResult) -> bool:
        """Whether the setting kept the baseline's very model on every seed (it never acted): same epoch, same
        kind of weights and the same test accuracy."""
        base = self.baseline.runs
        return all(
            seed in base
            and record["metrics"].get("model_epoch") == base[seed]["metrics"].get("model_epoch")
            and record["metrics"].get("test_accuracy") == base[seed]["metrics"].get("test_accuracy")
            and record["metrics"]["epochs_trained"] == base[seed]["metrics"]["epochs_trained"]
            for seed, record in result.runs.items()
        )

    @cached_property
    def frontier(self) -> list[str]:
        """The settings no other one beats on both axes (fewer mean epochs trained and a higher mean test accuracy,
        at least as good on both and better on one), by increasing epochs: the Pareto frontier."""
        points = {r.name: (r.epochs.mean, r.accuracy.mean) for r in self.settings}

        def dominated(name: str) -> bool:
            epochs, accuracy = points[name]
            return any(
                e <= epochs and a >= accuracy and (e, a) != (epochs, accuracy)
                for other, (e, a) in points.items()
                if other != name
            )

        return sorted((name for name in points if not dominated(name)), key=lambda name: points[name])


def verdict(result: OptimizerResult, setting: SettingResult) -> str:
    """What the seeds say about the setting against the baseline, in words a table cell holds."""
    if setting.name == BASELINE:
        return "reference"
    if result.same_model(setting):
        return "the baseline's own model on every seed (it never acted)"
    d = setting.difference
    if d is None or d.n_setting < 2:
        return "cannot be resolved (fewer than 2 seeds)"
    if d.no_spread:
        return "cannot be resolved: the same difference on every seed (no spread)"
    word = "resolved" if d.resolved else "not resolved"
    return f"{word} (Holm-adjusted p = {d.p_adjusted:.2g})"


def collect(study: Study, rates: Mapping[str, float]) -> list[OptimizerResult]:
    """Every optimizer's settings from the records, compared with its baseline (a missing record is an error: the
    training stages write them)."""
    results = []
    for optimizer in study.optimizers:
        by_setting: dict[str, dict[int, dict[str, Any]]] = {}
        for trial in budget_trials(study, optimizer):
            by_setting.setdefault(trial.setting.name, {})[trial.seed] = _record(study, trial)
        settings = [SettingResult(setting, by_setting[setting.name]) for setting in study.settings]
        differences = stats.against_reference({s.name: s.scores for s in settings}, BASELINE)
        for result, difference in zip(settings[1:], differences, strict=True):
            result.difference = difference
        results.append(OptimizerResult(optimizer, rates[optimizer], study.epochs, settings))
    return results


def _record(study: Study, trial: Trial) -> dict[str, Any]:
    record = read_record(trial.folder(study.trials_dir))
    if record is None:
        raise FileNotFoundError(
            f"no finished run {trial.run_name} in {trial.folder(study.trials_dir)}: run `make callbacks`"
            " (or `python -m src.callback_study.stage ...`) first"
        )
    return record


@dataclass
class CostResult:
    """The TensorBoard cost runs: per setting, its records by seed, and its wall time against no TensorBoard."""

    optimizer: str
    epochs: int
    settings: list[SettingResult]  # no TensorBoard first
    differences: dict[str, stats.Difference]

    def seconds(self, result: SettingResult) -> dict[int, float]:
        return {seed: float(record["metrics"]["wall_seconds"]) for seed, record in result.runs.items()}

    def relative(self, result: SettingResult) -> stats.Summary:
        """Per seed, the wall time over the same seed's without TensorBoard, minus 1."""
        reference = self.seconds(self.settings[0])
        own = self.seconds(result)
        return stats.summarize([own[seed] / reference[seed] - 1 for seed in own if seed in reference])

    def megabytes(self, result: SettingResult) -> float:
        sizes = [record.get("tensorboard_bytes", 0) for record in result.runs.values()]
        return statistics.fmean(sizes) / 1e6 if sizes else math.nan


def collect_cost(study: Study) -> CostResult:
    by_setting: dict[str, dict[int, dict[str, Any]]] = {}
    for trial in cost_trials(study):
        by_setting.setdefault(trial.setting.name, {})[trial.seed] = _record(study, trial)
    settings = [SettingResult(setting, by_setting[setting.name]) for setting in study.cost_settings]
    seconds = {s.name: {seed: float(r["metrics"]["wall_seconds"]) for seed, r in s.runs.items()} for s in settings}
    differences = stats.against_reference(seconds, NO_TENSORBOARD)
    return CostResult(study.cost_optimizer, study.cost_epochs, settings, {d.setting: d for d in differences})


def seconds_per_epoch(records: Sequence[Mapping[str, Any]]) -> float:
    """The mean epoch time of the runs' epochs after the first (the first one also traces the train step)."""
    times = [t for record in records for t in record["history"].get("epoch_seconds", [])[1:]]
    return statistics.fmean(times) if times else math.nan

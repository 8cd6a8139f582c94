"""A sweep's summary: its child runs as rows, grouped by setting when the sweep varies `train.seed`, with
the verdict on the best setting, rendered as summary.md, summary.csv and summary_runs.csv and as the
parent run's aggregate metrics. Functions over finished MLflow runs and plain rows; the MLflow calls that
read the children and log the results stay in sweep.py.

- A sweep with seeds: one row per *setting* (every swept key but `train.seed`): n, mean ± std and 95 % CI
  of test and best validation accuracy, mean best/stopped epoch and train seconds; then each setting's
  difference to the best one (Welch's t-test, src/stats.py); then the per-seed rows.
- A sweep without seeds: one row per run, as before, and a verdict saying that with n = 1 nothing is
  resolved, so no winner is named.
Runs that failed, were killed or diverged (tag `diverged=true`) are listed but counted in no statistic
and never chosen as the best.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from src import stats
from src.files import markdown_table
from src.tracking.job import CONFIG_TAG_PREFIX

if TYPE_CHECKING:
    from mlflow.entities import Run

# Metrics of each child run shown in the summary.
RUN_METRICS = ("test_accuracy", "best_val_accuracy", "best_epoch", "stopped_epoch", "train_seconds")
# Metrics summarized with their spread (mean ± std, CI) per setting; the others get their mean.
SPREAD_METRICS = ("test_accuracy", "best_val_accuracy")
MEAN_METRICS = ("best_epoch", "stopped_epoch", "train_seconds")
# The metric the verdict compares settings on.
VERDICT_METRIC = "test_accuracy"
DIVERGED = "diverged"


def run_status(run: Run) -> str:
    """The run's status, or `diverged` for a run that finished with the tag diverged=true."""
    if run.info.status == "FINISHED" and run.data.tags.get("diverged") == "true":
        return DIVERGED
    return run.info.status


def child_rows(children: Sequence[Run], swept: Sequence[str]) -> list[dict[str, Any]]:
    """One row per child: run name, status, the value of every swept key, RUN_METRICS (None where not
    logged) and run id. A swept key's value is its param, or for a key that does not shape training
    (logged as the tag `config.<key>`, e.g. `callbacks.tensorboard.enabled`) that tag."""
    rows = []
    for child in children:
        row: dict[str, Any] = {"run": child.info.run_name, "status": run_status(child)}
        params, tags = child.data.params, child.data.tags
        row.update({key: params.get(key, tags.get(f"{CONFIG_TAG_PREFIX}{key}", "")) for key in swept})
        row.update({name: child.data.metrics.get(name) for name in RUN_METRICS})
        row["run_id"] = child.info.run_id
        rows.append(row)
    return rows


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if not value.is_integer() else str(int(value))
    return "" if value is None else str(value)


def summary_rows(children: Sequence[Run], swept: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    """(header, one row of strings per child run): its name, status, swept values, RUN_METRICS, run id."""
    header = ["run", "status", *swept, *RUN_METRICS, "run_id"]
    return header, [[_format(row[column]) for column in header] for row in child_rows(children, swept)]


def _counted(rows: Sequence[dict[str, Any]], setting: str) -> list[dict[str, Any]]:
    """The rows of `setting` that count: finished, not diverged, with the verdict metric."""
    return [
        row
        for row in rows
        if row["setting"] == setting
        and row["status"] == stats.USABLE_STATUS
        and stats.is_number(row.get(VERDICT_METRIC))
    ]


def _csv(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows([header, *rows])
    return buffer.getvalue()


def _mean(setting: stats.SettingStats, metric: str, digits: int = 1) -> str:
    summary = setting.summaries.get(metric)
    return f"{summary.mean:.{digits}f}" if summary else ""


def _spread(setting: stats.SettingStats, metric: str) -> tuple[str, str]:
    """(`97.46 ± 0.12`, `97.31 … 97.61`) in percent; empty when no counted run has the metric."""
    summary = setting.summaries.get(metric)
    if summary is None:
        return "", ""
    return stats.format_mean_std(summary), stats.format_interval(summary.ci_low, summary.ci_high)


def _or_lowest(value: float | None) -> float:
    return value if stats.is_number(value) else -math.inf


def _percent(value: float | None) -> str:
    return f"{value * 100:.2f}" if stats.is_number(value) else "n/a"


def _number(value: float | None) -> str:
    return "" if value is None or math.isnan(value) else repr(float(value))


@dataclass(frozen=True)
class SweepSummary:
    """Everything the parent run reports about its children."""

    swept: list[str]
    keys: list[str]  # the setting keys: every swept key but the seed when seeded, else all swept keys
    seeded: bool
    rows: list[dict[str, Any]]  # one per child, with its "setting" label
    settings: list[stats.SettingStats]
    best: str | None  # the setting with the highest mean VERDICT_METRIC among counted runs
    differences: list[stats.Difference]  # every other setting against the best

    @property
    def best_resolved(self) -> bool:
        return stats.best_is_resolved(self.differences)

    @property
    def replicated(self) -> bool:
        """Whether some setting has more than one run to compare: the sweep varies the seed, or repeats."""
        return self.seeded or any(setting.n > 1 for setting in self.settings)

    def counted(self, setting: str) -> list[dict[str, Any]]:
        return _counted(self.rows, setting)

    def best_run(self) -> dict[str, Any] | None:
        """The run to keep: the best setting's seed with the highest best validation accuracy. Without
        replicates there is no best setting to speak of, and it is the run with the highest best validation
        accuracy, the objective a sweeper maximizes (as before seeds existed): runs are chosen on
        validation data, settings are compared on test data."""
        if self.replicated:
            candidates = self.counted(self.best) if self.best else []
        else:
            candidates = [row for setting in self.settings for row in self.counted(setting.label)]
        if not candidates:
            return None
        return max(candidates, key=lambda row: _or_lowest(row.get("best_val_accuracy")))

    def best_values(self) -> list[float]:
        """The per-seed VERDICT_METRIC values of the best run's setting (what the registry records)."""
        best = self.best_run()
        return [float(row[VERDICT_METRIC]) for row in self.counted(best["setting"])] if best else []

    def excluded(self) -> list[dict[str, Any]]:
        return [row for row in self.rows if row["status"] != stats.USABLE_STATUS]

    def verdict_lines(self) -> list[str]:
        what = VERDICT_METRIC.replace("_", " ")
        if self.replicated:
            return stats.verdict_lines(self.best, self.differences, what)
        best = self.best_run()
        if best is None:
            return [f"No finished run to compare on {what}."]
        head = f"Highest best validation accuracy: {best['run']} ({_percent(best.get('best_val_accuracy'))} %"
        head += f", {what} {_percent(best.get(VERDICT_METRIC))} %)."
        if len(self.settings) < 2:
            return [head]
        return [
            f"{head} With one run per setting (n = 1) no difference between settings can be resolved, so it is"
            f" not a winner: sweep seeds too ({stats.SEED_KEY}=1,2,3) to compare settings."
        ]

    def settings_table(self) -> tuple[list[str], list[list[str]]]:
        """The per-setting table of summary.md (accuracies in %)."""
        header = ["setting", "n", "excluded", "test accuracy %", "95 % CI", "best val accuracy %", "95 % CI"]
        header += ["best epoch", "stopped epoch", "train s"]
        rows = []
        for setting in self.settings:
            test, val = _spread(setting, "test_accuracy"), _spread(setting, "best_val_accuracy")
            means = [_mean(setting, metric) for metric in MEAN_METRICS]
            rows.append([setting.label, str(setting.n), stats.format_excluded(setting.excluded), *test, *val, *means])
        return header, rows

    def runs_table(self) -> tuple[list[str], list[list[str]]]:
        header = ["run", "status", *self.swept, *RUN_METRICS, "run_id"]
        return header, [[_format(row[column]) for column in header] for row in self.rows]

    def markdown(self, title: str) -> str:
        """summary.md: the settings table (seeded sweeps), the verdict, the per-run table, what was excluded."""
        parts = [f"# Sweep `{title}`\n"]
        if self.seeded:
            keys = ", ".join(self.keys) or "none: every run is one setting, `all`"
            parts.append(
                f"Runs grouped by setting: every swept key but `{stats.SEED_KEY}` ({keys}). Accuracies in %; "
                "± is the sample standard deviation over seeds, CI the 95 % Student's t interval of the mean; "
                "n counts the finished runs, failed and diverged ones are excluded from every statistic.\n"
            )
            parts.append(markdown_table(*self.settings_table()))
        parts.append(f"## Verdict ({VERDICT_METRIC.replace('_', ' ')}, each setting against the best)\n")
        parts.append("\n".join(self.verdict_lines()) + "\n")
        parts.append("## Runs" + (" (one per seed)" if self.seeded else "") + "\n")
        parts.append(markdown_table(*self.runs_table()))
        excluded = self.excluded()
        if excluded:
            listed = ", ".join(f"{row['run']} ({row['status'].lower()})" for row in excluded)
            parts.append(f"Excluded from the statistics and from the best: {listed}.\n")
        return "\n".join(parts)

    def settings_csv(self) -> str:
        """summary.csv of a seeded sweep: one row per setting, raw fractions (not %), nan-free."""
        header = ["setting", *self.keys, "n", "excluded"]
        for metric in SPREAD_METRICS:
            header += [f"{metric}_{stat}" for stat in ("mean", "std", "ci_low", "ci_high")]
        header += [f"{metric}_mean" for metric in MEAN_METRICS]
        label_values = {row["setting"]: [row[key] for key in self.keys] for row in self.rows}
        rows = []
        for setting in self.settings:
            row = [setting.label, *label_values[setting.label], setting.n, stats.format_excluded(setting.excluded)]
            for metric in SPREAD_METRICS:
                s = setting.summaries.get(metric)
                row += [_number(s.mean), _number(s.std), _number(s.ci_low), _number(s.ci_high)] if s else [""] * 4
            row += [_number(setting.summaries[m].mean) if m in setting.summaries else "" for m in MEAN_METRICS]
            rows.append(row)
        return _csv(header, rows)

    def runs_csv(self) -> str:
        """summary_runs.csv: one row per child run, with its setting."""
        header = ["run", "status", "setting", *self.swept, *RUN_METRICS, "run_id"]
        return _csv(header, [[_format(row[column]) for column in header] for row in self.rows])

    def aggregate_metrics(self) -> dict[str, float]:
        """The parent run's per-setting metrics, named by stats.metric_name: `<metric>_mean/<label>`, `_n`,
        and `_std`, `_ci_low`, `_ci_high` where n >= 2 (no nan metrics); the MEAN_METRICS' means."""
        metrics: dict[str, float] = {}
        for setting in self.settings:
            for metric in SPREAD_METRICS:
                summary = setting.summaries.get(metric)
                if summary is None:
                    continue
                metrics[stats.metric_name(metric, "mean", setting.label)] = summary.mean
                metrics[stats.metric_name(metric, "n", setting.label)] = float(summary.n)
                if summary.n >= 2:
                    metrics[stats.metric_name(metric, "std", setting.label)] = summary.std
                    metrics[stats.metric_name(metric, "ci_low", setting.label)] = summary.ci_low
                    metrics[stats.metric_name(metric, "ci_high", setting.label)] = summary.ci_high
            for metric in MEAN_METRICS:
                if metric in setting.summaries:
                    metrics[stats.metric_name(metric, "mean", setting.label)] = setting.summaries[metric].mean
        return metrics


def summarize_sweep(children: Sequence[Run], swept: Sequence[str]) -> SweepSummary:
    """The summary of a sweep's children; `swept` are the sweep's keys in command-line order."""
    swept = list(dict.fromkeys(swept))
    seeded = stats.SEED_KEY in swept
    keys = stats.setting_keys(swept) if seeded else list(swept)
    rows = child_rows(children, swept)
    for row in rows:
        row["setting"] = stats.setting_label(keys, [row[key] for key in keys])
    settings = stats.summarize_settings(rows, keys, RUN_METRICS)
    groups = {s.label: [float(row[VERDICT_METRIC]) for row in _counted(rows, s.label)] for s in settings}
    best, differences = stats.compare_to_best(groups)
    return SweepSummary(swept, keys, seeded, rows, settings, best, differences)

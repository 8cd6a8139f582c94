"""A sweep's summary: its child runs read into replicates (src/analysis/replicates.py groups and compares them),
rendered as summary.md, summary.csv and summary_runs.csv: what a person reads on the sweep's parent run (no
per-setting metrics: MLflow's "Group by -> setting" draws those). The MLflow calls that read the children
and log the results are sweep.py's and parent.py's.

- A sweep over `train.seed`: one row per *setting* (every swept key but the seed): n, the runs excluded and
  why, mean ± std and 95 % CI of test and best validation accuracy, mean best/stopped epoch and train
  seconds; then the verdict (each setting against the best, Welch's t-test); then one row per run.
- A sweep without seeds: one row per run, and a verdict saying that with n = 1 nothing is resolved, so no
  winner is named; the run kept is the one with the highest best validation accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from src.analysis import replicates as rep
from src.analysis import tables
from src.analysis.stats import SEED_KEY
from src.infra.files import markdown_table
from src.tracking.job import CONFIG_TAG_PREFIX

if TYPE_CHECKING:
    from mlflow.entities import Run


@dataclass(frozen=True)
class SweepSummary:
    """Everything the parent run reports about its children."""

    swept: list[str]
    keys: list[str]  # the setting keys: every swept key but the seed when seeded, else all swept keys
    seeded: bool
    comparison: rep.Comparison

    def markdown(self, title: str) -> str:
        """summary.md: the settings table (seeded sweeps), the verdict, the per-run table, what was excluded."""
        parts = [f"# Sweep `{title}`\n"]
        if self.seeded:
            keys = ", ".join(self.keys) or "none: every run is one setting, `all`"
            parts.append(
                f"Runs grouped by setting: every swept key but `{SEED_KEY}` ({keys}). Accuracies in %; "
                "± is the sample standard deviation over seeds, CI the 95 % Student's t interval of the mean; "
                "n counts the finished runs, failed and diverged ones are excluded from every statistic.\n"
            )
            parts.append(markdown_table(*tables.settings_table(self.comparison, self.keys)))
        parts.append(f"## Verdict ({rep.VERDICT_METRIC.replace('_', ' ')}, each setting against the best)\n")
        parts.append("\n".join(self.comparison.verdict_lines()) + "\n")
        improving = self.comparison.improving_lines()
        if improving:
            parts.append("Still improving when training stopped (best epoch = last epoch on most seeds):\n")
            parts.append("\n".join(improving) + "\n")
        parts.append("## Runs" + (" (one per seed)" if self.seeded else "") + "\n")
        parts.append(markdown_table(*tables.replicates_table(self.comparison, self.keys)))
        excluded = rep.excluded_text(self.comparison.replicates, with_setting=True)
        if excluded:
            parts.append(f"Excluded from the statistics and from the best: {excluded}.\n")
        return "\n".join(parts)

    def setting_of(self, run_id: str) -> str:
        """The setting label of a child run (its `setting` tag)."""
        return next(r.setting for r in self.comparison.replicates if r.run_id == run_id)

    def files(self, title: str) -> dict[str, str]:
        """{file name: text} of the parent run's summary: summary.md, summary.csv (per setting when seeded,
        else per run) and summary_runs.csv (seeded)."""
        runs_csv = tables.replicates_csv(self.comparison, self.keys)
        if not self.seeded:
            return {"summary.md": self.markdown(title), "summary.csv": runs_csv}
        settings_csv = tables.settings_csv(self.comparison, self.keys)
        return {"summary.md": self.markdown(title), "summary.csv": settings_csv, "summary_runs.csv": runs_csv}


def summarize_sweep(children: Sequence[Run], swept: Sequence[str]) -> SweepSummary:
    """The summary of a sweep's children; `swept` are the sweep's keys in command-line order."""
    swept = list(dict.fromkeys(swept))
    seeded = SEED_KEY in swept
    keys = [key for key in swept if key != SEED_KEY]
    runs = [rep.from_mlflow_run(child, keys, tag_prefix=CONFIG_TAG_PREFIX) for child in children]
    return SweepSummary(swept, keys, seeded, rep.compare(runs, replicated=seeded or None))

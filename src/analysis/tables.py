"""A Comparison (src/analysis/replicates.py) as rows: the per-setting and per-run tables of the markdown reports
and their CSV files. One rule for how a value prints: a missing value is "n/a" in markdown and an empty
cell in CSV; CSV numbers are fractions rounded to 5 decimals; markdown shows accuracies in %.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any

from src.analysis import stats
from src.analysis.replicates import MEAN_METRICS, RUN_METRICS, SPREAD_METRICS, Comparison, Setting
from src.infra.predicates import is_recorded_number


def number(value: Any, digits: int = 5) -> str:
    """THE number formatter for CSV cells: rounded to `digits` decimals, integers as integers, "" when missing."""
    if not is_recorded_number(value):
        return "" if value is None or isinstance(value, float) else str(value)
    rounded = round(float(value), digits)
    return str(int(rounded)) if rounded.is_integer() else repr(rounded)


def _cell(value: float | None, metric: str) -> str:
    """A markdown cell of one run: accuracies in %, epochs as integers, seconds to 0.1; "n/a" when missing."""
    if value is None:
        return "n/a"
    if "accuracy" in metric:
        return f"{value * 100:.2f}"
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"


def _keys_or_setting(keys: Sequence[str]) -> list[str]:
    return list(keys) or ["setting"]


def _key_cells(setting: Setting, keys: Sequence[str]) -> list[Any]:
    return [setting.values.get(key, "") for key in keys] if keys else [setting.label]


def settings_table(comparison: Comparison, keys: Sequence[str] = ()) -> tuple[list[str], list[list[str]]]:
    """The per-setting markdown table (accuracies in %): the setting's `keys` (or its label), n, excluded,
    mean ± std and 95 % CI of the spread metrics, the means of the others."""
    header = [*_keys_or_setting(keys), "n", "excluded", "test accuracy % (mean ± std)", "95 % CI"]
    header += ["best val accuracy %", "95 % CI", "best epoch", "stopped epoch", "train s"]
    rows = []
    for setting in comparison.settings:
        row = [*map(str, _key_cells(setting, keys)), str(setting.n), setting.excluded]
        for metric in SPREAD_METRICS:
            s = setting.summaries.get(metric)
            row += [stats.format_mean_std(s), stats.format_interval(s.ci_low, s.ci_high)] if s else ["n/a"] * 2
        means = (setting.summaries.get(metric) for metric in MEAN_METRICS)
        row += [f"{s.mean:.1f}" if s else "n/a" for s in means]
        rows.append(row)
    return header, rows


def replicates_table(comparison: Comparison, keys: Sequence[str] = ()) -> tuple[list[str], list[list[str]]]:
    """One markdown row per run: the setting's keys, seed, RUN_METRICS (accuracies in %), status, run id."""
    header = [*_keys_or_setting(keys), "seed", *RUN_METRICS, "status", "run_id"]
    rows = []
    for setting in comparison.settings:
        for r in setting.replicates:
            cells = [_cell(r.value(metric), metric) for metric in RUN_METRICS]
            seed = "" if r.seed is None else str(r.seed)
            rows.append([*map(str, _key_cells(setting, keys)), seed, *cells, r.status, r.run_id])
    return header, rows


def settings_csv(comparison: Comparison, keys: Sequence[str] = ()) -> str:
    """One row per setting, fractions (not %): setting, keys, n, excluded, mean/std/CI, the means."""
    header = ["setting", *keys, "n", "excluded"]
    header += [f"{m}_{stat}" for m in SPREAD_METRICS for stat in ("mean", "std", "ci_low", "ci_high")]
    header += [f"{m}_mean" for m in MEAN_METRICS]
    rows = []
    for setting in comparison.settings:
        row = [setting.label, *(setting.values.get(key, "") for key in keys), setting.n, setting.excluded]
        for metric in SPREAD_METRICS:
            s = setting.summaries.get(metric)
            row += [s.mean, s.std, s.ci_low, s.ci_high] if s else [None] * 4
        row += [s.mean if (s := setting.summaries.get(m)) else None for m in MEAN_METRICS]
        rows.append(row)
    return csv_text(header, rows)


def replicates_csv(comparison: Comparison, keys: Sequence[str] = ()) -> str:
    """One row per run, fractions: setting, keys, seed, RUN_METRICS, status, run id."""
    header = ["setting", *keys, "seed", *RUN_METRICS, "status", "run_id"]
    rows = [
        [
            s.label,
            *(s.values.get(key, "") for key in keys),
            r.seed,
            *(r.value(m) for m in RUN_METRICS),
            r.status,
            r.run_id,
        ]
        for s in comparison.settings
        for r in s.replicates
    ]
    return csv_text(header, rows)


def csv_text(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """THE CSV writer of the reports: numbers through `number` (5 decimals, "" when missing)."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows([header, *([number(v) for v in row] for row in rows)])
    return buffer.getvalue()

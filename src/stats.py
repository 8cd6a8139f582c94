"""Seeds as replicates: group runs by setting, summarize each group, and say which differences the data
resolves. Plain functions over numbers and dicts (no MLflow, no Keras), used by sweep summaries
(src/tracking/sweep.py), the DVC comparison (src/compare.py) and the homework table (src/homework.py).

The statistics:
- a group's spread is the sample standard deviation (ddof=1) of its seeds;
- a mean's 95 % confidence interval is Student's t interval, mean ± t(0.975, n-1) · std / √n;
- two settings are compared with Welch's t-test (unequal variances; `scipy.stats.ttest_ind(equal_var=False)`),
  and the difference of means gets Welch's 95 % confidence interval. A difference is *resolved* when
  p < 0.05, which is the same as that interval excluding 0. With n < 2 on either side nothing can be
  resolved: there is no spread to compare the difference with.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE
# The replicate key of a Hydra sweep: runs that differ only in it belong to one setting.
SEED_KEY = "train.seed"


@dataclass(frozen=True)
class Summary:
    """n, mean, sample std and the 95 % t interval of the mean; std and the interval are nan when n < 2."""

    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class Difference:
    """`setting` minus `best`: the difference of means, its 95 % Welch interval, the p-value, the verdict."""

    setting: str
    best: str
    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    resolved: bool
    n_setting: int
    n_best: int


def summarize(values: Sequence[float]) -> Summary:
    """The Summary of one group's values (one per seed). Raises ValueError on an empty group."""
    from scipy import stats

    values = [float(v) for v in values]
    n = len(values)
    if n == 0:
        raise ValueError("summarize() needs at least one value")
    mean = math.fsum(values) / n
    if n < 2:
        return Summary(n, mean, math.nan, math.nan, math.nan)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half_width = stats.t.ppf(1 - ALPHA / 2, n - 1) * std / math.sqrt(n)
    return Summary(n, mean, std, mean - half_width, mean + half_width)


def welch(setting: Sequence[float], best: Sequence[float], setting_name: str = "", best_name: str = "") -> Difference:
    """Welch's t-test of mean(setting) - mean(best), with the 95 % interval of that difference.

    Never resolved with fewer than two values on a side. When both sides have no spread at all
    (bitwise-identical reruns), the difference is resolved only if the means differ.
    """
    from scipy import stats

    a, b = [float(v) for v in setting], [float(v) for v in best]
    diff = math.fsum(a) / len(a) - math.fsum(b) / len(b)
    if len(a) < 2 or len(b) < 2:
        return Difference(setting_name, best_name, diff, math.nan, math.nan, math.nan, False, len(a), len(b))
    if max(a) == min(a) and max(b) == min(b):
        p_value = 1.0 if diff == 0 else 0.0
        return Difference(setting_name, best_name, diff, diff, diff, p_value, diff != 0, len(a), len(b))
    result = stats.ttest_ind(a, b, equal_var=False)
    interval = result.confidence_interval(confidence_level=CONFIDENCE)
    p_value = float(result.pvalue)
    return Difference(
        setting_name,
        best_name,
        diff,
        float(interval.low),
        float(interval.high),
        p_value,
        bool(p_value < ALPHA),
        len(a),
        len(b),
    )


def seed_problem(seeds: Sequence[Any]) -> str | None:
    """What is wrong with a list of seeds used as replicates, or None: at least one, each an integer >= 0,
    none twice (a repeated seed trains the same run again and counts it as a second replicate). One rule
    for a sweep's `train.seed=...` (src/tracking/sweep.py) and params.yaml's `seeds` (src/pipeline.py)."""
    if not seeds:
        return "holds no seed"
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            return f"holds {seed!r}, not a non-negative integer"
    repeated = sorted({seed for seed in seeds if list(seeds).count(seed) > 1})
    if repeated:
        return "repeats " + ", ".join(map(str, repeated))
    return None


def group_by(
    rows: Iterable[Mapping[str, Any]], keys: Sequence[str]
) -> dict[tuple[Hashable, ...], list[Mapping[str, Any]]]:
    """Rows grouped by their values of `keys` (first-seen order); a missing key groups as None."""
    groups: dict[tuple[Hashable, ...], list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(_hashable(row.get(key)) for key in keys), []).append(row)
    return groups


def setting_keys(swept: Sequence[str], replicate_key: str = SEED_KEY) -> list[str]:
    """The keys that define a setting: every swept key but the replicate (seed) key."""
    return [key for key in swept if key != replicate_key]


def setting_label(keys: Sequence[str], values: Sequence[Any]) -> str:
    """`optimizer=adam,train.batch_size=64`: a setting's name; `all` when the sweep varied only the seed."""
    return ",".join(f"{key}={value}" for key, value in zip(keys, values, strict=True)) or "all"


def compare_to_best(
    groups: Mapping[str, Sequence[float]], higher_is_better: bool = True
) -> tuple[str | None, list[Difference]]:
    """The setting with the best mean, and every other setting's Difference to it (best first in order).

    Groups without values are skipped; ties on the mean go to the first group.
    """
    filled = {name: values for name, values in groups.items() if len(values)}
    if not filled:
        return None, []
    sign = 1 if higher_is_better else -1
    best = max(filled, key=lambda name: sign * math.fsum(filled[name]) / len(filled[name]))
    others = [welch(values, filled[best], name, best) for name, values in filled.items() if name != best]
    return best, others


def best_is_resolved(differences: Sequence[Difference]) -> bool:
    """Whether the best setting is ahead of every other one by a resolved difference (False when alone)."""
    return bool(differences) and all(d.resolved for d in differences)


def format_mean_std(summary: Summary, scale: float = 100.0, digits: int = 2) -> str:
    """`97.46 ± 0.12` (values times scale); `97.46 (n=1)` when there is no spread."""
    if summary.n < 2:
        return f"{summary.mean * scale:.{digits}f} (n=1)"
    return f"{summary.mean * scale:.{digits}f} ± {summary.std * scale:.{digits}f}"


def format_interval(low: float, high: float, scale: float = 100.0, digits: int = 2, signed: bool = False) -> str:
    """`97.31 … 97.61`; `n/a` when the interval is undefined."""
    if math.isnan(low) or math.isnan(high):
        return "n/a"
    sign = "+" if signed else ""
    return f"{low * scale:{sign}.{digits}f} … {high * scale:{sign}.{digits}f}"


def verdict_line(difference: Difference, unit: str = "pp", scale: float = 100.0) -> str:
    """One line a reader can act on, e.g.
    `adam vs rmsprop: -0.03 pp (95 % CI -0.21 … +0.15), not resolved with 3 vs 3 seeds (Welch's t-test, p = 0.62)`.
    """
    d = difference
    head = f"{d.setting} vs {d.best}: {d.diff * scale:+.2f} {unit}"
    plural = "s" if d.n_best != 1 else ""
    seeds = f"{d.n_setting} vs {d.n_best} seeds" if d.n_setting != d.n_best else f"{d.n_best} seed{plural}"
    if d.n_setting < 2 or d.n_best < 2:
        more = "`train.seed=1,2,3` in a sweep, `seeds` in params.yaml"
        return f"{head}, cannot be resolved with {seeds}: run more seeds ({more})"
    interval = format_interval(d.ci_low, d.ci_high, scale, signed=True)
    verdict = "resolved" if d.resolved else "not resolved"
    return f"{head} (95 % CI {interval}), {verdict} with {seeds} (Welch's t-test, p = {d.p_value:.2g})"


def verdict_lines(best: str | None, differences: Sequence[Difference], what: str = "test accuracy") -> list[str]:
    """The verdict block of a report: which setting is best on `what`, whether that is resolved, and why."""
    if best is None:
        return [f"No finished run to compare on {what}."]
    if not differences:
        return [f"Only one setting ({best}): nothing to compare."]
    if best_is_resolved(differences):
        head = f"Best on {what}: **{best}**, ahead of every other setting by a resolved difference."
    else:
        head = f"Highest mean {what}: {best}, but not resolved against every other setting (see below)."
    return [head, "", *(f"- {verdict_line(d)}" for d in differences)]


def _hashable(value: Any) -> Hashable:
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    return value


def by_setting(
    rows: Iterable[Mapping[str, Any]], keys: Sequence[str], value: Callable[[Mapping[str, Any]], float | None]
) -> dict[str, list[float]]:
    """{setting label: the values `value(row)` of its rows}, skipping rows where it gives None."""
    grouped = group_by(rows, keys)
    return {
        setting_label(keys, values): [v for v in (value(row) for row in members) if v is not None]
        for values, members in grouped.items()
    }


def metric_name(metric: str, stat: str, label: str) -> str:
    """The MLflow metric of one setting's aggregate, `test_accuracy_mean/optimizer:adam,train.epochs:5`
    becomes `test_accuracy_mean/optimizer:adam train.epochs:5`: MLflow's UI groups charts by the part before
    "/", and metric names may not hold "=" or ","."""
    safe = label.replace("=", ":").replace(",", " ")
    safe = "".join(c if c.isalnum() or c in "_-. /:" else "_" for c in safe)
    return f"{metric}_{stat}/{safe}"


# The status of a run that counts as a replicate; any other status (FAILED, KILLED, diverged) excludes it.
USABLE_STATUS = "FINISHED"


@dataclass(frozen=True)
class SettingStats:
    """One setting's runs: how many count (n), how many were left out and why, and per metric the Summary
    over the runs that count (a metric no counted run has is absent)."""

    label: str
    n: int
    excluded: Mapping[str, int]
    summaries: Mapping[str, Summary]


def summarize_settings(
    rows: Iterable[Mapping[str, Any]], keys: Sequence[str], metrics: Sequence[str]
) -> list[SettingStats]:
    """Group `rows` by `keys` and summarize each group's `metrics` (first-seen order).

    A row counts when its "status" is USABLE_STATUS; the others are counted by status in `excluded`, so a
    group with one failed seed still reports its other seeds, with n saying how many. A metric value that
    is None or nan (a diverged or unfinished run) is skipped.
    """
    settings = []
    for values, members in group_by(rows, keys).items():
        counted = [row for row in members if row.get("status") == USABLE_STATUS]
        excluded: dict[str, int] = {}
        for row in members:
            if row.get("status") != USABLE_STATUS:
                excluded[str(row.get("status"))] = excluded.get(str(row.get("status")), 0) + 1
        summaries = {}
        for metric in metrics:
            present = [float(row[metric]) for row in counted if is_number(row.get(metric))]
            if present:
                summaries[metric] = summarize(present)
        settings.append(SettingStats(setting_label(keys, values), len(counted), excluded, summaries))
    return settings


def format_excluded(excluded: Mapping[str, int]) -> str:
    """`1 failed, 1 diverged` (statuses in lower case); empty when nothing was excluded."""
    return ", ".join(f"{count} {status.lower()}" for status, count in excluded.items() if count)


def is_number(value: Any) -> bool:
    """A real metric value: an int or float that is not nan (a bool, None or a string is not)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)

"""Seeds as replicates, the numbers: summarize a group of values, compare two groups, and say which
differences the data resolves. Plain functions over numbers (no MLflow, no Keras); src/analysis/replicates.py
groups runs into settings and calls them.

The statistics:
- a group's spread is the sample standard deviation (ddof=1) of its seeds;
- a mean's 95 % confidence interval is Student's t interval, mean ± t(0.975, n-1) · std / √n;
- two settings are compared with Welch's t-test (unequal variances; `scipy.stats.ttest_ind(equal_var=False)`),
  and the difference of means gets Welch's 95 % confidence interval. A difference is *resolved* when
  p < 0.05, which is the same as that interval excluding 0. With n < 2 on either side nothing can be
  resolved: there is no spread to compare the difference with. Zero spread on both sides (every seed gave
  the same value) is no certainty either: it gives no scale to judge a difference by, so it "cannot be
  resolved" (p is nan), never p = 0;
- a ranking (`all_pairs`) compares every pair of settings, paired by seed (runs that share a seed share
  initial weights, split and data order: a paired t-test on the per-seed differences), Holm-corrected over
  all m = K(K-1)/2 pairs, which keeps the chance of any false "resolved" in the whole ranking under 5 %.
  Each pair's interval is at the level its Holm step tested (1 - 0.05 / (m - i + 1) for the i-th smallest p,
  the first unresolved step's level for every pair after it), so it excludes 0 exactly when the pair is
  resolved; the level is printed with it.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

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
    """`setting` minus `best`: the difference of means, its interval at `confidence` (95 % unless a Holm step
    set it), the p-value of `test` (Welch's, or the paired t-test by seed), the verdict."""

    setting: str
    best: str
    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    resolved: bool
    n_setting: int
    n_best: int
    p_adjusted: float = math.nan  # the p-value after a multiple-comparison correction (holm); nan: none
    test: str = "Welch's t-test"
    confidence: float = CONFIDENCE  # the interval's level (a Holm step's level in a ranking)

    @property
    def no_spread(self) -> bool:
        """Two or more values on each side, yet no p-value: no spread at all to judge the difference by."""
        return self.n_setting >= 2 and self.n_best >= 2 and math.isnan(self.p_value)


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

    Never resolved with fewer than two values on a side, nor when both sides have no spread at all
    (bitwise-identical reruns): p and the interval are then nan, the verdict "cannot be resolved".
    """
    from scipy import stats

    a, b = [float(v) for v in setting], [float(v) for v in best]
    diff = math.fsum(a) / len(a) - math.fsum(b) / len(b)
    if len(a) < 2 or len(b) < 2:
        return Difference(setting_name, best_name, diff, math.nan, math.nan, math.nan, False, len(a), len(b))
    if max(a) == min(a) and max(b) == min(b):
        return Difference(setting_name, best_name, diff, math.nan, math.nan, math.nan, False, len(a), len(b))
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


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order: the i-th smallest of m is multiplied by
    (m - i + 1), made non-decreasing in that order, capped at 1. A pair is resolved when its adjusted
    p < ALPHA, which keeps the chance of any false "resolved" among the m pairs under ALPHA."""
    m = len(p_values)
    adjusted = [math.nan] * m
    running = 0.0
    for rank, index in enumerate(sorted(range(m), key=lambda i: p_values[i])):
        running = max(running, min(1.0, (m - rank) * float(p_values[index])))
        adjusted[index] = running
    return adjusted


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


def _level_text(confidence: float) -> str:
    """`95 %`, `99.5 %`: an interval's level as printed."""
    return f"{round(confidence * 100, 2):g} %"


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
    if d.no_spread:
        return (
            f"{head}, cannot be resolved with {seeds}: no spread at all (every seed gave the same value), so"
            " nothing to judge the difference by; zero spread is not certainty"
        )
    interval = format_interval(d.ci_low, d.ci_high, scale, signed=True)
    verdict = "resolved" if d.resolved else "not resolved"
    p_value = f"p = {d.p_value:.2g}" if math.isnan(d.p_adjusted) else f"Holm-adjusted p = {d.p_adjusted:.2g}"
    return f"{head} ({_level_text(d.confidence)} CI {interval}), {verdict} with {seeds} ({d.test}, {p_value})"


PAIRED = "paired t-test"


def paired(
    setting: Mapping[object, float],
    best: Mapping[object, float],
    setting_name: str = "",
    best_name: str = "",
    confidence: float = CONFIDENCE,
) -> Difference:
    """The paired t-test of setting - best over the seeds both have (keys: seeds), with the t interval of
    the mean per-seed difference at `confidence`. Runs that share a seed share initial weights, split and
    data order, so the seed's own effect cancels in the difference. Not resolved with fewer than two shared
    seeds, nor when every seed's difference is the same (no spread: p nan, "cannot be resolved")."""
    from scipy import stats

    differences = [float(setting[seed]) - float(best[seed]) for seed in setting if seed in best]
    n = len(differences)
    mean = math.fsum(differences) / n if n else math.nan
    unresolved = Difference(setting_name, best_name, mean, math.nan, math.nan, math.nan, False, n, n, test=PAIRED)
    if n < 2:
        return unresolved
    std = math.sqrt(math.fsum((d - mean) ** 2 for d in differences) / (n - 1))
    if std == 0 or max(differences) == min(differences):
        return unresolved
    standard_error = std / math.sqrt(n)
    p_value = float(2 * stats.t.sf(abs(mean / standard_error), n - 1))
    half_width = float(stats.t.ppf(1 - (1 - confidence) / 2, n - 1)) * standard_error
    return Difference(
        setting_name,
        best_name,
        mean,
        mean - half_width,
        mean + half_width,
        p_value,
        bool(p_value < 1 - confidence),
        n,
        n,
        test=PAIRED,
        confidence=confidence,
    )


def all_pairs(
    groups: Mapping[str, Mapping[object, float]], higher_is_better: bool = True, alpha: float = ALPHA
) -> list[Difference]:
    """Every pair of settings compared by `paired` (groups: name -> {seed: value}), Holm-corrected over all
    the pairs that can be tested, so that the chance of any false "resolved" in the whole ranking stays
    under `alpha`. Pairs come in ranking order (by mean, best first), each as the lower-ranked minus the
    higher-ranked. Each interval is at the level of its Holm step (`holm_paired`), so a pair is resolved
    exactly when its printed interval excludes 0."""
    sign = 1 if higher_is_better else -1
    means = {name: math.fsum(values.values()) / len(values) for name, values in groups.items() if values}
    order = sorted(means, key=lambda name: -sign * means[name])
    pairs = [(lower, higher) for i, higher in enumerate(order) for lower in order[i + 1 :]]
    return holm_paired(groups, pairs, alpha)


def against_reference(
    groups: Mapping[str, Mapping[object, float]], reference: str, alpha: float = ALPHA
) -> list[Difference]:
    """Every other setting minus `reference` (a baseline), paired by seed, Holm-corrected over those K - 1
    comparisons (the family: a claim that "some setting beats the baseline" keeps its error rate under
    `alpha`); intervals at their Holm step's level as in `all_pairs`. Settings in `groups`' order."""
    return holm_paired(groups, [(name, reference) for name in groups if name != reference], alpha)


def holm_paired(
    groups: Mapping[str, Mapping[object, float]], pairs: Sequence[tuple[str, str]], alpha: float = ALPHA
) -> list[Difference]:
    """`paired(first - second)` for each pair, Holm-corrected over the pairs that can be tested. Each interval
    is at the level of its Holm step: alpha / (m - i) for the pair with the i-th smallest p (i from 0) while
    the steps before it rejected, alpha / (m - j) for every pair from the first step j that did not; so a pair
    is resolved exactly when its interval excludes 0."""
    tests = [paired(groups[first], groups[second], first, second) for first, second in pairs]
    tested = sorted((i for i, d in enumerate(tests) if not math.isnan(d.p_value)), key=lambda i: tests[i].p_value)
    adjusted = holm([tests[i].p_value for i in tested])
    m = len(tested)
    first_kept = next((step for step, p in enumerate(adjusted) if p >= alpha), m)
    result = list(tests)
    for step, (index, p_adjusted) in enumerate(zip(tested, adjusted, strict=True)):
        level = alpha / (m - min(step, first_kept))
        first, second = pairs[index]
        again = paired(groups[first], groups[second], first, second, confidence=1 - level)
        result[index] = dataclasses.replace(again, p_adjusted=p_adjusted, resolved=p_adjusted < alpha)
    return result


def tied_with(names: Sequence[str], differences: Sequence[Difference]) -> dict[str, list[str]]:
    """Per name, the others it is not resolved from (in `names`' order): whom the data cannot separate it from."""
    unresolved = {frozenset((d.setting, d.best)) for d in differences if not d.resolved}
    return {name: [other for other in names if frozenset((name, other)) in unresolved] for name in names}


def expected_max(scores: Sequence[float], budget: int) -> float:
    """The expected best score of `budget` trials drawn at random *without replacement* from the N trials run
    (Tang et al. 2020, correcting Dodge et al. 2019's with-replacement estimator): with the scores sorted
    ascending, the i-th is the best of a k-subset with probability C(i-1, k-1) / C(N, k), so
    E = sum_i v_(i) · C(i-1, k-1) / C(N, k). k = 1 gives the mean, k = N the grid's best score exactly (with
    replacement it stays below it: the same trial can be drawn twice). It says how much tuning a method needs
    to do well, not only how well it can do. Raises ValueError unless 1 <= budget <= N."""
    values = sorted(float(v) for v in scores)
    n = len(values)
    if not 1 <= budget <= n:
        raise ValueError(f"expected_max() needs 1 <= budget <= the {n} scores (got budget {budget})")
    subsets = math.comb(n, budget)
    return math.fsum(v * math.comb(i - 1, budget - 1) / subsets for i, v in enumerate(values, start=1))


def performance_ratios(costs: Mapping[str, Mapping[str, float]]) -> dict[str, list[float]]:
    """Per method, its cost over the best method's on each problem (1 for the best; inf when it failed, or when
    no method solved the problem). `costs[problem][method]`: lower is better; inf or absent: failed."""
    methods = list(dict.fromkeys(method for per_problem in costs.values() for method in per_problem))
    ratios: dict[str, list[float]] = {method: [] for method in methods}
    for per_problem in costs.values():
        best = min((per_problem.get(method, math.inf) for method in methods), default=math.inf)
        for method in methods:
            cost = per_problem.get(method, math.inf)
            if not math.isfinite(cost) or not math.isfinite(best):
                ratios[method].append(math.inf)
            else:
                ratios[method].append(1.0 if cost == best else (cost / best if best > 0 else math.inf))
    return ratios


def performance_profile(costs: Mapping[str, Mapping[str, float]], taus: Sequence[float]) -> dict[str, list[float]]:
    """Dolan & Moré's (2002) performance profile: for each method, at each τ, the fraction of problems on
    which its cost is within a factor τ of the best method's cost on that problem.

    `costs[problem][method]`: lower is better (e.g. epochs to reach a target); inf (or absent) means it
    failed, and a failure is within no factor. A problem no method solved counts as failed for all."""
    ratios = performance_ratios(costs)
    problems = len(costs)
    return {method: [sum(r <= tau for r in values) / problems for tau in taus] for method, values in ratios.items()}


def profile_scores(costs: Mapping[str, Mapping[str, float]], r_max: float = 4.0) -> dict[str, float]:
    """AlgoPerf's benchmark score: the area under a method's performance profile from τ = 1 to r_max, over
    r_max - 1, so in [0, 1]: 1 when it is the fastest on every problem, 0 when it is never within r_max of the
    fastest. Exact for the step-shaped profile: a problem with ratio r adds (r_max - r) / (r_max - 1)."""
    if r_max <= 1:
        raise ValueError(f"r_max={r_max}: must be > 1")
    ratios = performance_ratios(costs)
    return {
        method: statistics.fmean([max(0.0, r_max - r) / (r_max - 1) if math.isfinite(r) else 0.0 for r in values])
        if values
        else 0.0
        for method, values in ratios.items()
    }

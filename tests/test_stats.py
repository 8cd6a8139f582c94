"""src/analysis/stats.py against values computed by hand (closed forms for small n), no MLflow, no Keras."""

from __future__ import annotations

import math

import pytest

from src.analysis import stats

T_975_DF1 = 12.706204736174707  # Student's t quantile 0.975, 1 degree of freedom (tables)
T_975_DF2 = 4.302652729911275  # ... 2 degrees of freedom


def test_summary_of_two_values_by_hand():
    summary = stats.summarize([1.0, 3.0])
    assert summary.n == 2
    assert summary.mean == 2.0
    assert summary.std == pytest.approx(math.sqrt(2))  # sample std: ((1-2)^2 + (3-2)^2) / (2-1) = 2
    half_width = T_975_DF1 * math.sqrt(2) / math.sqrt(2)
    assert (summary.ci_low, summary.ci_high) == pytest.approx((2 - half_width, 2 + half_width))


def test_summary_of_three_seeds_by_hand():
    values = [0.9759, 0.9743, 0.9737]
    mean = 2.9239 / 3
    std = math.sqrt(((0.9759 - mean) ** 2 + (0.9743 - mean) ** 2 + (0.9737 - mean) ** 2) / 2)
    summary = stats.summarize(values)
    assert summary.mean == pytest.approx(mean)
    assert summary.std == pytest.approx(std)
    assert summary.ci_high - summary.mean == pytest.approx(T_975_DF2 * std / math.sqrt(3))


def test_one_seed_has_no_spread_and_resolves_nothing():
    summary = stats.summarize([0.97])
    assert summary.n == 1 and summary.mean == 0.97
    assert math.isnan(summary.std) and math.isnan(summary.ci_low)
    difference = stats.welch([0.97], [0.96, 0.961], "adam", "rmsprop")
    assert not difference.resolved
    assert "cannot be resolved with 1 vs 2 seeds" in stats.verdict_line(difference)
    with pytest.raises(ValueError):
        stats.summarize([])


def test_welch_two_by_two_by_hand():
    # a: mean 2, var 2; b: mean 5, var 2. se = sqrt(2/2 + 2/2) = sqrt(2); t = -3/sqrt(2);
    # Welch-Satterthwaite df = (1 + 1)^2 / (1/1 + 1/1) = 2; for df = 2, p = 1 - |t| / sqrt(2 + t^2).
    difference = stats.welch([1.0, 3.0], [4.0, 6.0], "a", "b")
    t = -3 / math.sqrt(2)
    assert difference.diff == pytest.approx(-3.0)
    assert difference.p_value == pytest.approx(1 - abs(t) / math.sqrt(2 + t * t))
    assert (difference.ci_low, difference.ci_high) == pytest.approx(
        (-3 - T_975_DF2 * math.sqrt(2), -3 + T_975_DF2 * math.sqrt(2))
    )
    assert not difference.resolved  # p = 0.168


def test_resolved_difference_against_the_best():
    groups = {"optimizer=adagrad": [0.91, 0.912, 0.909], "optimizer=adam": [0.975, 0.974, 0.976]}
    best, differences = stats.compare_to_best(groups)
    assert best == "optimizer=adam"
    (difference,) = differences
    assert difference.setting == "optimizer=adagrad" and difference.resolved
    assert difference.ci_high < 0  # resolved <=> the interval excludes 0
    assert stats.best_is_resolved(differences)
    line = stats.verdict_line(difference)
    assert line.startswith("optimizer=adagrad vs optimizer=adam: -6.47 pp")
    assert "resolved with 3 seeds" in line and "not resolved" not in line
    assert stats.compare_to_best({"a": [0.2], "b": [0.1]}, higher_is_better=False)[0] == "b"
    assert stats.compare_to_best({"a": []}) == (None, [])


def test_unresolved_best_is_not_crowned():
    # the 9-job sweep: adam vs rmsprop, 3 seeds each, 0.17 pp apart with std 0.11-0.14 pp
    groups = {"optimizer=adam": [0.9759, 0.9743, 0.9737], "optimizer=rmsprop": [0.9772, 0.9748, 0.9771]}
    best, differences = stats.compare_to_best(groups)
    assert best == "optimizer=rmsprop"
    assert not stats.best_is_resolved(differences)
    assert stats.verdict_line(differences[0]).startswith("optimizer=adam vs optimizer=rmsprop: -0.17 pp (95 % CI -")


def test_holm_by_hand():
    # sorted 0.01, 0.03, 0.04 (m = 3): 3 * 0.01 = 0.03; 2 * 0.03 = 0.06; 1 * 0.04 = 0.04 -> raised to 0.06
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert stats.holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert stats.holm([0.02]) == [0.02] and stats.holm([]) == []
    # both < 0.05 alone, neither after the correction: 2 * 0.03 = 0.06, then max(0.06, 0.04)
    assert stats.holm([0.03, 0.04]) == pytest.approx([0.06, 0.06])


def test_zero_spread_is_not_certainty():
    # the case: two seeds each, every seed the same value, 0.01 pp apart -> no scale, no verdict
    difference = stats.welch([0.9737, 0.9737], [0.9736, 0.9736], "adam", "rmsprop")
    assert difference.diff == pytest.approx(0.0001)
    assert not difference.resolved and difference.no_spread
    assert math.isnan(difference.p_value) and math.isnan(difference.ci_low)
    line = stats.verdict_line(difference)
    assert line.startswith("adam vs rmsprop: +0.01 pp, cannot be resolved with 2 seeds: no spread at all")
    assert "p = 0" not in line and "resolved with" not in line.replace("cannot be resolved with", "")
    assert stats.welch([0.4, 0.4], [0.5, 0.5]).resolved is False  # however far apart
    # spread on one side is a scale: Welch's test with the other side's variance only
    one_sided = stats.welch([0.4, 0.4], [0.5, 0.52])
    assert not one_sided.no_spread and not math.isnan(one_sided.p_value)
    # the paired test: the same per-seed difference on every seed is no spread either
    same_gap = stats.paired({1: 0.98, 2: 0.97}, {1: 0.97, 2: 0.96}, "a", "b")
    assert same_gap.diff == pytest.approx(0.01) and same_gap.no_spread and not same_gap.resolved
    assert "no spread at all" in stats.verdict_line(same_gap)


def test_paired_t_test_by_hand():
    # per-seed differences 2, 3, 1: mean 2, sd 1, se 1/sqrt(3), t = 2 sqrt(3), df 2: p = 1 - t / sqrt(2 + t^2)
    difference = stats.paired({1: 3.0, 2: 5.0, 3: 4.0, 9: 100.0}, {1: 1.0, 2: 2.0, 3: 3.0}, "a", "b")
    t = 2 * math.sqrt(3)
    assert (difference.n_setting, difference.n_best) == (3, 3)  # seed 9 has no partner: not counted
    assert difference.diff == pytest.approx(2.0)
    assert difference.p_value == pytest.approx(1 - t / math.sqrt(2 + t * t))  # 0.074
    half_width = T_975_DF2 / math.sqrt(3)
    assert (difference.ci_low, difference.ci_high) == pytest.approx((2 - half_width, 2 + half_width))
    assert not difference.resolved and difference.test == "paired t-test"
    # a seed effect (0, 10, 20) shared by both sides cancels in the pairs; Welch ignores the pairing and drowns
    shifted = stats.paired({1: 2.0, 2: 13.0, 3: 21.0}, {1: 0.0, 2: 10.0, 3: 20.0})
    assert shifted.p_value == pytest.approx(difference.p_value)
    assert stats.welch([2.0, 13.0, 21.0], [0.0, 10.0, 20.0]).p_value > 0.8
    line = stats.verdict_line(difference)
    assert line == "a vs b: +200.00 pp (95 % CI -48.41 … +448.41), not resolved with 3 seeds (paired t-test, p = 0.074)"
    assert not stats.paired({1: 1.0}, {1: 0.0, 2: 0.0}).resolved  # one shared seed


def _df2_p(differences: list[float]) -> float:
    """Two-sided p of the paired t-test with 3 seeds (df 2), closed form: 1 - |t| / sqrt(2 + t^2)."""
    mean = sum(differences) / 3
    sd = math.sqrt(sum((d - mean) ** 2 for d in differences) / 2)
    t = mean / (sd / math.sqrt(3))
    return 1 - abs(t) / math.sqrt(2 + t * t)


def test_all_pairs_holm_over_the_ranking_by_hand():
    groups = {"a": {1: 0.0, 2: 0.0, 3: 0.0}, "b": {1: 10.0, 2: 11.0, 3: 12.0}, "c": {1: 10.0, 2: 12.0, 3: 12.0}}
    differences = stats.all_pairs(groups)
    # ranking by mean: c (11.33) > b (11) > a (0); pairs in that order, lower-ranked minus higher-ranked
    assert [(d.setting, d.best) for d in differences] == [("b", "c"), ("a", "c"), ("a", "b")]
    p_bc, p_ac, p_ab = _df2_p([0, -1, 0]), _df2_p([-10, -12, -12]), _df2_p([-10, -11, -12])
    assert [d.p_value for d in differences] == pytest.approx([p_bc, p_ac, p_ab])  # 0.42, 0.0034, 0.0027
    # Holm, m = 3: a-b (smallest) x3, a-c x2 (raised to a-b's), b-c x1
    assert [d.p_adjusted for d in differences] == pytest.approx([p_bc, 3 * p_ab, 3 * p_ab])
    assert [d.resolved for d in differences] == [False, True, True]
    # each interval at its Holm step's level: a-b 1 - 0.05/3, a-c 1 - 0.05/2, b-c (not resolved) 0.95
    assert [d.confidence for d in differences] == pytest.approx([0.95, 1 - 0.05 / 2, 1 - 0.05 / 3])
    t_975_df2 = T_975_DF2  # b - c: mean -1/3, sd sqrt(1/3)
    half_width = t_975_df2 * math.sqrt(1 / 3) / math.sqrt(3)
    assert (differences[0].ci_low, differences[0].ci_high) == pytest.approx((-1 / 3 - half_width, -1 / 3 + half_width))
    assert "(98.33 % CI" in stats.verdict_line(differences[2])
    assert "Holm-adjusted p = " in stats.verdict_line(differences[2])
    assert stats.tied_with(["c", "b", "a"], differences) == {"c": ["b"], "b": ["c"], "a": []}


def test_after_the_first_unresolved_holm_step_every_interval_is_at_its_level():
    # e.g. p 0.03 and 0.04 alone: Holm (m = 2) resolves neither (0.06, 0.06), so both intervals are at
    # 1 - 0.05/2 and contain 0, although 0.04 < 0.05 alone. Random rankings: the interval excludes 0 exactly
    # when the pair is resolved, whatever the step
    rng = __import__("numpy").random.default_rng(1)
    for _ in range(200):
        groups = {name: {seed: float(rng.normal(0, 1)) for seed in range(4)} for name in ("x", "y", "z")}
        for d in stats.all_pairs(groups):
            assert d.resolved == (d.ci_low > 0 or d.ci_high < 0), d


def test_equal_optimizers_are_called_different_at_most_5_percent_of_the_time():
    """Monte Carlo: 5 identical optimizers x 5 seeds (a shared seed effect, as runs that share a seed have),
    all 10 pairs Holm-corrected: "any pair resolved" in at most 5 % of the simulated rankings, within the
    Monte-Carlo error (2 standard errors)."""
    import numpy as np

    rng = np.random.default_rng(2026)
    simulations = 2000
    any_resolved = 0
    for _ in range(simulations):
        seed_effect = rng.normal(0, 0.004, 5)
        noise = rng.normal(0, 0.002, (5, 5))
        groups = {f"opt{k}": {s: 0.97 + seed_effect[s] + noise[k, s] for s in range(5)} for k in range(5)}
        any_resolved += any(d.resolved for d in stats.all_pairs(groups))
    rate = any_resolved / simulations
    assert rate <= 0.05 + 2 * math.sqrt(0.05 * 0.95 / simulations), rate
    assert rate > 0.01  # the test is not vacuous: Holm spends most of its 5 %


def test_formatting_of_a_summary_and_an_interval():
    assert stats.format_mean_std(stats.summarize([0.97, 0.96])) == "96.50 ± 0.71"
    assert stats.format_mean_std(stats.summarize([0.9])) == "90.00 (n=1)"
    assert stats.format_interval(0.1, 0.2) == "10.00 … 20.00"
    assert stats.format_interval(-0.001, 0.002, signed=True) == "-0.10 … +0.20"
    assert stats.format_interval(math.nan, 0.2) == "n/a"

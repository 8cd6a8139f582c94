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


def test_identical_reruns_have_no_spread():
    assert stats.welch([0.5, 0.5], [0.5, 0.5]).resolved is False
    assert stats.welch([0.4, 0.4], [0.5, 0.5]).resolved is True


def test_formatting_of_a_summary_and_an_interval():
    assert stats.format_mean_std(stats.summarize([0.97, 0.96])) == "96.50 ± 0.71"
    assert stats.format_mean_std(stats.summarize([0.9])) == "90.00 (n=1)"
    assert stats.format_interval(0.1, 0.2) == "10.00 … 20.00"
    assert stats.format_interval(-0.001, 0.002, signed=True) == "-0.10 … +0.20"
    assert stats.format_interval(math.nan, 0.2) == "n/a"

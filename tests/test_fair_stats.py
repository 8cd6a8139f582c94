"""The fair protocol's statistics against values worked out by hand (Holm's correction: tests/test_stats.py):
Dodge et al.'s expected maximum of k trials with its bootstrap band, and Dolan-Moré's performance profile."""

from __future__ import annotations

import itertools
import math

import pytest

from src.analysis import stats

INF = math.inf


def test_expected_max_of_one_trial_is_the_mean_and_of_many_the_best() -> None:
    scores = [0.1, 0.5, 0.9]
    assert stats.expected_max(scores, 1) == pytest.approx(0.5)
    # k = 2: weights (1/3)^2 = 1/9, (2/3)^2 - 1/9 = 3/9, 1 - 4/9 = 5/9 -> (0.1 + 1.5 + 4.5) / 9
    assert stats.expected_max(scores, 2) == pytest.approx(6.1 / 9)
    # k = 3: weights 1/27, 7/27, 19/27 -> (0.1 + 3.5 + 17.1) / 27
    assert stats.expected_max(scores, 3) == pytest.approx(20.7 / 27)
    # k = 50 with two trials: 0.8 - 0.6 * 0.5^50, the best to 15 digits
    assert stats.expected_max([0.8, 0.2], 50) == pytest.approx(0.8 - 0.6 * 0.5**50, abs=1e-15)


def test_expected_max_handles_ties_and_unsorted_input() -> None:
    assert stats.expected_max([0.5, 0.5], 5) == pytest.approx(0.5)
    assert stats.expected_max([0.9, 0.1, 0.5], 2) == pytest.approx(stats.expected_max([0.1, 0.5, 0.9], 2))


def test_expected_max_grows_with_the_budget() -> None:
    scores = [0.2, 0.97, 0.5, 0.91, 0.0]
    curve = [stats.expected_max(scores, k) for k in range(1, 11)]
    assert all(later >= earlier for earlier, later in itertools.pairwise(curve))
    assert curve[0] == pytest.approx(sum(scores) / 5)
    assert curve[-1] < 0.97


@pytest.mark.parametrize(("scores", "budget"), [([], 1), ([0.5], 0)])
def test_expected_max_refuses_no_scores_or_no_budget(scores: list[float], budget: int) -> None:
    with pytest.raises(ValueError, match="expected_max"):
        stats.expected_max(scores, budget)


def test_expected_max_band_brackets_the_curve_and_is_reproducible() -> None:
    scores = [0.2, 0.97, 0.5, 0.91, 0.0, 0.95]
    budgets = [1, 2, 4, 6]
    low, high = stats.expected_max_band(scores, budgets, resamples=500, seed=3)
    for k, lo, hi in zip(budgets, low, high, strict=True):
        assert lo <= stats.expected_max(scores, k) <= hi
        assert min(scores) <= lo < hi <= max(scores)
    assert (low, high) == stats.expected_max_band(scores, budgets, resamples=500, seed=3)


def test_expected_max_band_of_identical_scores_has_no_width() -> None:
    low, high = stats.expected_max_band([0.7, 0.7, 0.7], [1, 3], resamples=50)
    assert low == pytest.approx([0.7, 0.7])
    assert high == pytest.approx([0.7, 0.7])


def test_performance_profile_by_hand() -> None:
    costs = {
        "p1": {"a": 2, "b": 4, "c": INF},  # best 2: ratios a 1, b 2, c failed
        "p2": {"a": 6, "b": 3, "c": 3},  # best 3: a 2, b 1, c 1
        "p3": {"a": INF, "b": INF, "c": INF},  # nobody reached it: failed for all
    }
    profile = stats.performance_profile(costs, [1, 1.5, 2, 4])
    assert profile["a"] == pytest.approx([1 / 3, 1 / 3, 2 / 3, 2 / 3])
    assert profile["b"] == pytest.approx([1 / 3, 1 / 3, 2 / 3, 2 / 3])
    assert profile["c"] == pytest.approx([1 / 3, 1 / 3, 1 / 3, 1 / 3])


def test_performance_profile_counts_a_missing_method_as_failed() -> None:
    profile = stats.performance_profile({"p1": {"a": 1}, "p2": {"a": 1, "b": 2}}, [1, 2, 3])
    assert profile == {"a": [1.0, 1.0, 1.0], "b": [0.0, 0.5, 0.5]}

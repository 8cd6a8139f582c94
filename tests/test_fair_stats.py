"""The fair protocol's statistics against values worked out by hand (Holm's correction: tests/test_stats.py):
the expected maximum of k trials drawn without replacement (Tang et al. 2020), and Dolan-Moré's performance
profile."""

from __future__ import annotations

import itertools
import math

import pytest

from src.analysis import stats

INF = math.inf


def test_expected_max_without_replacement_by_hand() -> None:
    scores = [0.1, 0.5, 0.9]
    assert stats.expected_max(scores, 1) == pytest.approx(0.5)  # the mean
    # k = 2: the 3 pairs {0.1, 0.5}, {0.1, 0.9}, {0.5, 0.9} have best 0.5, 0.9, 0.9
    assert stats.expected_max(scores, 2) == pytest.approx((0.5 + 0.9 + 0.9) / 3)
    assert stats.expected_max(scores, 3) == pytest.approx(0.9)  # every trial drawn: the grid's best


def test_expected_max_at_the_whole_grid_is_the_grid_maximum() -> None:
    # with replacement (Dodge et al.) 12 draws from 12 scores would miss the best with chance (11/12)^12 = 35 %
    scores = [0.9, 0.95, 0.97, 0.2, 0.0, 0.96, 0.975, 0.5, 0.1, 0.93, 0.971, 0.0]
    assert stats.expected_max(scores, len(scores)) == max(scores)
    # k = 11 drops one of the 12 at random: the best is lost only when it is the one dropped (1/12)
    assert stats.expected_max(scores, 11) == pytest.approx(0.975 * 11 / 12 + 0.971 / 12)


def test_expected_max_handles_ties_and_unsorted_input() -> None:
    assert stats.expected_max([0.5, 0.5], 2) == pytest.approx(0.5)
    assert stats.expected_max([0.9, 0.1, 0.5], 2) == pytest.approx(stats.expected_max([0.1, 0.5, 0.9], 2))


def test_expected_max_grows_with_the_budget() -> None:
    scores = [0.2, 0.97, 0.5, 0.91, 0.0]
    curve = [stats.expected_max(scores, k) for k in range(1, 6)]
    assert all(later >= earlier for earlier, later in itertools.pairwise(curve))
    assert curve[0] == pytest.approx(sum(scores) / 5) and curve[-1] == 0.97


@pytest.mark.parametrize(("scores", "budget"), [([], 1), ([0.5], 0), ([0.5, 0.6], 3)])
def test_expected_max_refuses_no_scores_or_a_budget_outside_the_grid(scores: list[float], budget: int) -> None:
    with pytest.raises(ValueError, match="expected_max"):
        stats.expected_max(scores, budget)


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


def test_profile_score_by_hand_is_the_area_under_the_profile() -> None:
    """AlgoPerf's score over the same three problems: a's ratios 1, 2, failed: (3/3 + 2/3 + 0) / 3; b's 2, 1,
    failed: the same; c's failed, 1, failed: 1/3. And it is the profile's area from 1 to r_max, over r_max - 1."""
    costs = {"p1": {"a": 2, "b": 4, "c": INF}, "p2": {"a": 6, "b": 3, "c": 3}, "p3": {"a": INF, "b": INF, "c": INF}}
    scores = stats.profile_scores(costs, r_max=4.0)
    assert scores == pytest.approx({"a": 5 / 9, "b": 5 / 9, "c": 1 / 3})
    taus = [1 + step / 10000 for step in range(30001)]  # 1 ... 4, fine enough for the step function
    profile = stats.performance_profile(costs, taus)
    for method, fractions in profile.items():
        steps = zip(taus, taus[1:], fractions, fractions[1:], strict=False)  # consecutive pairs: one shorter
        area = sum((t1 - t0) * (f0 + f1) / 2 for t0, t1, f0, f1 in steps)
        assert area / 3 == pytest.approx(scores[method], abs=1e-3)
    with pytest.raises(ValueError, match="r_max"):
        stats.profile_scores(costs, r_max=1.0)


def test_performance_profile_counts_a_missing_method_as_failed() -> None:
    profile = stats.performance_profile({"p1": {"a": 1}, "p2": {"a": 1, "b": 2}}, [1, 2, 3])
    assert profile == {"a": [1.0, 1.0, 1.0], "b": [0.0, 0.5, 0.5]}

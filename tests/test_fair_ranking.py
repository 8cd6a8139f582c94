"""The fair report's ranking on synthetic judged runs (no training): failures count against their optimizer,
every pair is compared by seed with Holm over all pairs, and the tables say how many runs failed."""

from __future__ import annotations

import statistics

import pytest

from src.analysis import replicates
from src.fair import report_text, results
from src.fair.report_files import summary_rows
from src.fair.selection import Selection

SEEDS = (1, 2, 3, 4, 5)


def runs(optimizer: str, accuracies: list[float | None], lr: float = 0.1) -> list[replicates.Replicate]:
    """One judged run per seed; None: the run diverged (its test accuracy is then meaningless)."""
    return [
        replicates.Replicate(
            optimizer,
            seed,
            "FINISHED" if value is not None else replicates.DIVERGED,
            {"test_accuracy": value if value is not None else 0.99},  # a diverged run's number never counts
            values={"optimizer": optimizer, "learning_rate": lr},
            history={"val_accuracy": [0.5, 0.9] if value is not None else [0.5, 0.95], "epoch_seconds": [1.0, 1.0]},
        )
        for seed, value in zip(SEEDS, accuracies, strict=True)
    ]


def workload(tuned: dict[str, list[float | None] | None]) -> results.WorkloadResult:
    """Each optimizer's judged runs at its tuned rate (None: every tuning trial diverged, no tuned rate) and
    the same runs as its default-rate runs."""
    optimizers = []
    for name, accuracies in tuned.items():
        judged = runs(name, accuracies) if accuracies is not None else []
        best = 0.1 if accuracies is not None else None
        scores = {0.1: 0.9 if best else None, 1.0: None}
        selection = Selection(name, "mlp", best, scores, {1.0: 1}, {0: scores}, {0: best})
        optimizers.append(results.OptimizerResult(name, selection, 0.1, [], judged, judged))
    everything = [run for r in optimizers for run in r.tuned]
    comparison = replicates.compare(everything, correction=replicates.HOLM)
    return results.WorkloadResult("mlp", (0.8,), optimizers, comparison, comparison, SEEDS)


def test_an_optimizer_that_diverged_on_3_of_5_seeds_is_not_declared_best_with_n_2() -> None:
    w = workload(
        {
            "flaky": [0.99, 0.99, None, None, None],  # the two that worked are the best runs of all
            "adam": [0.975, 0.976, 0.974, 0.977, 0.975],
            "sgd": [0.951, 0.950, 0.953, 0.952, 0.950],
        }
    )
    # the old rule (failures dropped): flaky is "best" on its 2 surviving runs
    assert w.tuned.best == "flaky" and w.tuned.setting("flaky").n == 2
    ranking = w.tuned_ranking
    assert ranking.best == "adam" and ranking.order == ["adam", "sgd", "flaky"]
    assert ranking.summary("flaky").n == 5
    assert ranking.summary("flaky").mean == pytest.approx((0.99 + 0.99 + 3 * results.FAILURE_SCORE) / 5)
    assert ranking.failed_text("flaky") == "3 of 5 (seed 3: diverged, seed 4: diverged, seed 5: diverged)"
    assert ranking.failed_text("adam") == "0 of 5"
    # adam vs sgd is resolved; flaky's spread (0.1 or 0.99) leaves it unseparated: a tie, not a winner
    assert ranking.rank_text("adam") == "1-2" and ranking.rank_text("flaky") == "1-3"
    assert not ranking.best_resolved
    header, rows = report_text.summary_table(w)
    row = dict(zip(header, rows[0], strict=True))
    assert row["failed at tuned lr"].startswith("3 of 5")
    assert row["tuned test acc % (a failure = 10 %)"] == "45.60 ± 48.75"  # sqrt((2 · 0.534² + 3 · 0.356²) / 4)
    header, rows = report_text.speed_table(w)
    speed = dict(zip(header, rows[0], strict=True))
    assert speed["epochs to 80 % val"] == "median ∞, reached 2 of 5"  # the diverged runs never reach it
    assert speed["seconds to 80 % val"] == "median ∞, reached 2 of 5"


def test_all_pairs_verdicts_and_ties_in_the_report_lines() -> None:
    w = workload(
        {
            "a": [0.975, 0.976, 0.974, 0.977, 0.975],
            "b": [0.9750, 0.9758, 0.9741, 0.9768, 0.9751],
            "c": [0.951, 0.950, 0.953, 0.952, 0.950],
        }
    )
    lines = w.tuned_ranking.verdict_lines()
    assert lines[0] == "Highest mean test accuracy: a, but the data do not separate it from every other one."
    assert lines[2] == "Ranking (rank ranges the data allow): a (rank 1-2), b (1-2), c (3)."
    assert "- a is not separated from b" in lines
    pairs = [line for line in lines if line.startswith("- ") and " vs " in line]
    assert len(pairs) == 3 and all("paired t-test, Holm-adjusted p = " in line for line in pairs)
    assert "All 3 pairs compared by seed" in lines[-1]
    assert report_text.ranking_lines(w)[1] == "- each at its tuned rate: a (rank 1-2), b (1-2), c (3)"


def test_the_five_line_answer_says_what_the_data_separate_and_who_is_fastest() -> None:
    """a and b are tied, both ahead of c: the answer lists the shorter list (the one open pair); every study
    agrees (one study here); all three reach 80 % in epoch 2. A second workload with a failed optimizer: its
    one pair is resolved and the order is written out."""
    w = workload(
        {
            "a": [0.975, 0.976, 0.974, 0.977, 0.975],
            "b": [0.9750, 0.9758, 0.9741, 0.9768, 0.9751],
            "c": [0.951, 0.950, 0.953, 0.952, 0.950],
        }
    )
    other = workload({"adam": [0.975, 0.976, 0.974, 0.977, 0.975], "broken": None})
    other.workload = "logreg"
    lines = report_text.answer_lines([w, other])
    assert [line[:3] for line in lines] == ["1. ", "2. ", "3. ", "4. ", "5. "]
    spread = (
        statistics.mean([0.975, 0.976, 0.974, 0.977, 0.975]) - statistics.mean([0.951, 0.950, 0.953, 0.952, 0.950])
    ) * 100
    assert f"mlp: {spread:.2f} points, 2 of 3 pairs resolved, all but a vs b" in lines[1]
    assert "logreg: " in lines[1] and "the one pair resolved: adam > broken" in lines[1]
    assert "mlp: every optimizer's studies agree" in lines[3]
    assert "mlp: a, b, c (2 epochs to 80 %)" in lines[4] and "logreg: adam (2 epochs to 80 %)" in lines[4]


def test_an_optimizer_with_no_working_learning_rate_stays_in_the_table_as_failed() -> None:
    w = workload({"adam": [0.975, 0.976, 0.974, 0.977, 0.975], "broken": None})
    header, rows = report_text.summary_table(w)
    row = dict(zip(header, rows[1], strict=True))
    assert row["optimizer"] == "broken" and row["tuned lr"] == "none: no working rate on the grid"
    assert row["failed at tuned lr"].startswith("5 of 5 (seed 1: no run")
    assert row["rank"] == "2"
    assert w.tuned_ranking.best == "adam" and w.tuned_ranking.best_resolved
    summary = summary_rows(w)[1]
    assert summary[1] == "broken" and summary[-3:] == [5, 5, 5]
    assert results.gain(w, w.optimizers[1]) is None


def test_epochs_to_target_counts_misses_as_infinite_median_and_fraction_reached() -> None:
    assert report_text.epochs_cell([2, 3, None]) == "median 3, reached 2 of 3"  # median of 2, 3, ∞
    assert report_text.epochs_cell([4, 4, None, None, None]) == "median ∞, reached 2 of 5"  # not "4.0 ± 0.0"
    assert report_text.epochs_cell([2, 3, 3, 5]) == "median 3, reached 4 of 4"
    assert report_text.epochs_cell([2, 3, 4, None]) == "median 3.5, reached 3 of 4"
    assert report_text.epochs_cell([None, None]) == "not reached (2 of 2)"
    assert report_text.epochs_cell([]) == "n/a"


def test_budget_curve_ends_at_the_grid_best_and_its_band_spans_the_tuning_studies(tmp_path) -> None:
    from src.analysis import plots

    w = workload({"adam": [0.975, 0.976, 0.974, 0.977, 0.975], "broken": None})
    curves = results.budget_curves(w)
    # adam's one study: lr 0.1 scored 0.9, lr 1 diverged (a failed draw scores 0); one study, no spread
    assert curves["adam"] == {"budget": [1, 2], "expected": pytest.approx([0.45, 0.9])} | {
        "low": pytest.approx([0.45, 0.9]),
        "high": pytest.approx([0.45, 0.9]),
    }
    assert curves["broken"]["expected"] == [0.0, 0.0]
    # two studies: (0.9, diverged) and (0.8, 0.6): per study k=1 gives 0.45 and 0.7, k=2 their bests 0.9 and 0.8
    studies = {1: {0.1: 0.9, 1.0: None}, 2: {0.1: 0.8, 1.0: 0.6}}
    w.optimizers[0].selection = Selection(
        "adam", "mlp", 0.1, {0.1: 0.85, 1.0: None}, {1.0: 1}, studies, {1: 0.1, 2: 0.1}
    )
    curves = results.budget_curves(w)
    assert curves["adam"]["expected"] == pytest.approx([(0.45 + 0.7) / 2, (0.9 + 0.8) / 2])
    assert (curves["adam"]["low"], curves["adam"]["high"]) == (pytest.approx([0.45, 0.8]), pytest.approx([0.7, 0.9]))
    path = tmp_path / "budget.png"
    panel = [plots.BudgetCurve(o, c["budget"], c["expected"], c["low"], c["high"]) for o, c in curves.items()]
    plots.budget_curves([("mlp", panel)], path, "band: lowest to highest of 2 tuning studies")
    assert path.stat().st_size > 0

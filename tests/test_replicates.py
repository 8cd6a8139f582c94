"""src/analysis/replicates.py and src/analysis/tables.py on replicate records built by hand (values chosen so the
statistics can be checked by hand): the one rule of which runs count, grouping, the comparison, the best
run, Holm, "still improving", MLflow aggregates, tables and CSV. No MLflow store, no Keras."""

from __future__ import annotations

import csv
import io
import math

import pytest
from mlflow.entities import Metric, Param, Run, RunData, RunInfo, RunTag

from src.analysis import replicates as rep
from src.analysis import tables

T_975_DF2 = 4.302652729911275  # Student's t quantile 0.975, 2 degrees of freedom (tables)


def run(
    optimizer: str,
    seed: int | None,
    test: float | None,
    status: str = "FINISHED",
    val: float | None = None,
    best_epoch: int = 1,
    stopped_epoch: int = 2,
    run_id: str = "",
) -> rep.Replicate:
    metrics = {"test_accuracy": test, "best_val_accuracy": val if val is not None else test}
    metrics |= {"best_epoch": best_epoch, "stopped_epoch": stopped_epoch, "train_seconds": 10.0}
    return rep.Replicate(
        f"optimizer={optimizer}",
        seed,
        status,
        metrics,
        run_id or f"{optimizer}{seed}",
        name=f"{optimizer},{seed}",
        values={"optimizer": optimizer},
    )


@pytest.fixture
def sweep() -> list[rep.Replicate]:
    """adam: 3 seeds; sgd: 2 that count, one failed after logging its accuracy, one diverged, one NaN."""
    return [
        run("adam", 1, 0.97, best_epoch=2),
        run("adam", 2, 0.96, best_epoch=2),
        run("adam", 3, 0.98, best_epoch=1),
        run("sgd", 1, 0.90),
        run("sgd", 2, 0.93, status="FAILED"),
        run("sgd", 3, 0.10, status=rep.DIVERGED),
        run("sgd", 4, 0.91),
        run("sgd", 5, math.nan),
    ]


def test_one_rule_decides_which_runs_count_and_says_why(sweep: list[rep.Replicate]) -> None:
    reasons = [rep.excluded_because(r) for r in sweep]
    assert reasons == [None, None, None, None, "failed", "diverged", None, "no test accuracy"]
    assert rep.excluded_because(run("sgd", 6, None, status="KILLED")) == "killed"
    adam, sgd = rep.group(sweep)
    assert (adam.label, adam.n, adam.excluded) == ("optimizer=adam", 3, "")
    assert (sgd.n, sgd.excluded) == (2, "seed 2 (failed), seed 3 (diverged), seed 5 (no test accuracy)")
    assert rep.excluded_text(sweep, with_setting=True).startswith("optimizer=sgd seed 2 (failed), optimizer=sgd seed")
    assert run("sgd", None, None, status="FAILED").label == "sgd,None"  # no seed: the run's name


def test_statuses_and_the_counting_rule_are_one_rule_for_runs_records_and_tuning() -> None:
    assert rep.run_status("FINISHED", diverged=True) == rep.DIVERGED
    assert [rep.run_status(s, diverged=False) for s in (rep.FINISHED, rep.FAILED, rep.KILLED)] == [
        "FINISHED",
        "FAILED",
        "KILLED",
    ]
    assert rep.run_status(rep.FAILED, diverged=True) == rep.FAILED  # it never ended: failed, whatever it logged
    # the rule on a status and a value: what the fair protocol's tuning selection applies to its records
    metric = "final_val_accuracy"
    assert rep.exclusion_reason(rep.FINISHED, 0.9, metric) is None
    assert rep.exclusion_reason(rep.DIVERGED, 0.9, metric) == "diverged"
    assert rep.exclusion_reason(rep.FINISHED, None, metric) == "no final val accuracy"
    assert rep.exclusion_reason(rep.FINISHED, math.inf, metric) == "no final val accuracy"
    assert rep.exclusion_reason(rep.KILLED, 0.9) == "killed"


def test_settings_summarize_the_counted_runs_by_hand(sweep: list[rep.Replicate]) -> None:
    adam, sgd = rep.group(sweep)
    test = adam.summaries["test_accuracy"]  # mean 0.97, sample std sqrt((0.01^2 + 0 + 0.01^2) / 2) = 0.01
    assert test.mean == pytest.approx(0.97) and test.std == pytest.approx(0.01)
    assert test.ci_high == pytest.approx(0.97 + T_975_DF2 * 0.01 / math.sqrt(3))
    assert sgd.values_of("test_accuracy") == [0.90, 0.91]
    assert sgd.summaries["test_accuracy"].mean == pytest.approx(0.905)
    assert adam.summaries["best_epoch"].mean == pytest.approx(5 / 3)


def test_comparison_names_the_best_and_the_run_to_keep(sweep: list[rep.Replicate]) -> None:
    comparison = rep.compare(sweep)
    assert comparison.replicated and comparison.best == "optimizer=adam" and comparison.best_resolved
    assert comparison.best_run().run_id == "adam3"  # the best setting's seed with the best validation accuracy
    assert comparison.best_values() == [0.97, 0.96, 0.98]
    head, _, line = comparison.verdict_lines()
    assert head == "Best on test accuracy: **optimizer=adam**, ahead of every other setting by a resolved difference."
    assert line.startswith("- optimizer=sgd vs optimizer=adam: -6.50 pp (95 % CI")
    assert "resolved with 2 vs 3 seeds (Welch's t-test, p = " in line


def test_the_best_run_is_chosen_on_validation_and_a_missing_value_is_never_best() -> None:
    runs = [run("adam", 1, 0.97, val=0.95), run("adam", 2, 0.96, val=0.99), run("adam", 3, 0.98)]
    runs[2] = rep.Replicate(runs[2].setting, 3, "FINISHED", {"test_accuracy": 0.98}, "no-val", values=runs[2].values)
    assert rep.compare(runs).best_run().run_id == "adam2"


def test_without_replicates_no_winner_is_named() -> None:
    runs = [run("adam", 1, 0.975, val=0.970), run("rmsprop", 1, 0.974, val=0.980), run("sgd", 1, None, "FAILED")]
    comparison = rep.compare(runs)
    assert not comparison.replicated and not comparison.best_resolved
    assert comparison.best_run().run_id == "rmsprop1" and comparison.best_values() == [0.974]
    (line,) = comparison.verdict_lines()
    assert line.startswith("Highest best validation accuracy: rmsprop,1 (98.00 %, test accuracy 97.40 %).")
    assert "With one run per setting (n = 1) no difference between settings can be resolved" in line
    assert rep.compare([]).verdict_lines() == ["No finished run to compare on test accuracy."]
    seeds_alone = rep.compare([rep.Replicate("all", s, "FINISHED", {"test_accuracy": 0.9 + s / 100}) for s in (1, 2)])
    assert seeds_alone.verdict_lines() == ["Only one setting (all): nothing to compare."]


def test_one_seed_each_but_replicated_says_it_cannot_resolve() -> None:
    comparison = rep.compare([run("adam", 1, 0.97), run("sgd", 1, 0.9)], replicated=True)
    assert comparison.verdict_lines()[0].startswith("Highest mean test accuracy: optimizer=adam, but not resolved")
    assert "cannot be resolved with 1 seed: run more seeds" in comparison.verdict_lines()[2]


def test_holm_correction_adjusts_the_pairs_against_the_best() -> None:
    # three settings against adam; without the correction both are resolved, Holm multiplies the smaller p by 2
    runs = [run("adam", s, v) for s, v in enumerate((0.975, 0.974, 0.976), 1)]
    runs += [run("sgd", s, v) for s, v in enumerate((0.91, 0.912, 0.909), 1)]
    runs += [run("rmsprop", s, v) for s, v in enumerate((0.9735, 0.9725, 0.9745), 1)]
    plain, holm = rep.compare(runs), rep.compare(runs, correction="holm")
    p_values = [d.p_value for d in plain.differences]
    low, high = sorted(p_values)
    expected = {low: 2 * low, high: max(2 * low, high)}  # Holm by hand for m = 2
    assert [d.p_adjusted for d in holm.differences] == pytest.approx([expected[p] for p in p_values])
    assert [d.resolved for d in holm.differences] == [p < 0.05 for p in (expected[p] for p in p_values)]
    assert "Holm-adjusted p = " in holm.verdict_lines()[2]
    assert holm.verdict_lines()[-1] == "p-values Holm-adjusted over the 2 comparisons with the best."
    with pytest.raises(ValueError, match="correction='bonferroni': allowed are None and 'holm'"):
        rep.compare(runs, correction="bonferroni")


def test_a_setting_whose_best_epoch_is_its_last_on_most_seeds_is_still_improving() -> None:
    runs = [run("adagrad", s, 0.91, best_epoch=10, stopped_epoch=10) for s in (1, 2)]
    runs += [run("adagrad", 3, 0.91, best_epoch=7, stopped_epoch=10)]
    runs += [run("adam", s, 0.97, best_epoch=e, stopped_epoch=10) for s, e in ((1, 10), (2, 7), (3, 8))]
    comparison = rep.compare(runs)
    assert [s.label for s in comparison.still_improving()] == ["optimizer=adagrad"]  # 2 of 3, not 1 of 3
    (line,) = comparison.improving_lines()
    assert line.startswith("- optimizer=adagrad: best epoch = last epoch on 2 of 3 seeds")


def test_tables_and_csv_print_missing_values_one_way(sweep: list[rep.Replicate]) -> None:
    comparison = rep.compare([*sweep, run("nadam", 1, 0.95)])
    header, rows = tables.settings_table(comparison, ["optimizer"])
    assert header[:4] == ["optimizer", "n", "excluded", "test accuracy % (mean ± std)"]
    assert rows[0][:5] == ["adam", "3", "", "97.00 ± 1.00", "94.52 … 99.48"]
    assert rows[2][:5] == ["nadam", "1", "", "95.00 (n=1)", "n/a"]
    assert tables.settings_table(comparison)[0][0] == "setting"  # no keys: the label names the setting
    settings = list(csv.DictReader(io.StringIO(tables.settings_csv(comparison, ["optimizer"]))))
    assert [(r["setting"], r["optimizer"], r["n"]) for r in settings][1] == ("optimizer=sgd", "sgd", "2")
    assert settings[0]["test_accuracy_std"] == "0.01" and settings[2]["test_accuracy_std"] == ""
    assert settings[0]["test_accuracy_ci_low"] == repr(round(0.97 - T_975_DF2 * 0.01 / math.sqrt(3), 5))
    _, per_run = tables.replicates_table(comparison, ["optimizer"])
    assert per_run[4] == ["sgd", "2", "93.00", "93.00", "1", "2", "10", "FAILED", "sgd2"]
    assert per_run[7][2] == "n/a"  # the NaN accuracy
    runs = list(csv.DictReader(io.StringIO(tables.replicates_csv(comparison, ["optimizer"]))))
    assert len(runs) == 9 and runs[7]["test_accuracy"] == "" and runs[5]["status"] == "diverged"
    assert [tables.number(v) for v in (None, math.nan, 3.0, 0.123456789, "x")] == ["", "", "3", "0.12346", "x"]


def test_epoch_bands_average_the_runs_that_reached_each_epoch() -> None:
    summaries = rep.epoch_bands([[0.9, 0.95], [0.91, 0.96, 0.97], [0.92, 0.97, 0.98, 0.99]])
    assert [s.n for s in summaries] == [3, 3, 2, 1]
    assert summaries[0].mean == pytest.approx(0.91) and summaries[0].std == pytest.approx(0.01)
    assert summaries[2].mean == pytest.approx(0.975)
    assert summaries[3].mean == pytest.approx(0.99) and math.isnan(summaries[3].std)
    history = rep.Replicate("a", 1, "FINISHED", {"test_accuracy": 0.9}, history={"val_accuracy": [0.5, 0.6]})
    (setting,) = rep.group([history, rep.Replicate("a", 2, "FAILED", {}, history={"val_accuracy": [0.1]})])
    assert [s.mean for s in setting.bands("val_accuracy")] == [0.5, 0.6]  # the failed run is not in the band


def test_an_mlflow_run_becomes_a_replicate() -> None:
    def mlflow_run(status: str, **tags: str) -> Run:
        info = RunInfo("r1", "0", "user", status, 0, 1, "active", run_name="adam,2")
        params = [Param("optimizer", "adam"), Param("train.seed", "2")]
        tags_list = [RunTag("config.callbacks.tensorboard.enabled", "true"), *(RunTag(k, v) for k, v in tags.items())]
        return Run(info, RunData(metrics=[Metric("test_accuracy", 0.97, 0, 0)], params=params, tags=tags_list))

    keys = ["optimizer", "callbacks.tensorboard.enabled"]
    replicate = rep.from_mlflow_run(mlflow_run("FINISHED"), keys, tag_prefix="config.")
    assert replicate.setting == "optimizer=adam,callbacks.tensorboard.enabled=true"
    assert (replicate.seed, replicate.status, replicate.run_id, replicate.name) == (2, "FINISHED", "r1", "adam,2")
    assert replicate.value("test_accuracy") == 0.97 and replicate.value("best_epoch") is None
    assert rep.from_mlflow_run(mlflow_run("FINISHED", diverged="true"), keys).status == "diverged"
    assert rep.from_mlflow_run(mlflow_run("FAILED"), []).setting == "all"

"""The files of reports/fair/: fair.md, the CSVs, DVC metrics and plot data, and the figures."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from src.analysis import plots, stats
from src.analysis import tables as replicate_tables
from src.fair import protocol as fair
from src.fair.report_text import (
    answer_lines,
    edge_lines,
    profile_score_lines,
    ranking_lines,
    speed_table,
    summary_table,
)
from src.fair.results import FAILURE_SCORE, WorkloadResult, epochs_to_target, gain, profile_costs
from src.infra.files import markdown_table, write_text_atomic
from src.training.data import DATASETS

TAUS = [1 + step / 20 for step in range(61)]  # τ from 1 to 4 for the performance profile
SUMMARY_HEADER = (
    *("workload", "optimizer", "default_lr", "default_test_accuracy_mean", "tuned_lr", "n"),
    *(
        "tuned_test_accuracy_mean",
        "tuned_test_accuracy_std",
        "ci_low",
        "ci_high",
        "gain",
        "gain_ci_low",
        "gain_ci_high",
    ),
    *("tuned_failed", "default_failed", "judged_seeds"),
)
RUN_HEADER = ("workload", "optimizer", "lr_choice", "learning_rate", "seed", "test_accuracy", "final_val_accuracy")
TRIAL_HEADER = ("workload", "optimizer", "learning_rate", "seed", "final_val_accuracy", "status", "run_id")


def protocol_lines(settings: fair.Protocol, train_seconds: float) -> list[str]:
    grid = ", ".join(map(fair.lr_text, settings.lr_grid))
    seeds = ", ".join(map(str, settings.judge_seeds))
    tune_seeds = ", ".join(map(str, settings.tune_seeds))
    return [
        f"Tuning: every optimizer ran {len(settings.tune_seeds)} tuning studies (seeds {tune_seeds}), each"
        f" trying all {len(settings.lr_grid)} learning rates {grid} for {settings.epochs} epochs at batch"
        f" {settings.batch_size} (the same budget for all); the learning rate with the highest mean final"
        " validation accuracy over the studies was selected, among those that worked in every study. The test"
        " set is not touched in tuning. A diverged trial is reported, never selected. Selection noise: the"
        " table says how many studies would have picked the same rate alone; the judged intervals hold the judge"
        " seeds' noise at the selected rate, not the selection's (a rate that fewer studies agree on is a less"
        " certain choice, whatever its interval).",
        f"Judging: each optimizer at its tuned learning rate and at Keras' default one (the one-shot row), with"
        f" seeds {seeds}, the same epochs and batch size, no early stopping; test accuracy of the final weights"
        " on the 10000 test images. The one-shot row is trained here, at the protocol's budget, not copied from"
        " `make run` (other epochs and batch size). When the tuned rate is the default one the runs are shared.",
        "Failures count: a judged run that diverged, failed or has no finite test accuracy scores"
        f" {FAILURE_SCORE * 100:g} % (chance on the ten classes) in every mean, gain and verdict, and the tables say"
        " how many of the judged runs failed; an optimizer with no working learning rate on the grid fails on"
        " every seed. n is always the number of judge seeds.",
        "Verdicts: every pair of optimizers, paired by seed (runs that share a seed share initial weights, split"
        " and data order: a paired t-test on the per-seed differences), the p-values Holm-corrected over all"
        " pairs, so the chance of any false 'resolved' in the whole ranking stays under 5 %. Each interval is at"
        " its Holm step's level (printed), so it excludes 0 exactly when the pair is resolved. A rank range"
        " (1-3) is a tie the data cannot order. mean ± std over seeds (sample std); 95 % CI: Student's t"
        " interval of the mean. Gain from tuning: tuned minus default, paired by seed, with its 95 % interval.",
        f"Training time (sum of the runs' train_seconds, tuning and judging): {train_seconds:.0f} s.",
    ]


def markdown(settings: fair.Protocol, results: Sequence[WorkloadResult], train_seconds: float) -> str:
    data_sets = dict.fromkeys(DATASETS[settings.parts[w.workload].data].title for w in results)
    title = f"# A fair comparison of optimizers on {' and '.join(data_sets)}"
    text = [title, "", "## The answer", "", *answer_lines(results), ""]
    text += ["## The protocol", "", *protocol_lines(settings, train_seconds), ""]
    for workload in results:
        part = settings.parts[workload.workload]
        heading = f"## {workload.workload} (model {part.model} on {DATASETS[part.data].title})"
        text += [heading, "", markdown_table(*summary_table(workload)), ""]
        text += ["### Speed to the validation targets (median over the judge seeds, a miss = ∞)", ""]
        text += [markdown_table(*speed_table(workload)), ""]
        text += ["### Verdict (tuned)", "", *workload.tuned_ranking.verdict_lines(), ""]
        one_shot = workload.default_ranking.verdict_lines()
        text += ["### One-shot verdict (Keras' default learning rates)", "", *one_shot, ""]
        text += ["### Ranking (the rank ranges the data allow, failures counted)", "", *ranking_lines(workload), ""]
        diverged = [
            f"- {r.optimizer}: {r.selection.diverged_text()}" for r in workload.optimizers if r.selection.diverged
        ]
        text += ["### Tuning trials that diverged", "", *(diverged or ["- none"]), ""]
        if edge_lines(workload):
            text += ["### Tuned at the edge of the grid", "", *edge_lines(workload), ""]
    text += [
        "## Figures",
        "",
        "![final validation accuracy against learning rate](lr_sensitivity.png)",
        "",
        "![validation accuracy per epoch at each optimizer's tuned learning rate, mean ± 1 std](curves.png)",
        "",
        "![expected best validation accuracy of k learning rates drawn without replacement from the grid: at"
        " k = N the grid's best; mean over the tuning studies, the band from the lowest to the highest"
        " study](budget.png)",
        "",
    ]
    text += ["![performance profile over the workloads](profile.png)", "", *profile_score_lines(results), ""]
    return "\n".join(text)


def run_rows(results: Sequence[WorkloadResult]) -> list[list[Any]]:
    """runs.csv: every judged run (tuned and default learning rate), fractions not %."""
    rows = []
    for workload in results:
        for result in workload.optimizers:
            for role, runs in (("tuned", result.tuned), ("default", result.default)):
                for run in runs:
                    epochs = [epochs_to_target([run], t)[0] for t in workload.targets]
                    metrics = [run.value(m) for m in ("test_accuracy", "final_val_accuracy", "train_seconds")]
                    lr = run.values["learning_rate"]
                    rows.append([workload.workload, result.optimizer, role, lr, run.seed, *metrics, *epochs])
                    rows[-1] += [run.status, run.run_id]
    return rows


def trial_rows(results: Sequence[WorkloadResult]) -> list[list[Any]]:
    """trials.csv: every tuning trial of every study."""
    return [
        [w.workload, r.optimizer, t["learning_rate"], t["seed"], t["metrics"].get("final_val_accuracy"), *_ended(t)]
        for w in results
        for r in w.optimizers
        for t in r.trials
    ]


def _ended(trial: Mapping[str, Any]) -> list[Any]:
    return [trial["status"], trial["run_id"]]


def summary_rows(workload: WorkloadResult) -> list[list[Any]]:
    """summary.csv: per optimizer the means over the judge seeds with failures at FAILURE_SCORE."""
    rows = []
    tuned, default = workload.tuned_ranking, workload.default_ranking
    for result in workload.optimizers:
        name = result.optimizer
        t, d, g = tuned.summary(name), default.summary(name), gain(workload, result)
        row: list[Any] = [workload.workload, name, result.default_lr, d.mean, result.selection.best_lr, t.n]
        row += [t.mean, t.std, t.ci_low, t.ci_high]
        row += [g.diff, g.ci_low, g.ci_high] if g else [None] * 3
        row += [len(tuned.failures[name]), len(default.failures[name]), t.n]
        rows.append(row)
    return rows


def metrics_json(results: Sequence[WorkloadResult]) -> dict[str, Any]:
    """DVC metrics: per optimizer the tuned learning rate, tuned test accuracy and the gain from tuning."""
    metrics: dict[str, Any] = {}
    for workload in results:
        for row in summary_rows(workload):
            named = dict(zip(SUMMARY_HEADER, row, strict=True))
            entry = {"lr": named["tuned_lr"], "acc": _round(named["tuned_test_accuracy_mean"])}
            entry["gain"] = _round(named["gain"])
            key = named["optimizer"] if len(results) == 1 else f"{named['workload']}/{named['optimizer']}"
            metrics[key] = entry
    return metrics


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 5)


def write(
    settings: fair.Protocol, results: Sequence[WorkloadResult], curves: Mapping[str, Mapping[str, Any]]
) -> list[Path]:
    """Every report file; returns their paths (the MLflow parent's artifacts)."""
    folder = settings.report_dir
    seconds = {t["run_id"]: t["metrics"].get("train_seconds") for w in results for r in w.optimizers for t in r.trials}
    for w in results:
        for r in w.optimizers:
            seconds |= {run.run_id: run.value("train_seconds") for run in [*r.tuned, *r.default]}
    train_seconds = sum(value or 0.0 for value in seconds.values())
    targets = [f"epochs_to_target_{i + 1}" for i in range(max(len(w.targets) for w in results))]
    run_header = [*RUN_HEADER, "train_seconds", *targets, "status", "run_id"]
    files = {
        "fair.md": markdown(settings, results, train_seconds),
        "summary.csv": replicate_tables.csv_text(SUMMARY_HEADER, [row for w in results for row in summary_rows(w)]),
        "runs.csv": replicate_tables.csv_text(run_header, run_rows(results)),
        "trials.csv": replicate_tables.csv_text(TRIAL_HEADER, trial_rows(results)),
    }
    for name, text in files.items():
        write_text_atomic(folder / name, text)
    write_json(folder / "metrics.json", metrics_json(results))
    write_json(
        folder / "lr_sensitivity.json",
        [
            {"workload": w.workload, "optimizer": r.optimizer, "learning_rate": lr, "final_val_accuracy": v or 0.0}
            | {"worked_in_every_study": v is not None}
            for w in results
            for r in w.optimizers
            for lr, v in r.selection.scores.items()
        ],
    )
    write_json(
        folder / "budget.json",
        [
            {"workload": w, "optimizer": o, "trials": k, "expected_best_val_accuracy": e}
            | {"lowest_study": low, "highest_study": high}
            for w, per in curves.items()
            for o, c in per.items()
            for k, e, low, high in zip(c["budget"], c["expected"], c["low"], c["high"], strict=True)
        ],
    )
    draw(settings, results, curves)
    names = [*files, "metrics.json", "lr_sensitivity.json", "budget.json"]
    names += ["lr_sensitivity.png", "curves.png", "budget.png", "profile.png"]
    return [folder / name for name in names]


def write_json(path: Path, payload: Any) -> None:
    write_text_atomic(path, json.dumps(payload, indent=1) + "\n")


def draw(settings: fair.Protocol, results: Sequence[WorkloadResult], curves: Mapping[str, Mapping[str, Any]]) -> None:
    folder = settings.report_dir
    panels = [
        (
            f"{w.workload}: tuning ({settings.epochs} epochs, mean of {len(settings.tune_seeds)} studies)",
            [
                plots.LrCurve(
                    r.optimizer,
                    list(r.selection.scores),
                    list(r.selection.scores.values()),
                    r.default_lr,
                    r.selection.best_lr,
                )
                for r in w.optimizers
            ],
        )
        for w in results
    ]
    plots.lr_sensitivity(panels, folder / "lr_sensitivity.png")
    band_panels = []
    for w in results:
        for metric in ("val_accuracy", "val_loss") if len(results) == 1 else ("val_accuracy",):
            bands = []
            for setting in w.tuned.settings:
                summaries = setting.bands(metric)
                lr = fair.lr_text(setting.values["learning_rate"])
                label = f"{setting.label} (lr {lr}, n={setting.n})"
                bands.append(plots.Band(label, setting.label, range(1, len(summaries) + 1), summaries))
            title = f"{w.workload}: {metric.replace('_', ' ')} at the tuned learning rate"
            band_panels.append(plots.Panel(title, "epoch", metric.replace("_", " "), bands))
    plots.bands_figure(band_panels, folder / "curves.png", "mean over the judge seeds ± 1 std", "optimizer")
    budget_panels = [
        (
            f"{workload}: expected best of k learning rates drawn from the grid",
            [plots.BudgetCurve(o, c["budget"], c["expected"], c["low"], c["high"]) for o, c in per.items()],
        )
        for workload, per in curves.items()
    ]
    band = f"band: lowest to highest of {len(settings.tune_seeds)} tuning studies"
    plots.budget_curves(budget_panels, folder / "budget.png", band)
    # Drawn for one workload too (a profile over one problem: each optimizer's ratio to the fastest), so the
    # report's files, and DVC's outputs, are the same whatever fair.workloads holds
    fractions = stats.performance_profile(profile_costs(results), TAUS)
    title = "Performance profile: epochs to each workload's last target (median over seeds)"
    plots.performance_profile(TAUS, fractions, title, folder / "profile.png")

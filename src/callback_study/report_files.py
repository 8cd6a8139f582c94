"""The files of reports/callbacks/: callbacks.md (the five-line answer, a table per optimizer, the Pareto figure,
TensorBoard's cost), summary.csv (a row per optimizer and setting), runs.csv (a row per run), tensorboard.csv,
pareto.json (DVC plot data) and pareto.png."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from src.analysis import plots, stats
from src.analysis.tables import csv_text
from src.callback_study.results import (
    FAILURE_SCORE,
    CostResult,
    OptimizerResult,
    SettingResult,
    verdict,
)
from src.callback_study.settings import (
    BASELINE,
    EARLY_STOPPING,
    MODEL_CHECKPOINT,
    REDUCE_LR,
    Study,
)
from src.infra.files import markdown_table, write_text_atomic

SUMMARY_HEADER = (
    *("optimizer", "learning_rate", "setting", "label", "how", "n", "failed"),
    *("epochs_median", "epochs_mean", "kept_epoch_mean", "wall_seconds_mean"),
    *("test_accuracy_mean", "test_accuracy_std", "ci_low", "ci_high"),
    *("diff_vs_baseline", "diff_ci_low", "diff_ci_high", "diff_ci_level", "p_holm", "resolved", "same_model"),
    *("gap_to_best_epoch_mean", "gap_ci_low", "gap_ci_high", "on_frontier"),
)
RUN_HEADER = (
    *("optimizer", "setting", "seed", "status", "how", "epochs_trained", "kept_epoch", "model_weights"),
    *("test_accuracy", "best_val_accuracy", "best_epoch", "wall_seconds", "run_id"),
)
COST_HEADER = (
    *("setting", "label", "n", "wall_seconds_mean", "wall_seconds_std", "wall_seconds_per_epoch"),
    *("overhead_seconds", "overhead_ci_low", "overhead_ci_high", "overhead_ci_level", "p_holm", "resolved"),
    *("overhead_relative_mean", "log_megabytes"),
)
# How a setting looks in the Pareto figure: marker by callback, open markers for restore_best_weights=false
MARKERS = {BASELINE: "s", EARLY_STOPPING: "o", MODEL_CHECKPOINT: "D", REDUCE_LR: "*"}
COLOURS = {BASELINE: "#000000", MODEL_CHECKPOINT: "#9467bd", REDUCE_LR: "#d62728"}
MONITOR_COLOURS = {"val_loss": "#1f77b4", "val_accuracy": "#ff7f0e"}


def pp(value: float, signed: bool = True) -> str:
    return f"{value * 100:+.2f}" if signed else f"{value * 100:.2f}"


def _accuracy_cell(result: SettingResult) -> str:
    summary = result.accuracy
    failed = f"; {len(result.failures)} of {len(result.runs)} failed" if result.failures else ""
    return f"{stats.format_mean_std(summary)} [{stats.format_interval(summary.ci_low, summary.ci_high)}]{failed}"


def _difference_cell(result: OptimizerResult, setting: SettingResult) -> str:
    d = setting.difference
    if d is None:
        return "—"
    if result.same_model(setting):
        return "0 (same model)"
    interval = stats.format_interval(d.ci_low, d.ci_high, signed=True)
    level = f"{round(d.confidence * 100, 2):g} %"
    return f"{pp(d.diff)} ({level} CI {interval})" if interval != "n/a" else pp(d.diff)


def _gap_cell(result: OptimizerResult, setting: SettingResult) -> str:
    gap = result.gap(setting)
    if gap is None:
        return "n/a"
    interval = stats.format_interval(gap.ci_low, gap.ci_high, signed=True)
    return f"{pp(gap.mean)} [{interval}]" if interval != "n/a" else pp(gap.mean)


def optimizer_table(result: OptimizerResult) -> str:
    rows = []
    for setting in result.settings:
        how = f" ({setting.how})" if setting.how != "trained" else ""
        star = " ◆" if setting.name in result.frontier else ""
        rows.append(
            [
                f"{setting.setting.label}{how}{star}",
                f"{setting.median_epochs:g} / {setting.epochs.mean:.1f}",
                f"{setting.kept_epoch.mean:.1f}",
                f"{setting.wall.mean:.1f}",
                _accuracy_cell(setting),
                _difference_cell(result, setting),
                _gap_cell(result, setting),
                verdict(result, setting),
            ]
        )
    header = [
        "setting",
        "epochs trained (median / mean)",
        "kept epoch (mean)",
        "wall s (mean)",
        "test accuracy % of the kept model (mean ± std [95 % CI])",
        "vs the baseline, pp (Holm-step CI)",
        "gap to the baseline's best epoch, pp [95 % CI]",
        "verdict",
    ]
    return markdown_table(header, rows)


def cost_table(cost: CostResult) -> str:
    rows = []
    reference = cost.settings[0]
    for setting in cost.settings:
        wall = stats.summarize(list(cost.seconds(setting).values()))
        per_epoch = wall.mean / cost.epochs
        if setting is reference:
            overhead, relative, verdict_text = "—", "—", "reference"
        else:
            d = cost.differences[setting.name]
            interval = stats.format_interval(d.ci_low, d.ci_high, scale=1, signed=True)
            overhead = f"{d.diff:+.2f} ({round(d.confidence * 100, 2):g} % CI {interval})"
            relative = f"{cost.relative(setting).mean * 100:+.0f} %"
            verdict_text = _cost_verdict(d)
        size = cost.megabytes(setting)
        rows.append(
            [
                setting.setting.label,
                f"{wall.mean:.2f} ± {wall.std:.2f}",
                f"{per_epoch:.3f}",
                overhead,
                relative,
                verdict_text,
                "—" if setting is reference else f"{size:.2f}",
            ]
        )
    header = [
        "TensorBoard",
        f"wall s of {cost.epochs} epochs (mean ± std)",
        "wall s per epoch",
        "overhead s (Holm-step CI)",
        "overhead %",
        "verdict",
        "log MB per run",
    ]
    return markdown_table(header, rows)


def _cost_verdict(d: stats.Difference) -> str:
    if d.no_spread or math.isnan(d.p_value):
        return "cannot be resolved"
    return f"{'resolved' if d.resolved else 'not resolved'} (Holm-adjusted p = {d.p_adjusted:.2g})"


# ------------------------------------------------------------------------------------------------
# The five-line answer
# ------------------------------------------------------------------------------------------------


def _per_optimizer(
    results: Sequence[OptimizerResult], name: str, value: Callable[[OptimizerResult, SettingResult], str]
) -> str:
    return ", ".join(f"{r.optimizer} {value(r, r.setting(name))}" for r in results)


def _resolved_count(results: Sequence[OptimizerResult], name: str) -> str:
    resolved = [
        r.optimizer
        for r in results
        if not r.same_model(r.setting(name)) and (d := r.setting(name).difference) is not None and d.resolved
    ]
    if not resolved:
        return f"resolved for none of the {len(results)} optimizers"
    return f"resolved for {len(resolved)} of {len(results)} ({', '.join(resolved)})"


def _has(results: Sequence[OptimizerResult], name: str) -> bool:
    return all(any(s.name == name for s in r.settings) for r in results)


def _diff(r: OptimizerResult, s: SettingResult) -> str:
    return "±0.00 (same model)" if r.same_model(s) else pp(s.difference.diff) if s.difference else "n/a"


def _epochs(r: OptimizerResult, s: SettingResult) -> str:
    return f"{s.median_epochs:g}"


def _stop_line(results: Sequence[OptimizerResult], name: str, budget: int) -> str:
    label = results[0].setting(name).setting.label
    return (
        f"{label} trains a median of {_per_optimizer(results, name, _epochs)} of {budget} epochs, and moves the"
        f" kept model's test accuracy by {_per_optimizer(results, name, _diff)} pp against the full budget,"
        f" {_resolved_count(results, name)}"
    )


def _restore_effect(results: Sequence[OptimizerResult]) -> list[tuple[int, float]]:
    """Per optimizer and EarlyStopping pair (restore_best_weights true vs false, all else equal): its patience and
    the mean over seeds of the difference in the kept model's test accuracy (with minus without)."""
    effects = []
    for r in results:
        by_keys = {tuple(s.setting.options): s for s in r.settings if s.setting.kind == EARLY_STOPPING}
        for options, with_restore in by_keys.items():
            if ("restore_best_weights", True) not in options:
                continue
            plain = tuple(
                ("restore_best_weights", False) if o == ("restore_best_weights", True) else o for o in options
            )
            if (without := by_keys.get(plain)) is not None:
                gain = statistics.fmean(
                    with_restore.scores[seed] - without.scores[seed] for seed in with_restore.scores
                )
                effects.append((int(with_restore.setting.keys.get("patience", 0)), gain))
    return effects


def answer_lines(study: Study, results: Sequence[OptimizerResult], cost: CostResult) -> list[str]:
    """Five numbered lines a student can read before anything else; each names its numbers' n."""
    lines = []
    stops = [name for name in ("es-val_loss-p0", "es-val_loss-p5-restore") if _has(results, name)]
    if stops:
        lines.append("**EarlyStopping.** " + "; ".join(_stop_line(results, name, study.epochs) for name in stops) + ".")
    effects = _restore_effect(results)
    if effects:
        gains = [gain for _, gain in effects]
        by_patience = {
            patience: statistics.fmean(gain for p, gain in effects if p == patience)
            for patience in sorted({p for p, _ in effects})
        }
        per_patience = ", ".join(f"patience {p}: {pp(gain)}" for p, gain in by_patience.items())
        lines.append(
            f"**restore_best_weights** (keep the best epoch, not the last): over the {len(effects)} EarlyStopping"
            f" settings x optimizers that differ only in it, it moves the kept model's test accuracy by"
            f" {pp(statistics.fmean(gains))} pp on average (from {pp(min(gains))} to {pp(max(gains))}; {per_patience}"
            " pp; descriptive, seed by seed); it can only matter where a run ends after its best epoch."
        )
    checkpoints = [s.name for s in results[0].settings if s.setting.kind == MODEL_CHECKPOINT]
    if checkpoints:
        parts = [
            f"by {results[0].setting(name).setting.keys['monitor']}: {_per_optimizer(results, name, _diff)} pp,"
            f" {_resolved_count(results, name)}"
            for name in checkpoints
        ]
        lines.append(
            "**ModelCheckpoint's best epoch instead of the final weights** (the whole budget trained): "
            + "; ".join(parts)
            + "."
        )
    plateaus = [s.name for s in results[0].settings if s.setting.kind == REDUCE_LR]
    if plateaus:
        parts = [
            f"{results[0].setting(name).setting.label}: {_per_optimizer(results, name, _diff)} pp,"
            f" {_resolved_count(results, name)}"
            for name in plateaus
        ]
        lines.append("**ReduceLROnPlateau on an already tuned learning rate**: " + "; ".join(parts) + ".")
    overheads = [
        f"{s.setting.label.removeprefix('TensorBoard')} {cost.relative(s).mean * 100:+.0f} %" for s in cost.settings[1:]
    ]
    lines.append(
        f"**TensorBoard's cost** in wall time ({cost.optimizer}, {len(cost.settings[0].runs)} seeds x {cost.epochs}"
        f" epochs, against no TensorBoard): {'; '.join(overheads)}."
    )
    return [f"{number}. {line}" for number, line in enumerate(lines, start=1)]


def _resolution(results: Sequence[OptimizerResult]) -> str:
    """The median half width of the verdicts' intervals, in pp (what differences the seeds can resolve)."""
    widths = [
        (s.difference.ci_high - s.difference.diff) * 100
        for r in results
        for s in r.settings[1:]
        if s.difference is not None and not math.isnan(s.difference.ci_high) and not r.same_model(s)
    ]
    return f"±{statistics.median(widths):.2f}" if widths else "n/a"


def unresolved_lines(results: Sequence[OptimizerResult]) -> list[str]:
    """What the seeds cannot separate: per optimizer, the settings that acted but whose verdict is not resolved."""
    lines = []
    for r in results:
        acted = [s for s in r.settings[1:] if not r.same_model(s)]
        open_ = [s.setting.label for s in acted if s.difference is None or not s.difference.resolved]
        never = [s.setting.label for s in r.settings[1:] if r.same_model(s)]
        text = f"  - {r.optimizer}: {len(open_)} of the {len(acted)} settings that changed the kept model are not"
        text += " resolved from the baseline"
        if never:
            text += f"; {len(never)} never acted on any seed ({', '.join(never)})"
        lines.append(text + ".")
    return lines


def markdown(study: Study, rates: dict[str, float], results: Sequence[OptimizerResult], cost: CostResult) -> str:
    seeds = ", ".join(map(str, study.seeds))
    family = len(study.settings) - 1
    rates_text = ", ".join(f"{o} {rates[o]:g}" for o in study.optimizers)
    lines = [
        "# What callbacks buy: EarlyStopping, ModelCheckpoint, ReduceLROnPlateau and TensorBoard",
        "",
        f"`make callbacks` ({study.workload}, each optimizer at its tuned learning rate, {study.epochs} epochs,"
        f" batch {study.batch_size}, seeds {seeds}; how to run and read it: docs/callbacks.md). Test accuracy is"
        " always that of the model the run keeps. Pp = percentage points.",
        "",
        "## The answer in five lines",
        "",
        *answer_lines(study, results, cost),
        "",
        "## How it was measured",
        "",
        f"- **Who trains**: {', '.join(study.optimizers)} on the {study.workload} (784-128-10), each at the learning"
        f" rate the fair comparison tuned for it ({rates_text}; read from {study.fair_summary}, a DVC dependency),"
        f" batch {study.batch_size} (the fair protocol's, at which those rates were chosen), {study.epochs} epochs"
        f" (longer than the fair protocol's budget, so that there is something to stop), seeds {seeds}. Only the"
        " divergence guards run besides the setting's callback.",
        "- **The baseline** of each optimizer and seed: no callback, the full budget, its final weights. Every"
        " setting is compared with it on the same seed.",
        "- **EarlyStopping and ModelCheckpoint are replayed, not retrained**: until it acts, a run with them is the"
        " baseline run of its seed (Keras on this CPU is bitwise-deterministic), so their real Keras callbacks are"
        " run over the baseline's recorded epochs (its logs and its weights after each epoch), and the run's model"
        " is chosen and scored by the fit core's own rule (src/callback_study/replay.py).",
        "- **ReduceLROnPlateau is forked**: its real callback is fed the baseline's logs to find the epoch at whose"
        " end it first lowers the learning rate; the run then starts from the baseline's weights and optimizer"
        " state of that epoch, with the callback's state restored, and `model.fit` trains the remaining epochs for"
        " real (a run whose rate never changes is its baseline).",
        "- **Checked**: tests/test_callback_study.py trains runs from scratch with 10 such settings (EarlyStopping"
        " with both monitors, patience 0 and > 0, restore_best_weights true and false, min_delta, start_from_epoch;"
        " the best checkpoint by each monitor; two ReduceLROnPlateau pairs) and finds the same history, stop epoch,"
        " learning rates, kept epoch and test accuracy as the replayed and forked runs.",
        "- **Wall time**: a trained run's `model.fit` time; a replayed or forked run's is its baseline's with the"
        " epochs it did not share replaced by its own (a replayed callback's own cost, a checkpoint write per"
        " improvement, is not in it; a fork's first own epoch traces the train step again, ~0.5 s).",
        f"- **Verdicts**: each setting against the baseline, paired by seed (paired t-test on the per-seed"
        f" differences), Holm-corrected per optimizer over its {family} settings, so the chance of any false"
        " \"resolved\" among one optimizer's verdicts stays under 5 %; each interval is at its Holm step's level and"
        " excludes 0 exactly when the verdict is resolved. A setting that kept the baseline's very model on every"
        ' seed never acted: "same model". A run that diverges or has no test accuracy counts as a failure (test'
        f" accuracy {FAILURE_SCORE:g}, chance), never as a smaller n.",
        "- **The baseline's best epoch**: its epoch of highest validation accuracy (what a run can know); the gap is"
        " the kept model's test accuracy minus the test accuracy of the baseline's weights at that epoch, per seed.",
        f"- **What {len(study.seeds)} seeds cannot separate**: the verdicts' intervals reach {_resolution(results)} pp"
        " from their mean difference (median over the settings that acted); smaller differences are not resolved, and"
        ' a "not resolved" is not "no effect", it is an effect too small for these seeds:',
        *unresolved_lines(results),
        "",
    ]
    for r in results:
        lines += [
            f"## {r.optimizer} (lr {r.learning_rate:g})",
            "",
            f"n = {len(study.seeds)} seeds per row; ◆ = on the Pareto frontier (no setting trains fewer epochs with a"
            " higher mean test accuracy).",
            "",
            optimizer_table(r),
        ]
    lines += [
        "## Test accuracy against epochs trained",
        "",
        "![test accuracy of the kept model against epochs trained, one panel per optimizer](pareto.png)",
        "",
        "*How to read it:* one panel per optimizer, one marker per setting at its mean epochs trained and mean test"
        " accuracy of the kept model, bars the 95 % intervals over the seeds. Square: the baseline; circles:"
        " EarlyStopping (blue val_loss, orange val_accuracy; filled with restore_best_weights); diamonds:"
        " ModelCheckpoint's best (filled: val_accuracy, open: val_loss); stars: ReduceLROnPlateau (filled: the"
        " first pair). The dashed line joins the frontier, the settings no other beats on both axes, named; up"
        " and to the left is better.",
        "",
        "## TensorBoard's cost",
        "",
        f"Real runs of {cost.optimizer} at its tuned rate, {cost.epochs} epochs, seeds"
        f" {', '.join(map(str, sorted(cost.settings[0].runs)))} (fewer than above: a cost per epoch needs no long run),"
        " each setting against the same seed without TensorBoard (the order of the settings rotates per seed);"
        " wall time of `model.fit`, so the graph and histogram writes are in it. Holm over the"
        f" {len(cost.settings) - 1} settings. Logs are measured, then deleted.",
        "",
        cost_table(cost),
        "The project's `make run` uses TensorBoard(histogram_freq=0, write_graph=true, update_freq=epoch).",
        "",
        "## Files",
        "",
        "summary.csv (a row per optimizer and setting), runs.csv (a row per run), tensorboard.csv, pareto.json (the"
        " figure's data, for `dvc plots`). Every run is a child of one MLflow parent run (experiment"
        f" `{study.experiment_name}`), tagged `setting`; a replayed run is tagged `replayed=true` and"
        " `replayed_from=<its baseline's run id>`.",
        "",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# CSV, JSON, the figure
# ------------------------------------------------------------------------------------------------


def summary_rows(results: Sequence[OptimizerResult]) -> list[list[Any]]:
    rows = []
    for r in results:
        for s in r.settings:
            a, d, gap = s.accuracy, s.difference, r.gap(s)
            rows.append(
                [
                    *(r.optimizer, r.learning_rate, s.name, s.setting.label, s.how, len(s.runs), len(s.failures)),
                    *(s.median_epochs, s.epochs.mean, s.kept_epoch.mean, s.wall.mean),
                    *(a.mean, a.std, a.ci_low, a.ci_high),
                    *((d.diff, d.ci_low, d.ci_high, d.confidence, d.p_adjusted, d.resolved) if d else [""] * 6),
                    s.name != BASELINE and r.same_model(s),
                    *((gap.mean, gap.ci_low, gap.ci_high) if gap else ["", "", ""]),
                    s.name in r.frontier,
                ]
            )
    return rows


def run_rows(results: Sequence[OptimizerResult]) -> list[list[Any]]:
    rows = []
    for r in results:
        for s in r.settings:
            for seed, record in sorted(s.runs.items()):
                m = record["metrics"]
                rows.append(
                    [
                        *(r.optimizer, s.name, seed, record["status"], record.get("how"), m["epochs_trained"]),
                        *(m.get("model_epoch"), record.get("model_weights"), m.get("test_accuracy")),
                        *(m.get("best_val_accuracy"), m.get("best_epoch"), m.get("wall_seconds"), record["run_id"]),
                    ]
                )
    return rows


def cost_rows(cost: CostResult) -> list[list[Any]]:
    rows = []
    for s in cost.settings:
        wall = stats.summarize(list(cost.seconds(s).values()))
        d = cost.differences.get(s.name)
        rows.append(
            [
                *(s.name, s.setting.label, len(s.runs), wall.mean, wall.std, wall.mean / cost.epochs),
                *((d.diff, d.ci_low, d.ci_high, d.confidence, d.p_adjusted, d.resolved) if d else [""] * 6),
                cost.relative(s).mean if d else "",
                cost.megabytes(s) if d else "",
            ]
        )
    return rows


def pareto_points(result: OptimizerResult) -> list[plots.ParetoPoint]:
    """A marker per setting: its shape by callback, EarlyStopping's colour by monitor and filled with
    restore_best_weights; the first setting of another callback filled, the next ones open."""
    points, seen = [], set()
    for s in result.settings:
        keys, kind = s.setting.keys, s.setting.kind
        colour = MONITOR_COLOURS.get(keys.get("monitor"), "#2ca02c") if kind == EARLY_STOPPING else COLOURS[kind]
        filled = bool(keys.get("restore_best_weights")) if kind == EARLY_STOPPING else kind not in seen
        seen.add(kind)
        short = s.name.removeprefix("es-")
        points.append(
            plots.ParetoPoint(
                s.setting.label, short, s.epochs, s.accuracy, MARKERS[kind], colour, filled, s.name in result.frontier
            )
        )
    return points


def write(study: Study, rates: dict[str, float], results: Sequence[OptimizerResult], cost: CostResult) -> list[Path]:
    """Every report file; returns their paths (the MLflow parent's artifacts)."""
    folder = study.report_dir
    files = {
        "callbacks.md": markdown(study, rates, results, cost),
        "summary.csv": csv_text(SUMMARY_HEADER, summary_rows(results)),
        "runs.csv": csv_text(RUN_HEADER, run_rows(results)),
        "tensorboard.csv": csv_text(COST_HEADER, cost_rows(cost)),
    }
    for name, text in files.items():
        write_text_atomic(folder / name, text)
    pareto = [
        {"optimizer": r.optimizer, "setting": s.name, "epochs_trained": s.epochs.mean, "test_accuracy": s.accuracy.mean}
        for r in results
        for s in r.settings
    ]
    write_text_atomic(folder / "pareto.json", json.dumps(pareto, indent=1) + "\n")
    panels = [(f"{r.optimizer} (lr {r.learning_rate:g})", pareto_points(r)) for r in results]
    plots.pareto(
        panels,
        folder / "pareto.png",
        "epochs trained (mean, 95 % CI)",
        "test accuracy % of the kept model",
        f"{study.workload}, {len(study.seeds)} seeds, budget {study.epochs} epochs",
    )
    return [folder / name for name in [*files, "pareto.json", "pareto.png"]]

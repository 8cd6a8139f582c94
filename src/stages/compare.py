"""`python -m src.stages.compare [mlflow.register=true]`: the DVC `compare` stage, the optimizers side by side.

Every optimizer of params.yaml was trained once per seed (`runs/<name>/seed<k>/`) and scored on the test
set (`reports/eval/<name>/scores.json`). This stage reads those files into replicates (src/analysis/replicates.py
groups, compares and tabulates them; src/analysis/plots.py draws them) and writes:
- reports/comparison.md: one row per optimizer (n, the seeds excluded and why, mean ± std and 95 % CI of
  test and best val accuracy, mean best/stopped epoch and train seconds), the verdict (each optimizer
  against the best: difference of means, its 95 % CI, resolved or not by Welch's t-test), the optimizers
  still improving when training stopped, then one row per seed;
- reports/comparison.csv (per optimizer) and reports/comparison_seeds.csv (per seed);
- reports/metrics/<name>.json: n, mean and std of test and best val accuracy, epochs, seconds: the DVC
  metrics (`dvc metrics show` prints one row per optimizer);
- reports/curves.json (val_accuracy and val_loss per epoch and seed, for DVC's plots), reports/curves.png
  (mean ± 1 std over the seeds) and reports/confusion_grid.png (test-set confusion summed over the seeds).

In MLflow it opens one parent run for the comparison (src/tracking/parent.py), makes every seed's training run
its child (tagged `setting=optimizer=<name>`), logs the reports, and tags the best run; with
`mlflow.register=true` (what dvc.yaml runs) the best run's model is registered (src/tracking/registry.py).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from src.analysis import replicates as rep
from src.analysis import tables
from src.infra.errors import UserError, exit_on_user_error
from src.infra.files import markdown_table, write_text_atomic
from src.stages.evaluate import seed_scores
from src.stages.params import read_params, seed_dir
from src.training.config import PROJECT_ROOT, flatten, shapes_training

RUNS_DIR = PROJECT_ROOT / "runs"
REPORTS_DIR = PROJECT_ROOT / "reports"
REPORT_FILES = ("comparison.md", "comparison.csv", "comparison_seeds.csv", "curves.png", "confusion_grid.png")
# What `dvc metrics show` prints per optimizer: short names, so the table fits a 120-column terminal.
DVC_METRICS = {
    "test_mean": ("test_accuracy", "mean"),
    "test_std": ("test_accuracy", "std"),
    "val_mean": ("best_val_accuracy", "mean"),
    "val_std": ("best_val_accuracy", "std"),
    "epochs": ("stopped_epoch", "mean"),
    "seconds": ("train_seconds", "mean"),
}


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise UserError(f"{path} is missing; run the stage that makes it (`dvc repro`)")
    return json.loads(path.read_text())


def load_seed(name: str, seed: int, runs_dir: Path, scores: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """One seed's files: training metrics, test scores, the settings that shaped it, history, MLflow run."""
    run = seed_dir(runs_dir, name, seed)
    training = _read_json(run / "metrics.json")
    if seed not in scores:
        raise UserError(f"reports/eval/{name}/scores.json has no seed {seed}; rerun `dvc repro train@{name}`")
    config = yaml.safe_load((run / ".hydra" / "config.yaml").read_text()) if (run / ".hydra").is_dir() else {}
    return {
        "training": training,
        "scores": scores[seed],
        "settings": {key: value for key, value in flatten(config) if shapes_training(key) and key != "train.seed"},
        "history": _read_json(run / "history.json"),
        "run": json.loads((run / "run.json").read_text()) if (run / "run.json").is_file() else {},
    }


def differing_settings(settings: Sequence[Mapping[str, Any]]) -> list[str]:
    """Settings every optimizer has but not with the same value (e.g. learning_rate after `dvc exp run -S`).
    Keys only some optimizers have (amsgrad, rho, ...) are left out: the optimizer column says it all."""
    shared = set.intersection(*(set(s) for s in settings)) - {"optimizer", "optimizer._target_"}
    return sorted(key for key in shared if len({repr(s[key]) for s in settings}) > 1)


def load_replicates(names: Sequence[str], seeds: Sequence[int], runs_dir: Path, eval_dir: Path) -> list[rep.Replicate]:
    """Every optimizer's seeds as replicates of the setting `optimizer=<name>`."""
    loaded = {}
    for name in names:
        scores = seed_scores(_read_json(eval_dir / name / "scores.json"))
        loaded[name] = [load_seed(name, seed, runs_dir, scores) for seed in seeds]
    result = []
    for name, seeds_of in loaded.items():
        for seed, files in zip(seeds, seeds_of, strict=True):
            diverged = files["training"].get("diverged") or files["scores"].get("diverged")
            metrics = {m: files["training"].get(m) for m in rep.RUN_METRICS} | {
                "test_accuracy": files["scores"].get("test_accuracy")
            }
            result.append(
                rep.Replicate(
                    setting=rep.setting_label(["optimizer"], [name]),
                    seed=seed,
                    status=rep.run_status(rep.FINISHED, bool(diverged)),
                    metrics=metrics,
                    run_id=files["run"].get("run_id", ""),
                    name=f"{name}/seed{seed}",
                    values={"optimizer": name, **files["settings"]},
                    history=files["history"],
                )
            )
    return result


def table_keys(comparison: rep.Comparison) -> list[str]:
    """The columns naming a setting: the optimizer, then the settings that differ between optimizers."""
    return ["optimizer", *differing_settings([setting.values for setting in comparison.settings])]


def dvc_metrics(setting: rep.Setting) -> dict[str, Any]:
    """One optimizer's DVC metrics (null where there is no value, e.g. the std of one seed)."""
    entry: dict[str, Any] = {"n": setting.n}
    for key, (metric, stat) in DVC_METRICS.items():
        summary = setting.summaries.get(metric)
        value = getattr(summary, stat) if summary else None
        entry[key] = float(tables.number(value)) if tables.number(value) else None
    return entry


def curve_points(comparison: rep.Comparison) -> list[dict[str, Any]]:
    """reports/curves.json: one point per optimizer, counted seed and epoch."""
    return [
        {
            "optimizer": setting.values["optimizer"],
            "seed": run.seed,
            "run": run.name,
            "epoch": epoch + 1,
            "val_accuracy": accuracy,
            "val_loss": loss,
        }
        for setting in comparison.settings
        for run in setting.counted
        for epoch, (accuracy, loss) in enumerate(
            zip(run.history["val_accuracy"], run.history["val_loss"], strict=True)  # type: ignore[index]
        )
    ]


def learning_rates(comparison: rep.Comparison) -> str:
    return ", ".join(f"{s.values['optimizer']} {s.values.get('optimizer.learning_rate')}" for s in comparison.settings)


EXPLAINED = (
    "Each optimizer against the one with the highest mean test accuracy: the difference of means with its 95 %"
    " confidence interval, resolved when Welch's t-test gives p < 0.05 (the interval excludes 0)."
)


def verdict_lines(comparison: rep.Comparison, explain: bool = False) -> list[str]:
    """The verdict as printed and written: what is compared, the verdict (with how to read it in the report),
    the optimizers still improving when training stopped, and where the tuned comparison is."""
    lines = [
        f"Compared at each optimizer's learning rate in conf/optimizer/ (Keras' defaults unless edited:"
        f" {learning_rates(comparison)}): this ranks those settings, not the optimizers at their best.",
        "",
        *comparison.verdict_lines(),
    ]
    if explain:
        lines += ["", EXPLAINED]
    improving = comparison.improving_lines()
    if improving:
        lines += ["", "Still improving when training stopped (best epoch = last epoch on most seeds):", *improving]
    return [*lines, "", "For each optimizer at its own tuned learning rate (equal tuning budget): `make fair`."]


def plot(comparison: rep.Comparison, reports_dir: Path) -> None:
    from src.analysis import plots

    panels = []
    for metric, title in (("val_accuracy", "validation accuracy"), ("val_loss", "validation loss")):
        bands = []
        for setting in comparison.settings:
            summaries = setting.bands(metric)
            if summaries:
                name = setting.values["optimizer"]
                x = range(1, len(summaries) + 1)
                bands.append(plots.Band(f"{name} (n={setting.n})", name, list(x), summaries))
        panels.append(plots.Panel(f"{title}: mean over seeds ± 1 std", "epoch", title, bands))
    plots.bands_figure(
        panels,
        reports_dir / "curves.png",
        "Each epoch averages the seeds that reached it (EarlyStopping ends seeds at different epochs)",
        "optimizer",
    )
    plots.confusion_grid(confusion_matrices(comparison, reports_dir / "eval"), reports_dir / "confusion_grid.png")


def confusion_matrices(comparison: rep.Comparison, eval_dir: Path) -> list[tuple[str, Any]]:
    """(title, the test-set confusion summed over the counted seeds) per optimizer."""
    import numpy as np

    from src.analysis.stats import format_mean_std

    result = []
    for setting in comparison.settings:
        name = setting.values["optimizer"]
        confusion = _read_json(eval_dir / name / "confusion.json")
        total = sum((np.array(confusion[str(r.seed)]) for r in setting.counted), np.zeros((10, 10), dtype=np.int64))
        summary = setting.summaries.get(rep.VERDICT_METRIC)
        accuracy = format_mean_std(summary) + " %" if summary else "n/a"
        result.append((f"{name}: {accuracy}\n(sum over {setting.n} seeds)", total))
    return result


def compare(
    names: Sequence[str], seeds: Sequence[int], runs_dir: Path = RUNS_DIR, reports_dir: Path = REPORTS_DIR
) -> tuple[rep.Comparison, list[str]]:
    """Write every report; return the comparison and the verdict lines."""
    comparison = rep.compare(load_replicates(names, seeds, runs_dir, reports_dir / "eval"), replicated=len(seeds) > 1)
    keys = table_keys(comparison)
    lines = verdict_lines(comparison)
    write_text_atomic(reports_dir / "comparison.csv", tables.settings_csv(comparison, keys))
    write_text_atomic(reports_dir / "comparison_seeds.csv", tables.replicates_csv(comparison, keys))
    text = [
        "# Optimizers on MNIST",
        "",
        f"Each optimizer trained once per seed ({', '.join(map(str, seeds))}; `seeds` in params.yaml) by"
        " `dvc repro`; accuracies in % on the 10000 test images. mean ± std is over the seeds (sample std); the"
        " 95 % CI is Student's t interval of the mean. Diverged seeds are listed under excluded and counted in"
        " no statistic.",
        "",
        markdown_table(*tables.settings_table(comparison, keys)),
        "## Verdict",
        "",
        *verdict_lines(comparison, explain=True),
        "",
        "## Per seed",
        "",
        markdown_table(*tables.replicates_table(comparison, keys)),
        "![validation curves: mean ± 1 std over the seeds](curves.png)",
        "",
        "![confusion matrices, summed over the seeds](confusion_grid.png)",
        "",
    ]
    write_text_atomic(reports_dir / "comparison.md", "\n".join(text))
    for setting in comparison.settings:
        path = reports_dir / "metrics" / f"{setting.values['optimizer']}.json"
        write_text_atomic(path, json.dumps(dvc_metrics(setting), indent=2) + "\n")
    write_text_atomic(reports_dir / "curves.json", json.dumps(curve_points(comparison), indent=1) + "\n")
    plot(comparison, reports_dir)
    return comparison, lines


def log_to_mlflow(comparison: rep.Comparison, reports_dir: Path, settings: Any) -> str | None:
    """One parent run per comparison; every seed's training run found in the store becomes its child,
    tagged with its setting; the reports are its artifacts, the best run is tagged (and, with
    `mlflow.register=true`, registered). `settings`: conf/'s `mlflow` group (store, experiment, register,
    registered_model_name). None when no seed's run is in this store."""
    from mlflow import MlflowClient

    from src.tracking import use_experiment
    from src.tracking.parent import SETTING_TAG, existing_runs, open_parent

    experiment_id = use_experiment(settings)  # the store and experiment `src.train` used
    client = MlflowClient()
    found = existing_runs(client, (run.run_id for run in comparison.replicates))
    children = [run for run in comparison.replicates if run.run_id in found]
    if not children:
        return None
    names = ",".join(s.values["optimizer"] for s in comparison.settings)
    seeds = ",".join(map(str, sorted({r.seed for r in comparison.replicates})))
    name = f"dvc compare: {names}, seeds {seeds}"
    with open_parent(experiment_id, name, {"dvc_stage": "compare", "sweep": "parent"}, client) as parent:
        for run in children:
            parent.adopt(run.run_id, {SETTING_TAG: run.setting})
        parent.log_files([*(reports_dir / report for report in REPORT_FILES), reports_dir / "metrics"])
        winner = comparison.best_run()
        winner = winner if winner is not None and winner.run_id in found else None
        parent.tag_best(comparison, winner)
        if winner is not None and settings.get("register"):
            from src.tracking.registry import register_best

            message = register_best(winner.run_id, comparison.best_values(), settings.registered_model_name)
            if message:
                print(message)
    return parent.run_id


def mlflow_config(overrides: list[str]) -> Any:
    """conf/'s `mlflow` group with the command line's overrides (`... mlflow.register=true`)."""
    from src.training.config import compose, validate

    cfg = compose(overrides, command="src.stages.compare")  # Hydra's error as one line led by the command
    validate(cfg)  # mlflow.register, mlflow.registered_model_name: before any run exists
    return cfg.mlflow


def main() -> None:
    with exit_on_user_error():
        names, seeds = read_params()
        settings = mlflow_config(sys.argv[1:])
        comparison, lines = compare(names, seeds)
        parent_run_id = log_to_mlflow(comparison, REPORTS_DIR, settings)
    print(markdown_table(*tables.settings_table(comparison, table_keys(comparison))))
    print("\n".join(lines))
    print(f"Report: {REPORTS_DIR / 'comparison.md'} (curves.png, confusion_grid.png beside it); `make plots` for HTML")
    if parent_run_id:
        from src.tracking.links import children_url

        print(f"MLflow: parent run {parent_run_id}; its runs side by side (make ui): {children_url(parent_run_id)}")


if __name__ == "__main__":
    main()

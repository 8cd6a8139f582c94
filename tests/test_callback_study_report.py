"""The callback study's numbers and report on synthetic run records (no training): verdicts against the baseline
paired by seed with Holm over the family, failures counted, "the same model", the gap to the baseline's best epoch,
the Pareto frontier, and the report's five-line answer."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from src.analysis import stats
from src.callback_study import report_files, settings
from src.callback_study.results import FAILURE_SCORE, OptimizerResult, SettingResult, collect, collect_cost
from src.callback_study.settings import BASELINE, Setting

SEEDS = (1, 2, 3, 4, 5)


def record(accuracy: float | None, epochs: int, kept: int, status: str = "FINISHED", **extra: Any) -> dict[str, Any]:
    return {
        "status": status,
        "how": "replayed",
        "run_id": "r",
        "metrics": {
            "test_accuracy": accuracy,
            "epochs_trained": epochs,
            "model_epoch": kept,
            "wall_seconds": epochs / 2,
        },
        **extra,
    }


def baseline_runs() -> dict[int, dict[str, Any]]:
    """Best validation epoch 4 of 10, whose weights score 0.975 on the test set."""
    runs = {
        seed: record(0.97 + seed * 1e-4, 10, 10, best_epoch_test_accuracy=0.975) | {"how": "trained"} for seed in SEEDS
    }
    for run in runs.values():
        run["metrics"]["best_epoch"] = 4
    return runs


def optimizer_result(**settings_runs: dict[int, dict[str, Any]]) -> OptimizerResult:
    results = [SettingResult(Setting(BASELINE), baseline_runs())]
    for name, runs in settings_runs.items():
        setting = Setting(settings.EARLY_STOPPING, (("monitor", "val_loss"), ("patience", int(name[-1]))))
        results.append(SettingResult(setting, runs))
    differences = stats.against_reference({s.name: s.scores for s in results}, BASELINE)
    for result, difference in zip(results[1:], differences, strict=True):
        result.difference = difference
    return OptimizerResult("adam", 0.003, 10, results)


def test_a_setting_that_never_acted_is_the_baselines_model_not_a_statistic() -> None:
    base = baseline_runs()
    result = optimizer_result(p5={seed: dict(base[seed]) for seed in SEEDS})
    never = result.settings[1]
    assert result.same_model(never)
    assert "never acted" in report_files.verdict(result, never)


def test_a_consistent_loss_is_resolved_and_its_interval_excludes_zero() -> None:
    stopped = {seed: record(0.96 + seed * 1e-4 + (seed % 2) * 2e-4, 3, 3) for seed in SEEDS}
    result = optimizer_result(p0=stopped)
    d = result.settings[1].difference
    assert d.resolved and d.ci_high < 0
    assert "resolved" in report_files.verdict(result, result.settings[1])
    gap = result.gap(result.settings[1])  # against the baseline's best epoch (0.975 on every seed)
    assert gap.mean == pytest.approx(statistics_mean([0.96 + s * 1e-4 + (s % 2) * 2e-4 - 0.975 for s in SEEDS]))


def statistics_mean(values: list[float]) -> float:
    return math.fsum(values) / len(values)


def test_a_diverged_run_counts_as_a_failure_never_as_a_smaller_n() -> None:
    runs = {seed: record(0.97 + seed * 1e-4, 10, 10) for seed in SEEDS}
    runs[3] = record(None, 4, 4, status="diverged")
    result = optimizer_result(p2=runs)
    setting = result.settings[1]
    assert setting.failures == [3] and setting.accuracy.n == 5
    assert setting.scores[3] == FAILURE_SCORE
    assert "1 of 5 failed" in report_files.optimizer_table(result)


def test_holm_over_the_family_widens_the_intervals_and_agrees_with_the_verdicts() -> None:
    base = {seed: 0.97 + seed * 1e-4 for seed in SEEDS}
    groups = {
        BASELINE: base,
        "a": {seed: value - 0.002 - (seed % 2) * 3e-4 for seed, value in base.items()},
        "b": {seed: value + (seed % 3 - 1) * 2e-4 for seed, value in base.items()},
    }
    differences = stats.against_reference(groups, BASELINE)
    assert [d.setting for d in differences] == ["a", "b"] and {d.best for d in differences} == {BASELINE}
    for d in differences:
        alone = stats.paired(groups[d.setting], base)
        assert d.ci_high - d.ci_low >= alone.ci_high - alone.ci_low  # a Holm step's level is at least 95 %
        assert d.resolved == (d.ci_high < 0 or d.ci_low > 0)
        assert d.p_adjusted >= alone.p_value


def test_the_frontier_keeps_the_settings_no_other_beats_on_both_axes() -> None:
    cheap = {seed: record(0.965, 3, 3) for seed in SEEDS}
    better = {seed: record(0.975, 6, 4) for seed in SEEDS}
    worse = {seed: record(0.96, 8, 8) for seed in SEEDS}  # more epochs and lower accuracy than `better`
    result = optimizer_result(p0=cheap, p2=better, p5=worse)
    assert result.frontier == ["es-val_loss-p0", "es-val_loss-p2"]


def study_files(tmp_path: Path) -> settings.Study:
    """A 2-optimizer, 2-seed study whose records are written by hand into tmp_path."""
    import hashlib
    import json

    summary = tmp_path / "summary.csv"
    summary.write_text("workload,optimizer,tuned_lr\nmlp,adam,0.003\nmlp,rmsprop,0.003\n")
    lock = {
        "stages": {"report": {"outs": [{"path": str(summary), "md5": hashlib.md5(summary.read_bytes()).hexdigest()}]}}
    }
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    config = yaml.safe_load((settings.CONFIG_DIR / settings.GROUP / "default.yaml").read_text())
    config |= {
        "optimizers": ["adam", "rmsprop"],
        "seeds": [1, 2],
        "fair_summary": str(summary),
        "fair_lock": str(tmp_path / "dvc.lock"),
        "trials_dir": str(tmp_path / "trials"),
        "report_dir": str(tmp_path / "report"),
        "tensorboard": config["tensorboard"] | {"seeds": [1, 2]},
    }
    study = settings.read_study(config)
    for optimizer in study.optimizers:
        for trial in settings.budget_trials(study, optimizer):
            kind = trial.setting.kind
            stop = 4 if kind == settings.EARLY_STOPPING and trial.setting.keys["patience"] == 0 else study.epochs
            run = record(0.97 + trial.seed * 1e-4 - (0.001 if stop == 4 else 0.0), stop, stop)
            run |= {"history": {"epoch_seconds": [0.5] * stop}, "how": "trained" if kind == BASELINE else "replayed"}
            if kind == BASELINE:
                run |= {"best_epoch_test_accuracy": 0.972}
                run["metrics"]["best_epoch"] = 3
            _write(trial.folder(study.trials_dir), run, json)
    for trial in settings.cost_trials(study):
        run = record(0.97, study.cost_epochs, study.cost_epochs, tensorboard_bytes=10_000)
        run["metrics"]["wall_seconds"] = 2.0 + 0.1 * bool(trial.setting.keys) + 0.01 * trial.seed
        run["history"] = {"epoch_seconds": [0.4] * study.cost_epochs}
        _write(trial.folder(study.trials_dir), run, json)
    return study


def _write(folder: Path, run: dict[str, Any], json: Any) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "trial.json").write_text(json.dumps(run))


def test_the_report_opens_with_five_numbered_lines_and_writes_every_file(tmp_path: Path) -> None:
    study = study_files(tmp_path)
    rates = settings.tuned_rates(study)
    results, cost = collect(study, rates), collect_cost(study)
    paths = report_files.write(study, rates, results, cost)
    assert {path.name for path in paths} == {
        "callbacks.md",
        "summary.csv",
        "runs.csv",
        "tensorboard.csv",
        "pareto.json",
        "pareto.png",
    }
    text = (study.report_dir / "callbacks.md").read_text()
    answer = text.split("## The answer in five lines\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert [line[:3] for line in answer] == ["1. ", "2. ", "3. ", "4. ", "5. "]
    assert "EarlyStopping(val_loss, patience=0) trains a median of adam 4, rmsprop 4 of 20 epochs" in answer[0]
    assert "TensorBoard's cost" in answer[4] and "+5 %" in answer[4]  # 0.1 s of ~2 s on every seed
    assert "## adam (lr 0.003)" in text and "## rmsprop (lr 0.003)" in text
    assert text.count("never acted") >= 2  # every setting that kept the baseline's model says so

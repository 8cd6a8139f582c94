"""The compare stage against values computed by hand: synthetic runs/ and reports/eval/ folders (what the
train stages write), the real report writers, a real MLflow SQLite store in tmp_path. No Keras."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from omegaconf import OmegaConf

from src.infra.errors import ConfigError
from src.stages import compare
from src.stages.params import read_params, validate_seeds
from tests.conftest import store_with_tables

T_975_DF2 = 4.302652729911275  # Student's t quantile 0.975, 2 degrees of freedom (tables)
T_975_DF1 = 12.706204736174707


def write_seed(
    root: Path,
    name: str,
    seed: int,
    test_accuracy: float | None,
    val_accuracy: list[float],
    train_seconds: float,
    diverged: bool = False,
    run_id: str | None = None,
    **settings: object,
) -> None:
    """runs/<name>/seed<seed>/ and its entry in reports/eval/<name>/ as the train stage writes them."""
    run = root / "runs" / name / f"seed{seed}"
    (run / ".hydra").mkdir(parents=True)
    best = max(range(len(val_accuracy)), key=val_accuracy.__getitem__)
    training = {
        "best_val_accuracy": val_accuracy[best],
        "best_epoch": best + 1,
        "stopped_epoch": len(val_accuracy),
        "train_seconds": train_seconds,
        "diverged": diverged,
    }
    (run / "metrics.json").write_text(json.dumps(training))
    history = {"val_accuracy": val_accuracy, "val_loss": [1 - v for v in val_accuracy]}
    (run / "history.json").write_text(json.dumps(history))
    config = {"optimizer": {"_target_": name, **settings}, "train": {"seed": seed, "epochs": 10}}
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    if run_id:
        (run / "run.json").write_text(json.dumps({"run_id": run_id, "run_name": f"{name},seed={seed}"}))
    evaluation = root / "reports" / "eval" / name
    evaluation.mkdir(parents=True, exist_ok=True)
    metrics_file, confusion_file = evaluation / "scores.json", evaluation / "confusion.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    confusion = json.loads(confusion_file.read_text()) if confusion_file.is_file() else {}
    if test_accuracy is None:
        metrics[f"seed{seed}"] = {"diverged": True}
    else:
        metrics[f"seed{seed}"] = {"test_loss": 0.1, "test_accuracy": test_accuracy}
        confusion[str(seed)] = [[seed if row == column else 0 for column in range(10)] for row in range(10)]
    metrics_file.write_text(json.dumps(metrics))
    confusion_file.write_text(json.dumps(confusion))


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """adam: 3 seeds; rmsprop: 2 seeds and a third that diverged (no checkpoint, no test score)."""
    write_seed(tmp_path, "adam", 1, 0.97, [0.95, 0.96], 10.0, learning_rate=0.001)
    write_seed(tmp_path, "adam", 2, 0.98, [0.95, 0.97, 0.96], 11.0, learning_rate=0.001)
    write_seed(tmp_path, "adam", 3, 0.99, [0.96, 0.98, 0.97, 0.97], 12.0, learning_rate=0.001)
    write_seed(tmp_path, "rmsprop", 1, 0.96, [0.94, 0.95], 8.0, learning_rate=0.01)
    write_seed(tmp_path, "rmsprop", 2, 0.97, [0.95, 0.96], 9.0, learning_rate=0.01)
    write_seed(tmp_path, "rmsprop", 3, None, [0.1, 0.1], 1.0, diverged=True, learning_rate=0.01)
    return tmp_path


def run_compare(root: Path, names=("adam", "rmsprop"), seeds=(1, 2, 3)):
    return compare.compare(list(names), list(seeds), root / "runs", root / "reports")


def test_groups_summaries_and_diverged_seeds_by_hand(project: Path) -> None:
    comparison, _ = run_compare(project)
    adam, rmsprop = comparison.settings
    test = adam.summaries["test_accuracy"]
    assert test.n == 3 and test.mean == pytest.approx(0.98) and test.std == pytest.approx(0.01)
    assert test.ci_high - test.mean == pytest.approx(T_975_DF2 * 0.01 / math.sqrt(3))
    assert adam.summaries["best_val_accuracy"].mean == pytest.approx((0.96 + 0.97 + 0.98) / 3)
    assert adam.summaries["best_epoch"].mean == pytest.approx((2 + 2 + 2) / 3)
    assert adam.summaries["stopped_epoch"].mean == pytest.approx(3.0)
    assert adam.summaries["train_seconds"].mean == pytest.approx(11.0)
    # the diverged seed counts nowhere, and is listed
    assert len(rmsprop.counted) == 2 and rmsprop.excluded == "seed 3 (diverged)"
    assert rmsprop.summaries["test_accuracy"].mean == pytest.approx(0.965)
    assert rmsprop.summaries["test_accuracy"].std == pytest.approx(math.sqrt(0.00005))
    assert rmsprop.summaries["train_seconds"].mean == pytest.approx(8.5)


def test_reports_hold_the_aggregates_the_verdict_and_every_seed(project: Path) -> None:
    run_compare(project)
    reports = project / "reports"
    rows = list(csv.DictReader((reports / "comparison.csv").open()))
    assert [row["optimizer"] for row in rows] == ["adam", "rmsprop"]
    assert float(rows[0]["test_accuracy_mean"]) == pytest.approx(0.98)
    assert float(rows[0]["test_accuracy_std"]) == pytest.approx(0.01)
    assert float(rows[0]["test_accuracy_ci_low"]) == pytest.approx(0.98 - T_975_DF2 * 0.01 / math.sqrt(3), abs=1e-5)
    assert rows[1]["n"] == "2" and rows[1]["excluded"] == "seed 3 (diverged)"
    assert "optimizer.learning_rate" in rows[0]  # a setting that differs between the optimizers
    seeds = list(csv.DictReader((reports / "comparison_seeds.csv").open()))
    assert [(r["optimizer"], r["seed"], r["status"]) for r in seeds][-1] == ("rmsprop", "3", "diverged")
    assert len(seeds) == 6

    adam = json.loads((reports / "metrics" / "adam.json").read_text())  # what `dvc metrics show` prints
    assert adam == {
        "n": 3,
        "test_mean": 0.98,
        "test_std": 0.01,
        "val_mean": 0.97,
        "val_std": 0.01,
        "epochs": 3.0,
        "seconds": 11.0,
    }
    rmsprop = json.loads((reports / "metrics" / "rmsprop.json").read_text())
    assert rmsprop["n"] == 2 and rmsprop["seconds"] == pytest.approx(8.5)

    text = (reports / "comparison.md").read_text()
    assert "| adam | 0.001 | 3 |  | 98.00 ± 1.00 |" in text  # the learning rate differs: it gets a column
    assert "| rmsprop | 0.01 | 2 | seed 3 (diverged) | 96.50 ± 0.71 |" in text
    assert "(Keras' defaults unless edited: adam 0.001, rmsprop 0.01)" in text
    # rmsprop's best epoch is its last on both counted seeds, adam's on 1 of 3
    assert "- optimizer=rmsprop: best epoch = last epoch on 2 of 2 seeds" in text and "optimizer=adam: best" not in text
    assert "`make fair`" in text
    # rmsprop vs adam: -1.5 pp; Welch's t-test on (0.96, 0.97) vs (0.97, 0.98, 0.99)
    assert "- optimizer=rmsprop vs optimizer=adam: -1.50 pp (95 % CI" in text
    assert "not resolved with 2 vs 3 seeds" in text
    assert "## Per seed" in text and "| rmsprop | 0.01 | 3 | n/a | 10.00 | 1 | 2 | 1 | diverged |" in text

    curves = json.loads((reports / "curves.json").read_text())
    assert {(p["optimizer"], p["seed"]) for p in curves} == {
        ("adam", 1),
        ("adam", 2),
        ("adam", 3),
        ("rmsprop", 1),
        ("rmsprop", 2),
    }
    assert {p["run"] for p in curves if p["optimizer"] == "adam"} == {"adam/seed1", "adam/seed2", "adam/seed3"}
    for image in ("curves.png", "confusion_grid.png"):
        assert (reports / image).read_bytes()[:4] == b"\x89PNG"


def test_one_seed_names_no_winner(project: Path) -> None:
    comparison, lines = run_compare(project, seeds=(1,))
    assert all(setting.n == 1 for setting in comparison.settings)
    assert any("no difference between settings can be resolved" in line for line in lines)
    assert not any(line.startswith(("Best on", "Highest mean")) for line in lines)
    metrics = json.loads((project / "reports" / "metrics" / "adam.json").read_text())
    assert metrics["n"] == 1 and metrics["test_std"] is None
    assert "| adam | 0.001 | 1 |  | 97.00 (n=1) | n/a |" in (project / "reports" / "comparison.md").read_text()


def test_a_resolved_best_is_named(tmp_path: Path) -> None:
    for seed, (a, b) in enumerate([(0.975, 0.91), (0.974, 0.912), (0.976, 0.909)], start=1):
        write_seed(tmp_path, "adam", seed, a, [0.97], 5.0)
        write_seed(tmp_path, "adagrad", seed, b, [0.9], 5.0)
    _, lines = run_compare(tmp_path, names=("adam", "adagrad"))
    assert "Best on test accuracy: **optimizer=adam**, ahead of every other setting by a resolved difference." in lines
    assert lines[0].startswith("Compared at each optimizer's learning rate in conf/optimizer/")


def test_parent_run_gets_the_reports_children_and_the_best(project: Path, tmp_path: Path) -> None:
    uri = store_with_tables(tmp_path)
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("mnist-optimizers", artifact_location=str(tmp_path / "artifacts"))
    ids = {}
    for name in ("adam", "rmsprop"):
        for seed in (1, 2, 3):
            ids[name, seed] = client.create_run(experiment_id, run_name=f"{name},{seed}").info.run_id
            run_json = project / "runs" / name / f"seed{seed}" / "run.json"
            run_json.write_text(json.dumps({"run_id": ids[name, seed]}))
    comparison, _ = run_compare(project)
    settings = OmegaConf.create(
        {"tracking_uri": uri, "experiment_name": "mnist-optimizers", "artifact_location": None, "register": False}
    )
    parent_id = compare.log_to_mlflow(comparison, project / "reports", settings)
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    # adam's best seed (0.98 best val accuracy); the per-setting statistics are in comparison.csv, not metrics
    assert parent.data.metrics == {"best_setting_test_accuracy_mean": pytest.approx(0.98), "best_val_accuracy": 0.98}
    tags = parent.data.tags
    assert tags["best_setting"] == "optimizer=adam" and tags["best_resolved"] == "false"
    assert tags["best_child_run_id"] == ids["adam", 3] and tags["best_child_run_name"] == "adam,3"
    for (name, _), run_id in ids.items():
        tags = client.get_run(run_id).data.tags
        assert tags["mlflow.parentRunId"] == parent_id and tags["setting"] == f"optimizer={name}"
    artifacts = {a.path for a in client.list_artifacts(parent_id)}
    assert {"comparison.md", "comparison.csv", "comparison_seeds.csv", "metrics", "curves.png"} <= artifacts


def test_a_missing_evaluation_says_which_stage_to_run(project: Path) -> None:
    with pytest.raises(compare.UserError, match=r"no seed 4; rerun `dvc repro train@adam`"):
        (project / "runs" / "adam" / "seed4").mkdir()
        (project / "runs" / "adam" / "seed4" / "metrics.json").write_text("{}")
        run_compare(project, seeds=(1, 4))


@pytest.mark.parametrize(
    ("seeds", "message"),
    [
        ([], r"seeds=\[\] holds no seed; use a list of distinct integers"),
        ([1, 2, 1], r"seeds=\[1, 2, 1\] repeats 1; use a list of distinct integers"),
        ([1, 2.5], r"seeds=\[1, 2.5\] holds 2.5, not a non-negative integer"),
        ([1, "2"], r"seeds=\[1, '2'\] holds '2', not a non-negative integer"),
        ([True], r"seeds=\[True\] holds True, not a non-negative integer"),
        (3, r"seeds=3 must be a list"),
    ],
)
def test_bad_seeds_are_one_line_errors_naming_the_key(tmp_path: Path, seeds: object, message: str) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"optimizers": ["adam"], "seeds": seeds}))
    with pytest.raises(ConfigError, match=rf"^params.yaml: {message}") as error:
        read_params(params)
    assert "\n" not in str(error.value)


def test_good_seeds_and_a_missing_key(tmp_path: Path) -> None:
    assert validate_seeds([3, 1, 2]) == [3, 1, 2]
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"optimizers": ["adam"]}))
    with pytest.raises(ConfigError, match=r"params\.yaml has no `seeds`"):
        read_params(params)


def result(name: str, **settings: object) -> dict:
    return {"optimizer._target_": name, **settings}


def test_only_shared_settings_with_different_values_are_shown() -> None:
    results = [
        result("adam", **{"optimizer.learning_rate": 0.001, "optimizer.amsgrad": False, "train.epochs": 10}),
        result("rmsprop", **{"optimizer.learning_rate": 0.01, "optimizer.rho": 0.9, "train.epochs": 10}),
    ]
    assert compare.differing_settings(results) == ["optimizer.learning_rate"]
    same = [
        result("adam", **{"optimizer.learning_rate": 0.001}),
        result("adagrad", **{"optimizer.learning_rate": 0.001}),
    ]
    assert compare.differing_settings(same) == []

"""`dvc repro` for real, in a temporary git repo copy of the project, with small settings."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from src.training.config import PROJECT_ROOT

pytestmark = pytest.mark.slow


def sh(*command: str, cwd: Path, check: bool = True, columns: int | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    if columns:
        env["COLUMNS"] = str(columns)  # the terminal width DVC's tables fit
    env |= {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    env.pop("MLFLOW_TRACKING_URI", None)
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if check:
        assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def stages_run(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


def set_seeds(project: Path, seeds: str) -> None:
    params = project / "params.yaml"
    params.write_text(re.sub(r"(?m)^seeds: .*$", f"seeds: {seeds}", params.read_text()))


def trained_runs(project: Path) -> dict[str, str]:
    """{"adam/seed1": the MLflow run id its folder records, ...}"""
    return {
        str(record.parent.relative_to(project / "runs")): json.loads(record.read_text())["run_id"]
        for record in sorted((project / "runs").glob("*/seed*/stage.json"))
    }


OPTIMIZERS = ["adam", "rmsprop"]
LEARNING_RATE = "conf/optimizer/rmsprop.yaml:learning_rate"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> Path:
    """The project's files (as git sees them) in a fresh git repo, trained small: 2000 images, 1 epoch,
    2 optimizers x 2 seeds."""
    root = tmp_path_factory.mktemp("project")
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    for name in listed:
        if (PROJECT_ROOT / name).is_file() and not name.startswith(("reports/", "runs/")) and name != "dvc.lock":
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(PROJECT_ROOT / name, root / name)
    config = root / "conf" / "config.yaml"
    config.write_text(re.sub(r"(?m)^  epochs: \d+", "  epochs: 1", config.read_text()))
    data_config = root / "conf" / "data" / "mnist.yaml"
    data_config.write_text(re.sub(r"(?m)^limit: null", "limit: 2000", data_config.read_text()))
    params = root / "params.yaml"
    params.write_text(re.sub(r"(?m)^  - adagrad\n", "", params.read_text()))
    set_seeds(root, "[1, 2]")
    (root / "data" / ".cache").mkdir(parents=True)
    for wheel in (mnist_dir / ".cache").glob("*.whl"):  # the fetch stage finds the mirror's wheel cached
        shutil.copy2(wheel, root / "data" / ".cache" / wheel.name)
    sh("git", "init", "-q", cwd=root)
    sh("git", "add", "-A", cwd=root)
    sh("git", "commit", "-qm", "copy", cwd=root)
    first = sh("dvc", "repro", cwd=root)
    (root / "first_repro.log").write_text(first.stdout)
    return root


def test_repro_runs_every_stage_and_trains_each_seed_once(project: Path) -> None:
    log = (project / "first_repro.log").read_text()
    stages = stages_run(log)  # DVC orders independent stages as it likes: the train stages in any order
    assert stages[0] == "fetch" and sorted(stages[1:-1]) == sorted(f"train@{o}" for o in OPTIMIZERS)
    assert stages[-1] == "compare"
    assert "train@adam: training seeds [1, 2]; kept from earlier runs: none" in log
    assert sorted(trained_runs(project)) == ["adam/seed1", "adam/seed2", "rmsprop/seed1", "rmsprop/seed2"]


def test_reports_metrics_and_plots_hold_every_optimizer_and_seed(project: Path) -> None:
    reports = project / "reports"
    text = (reports / "comparison.md").read_text()
    table = [line for line in text.split("## Verdict")[0].splitlines() if line.startswith("| ")]
    assert [row.split("|")[1].strip() for row in table[1:]] == OPTIMIZERS
    assert [row.split("|")[2].strip() for row in table[1:]] == ["2", "2"]  # n
    assert "optimizer=rmsprop vs optimizer=adam" in text or "optimizer=adam vs optimizer=rmsprop" in text
    csv_rows = (reports / "comparison.csv").read_text().splitlines()
    assert csv_rows[0].startswith("setting,optimizer,n,excluded,test_accuracy_mean,test_accuracy_std,test_accuracy_ci")
    assert len(csv_rows) == 3 and len((reports / "comparison_seeds.csv").read_text().splitlines()) == 5
    for image in ("curves.png", "confusion_grid.png"):
        assert (reports / image).read_bytes()[:4] == b"\x89PNG"
    curves = json.loads((reports / "curves.json").read_text())
    assert {(point["optimizer"], point["seed"]) for point in curves} == {(o, s) for o in OPTIMIZERS for s in (1, 2)}
    predictions = (reports / "eval" / "rmsprop" / "predictions.csv").read_text().splitlines()
    assert predictions[0] == "seed,actual,predicted" and len(predictions) == 2 * 10000 + 1

    # DVC's metrics: what a user compares between experiments, one row per optimizer
    shown = json.loads(sh("dvc", "metrics", "show", "--json", cwd=project).stdout)
    metrics = next(iter(shown.values()))["data"]
    assert sorted(metrics) == [f"reports/metrics/{o}.json" for o in OPTIMIZERS]
    adam = metrics["reports/metrics/adam.json"]["data"]
    assert set(adam) == {"n", "test_mean", "test_std", "val_mean", "val_std", "epochs", "seconds"}
    assert adam["n"] == 2 and 0 < adam["test_mean"] <= 1 and adam["test_std"] >= 0
    table = sh("dvc", "metrics", "show", cwd=project, columns=120).stdout.splitlines()
    assert len(table) == 1 + len(OPTIMIZERS) and max(map(len, table)) <= 120, table
    scores = json.loads((reports / "eval" / "adam" / "scores.json").read_text())  # a plain file, not a metric
    assert 0 < scores["seed1"]["test_accuracy"] <= 1 and "precision" in scores
    sh("dvc", "plots", "show", "-o", str(project / "plots_html"), cwd=project)
    assert (project / "plots_html" / "index.html").is_file()


def test_dvc_runs_are_grouped_under_one_compare_parent_in_mlflow(project: Path) -> None:
    client = MlflowClient(f"sqlite:///{project}/mlflow.db")
    experiment = client.get_experiment_by_name("mnist-optimizers")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("dvc_stage") == "compare"]
    assert len(parents) == 1
    parent = parents[0]
    assert len(runs) == 5  # no sweep parent per train stage: the comparison is the only parent
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.tags["dvc_stage"] for r in children) == ["train@adam"] * 2 + ["train@rmsprop"] * 2
    assert sorted(r.data.tags["setting"] for r in children) == ["optimizer=adam"] * 2 + ["optimizer=rmsprop"] * 2
    for child in children:  # the folder records the hash src.train tagged the run with
        folder = project / child.data.tags["output_dir"]
        assert json.loads((folder / "stage.json").read_text())["config_hash"] == child.data.tags["config_hash"]
    # what a search sorts parents on (per-setting statistics are in the summary files, not parent metrics)
    assert set(parent.data.metrics) == {"best_setting_test_accuracy_mean", "best_val_accuracy"}
    assert parent.data.tags["best_child_run_id"] in {c.info.run_id for c in children}
    assert parent.data.tags["best_resolved"] in ("true", "false")
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"comparison.md", "comparison_seeds.csv", "curves.png", "confusion_grid.png"} <= artifacts


def test_one_run_one_model_one_number(project: Path, mnist_dir: Path) -> None:
    """For every run of the repro: its MLflow metric test_accuracy, its scores.json entry, its row in the
    compare report and the accuracy of its logged MLflow model on the test set are one number; and the
    registered champion's accuracy is its run's (the report and the registry read the run's own model)."""
    import mlflow
    import numpy as np

    from src.training import data
    from tests.conftest import tracking_uri

    uri = f"sqlite:///{project}/mlflow.db"
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("mnist-optimizers")
    children = client.search_runs([experiment.experiment_id], "tags.dvc_stage LIKE 'train@%'")
    report_rows = {(row["optimizer"], row["seed"]): row for row in _csv(project / "reports" / "comparison_seeds.csv")}
    arrays = data.read_npz(mnist_dir / "mnist.npz")

    def accuracy(model_uri: str) -> float:
        with tracking_uri(uri):
            model = mlflow.pyfunc.load_model(model_uri)
        return float(np.mean(np.argmax(np.asarray(model.predict(arrays["x_test"])), axis=1) == arrays["y_test"]))

    accuracies: dict[str, list[float]] = {}
    for child in children:
        optimizer, seed = child.data.params["optimizer"], child.data.params["train.seed"]
        metric = child.data.metrics["test_accuracy"]
        scores = json.loads((project / "reports" / "eval" / optimizer / "scores.json").read_text())[f"seed{seed}"]
        assert scores["test_accuracy"] == metric and scores["model_weights"] == child.data.tags["model_weights"]
        assert float(report_rows[(optimizer, seed)]["test_accuracy"]) == metric  # k/10000: exact at 5 decimals
        assert accuracy(f"models:/{child.outputs.model_outputs[0].model_id}") == metric
        assert child.data.tags["model_weights"] == "best_checkpoint"  # make run's callbacks keep the best
        accuracies.setdefault(optimizer, []).append(metric)
    assert sorted(accuracies) == OPTIMIZERS and all(len(values) == 2 for values in accuracies.values())
    for row in _csv(project / "reports" / "comparison.csv"):  # one row per optimizer: the mean of those numbers
        assert float(row["test_accuracy_mean"]) == round(sum(accuracies[row["optimizer"]]) / 2, 5)
    (parent,) = client.search_runs([experiment.experiment_id], "tags.dvc_stage = 'compare'")
    best = parent.data.tags["best_setting"].removeprefix("optimizer=")
    assert parent.data.metrics["best_setting_test_accuracy_mean"] == pytest.approx(sum(accuracies[best]) / 2, abs=1e-12)
    champion = client.get_model_version_by_alias("mnist-optimizers", "champion")
    champion_run = client.get_run(champion.run_id)
    assert accuracy("models:/mnist-optimizers@champion") == champion_run.data.metrics["test_accuracy"]
    setting = accuracies[champion_run.data.params["optimizer"]]
    assert sorted(json.loads(champion.tags["test_accuracy_values"])) == sorted(setting)


def _csv(path: Path) -> list[dict[str, str]]:
    import csv

    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def test_second_repro_does_nothing_and_one_edit_reruns_only_its_stages(project: Path) -> None:
    again = sh("dvc", "repro", cwd=project)
    assert stages_run(again.stdout) == []
    sh("git", "add", "-A", cwd=project)  # what a user commits after a repro: dvc.lock, reports/
    sh("git", "commit", "-qm", "first repro", cwd=project)
    before = trained_runs(project)
    rmsprop = project / "conf" / "optimizer" / "rmsprop.yaml"
    rmsprop.write_text(re.sub(r"(?m)^learning_rate: 0.001", "learning_rate: 0.002", rmsprop.read_text()))
    status = json.loads(sh("dvc", "status", "--json", "dvc.yaml", cwd=project).stdout)  # not fair/dvc.yaml
    assert set(status) == {"train@rmsprop"}
    rerun = sh("dvc", "repro", cwd=project)
    assert stages_run(rerun.stdout) == ["train@rmsprop", "compare"]
    after = trained_runs(project)
    assert {k: v for k, v in after.items() if k.startswith("adam")} == {
        k: v for k, v in before.items() if k.startswith("adam")
    }
    assert all(after[k] != before[k] for k in ("rmsprop/seed1", "rmsprop/seed2"))
    diff = sh("dvc", "metrics", "diff", cwd=project, columns=120).stdout.splitlines()
    assert diff[0].split() == ["Path", "Metric", "HEAD", "workspace", "Change"]
    assert all("rmsprop.json" in line for line in diff[1:]) and max(map(len, diff)) <= 120, diff
    # what the README suggests for a 120-column terminal: the changed test means and params, not the hashes
    drop = "runs|reports/eval|.*(_std|seconds|epochs|val_mean)"
    changed = sh("dvc", "exp", "show", "--only-changed", "--no-pager", "--drop", drop, cwd=project, columns=120).stdout
    header = changed.splitlines()[1].split()
    assert header == ["Experiment", "Created", "reports/metrics/rmsprop.json:test_mean", LEARNING_RATE], changed


def training_runs(project: Path) -> int:
    """How many runs the train stages created in the project's MLflow store."""
    client = MlflowClient(f"sqlite:///{project}/mlflow.db")
    experiments = [e.experiment_id for e in client.search_experiments()]
    return len(client.search_runs(experiments, "tags.dvc_stage LIKE 'train@%'", max_results=1000))


def run_count(project: Path) -> int:
    client = MlflowClient(f"sqlite:///{project}/mlflow.db")
    return len(client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1000))


# The next two tests run in this order (pytest keeps the file's order): the repro that fails on bad seeds, then
# the repro after it, which adds a seed.


def test_bad_seeds_stop_the_pipeline_before_training(project: Path) -> None:
    """One bad value through the real `dvc repro`: DVC's exit code, the one error line, nothing trained, no
    run created. Every kind of bad value ([], repeats, 2.5, '2', True, not a list) and its message is checked in
    process: tests/test_compare.py::test_bad_seeds_are_one_line_errors_naming_the_key."""
    runs_before, folders_before = run_count(project), trained_runs(project)
    params = project / "params.yaml"
    good = params.read_text()
    set_seeds(project, "[1, 1]")
    try:
        failed = sh("dvc", "repro", cwd=project, check=False)
    finally:
        params.write_text(good)
    assert failed.returncode != 0
    errors = [line for line in (failed.stdout + failed.stderr).splitlines() if line.startswith("error: ")]
    assert errors and errors[0].startswith("error: params.yaml: seeds") and "repeats 1" in errors[0], errors
    assert "distinct integers" in errors[0]
    assert run_count(project) == runs_before and trained_runs(project) == folders_before
    # the first train stage failed and stopped the repro; DVC had removed that stage's reports before running it
    # (they are not persisted): the next test's repro must score its kept seeds again
    (stage,) = stages_run(failed.stdout)
    assert stage in [f"train@{o}" for o in OPTIMIZERS]
    assert not (project / "reports" / "eval" / stage.removeprefix("train@") / "scores.json").exists()


def test_adding_a_seed_trains_only_that_seed(project: Path) -> None:
    """Runs after the failed repro of the test above: seeds [1, 2, 3] train seed 3 alone, keep seeds 1 and 2
    (their runs, folders and checkpoints), and score every seed again, the failed stage's kept seeds too."""
    before, trained_before = trained_runs(project), training_runs(project)
    checkpoint = project / "runs" / "adam" / "seed1" / "checkpoints" / "best.keras"
    checkpoint_bytes = checkpoint.read_bytes()
    set_seeds(project, "[1, 2, 3]")
    rerun = sh("dvc", "repro", cwd=project)
    stages = stages_run(rerun.stdout)  # the train stages in any order, then compare
    assert sorted(stages[:-1]) == sorted(f"train@{o}" for o in OPTIMIZERS) and stages[-1] == "compare"
    for optimizer in OPTIMIZERS:
        assert f"train@{optimizer}: training seeds [3]; kept from earlier runs: [1, 2]" in rerun.stdout
        scores = json.loads((project / "reports" / "eval" / optimizer / "scores.json").read_text())
        assert sorted(key for key in scores if key.startswith("seed")) == ["seed1", "seed2", "seed3"]
        assert all(0 < scores[f"seed{seed}"]["test_accuracy"] <= 1 for seed in (1, 2, 3))
        assert json.loads((project / "reports" / "metrics" / f"{optimizer}.json").read_text())["n"] == 3
    after = trained_runs(project)
    assert {k: after[k] for k in before} == before and len(after) == 6
    assert training_runs(project) == trained_before + len(OPTIMIZERS)  # seed 3 of each, nothing else
    assert checkpoint.read_bytes() == checkpoint_bytes
    assert stages_run(sh("dvc", "repro", cwd=project).stdout) == []


def test_push_and_pull_through_a_local_directory_remote(project: Path, tmp_path: Path) -> None:
    remote = tmp_path / "dvc-remote"
    sh("dvc", "remote", "add", "--local", "-d", "shared", str(remote), cwd=project)  # .dvc/config.local: not in git
    pushed = sh("dvc", "push", "dvc.yaml", cwd=project)  # this pipeline's outputs; fair/dvc.yaml has its own
    assert "pushed" in pushed.stdout and any(remote.rglob("*"))
    checkpoint = project / "runs" / "adam" / "seed1" / "checkpoints" / "best.keras"
    before = checkpoint.read_bytes()
    for output in (project / "runs").iterdir():  # the outputs; runs/.gitignore is git's, as in any clone
        if output.is_dir():
            shutil.rmtree(output)
    shutil.rmtree(project / ".dvc" / "cache")
    (project / "data" / "mnist.npz").unlink()
    sh("dvc", "pull", "dvc.yaml", cwd=project)
    assert checkpoint.read_bytes() == before and (project / "data" / "mnist.npz").is_file()
    assert "up to date" in sh("dvc", "status", "dvc.yaml", cwd=project).stdout

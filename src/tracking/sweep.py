"""A multirun's parent run: the Hydra callback that opens it, validates every job up front, and at
the end writes the summary and closes it (FAILED/KILLED when a job did), so no run is left RUNNING.
"""

from __future__ import annotations

import atexit
import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from src.config import validate
from src.errors import ConfigError, exit_on_user_error
from src.files import markdown_table, write_text_atomic
from src.tracking.job import SWEEP_ENV, SWEEP_FILE, override_key
from src.tracking.store import mask_uri, use_experiment

if TYPE_CHECKING:
    from mlflow.entities import Run

# Columns of a sweep's summary, after the swept keys; all are metrics of the child runs.
SUMMARY_METRICS = ("test_accuracy", "best_val_accuracy", "best_epoch", "stopped_epoch", "train_seconds")


def _parse_sweep(config: DictConfig) -> tuple[list[str], list[list[str]]]:
    """(the swept keys, every job's override list) of a multirun, as Hydra's basic sweeper expands it."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    arguments = [f"{key}={value}" for key, value in (config.hydra.sweeper.get("params") or {}).items()]
    arguments += list(config.hydra.overrides.task)
    overrides = OverridesParser.create().parse_overrides(arguments)
    swept = [override.get_key_element() for override in overrides if override.is_sweep_override()]
    for override in overrides:
        if override.is_sweep_override() and not list(override.sweep_iterator()):
            raise ConfigError(f"{override.input_line!r} sweeps over nothing: give at least one value")
    batches = BasicSweeper.split_arguments(overrides, max_batch_size=None)
    return swept, [job for batch in batches for job in batch]


def validate_sweep(config: DictConfig) -> tuple[list[str], int]:
    """Compose and validate every job of the sweep before any of them starts or any run exists.

    Returns (swept keys, number of jobs). Only the basic sweeper's grid can be expanded up front;
    other sweepers' jobs are still validated one by one as they start.
    """
    from hydra.core.global_hydra import GlobalHydra

    if "BasicSweeper" not in str(config.hydra.sweeper.get("_target_", "")):
        return [], 0
    swept, jobs = _parse_sweep(config)
    loader = GlobalHydra.instance().config_loader()
    for job_overrides in jobs:
        try:
            validate(loader.load_sweep_config(config, job_overrides))
        except ConfigError as error:
            raise ConfigError(f"job {' '.join(job_overrides)}: {error}") from None
    return swept, len(jobs)


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if not value.is_integer() else str(int(value))
    return "" if value is None else str(value)


def summary_rows(children: Sequence[Run], swept: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    """One row per child run: its name, status, swept values, and SUMMARY_METRICS."""
    header = ["run", "status", *swept, *SUMMARY_METRICS, "run_id"]
    rows = []
    for child in children:
        values = [child.data.params.get(key, "") for key in swept]
        metrics = [_format(child.data.metrics.get(name)) for name in SUMMARY_METRICS]
        rows.append([child.info.run_name, child.info.status, *values, *metrics, child.info.run_id])
    return header, rows


class MlflowSweepCallback(Callback):
    """Hydra callback: a multirun is one MLflow parent run; each job's run becomes its child."""

    def __init__(self) -> None:
        self.parent_run_id: str | None = None
        self.experiment_id: str | None = None
        self.swept: list[str] = []

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from mlflow import MlflowClient
        from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

        with exit_on_user_error():
            self.swept, job_count = validate_sweep(config)
        if not self.swept:  # another sweeper (Optuna): it draws the values of its params
            self.swept = list((config.hydra.sweeper.get("params") or {}).keys())
        self.experiment_id = use_experiment(config.mlflow)
        task_overrides = list(config.hydra.overrides.task)
        # Named after what it sweeps and the config groups chosen on the command line (experiment preset,
        # search, optimizer, model), then the sweep params a preset or search adds.
        named = [
            o
            for o in task_overrides
            if override_key(o) in self.swept or ("." not in override_key(o) and not o.startswith("hydra"))
        ]
        overridden = {override_key(o) for o in task_overrides}
        params = (config.hydra.sweeper.get("params") or {}).items()
        named += [f"{key}={value}" for key, value in params if key not in overridden]
        run_name = " ".join(dict.fromkeys(named)) or "multirun"
        tags = {
            MLFLOW_RUN_NAME: run_name,
            "sweep": "parent",
            "hydra_overrides": " ".join(task_overrides),
            "sweep_dir": str(config.hydra.sweep.dir),
            "sweep_jobs": str(job_count),
        }
        client = MlflowClient()
        run = client.create_run(self.experiment_id, run_name=run_name, tags=tags)
        self.parent_run_id = run.info.run_id
        _close_killed_parents(client, self.experiment_id, tags["hydra_overrides"], self.parent_run_id)
        sweep = json.dumps({"parent_run_id": self.parent_run_id, "swept": self.swept})
        os.environ[SWEEP_ENV] = sweep
        write_text_atomic(Path(config.hydra.sweep.dir) / SWEEP_FILE, sweep)
        atexit.register(self.close, "FAILED")  # Hydra skips on_multirun_end when a job fails
        global _open_sweep
        _open_sweep = self
        print(f"MLflow parent run {run_name!r} ({self.parent_run_id}) in {mask_uri(str(config.mlflow.tracking_uri))}")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self.close("FINISHED")

    def close(self, status: str) -> None:
        """Write the summary to the parent run and end it with `status` (FAILED if a child failed)."""
        from mlflow import MlflowClient

        if self.parent_run_id is None:
            return
        parent_run_id, self.parent_run_id = self.parent_run_id, None
        os.environ.pop(SWEEP_ENV, None)
        client = MlflowClient()
        children = client.search_runs(
            [self.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'", max_results=10000
        )
        children = sorted(children, key=lambda run: int(run.data.tags.get("job_num", 0)))
        header, rows = summary_rows(children, self.swept)
        if rows:
            buffer = io.StringIO()
            csv.writer(buffer, lineterminator="\n").writerows([header, *rows])
            client.log_text(parent_run_id, buffer.getvalue(), "summary.csv")
            table = markdown_table(header, rows)
            client.log_text(parent_run_id, table, "summary.md")
            print("\nSweep summary (also in the parent run's summary.md):\n" + table)
        finished = [c for c in children if c.info.status == "FINISHED" and "best_val_accuracy" in c.data.metrics]
        if finished:
            best = max(finished, key=lambda run: run.data.metrics["best_val_accuracy"])
            client.set_tag(parent_run_id, "best_child_run_id", best.info.run_id)
            client.set_tag(parent_run_id, "best_child_run_name", best.info.run_name)
            client.log_metric(parent_run_id, "best_val_accuracy", best.data.metrics["best_val_accuracy"])
        statuses = {child.info.status for child in children}
        failed = sum(child.info.status != "FINISHED" for child in children)
        client.set_tag(parent_run_id, "failed_jobs", str(failed))
        if status == "FINISHED" and failed:
            status = "FAILED"
        if status == "FAILED" and "KILLED" in statuses:
            status = "KILLED"
        client.set_terminated(parent_run_id, status)


def _close_killed_parents(client: Any, experiment_id: str, hydra_overrides: str, new_parent_run_id: str) -> None:
    """A rerun of a sweep whose process died (SIGKILL, power loss) takes over: the dead sweep's parent,
    still RUNNING, ends KILLED, tagged with the parent that resumes its jobs."""
    if "'" in hydra_overrides:  # cannot be quoted in a filter string; leave such parents alone
        return
    stale = client.search_runs(
        [experiment_id],
        filter_string=(
            f"tags.sweep = 'parent' and tags.hydra_overrides = '{hydra_overrides}' and attributes.status = 'RUNNING'"
        ),
    )
    for run in stale:
        if run.info.run_id != new_parent_run_id:
            client.set_tag(run.info.run_id, "resumed_by_parent_run_id", new_parent_run_id)
            client.set_terminated(run.info.run_id, "KILLED")


_open_sweep: MlflowSweepCallback | None = None


def close_open_sweep(status: str) -> None:
    """End the sweep's parent run now, e.g. with KILLED when the user pressed Ctrl-C."""
    if _open_sweep is not None:
        _open_sweep.close(status)

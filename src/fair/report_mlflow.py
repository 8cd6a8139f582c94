"""The protocol's MLflow parent run: every tuning trial and judged run becomes its child.

The children carry the tags `phase` (tune / judge), `optimizer`, `workload`, `learning_rate` and `seed`
(set when they were trained) and, from here, `lr_choice` (tuned / default / tuned+default for a judged run),
so the UI's "Group by" and charts work on them. The parent gets the protocol as params, the per-optimizer
aggregates of the tuned comparison (src/analysis/replicates.py), each tuned learning rate and gain from tuning as
metrics, and every report file as an artifact. It never stays RUNNING: FAILED or KILLED on any error. The earlier
parents it leaves without children are tagged `superseded_by=<its id>` and deleted, so one parent remains.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from src.analysis import replicates
from src.fair import protocol as fair
from src.fair.results import WorkloadResult, gain


def _children(results: Sequence[WorkloadResult]) -> dict[str, dict[str, str]]:
    """{run id: extra tags} of every run of the protocol."""
    children: dict[str, dict[str, str]] = {}
    for workload in results:
        for result in workload.optimizers:
            for trial in result.trials:
                children[trial["run_id"]] = {}
            for role, runs in (("tuned", result.tuned), ("default", result.default)):
                for run in runs:
                    roles = children.setdefault(run.run_id, {}).get("lr_choice")
                    children[run.run_id]["lr_choice"] = f"{roles}+{role}" if roles else role
    return children


def _metrics(results: Sequence[WorkloadResult]) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for workload in results:
        suffix = f" {workload.workload}" if len(results) > 1 else ""
        for key, value in replicates.aggregate_metrics(workload.tuned).items():
            metrics[key + suffix] = value
        for result in workload.optimizers:
            label = f"optimizer={result.optimizer}"
            if result.selection.best_lr is not None:
                metrics[replicates.metric_name("tuned_lr", "value", label) + suffix] = result.selection.best_lr
            difference = gain(result)
            if difference is not None:
                metrics[replicates.metric_name("gain_from_tuning", "mean", label) + suffix] = difference.diff
    return {key: value for key, value in metrics.items() if math.isfinite(value)}


def log_parent(
    settings: fair.Protocol,
    results: Sequence[WorkloadResult],
    files: Sequence[Path],
    bases: Mapping[tuple[str, str], DictConfig],
) -> str | None:
    """Open the parent run, adopt every child found in the store, log; return the parent's id."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.exceptions import MlflowException

    from src.tracking import use_experiment

    experiment_id = use_experiment(next(iter(bases.values())).mlflow)  # the store the trials went to
    client = MlflowClient()
    children = {}
    for run_id, tags in _children(results).items():
        try:
            client.get_run(run_id)
        except MlflowException:  # trials from another store (a copied fair/trials/)
            continue
        children[run_id] = tags
    if not children:
        return None
    seeds = ",".join(map(str, settings.judge_seeds))
    name = f"fair: {','.join(settings.optimizers)} on {','.join(settings.workloads)}, seeds {seeds}"
    parent_id = client.create_run(experiment_id, run_name=name, tags={"phase": "report", "sweep": "parent"}).info.run_id
    try:
        for run_id, tags in children.items():
            extra = [RunTag("mlflow.parentRunId", parent_id), *(RunTag(k, v) for k, v in tags.items())]
            client.log_batch(run_id, tags=extra)
        params = {
            "optimizers": ",".join(settings.optimizers),
            "workloads": ",".join(settings.workloads),
            "lr_grid": ",".join(map(fair.lr_text, settings.lr_grid)),
            "tune_seed": str(settings.tune_seed),
            "epochs": str(settings.epochs),
            "batch_size": str(settings.batch_size),
            "judge_seeds": seeds,
            "targets": str({w: list(t) for w, t in settings.targets.items()}),
        }
        metrics = [Metric(key, value, 0, 0) for key, value in _metrics(results).items()]
        client.log_batch(parent_id, params=[Param(k, v) for k, v in params.items()])
        for start in range(0, len(metrics), 1000):
            client.log_batch(parent_id, metrics=metrics[start : start + 1000])
        tags: dict[str, Any] = {}
        for workload in results:
            suffix = f".{workload.workload}" if len(results) > 1 else ""
            tags[f"best_setting{suffix}"] = workload.tuned.best or ""
            tags[f"best_resolved{suffix}"] = str(workload.tuned.best_resolved).lower()
        client.log_batch(parent_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
        for path in files:
            client.log_artifact(parent_id, str(path))
    except BaseException as error:
        client.set_terminated(parent_id, "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")
        raise
    client.set_terminated(parent_id, "FINISHED")
    _retire_childless_parents(client, experiment_id, parent_id)
    return parent_id


def _retire_childless_parents(client: Any, experiment_id: str, parent_id: str) -> None:
    """Delete (softly: `mlflow runs restore` brings one back) the earlier report parents this one left childless.

    Each report opens a new parent, since MLflow params cannot change and the protocol may have; without this
    every `make fair` would leave one more empty parent beside the real one. A parent that still has children
    (another protocol's, in the same experiment) is kept.
    """
    parents = client.search_runs([experiment_id], "tags.phase = 'report' and tags.sweep = 'parent'", max_results=1000)
    for old in parents:
        old_id = old.info.run_id
        if old_id == parent_id or client.search_runs(
            [experiment_id], f"tags.mlflow.parentRunId = '{old_id}'", max_results=1
        ):
            continue
        note = f"Superseded by the report run {parent_id}, which adopted every run of the protocol."
        client.set_tag(old_id, "superseded_by", parent_id)
        client.set_tag(old_id, "mlflow.note.content", note)
        client.delete_run(old_id)

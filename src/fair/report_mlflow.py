"""The protocol's MLflow parent run (src/tracking/parent.py): every tuning trial and judged run becomes its child.

The children carry the tags `phase` (tune / judge), `optimizer`, `workload`, `learning_rate` and `seed`
(set when they were trained) and, from here, `lr_choice` (tuned / default / tuned+default for a judged run),
so that the UI's "Group by" (optimizer, lr_choice) draws each optimizer's mean and range. The parent gets the
protocol as params, every report file as an artifact (fair.md, the CSVs, the figures), the tags naming the
best optimizer per workload and each optimizer's tuned learning rate (`tuned_lr.<optimizer>`), and the best
setting's mean test accuracy as its one number. It never stays RUNNING: FAILED or KILLED on any error. The
earlier report parents it leaves without children are tagged `superseded_by=<its id>` and deleted, so one
parent remains.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path

from omegaconf import DictConfig

from src.analysis.replicates import Comparison
from src.fair import protocol as fair
from src.fair.results import WorkloadResult

REPORT_PARENTS = "tags.phase = 'report' and tags.sweep = 'parent'"


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


def _suffix(results: Sequence[WorkloadResult], workload: WorkloadResult) -> str:
    """`.mlp` on the parent's tags and metric of one workload, when the protocol has several."""
    return f".{workload.workload}" if len(results) > 1 else ""


def _params(settings: fair.Protocol) -> dict[str, str]:
    return {
        "optimizers": ",".join(settings.optimizers),
        "workloads": ",".join(settings.workloads),
        "lr_grid": ",".join(map(fair.lr_text, settings.lr_grid)),
        "tune_seeds": ",".join(map(str, settings.tune_seeds)),
        "epochs": str(settings.epochs),
        "batch_size": str(settings.batch_size),
        "judge_seeds": ",".join(map(str, settings.judge_seeds)),
        "targets": str({w: list(t) for w, t in settings.targets.items()}),
    }


def _tuned_rates(results: Sequence[WorkloadResult]) -> dict[str, str]:
    """`tuned_lr.<optimizer>[.<workload>]`: what tuning chose, read in the parent's tags table."""
    return {
        f"tuned_lr.{result.optimizer}{_suffix(results, workload)}": fair.lr_text(result.selection.best_lr)
        for workload in results
        for result in workload.optimizers
        if result.selection.best_lr is not None
    }


def _ranked(workload: WorkloadResult) -> Comparison:
    """The tuned comparison as the parent's tags read it: the best is the ranking's (failures counted, all
    pairs Holm-corrected), `best_resolved` whether it is resolved against every other optimizer."""
    ranking = workload.tuned_ranking
    against_best = [d for d in ranking.differences if ranking.best in (d.setting, d.best)]
    return dataclasses.replace(workload.tuned, best=ranking.best, differences=against_best)


def log_parent(
    settings: fair.Protocol,
    results: Sequence[WorkloadResult],
    files: Sequence[Path],
    bases: Mapping[tuple[str, str], DictConfig],
) -> str | None:
    """Open the parent run, adopt every child found in the store, log; return the parent's id (None when no
    run of the protocol is in this store)."""
    from mlflow import MlflowClient

    from src.tracking import use_experiment
    from src.tracking.parent import existing_runs, log_batched, open_parent

    experiment_id = use_experiment(next(iter(bases.values())).mlflow)  # the store the trials went to
    client = MlflowClient()
    wanted = _children(results)
    found = existing_runs(client, wanted)  # trials from another store (a copied fair/trials/) are left out
    if not found:
        return None
    seeds = ",".join(map(str, settings.judge_seeds))
    name = f"fair: {','.join(settings.optimizers)} on {','.join(settings.workloads)}, seeds {seeds}"
    with open_parent(experiment_id, name, {"phase": "report", "sweep": "parent"}, client) as parent:
        for run_id, tags in wanted.items():
            if run_id in found:
                parent.adopt(run_id, tags)
        log_batched(client, parent.run_id, params=_params(settings), tags=_tuned_rates(results))
        for workload in results:
            parent.tag_best(_ranked(workload), suffix=_suffix(results, workload))
        parent.log_files(files)
    parent.retire_childless(REPORT_PARENTS)
    return parent.run_id

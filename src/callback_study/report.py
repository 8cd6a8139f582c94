"""`python -m src.callback_study.report [overrides]`: reports/callbacks/ and the study's MLflow parent run, from the
run records (the DVC stage `report` of callbacks/dvc.yaml; it trains nothing).

results.py computes, report_files.py writes the files; here the parent run (src/tracking/parent.py, the one
parent-run lifecycle): every run of the study, real or replayed, becomes its child, tagged `setting` (its label),
so MLflow's "Group by -> setting" puts a setting's seeds together. The parent gets the study as params, every
report file as an artifact, and the tuned rates as tags; earlier report parents left without children are retired.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig

from src.callback_study import report_files, settings
from src.callback_study.results import CostResult, OptimizerResult, collect, collect_cost
from src.infra.errors import command

REPORT_PARENTS = "tags.phase = 'report' and tags.sweep = 'parent'"


def log_parent(
    study: settings.Study,
    rates: dict[str, float],
    results: Sequence[OptimizerResult],
    cost: CostResult,
    files: list[Path],
    mlflow_cfg: DictConfig,
) -> str | None:
    """Open the parent run, adopt every run of the study found in this store, log; its id (None when none of the
    runs is in this store: records copied from elsewhere)."""
    from mlflow import MlflowClient

    from src.tracking import use_experiment
    from src.tracking.parent import SETTING_TAG, existing_runs, log_batched, open_parent

    experiment_id = use_experiment(mlflow_cfg)  # the store the runs went to
    client = MlflowClient()
    children = {
        record["run_id"]: {SETTING_TAG: setting.setting.label, "optimizer": result_name}
        for result_name, group in [*((r.optimizer, r.settings) for r in results), ("tensorboard", cost.settings)]
        for setting in group
        for record in setting.runs.values()
    }
    found = existing_runs(client, children)
    if not found:
        return None
    seeds = ",".join(map(str, study.seeds))
    name = f"callbacks: {','.join(study.optimizers)} x {len(study.settings)} settings, seeds {seeds}"
    with open_parent(experiment_id, name, {"phase": "report", "sweep": "parent"}, client) as parent:
        for run_id, tags in children.items():
            if run_id in found:
                parent.adopt(run_id, tags)
        params = {
            "optimizers": ",".join(study.optimizers),
            "workload": study.workload,
            "seeds": ",".join(map(str, study.seeds)),
            "epochs": str(study.epochs),
            "batch_size": str(study.batch_size),
            "settings": ",".join(s.name for s in study.settings),
            "tensorboard_settings": ",".join(s.name for s in study.cost_settings),
        }
        tags = {f"tuned_lr.{optimizer}": f"{rate:g}" for optimizer, rate in rates.items()}
        log_batched(client, parent.run_id, params=params, tags=tags)
        parent.log_files(files)
    parent.retire_childless(REPORT_PARENTS)
    return parent.run_id


def main(overrides: list[str]) -> None:
    study, rates, bases = settings.load(overrides)
    results = collect(study, rates)
    cost = collect_cost(study)
    files = report_files.write(study, rates, results, cost)
    print((study.report_dir / "callbacks.md").read_text())
    parent_run_id = log_parent(study, rates, results, cost, files, next(iter(bases.values())).mlflow)
    if parent_run_id:
        from src.tracking.links import children_url

        print(f"MLflow: parent run {parent_run_id}; its runs (make ui): {children_url(parent_run_id)}")


def cli() -> None:
    command(lambda: main(sys.argv[1:]))


if __name__ == "__main__":
    cli()

"""`python -m src.fair report`: reports/fair/ and the protocol's MLflow parent run, from the trial records (the DVC
stage `report`; it trains nothing).

The layers, no cycle: results.py reads the trial records and computes (data model, comparisons, gains,
budget curves); report_files.py writes reports/fair/ from them (fair.md, summary.csv, runs.csv, trials.csv,
metrics.json for DVC metrics, lr_sensitivity.json and budget.json for DVC plots, and the PNGs);
report_mlflow.py makes the MLflow parent run. This module runs them in that order.
"""

from __future__ import annotations

from collections.abc import Mapping

from omegaconf import DictConfig

from src.fair import protocol as fair
from src.fair import report_files, report_mlflow
from src.fair.results import budget_curves, collect


def main(settings: fair.Protocol, bases: Mapping[tuple[str, str], DictConfig]) -> None:
    """Write reports/fair/ and the protocol's MLflow parent run; print the tables and verdicts."""
    results = collect(settings, bases)
    files = report_files.write(settings, results, {w.workload: budget_curves(w) for w in results})
    parent_run_id = report_mlflow.log_parent(settings, results, files, bases)
    print((settings.report_dir / "fair.md").read_text())
    if parent_run_id:
        from src.tracking.links import children_url

        print(f"MLflow: parent run {parent_run_id}; its runs (make ui): {children_url(parent_run_id)}")


def cli() -> None:
    """`python -m src.fair.report [overrides]`: the DVC stage `report` (trains nothing)."""
    import sys

    from src.infra.errors import command

    def body() -> None:
        settings, bases = fair.load(sys.argv[1:])
        main(settings, bases)

    command(body)


if __name__ == "__main__":
    cli()

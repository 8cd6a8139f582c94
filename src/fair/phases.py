"""The protocol's two training phases for one optimizer x workload, and the rule between them.

- tune: one study per tuning seed, each one trial per learning rate of the grid, all with the same epochs
  (an equal budget);
- select (selection.py): the learning rate with the highest mean final validation accuracy over the studies,
  among the rates that worked in every study. A diverged trial is a reported outcome ("diverged at lr 1"),
  never the winner; when no rate worked in every study there is none;
- judge: every judge seed at the selected learning rate and at Keras' default one (the one-shot row),
  so the report can say how much of a gap was the default. When they coincide, the runs are shared.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from src.fair import trials as trial_runs
from src.fair.protocol import (
    Protocol,
    default_learning_rate,
    judge_trials,
    lr_text,
    tune_trials,
)
from src.fair.selection import Selection, select
from src.infra.errors import ConfigError
from src.infra.files import read_record
from src.training import resume

if TYPE_CHECKING:
    from src.training.fit import Engine


def engine(protocol: Protocol) -> Engine:
    """The fit engine `fair.engine` names (the vectorized one falls back to the sequential one per trial)."""
    from src.training.fit import SequentialEngine

    if protocol.engine == "sequential":
        return SequentialEngine()
    from src.training.vectorized import VectorizedEngine

    return VectorizedEngine(memory_budget_bytes=protocol.memory_budget_mb * 2**20)


def tune(protocol: Protocol, base: DictConfig, optimizer: str, workload: str) -> list[dict[str, Any]]:
    """Train the grid's trials that are not trained yet; return every trial's record."""
    context = trial_runs.open_context(base, optimizer, protocol.parts[workload].model)
    studies = f"{len(protocol.tune_seeds)} studies (seeds {', '.join(map(str, protocol.tune_seeds))})"
    print(f"tune {optimizer} on {workload}: {len(protocol.lr_grid)} learning rates x {studies}")
    trials = tune_trials(protocol, optimizer, workload)
    return trial_runs.train_trials(trials, base, context, protocol.trials_dir, engine(protocol))


def tuned(protocol: Protocol, base: DictConfig, optimizer: str, workload: str, data_sha256: str) -> Selection:
    """The Selection from the tuning records of the current grid and config; a ConfigError naming the
    command to run when one is missing (the judge stage runs after the tune stage)."""
    records = []
    for trial in tune_trials(protocol, optimizer, workload):
        config_hash = resume.config_hash(trial_runs.trial_config(base, trial), data_sha256)
        record = read_record(trial.folder(protocol.trials_dir), config_hash)
        if record is None:
            raise ConfigError(
                f"no finished tuning trial {trial.name} of {optimizer} on {workload} for this config: run"
                f" `python -m src.fair optimizer {optimizer}` (or `dvc repro fair/dvc.yaml`) first"
            )
        records.append(record)
    return select(records, optimizer, workload)


def judge(protocol: Protocol, base: DictConfig, optimizer: str, workload: str) -> list[dict[str, Any]]:
    """Train every judge seed at the tuned and the default learning rate (what is not trained yet)."""
    context = trial_runs.open_context(base, optimizer, protocol.parts[workload].model)
    selection = tuned(protocol, base, optimizer, workload, context.data_sha256)
    default = default_learning_rate(base)
    rates = [rate for rate in (selection.best_lr, default) if rate is not None]
    chosen = "none (no rate worked in every study)" if selection.best_lr is None else lr_text(selection.best_lr)
    alone = f"{selection.agreeing} of {len(selection.picks)} studies pick it alone"
    print(f"judge {optimizer} on {workload}: tuned lr {chosen} ({alone}),", end="")
    print(f" default lr {lr_text(default)}", end="")
    print(f"; {selection.diverged_text()}" if selection.diverged else "", flush=True)
    trials = judge_trials(protocol, optimizer, workload, rates)
    return trial_runs.train_trials(trials, base, context, protocol.trials_dir, engine(protocol))


def run_all(protocol: Protocol, bases: Mapping[tuple[str, str], DictConfig]) -> None:
    """Tune, then judge, every optimizer x workload of `bases` (workload by workload, in the protocol's order) in
    this process: one TensorFlow import in all."""
    for number, ((optimizer, workload), base) in enumerate(bases.items(), start=1):
        print(f"[{number}/{len(bases)}] {optimizer} on {workload}", flush=True)
        tune(protocol, base, optimizer, workload)
        judge(protocol, base, optimizer, workload)

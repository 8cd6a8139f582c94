"""`python -m src.callback_study.stage optimizer <name> [overrides]` | `... tensorboard [overrides]`: one training
stage of callbacks/dvc.yaml.

- `optimizer <name>`: the optimizer at its tuned rate, every seed: the baseline (no callback, the full budget,
  its weights kept after every epoch), the ReduceLROnPlateau runs (real), then every EarlyStopping and
  ModelCheckpoint setting replayed from the baseline of its seed (replay.py);
- `tensorboard`: the TensorBoard cost runs (real, `callback_study.tensorboard`).

The whole study's config is checked first, the fair report's tuned rates included, before anything trains or any
MLflow run exists. Finished runs are kept by their config hash, so a rerun trains only what is missing.
"""

from __future__ import annotations

import sys

from src.infra.errors import ConfigError, command

OPTIMIZER, TENSORBOARD = "optimizer", "tensorboard"
USAGE = (
    "usage: python -m src.callback_study.stage optimizer <name> [overrides]"
    " | python -m src.callback_study.stage tensorboard [overrides]"
)


def run_stage(args: list[str]) -> None:
    from src.callback_study import runs, settings

    if len(args) >= 2 and args[0] == OPTIMIZER and "=" not in args[1]:
        optimizer, overrides = args[1], args[2:]
    elif args and args[0] == TENSORBOARD:
        optimizer, overrides = None, args[1:]
    else:
        raise ConfigError(USAGE)
    study, rates, bases = settings.load(overrides)
    if optimizer is not None and optimizer not in study.optimizers:
        raise ConfigError(
            f"optimizer {optimizer!r} is not in the study: callback_study.optimizers={list(study.optimizers)}"
        )
    if optimizer is None:
        optimizer, trials = study.cost_optimizer, settings.cost_trials(study)
        what = f"{len(study.cost_settings)} settings x seeds {list(study.cost_seeds)}, {study.cost_epochs} epochs"
        print(f"TensorBoard cost: {optimizer} at its tuned lr {rates[optimizer]:g}, {what}", flush=True)
    else:
        trials = settings.budget_trials(study, optimizer)
        what = f"{len(study.settings)} settings x seeds {list(study.seeds)}, {study.epochs} epochs"
        print(f"{optimizer} at its tuned lr {rates[optimizer]:g}: {what}", flush=True)
    base = bases[optimizer]
    runs.run_all(trials, base, runs.open_context(base), study.trials_dir)


def main() -> None:
    command(lambda: run_stage(sys.argv[1:]))


if __name__ == "__main__":
    main()

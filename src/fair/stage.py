"""`python -m src.fair.stage train [overrides]`: the training stage of fair/dvc.yaml (`train`): every optimizer's
tuning studies, then its judged runs, on every workload, in one process.

One process for the whole protocol, not one per optimizer or phase: each process pays the TensorFlow, Keras,
MLflow and Hydra imports (~9 s here), which five optimizer stages paid five times (~40 s of a 13-minute
`make fair`). Finished trials are kept by their config hash, so a stage that reruns (an optimizer added or
edited, a judge seed or a workload added) trains only what is missing, and says how many it kept.

By hand, for one part of the protocol (only its configs are composed and checked, and nothing of the report is
imported):

    python -m src.fair.stage optimizer <name> [overrides]              one optimizer on every workload
    python -m src.fair.stage tune|judge <optimizer> <workload> [o]     one phase of one workload

`python -m src.fair` runs the stage and the report in one process (__main__.py).
"""

from __future__ import annotations

import sys

from src.infra.errors import ConfigError, command

TRAIN, OPTIMIZER, PHASES = "train", "optimizer", ("tune", "judge")
TRAINING_STAGES = (TRAIN, OPTIMIZER, *PHASES)
USAGE = (
    "usage: python -m src.fair.stage train [overrides]"
    " | python -m src.fair.stage optimizer <name> [overrides]"
    " | python -m src.fair.stage tune|judge <optimizer> <workload> [overrides]"
)


def run_stage(args: list[str]) -> None:
    """`train [overrides]`, `optimizer <name> [overrides]` or `tune|judge <optimizer> <workload> [overrides]`,
    checked before anything trains."""
    from src.fair import phases, protocol

    if args and args[0] == TRAIN:
        settings, bases = protocol.load(args[1:])
        phases.run_all(settings, bases)
        return
    if len(args) >= 2 and args[0] == OPTIMIZER and "=" not in args[1]:
        settings, bases = protocol.load(args[2:], only=args[1])
        phases.run_all(settings, bases)
        return
    if len(args) < 3 or args[0] not in PHASES or "=" in args[1] + args[2]:
        raise ConfigError(USAGE)
    stage, pair, overrides = args[0], (args[1], args[2]), args[3:]
    settings, bases = protocol.load(overrides, only=pair)
    getattr(phases, stage)(settings, bases[pair], *pair)


def main() -> None:
    command(lambda: run_stage(sys.argv[1:]))


if __name__ == "__main__":
    main()

"""`python -m src.fair.stage optimizer <name> [overrides]`: one training stage of fair/dvc.yaml
(optimizer@<optimizer>): the optimizer's tuning studies, then its judged runs, on every workload, in one process.

One process per optimizer, not per phase and workload: each pays the TensorFlow, MLflow and Hydra imports once
(~10 s), which ten small stages paid ten times. Finished trials are kept by their config hash, so a stage that
reruns (a judge seed added, a workload added) trains only what is missing.

`tune|judge <optimizer> <workload>` runs one phase of one workload by hand. Only that optimizer's configs are
composed and checked, and nothing of the report is imported: the stage's DVC deps are what it runs.
`python -m src.fair` runs every stage and the report in one process (__main__.py).
"""

from __future__ import annotations

import sys

from src.infra.errors import ConfigError, command

OPTIMIZER, PHASES = "optimizer", ("tune", "judge")
TRAINING_STAGES = (OPTIMIZER, *PHASES)
USAGE = (
    "usage: python -m src.fair.stage optimizer <name> [overrides]"
    " | python -m src.fair.stage tune|judge <optimizer> <workload> [overrides]"
)


def run_stage(args: list[str]) -> None:
    """`optimizer <name> [overrides]` or `tune|judge <optimizer> <workload> [overrides]`, checked before
    anything trains."""
    from src.fair import phases, protocol

    if len(args) >= 2 and args[0] == OPTIMIZER and "=" not in args[1]:
        settings, bases = protocol.load(args[2:], only=args[1])
        for (optimizer, workload), base in bases.items():
            phases.tune(settings, base, optimizer, workload)
            phases.judge(settings, base, optimizer, workload)
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

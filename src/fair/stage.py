"""`python -m src.fair.stage tune|judge <optimizer> <workload> [overrides]`: one training stage of
fair/dvc.yaml (tune@<optimizer>-<workload>, judge@<optimizer>-<workload>), in one process.

Only that optimizer x workload's config is composed and checked, and nothing of the report is imported:
the stage's DVC deps are what it runs. `python -m src.fair` runs every stage in one process (__main__.py).
"""

from __future__ import annotations

import sys

from src.infra.errors import ConfigError, command

TRAINING_STAGES = ("tune", "judge")


def run_stage(args: list[str]) -> None:
    """`tune|judge <optimizer> <workload> [overrides]`, checked before anything trains."""
    from src.fair import phases, protocol

    if len(args) < 3 or args[0] not in TRAINING_STAGES or "=" in args[1] + args[2]:
        raise ConfigError(
            f"usage: python -m src.fair.stage {'|'.join(TRAINING_STAGES)} <optimizer> <workload> [overrides]"
        )
    stage, pair, overrides = args[0], (args[1], args[2]), args[3:]
    settings, bases = protocol.load(overrides, only=pair)
    getattr(phases, stage)(settings, bases[pair], *pair)


def main() -> None:
    command(lambda: run_stage(sys.argv[1:]))


if __name__ == "__main__":
    main()

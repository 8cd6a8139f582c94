"""`python -m src.fair.stage tune|judge <optimizer> <workload> [overrides]`: one training stage of
fair/dvc.yaml (tune@<optimizer>-<workload>, judge@<optimizer>-<workload>), in one process.

Only that optimizer x workload's config is composed and checked, and nothing of the report is imported:
the stage's DVC deps are what it runs. `python -m src.fair` runs every stage in one process (__main__.py).
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Callable
from typing import Any

from src.infra.errors import ConfigError, exit_on_user_error

TRAINING_STAGES = ("tune", "judge")


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def command(body: Callable[[], None]) -> None:
    """Run an entry point's body: SIGTERM behaves like Ctrl-C (the run in progress ends KILLED, finished
    trials stay recorded), a user error prints one line and exits 1."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with exit_on_user_error():
            body()
    finally:
        signal.signal(signal.SIGTERM, previous)


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

"""`python -m src.fair [stage ...] [key=value ...]`: the fair comparison (docs/fair.md).

    python -m src.fair [overrides]                      the whole protocol in one process, then the report
    python -m src.fair tune <optimizer> <workload> [o]  one DVC stage: tune@<optimizer>-<workload>
    python -m src.fair judge <optimizer> <workload> [o] one DVC stage: judge@<optimizer>-<workload>
    python -m src.fair report [overrides]               the DVC stage `report`: reports/fair/ + MLflow

Overrides: `fair.<key>=...` (conf/fair/default.yaml), or any training key for every run (`data.limit=500`).
Finished trials are kept (fair/trials/), so rerunning after an interruption trains only what is missing.
"""

from __future__ import annotations

import logging
import signal
import sys
from typing import Any

from src.errors import ConfigError, exit_on_user_error

STAGES = ("tune", "judge", "report")


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if any(arg in ("-h", "--help") for arg in args):
        print(__doc__)
        return
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    previous = signal.signal(signal.SIGTERM, _interrupt)  # a killed stage ends its run KILLED, like Ctrl-C
    try:
        _run(args)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(args: list[str]) -> None:
    with exit_on_user_error():
        from src.fair import phases, protocol

        stage = args[0] if args and args[0] in STAGES else None
        names = args[1:3] if stage in ("tune", "judge") else []
        overrides = args[1 + len(names) :] if stage else args
        if stage in ("tune", "judge") and (len(names) != 2 or "=" in "".join(names)):
            raise ConfigError(f"usage: python -m src.fair {stage} <optimizer> <workload> [overrides]")
        pair = (names[0], names[1]) if names else None
        settings, bases = protocol.load(overrides, only=pair)  # every check before any training
        if pair is not None:
            getattr(phases, stage)(settings, bases[pair], *pair)
            return
        if stage is None:
            phases.run_all(settings, bases)
        from src.fair import report  # only the report stage needs it (and plotting, replicates)

        report.main(settings, bases)


if __name__ == "__main__":
    main()

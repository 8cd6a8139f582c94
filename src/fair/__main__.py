"""`python -m src.fair [overrides]`: the whole fair comparison in one process (docs/fair.md).

    python -m src.fair [overrides]                      tune and judge every optimizer x workload, then report
    python -m src.fair train [o]                        the DVC training stage (= python -m src.fair.stage train):
                                                        every optimizer's tuning and judging, no report
    python -m src.fair optimizer <name> [o]             one optimizer's tuning and judging on every workload
    python -m src.fair tune <optimizer> <workload> [o]  one phase of one workload by hand (judge alike)
    python -m src.fair report [overrides]               the report alone (= python -m src.fair.report)

Overrides: `fair.<key>=...` (conf/fair/default.yaml), or any training key for every run (`data.limit=500`).
Finished trials are kept (fair/trials/), so rerunning after an interruption trains only what is missing.
`make fair` runs the same stages through DVC (fair/dvc.yaml), which also skips the stages whose inputs did
not change.
"""

from __future__ import annotations

import sys

from src.fair.stage import TRAINING_STAGES, run_stage
from src.infra.errors import command


def run(args: list[str]) -> None:
    from src.fair import phases, protocol, report

    if args and args[0] in TRAINING_STAGES:
        run_stage(args)
        return
    overrides = args[1:] if args and args[0] == "report" else args
    settings, bases = protocol.load(overrides)  # every check before any training
    if not (args and args[0] == "report"):
        phases.run_all(settings, bases)
    report.main(settings, bases)


def main() -> None:
    if any(arg in ("-h", "--help") for arg in sys.argv[1:]):
        print(__doc__)
        return
    command(lambda: run(sys.argv[1:]))


if __name__ == "__main__":
    main()

"""What counts as an integer, a number and a list of seeds: one definition each, for config validation
(src/training/config.py, src/fair/protocol.py, src/stages/params.py, src/homework/backprop.py), sweeps
(src/tracking/sweep.py) and the statistics over recorded runs (src/analysis/).

A bool is never a number here: YAML's `true` would otherwise pass as 1. Two meanings of "a number" are
kept apart on purpose: a setting must be finite (`optimizer.learning_rate=inf` trains nothing), while a
recorded metric may be ±inf (a loss that blew up is an outcome) and only nan means nothing was recorded.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any


def is_integer(value: Any) -> bool:
    """An integer of any integral type (numpy's too), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_finite_number(value: Any) -> bool:
    """A real, finite number (an integer counts), not a bool: what a numeric setting may hold."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def is_recorded_number(value: Any) -> bool:
    """A metric value a run recorded: a real number that is not nan (nan, None, a bool or a string marks
    nothing recorded); ±inf counts, it is what a diverged loss records."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and not math.isnan(value)


def seed_problem(seeds: Sequence[Any]) -> str | None:
    """What is wrong with a list of seeds used as replicates, or None: at least one, each an integer >= 0,
    none twice (a repeated seed trains the same run again and counts it as a second replicate). One rule
    for a sweep's `train.seed=...`, params.yaml's `seeds` and the fair protocol's `fair.judge_seeds`."""
    if not seeds:
        return "holds no seed"
    for seed in seeds:
        if not is_integer(seed) or seed < 0:
            return f"holds {seed!r}, not a non-negative integer"
    repeated = sorted({seed for seed in seeds if list(seeds).count(seed) > 1})
    if repeated:
        return "repeats " + ", ".join(map(str, repeated))
    return None

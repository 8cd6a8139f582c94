"""The rule between the protocol's two phases: which learning rate the tuning studies select. Apart from
phases.py (which trains) so that the report reads selections without depending on the training code.

Each tuning study (one seed) trains the whole grid. A learning rate's score is its mean final validation
accuracy over the studies, and only a rate that worked in every study competes: one that diverged, or did not
count, in any study is a risk the mean would hide. Each study's own pick is kept too, so the report can say how
stable the selection is (how many studies would have picked the same rate alone).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from src.analysis import replicates as rep
from src.fair.protocol import lr_text

TUNING_METRIC = "final_val_accuracy"  # what tuning selects a learning rate on (validation only)


@dataclass(frozen=True)
class Selection:
    """The tuning phase's outcome: the chosen learning rate (None when no rate worked in every study), each
    learning rate's mean final validation accuracy over the studies (None when it failed in any), each study's
    scores and own pick, and the rates that diverged (in how many studies)."""

    optimizer: str
    workload: str
    best_lr: float | None
    scores: dict[float, float | None] = field(default_factory=dict)
    diverged: dict[float, int] = field(default_factory=dict)
    studies: dict[int, dict[float, float | None]] = field(default_factory=dict)
    picks: dict[int, float | None] = field(default_factory=dict)

    def diverged_text(self) -> str:
        """`diverged at lr 0.3 (1 of 3 studies), 1`; empty when none did."""
        if not self.diverged:
            return ""
        studies = len(self.studies) or 1
        parts = [
            lr_text(lr) + ("" if count == studies else f" ({count} of {studies} studies)")
            for lr, count in sorted(self.diverged.items())
        ]
        return f"diverged at lr {', '.join(parts)}"

    @property
    def agreeing(self) -> int:
        """How many studies picked the selected rate on their own."""
        return sum(pick is not None and pick == self.best_lr for pick in self.picks.values())

    def stability_text(self) -> str:
        """`3 of 3 studies`, or `2 of 3 studies (other: 0.3)`: how many single-study picks agree."""
        if not self.picks:
            return "n/a"
        others = sorted({pick for pick in self.picks.values() if pick != self.best_lr}, key=lambda p: (p is None, p))
        named = ", ".join("none" if pick is None else lr_text(pick) for pick in others)
        return f"{self.agreeing} of {len(self.picks)} studies" + (f" (other: {named})" if others else "")


def _best(scores: Mapping[float, float | None]) -> float | None:
    """The rate with the highest score; ties go to the smaller learning rate; None when none counts."""
    ranked = [(value, lr) for lr, value in scores.items() if value is not None]
    return max(ranked, key=lambda pair: (pair[0], -pair[1]))[1] if ranked else None


def select(records: Sequence[dict[str, Any]], optimizer: str = "", workload: str = "") -> Selection:
    """The Selection of one optimizer x workload's tuning records (every study's). The trials that count by the
    replicates layer's rule (`exclusion_reason` on TUNING_METRIC: finished, not diverged, finite) score."""
    studies: dict[int, dict[float, float | None]] = {}
    diverged: dict[float, int] = {}
    for record in sorted(records, key=lambda r: (r["seed"], r["learning_rate"])):
        lr, value = record["learning_rate"], record["metrics"].get(TUNING_METRIC)
        counts = rep.exclusion_reason(record["status"], value, TUNING_METRIC) is None
        studies.setdefault(record["seed"], {})[lr] = value if counts else None
        if record["status"] == rep.DIVERGED:
            diverged[lr] = diverged.get(lr, 0) + 1
    rates = sorted({lr for study in studies.values() for lr in study})
    scores: dict[float, float | None] = {}
    for lr in rates:
        values = [study.get(lr) for study in studies.values()]
        scores[lr] = None if any(value is None for value in values) else statistics.fmean(values)  # type: ignore[arg-type]
    picks = {seed: _best(study) for seed, study in studies.items()}
    return Selection(optimizer, workload, _best(scores), scores, diverged, studies, picks)

"""The rule between the protocol's two phases: which learning rate a tuning phase selects. Apart from
phases.py (which trains) so that the report reads selections without depending on the training code."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from src.analysis import replicates as rep
from src.fair.protocol import lr_text

TUNING_METRIC = "final_val_accuracy"  # what tuning selects a learning rate on (validation only)


@dataclass(frozen=True)
class Selection:
    """The tuning phase's outcome: the chosen learning rate (None when every trial diverged), each
    learning rate's final validation accuracy (None when diverged) and the rates that diverged."""

    optimizer: str
    workload: str
    best_lr: float | None
    scores: dict[float, float | None] = field(default_factory=dict)
    diverged: list[float] = field(default_factory=list)

    def diverged_text(self) -> str:
        """`diverged at lr 0.3, 1`; empty when none did."""
        return f"diverged at lr {', '.join(map(lr_text, self.diverged))}" if self.diverged else ""


def select(records: Sequence[dict[str, Any]]) -> tuple[float | None, dict[float, float | None], list[float]]:
    """(best learning rate, {lr: final val accuracy or None}, diverged rates) of one optimizer's tuning
    records. The trials that count by the replicates layer's rule (`exclusion_reason` on TUNING_METRIC:
    finished, not diverged, finite) compete; ties go to the smaller learning rate."""
    scores: dict[float, float | None] = {}
    diverged = []
    for record in sorted(records, key=lambda r: r["learning_rate"]):
        value = record["metrics"].get(TUNING_METRIC)
        counts = rep.exclusion_reason(record["status"], value, TUNING_METRIC) is None
        scores[record["learning_rate"]] = value if counts else None
        if record["status"] == rep.DIVERGED:
            diverged.append(record["learning_rate"])
    ranked = [(value, lr) for lr, value in scores.items() if value is not None]
    best = max(ranked, key=lambda pair: (pair[0], -pair[1]))[1] if ranked else None
    return best, scores, diverged

"""Every matplotlib figure of the project: data in, a PNG out, nothing else.

One colour per optimizer everywhere (these PNGs and the offline DVC plots, .dvc/plots/*.json): the
fixed order OPTIMIZER_ORDER picks from matplotlib's tab10. Figures are at most PAGE_WIDTH inches wide
(about 1100 px at 110 dpi), so a report page or `make plots`' page shows them without cutting them off.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from src.files import save_figure_atomic
from src.stats import Summary

# tab10's colours in order; the first ten optimizers of OPTIMIZER_ORDER get one each, in this order.
TAB10 = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
OPTIMIZER_ORDER = ("adam", "adagrad", "rmsprop", "sgd", "momentum", "nesterov", "adamw", "nadam", "adadelta", "lion")
OTHER_COLOUR = "#555555"
PAGE_WIDTH = 10.0  # inches


def optimizer_colour(name: str) -> str:
    """The colour of an optimizer (`adam`, or a setting label `optimizer=adam,...`) in every picture."""
    if "optimizer=" in name:
        name = name.split("optimizer=", 1)[1].split(",", 1)[0]
    if name in OPTIMIZER_ORDER:
        return TAB10[OPTIMIZER_ORDER.index(name)]
    return OTHER_COLOUR


@dataclass
class Band:
    """One line with a ±1 std band: `x` and one Summary per point; `colour_of` names the optimizer."""

    label: str
    colour_of: str
    x: Sequence[float]
    summaries: Sequence[Summary]
    reference: float | None = None  # a dotted horizontal line in the same colour (e.g. a published number)


@dataclass
class Panel:
    title: str
    xlabel: str
    ylabel: str
    bands: list[Band] = field(default_factory=list)
    log_y: bool = False
    integer_x: bool = True


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    return pyplot


def bands_figure(panels: Sequence[Panel], path: Path, suptitle: str = "", legend_title: str = "") -> None:
    """Panels side by side, each band the mean over the replicates ± 1 std (no band where n < 2)."""
    import math

    from matplotlib.ticker import MaxNLocator

    pyplot = _pyplot()
    figure, axes_row = pyplot.subplots(1, len(panels), figsize=(PAGE_WIDTH, 4.2), squeeze=False, layout="constrained")
    for panel, axes in zip(panels, axes_row[0], strict=True):
        for band in panel.bands:
            colour = optimizer_colour(band.colour_of)
            means = [s.mean for s in band.summaries]
            axes.plot(band.x, means, marker="o", markersize=3, color=colour, label=band.label)
            stds = [0.0 if math.isnan(s.std) else s.std for s in band.summaries]
            low = [m - s for m, s in zip(means, stds, strict=True)]
            high = [m + s for m, s in zip(means, stds, strict=True)]
            axes.fill_between(band.x, low, high, color=colour, alpha=0.2, linewidth=0)
            if band.reference is not None:
                axes.axhline(band.reference, color=colour, linestyle=":", linewidth=1)
        axes.set_title(panel.title, fontsize=10)
        axes.set_xlabel(panel.xlabel)
        axes.set_ylabel(panel.ylabel)
        axes.grid(alpha=0.3)
        if panel.log_y:
            axes.set_yscale("log")
        if panel.integer_x:
            axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        if panel.bands:
            axes.legend(title=legend_title or None, fontsize=8)
    if suptitle:
        figure.suptitle(suptitle, fontsize=9)
    save_figure_atomic(figure, path, dpi=110)
    pyplot.close(figure)


def draw_confusion(counts: Any, title: str, axes: Any, numbers: bool = True) -> None:
    """One confusion matrix (rows: actual digit, columns: predicted) with its counts written in."""
    import numpy as np

    axes.imshow(counts, cmap="Blues")
    axes.set_title(title, fontsize=9)
    axes.set_xlabel("predicted digit")
    axes.set_ylabel("actual digit")
    axes.set_xticks(range(len(counts)))
    axes.set_yticks(range(len(counts)))
    if not numbers:
        return
    limit = np.max(counts) / 2
    for (row, column), value in np.ndenumerate(np.asarray(counts)):
        colour = "white" if value > limit else "black"
        axes.text(column, row, str(value), ha="center", va="center", fontsize=5, color=colour)


def confusion_grid(matrices: Sequence[tuple[str, Any]], path: Path, columns: int = 3) -> None:
    """(title, 10x10 counts) per optimizer, wrapped into rows of `columns` so it fits PAGE_WIDTH."""
    pyplot = _pyplot()
    columns = max(1, min(columns, len(matrices)))
    rows = -(-len(matrices) // columns)
    cell = PAGE_WIDTH / 3
    figure, axes = pyplot.subplots(
        rows, columns, figsize=(cell * columns, (cell + 0.4) * rows), squeeze=False, layout="constrained"
    )
    for index, cell_axes in enumerate(axes.flat):
        if index < len(matrices):
            title, counts = matrices[index]
            draw_confusion(counts, title, cell_axes)
        else:
            cell_axes.axis("off")
    save_figure_atomic(figure, path, dpi=110)
    pyplot.close(figure)

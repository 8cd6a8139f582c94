"""Every matplotlib figure of the project: data in, a PNG out, nothing else.

One colour per optimizer everywhere (these PNGs and the offline DVC plots, .dvc/plots/*.json): the
fixed mapping OPTIMIZER_COLOURS. Figures are at most PAGE_WIDTH inches wide
(about 1100 px at 110 dpi), so a report page or `make plots`' page shows them without cutting them off.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from src.analysis.stats import Summary
from src.infra.files import save_figure_atomic

# One colour per optimizer of conf/optimizer/: matplotlib's tab10 for the first ten, then tab20's light
# shades. .dvc/plots/*.json repeat this mapping as a vega-lite colour scale (tests/test_plots.py checks it).
OPTIMIZER_COLOURS = {
    "adam": "#1f77b4",
    "adagrad": "#ff7f0e",
    "rmsprop": "#2ca02c",
    "sgd": "#d62728",
    "momentum": "#9467bd",
    "nesterov": "#8c564b",
    "adamw": "#e377c2",
    "nadam": "#7f7f7f",
    "adadelta": "#bcbd22",
    "lion": "#17becf",
    "adamax": "#aec7e8",
    "ftrl": "#ffbb78",
    "lamb": "#98df8a",
    "muon": "#ff9896",
    "adafactor": "#c5b0d5",
    "schedule_free_adamw": "#c49c94",
}
OTHER_COLOUR = "#555555"
PAGE_WIDTH = 10.0  # inches


def optimizer_colour(name: str) -> str:
    """The colour of an optimizer (`adam`, or a setting label `optimizer=adam,...`) in every picture."""
    if "optimizer=" in name:
        name = name.split("optimizer=", 1)[1].split(",", 1)[0]
    return OPTIMIZER_COLOURS.get(name, OTHER_COLOUR)


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
            axes.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
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


@dataclass
class LrCurve:
    """One optimizer's tuning trials: final validation accuracy per learning rate (None: diverged)."""

    optimizer: str
    learning_rates: Sequence[float]
    values: Sequence[float | None]
    default_lr: float
    best_lr: float | None


def lr_sensitivity(panels: Sequence[tuple[str, Sequence[LrCurve]]], path: Path) -> None:
    """Final validation accuracy against learning rate (log x), one line per optimizer, one panel per
    workload: a hollow square marks Keras' default learning rate, a star the tuned one, an x at the bottom
    a trial that diverged."""
    pyplot = _pyplot()
    figure, axes_row = _panel_row(pyplot, len(panels))
    for (title, curves), axes in zip(panels, axes_row, strict=True):
        for curve in curves:
            colour = optimizer_colour(curve.optimizer)
            points = [(lr, v) for lr, v in zip(curve.learning_rates, curve.values, strict=True) if v is not None]
            axes.plot(*zip(*points, strict=True), marker="o", markersize=3, color=colour, label=curve.optimizer)
            failed = [lr for lr, v in zip(curve.learning_rates, curve.values, strict=True) if v is None]
            axes.plot(failed, [0.0] * len(failed), "x", color=colour, markersize=7)
            marks = dict(points)
            if curve.default_lr in marks:
                axes.plot(curve.default_lr, marks[curve.default_lr], "s", mfc="none", mec=colour, markersize=10)
            if curve.best_lr in marks:
                axes.plot(curve.best_lr, marks[curve.best_lr], "*", color=colour, markersize=13)
        axes.set_xscale("log")
        axes.set_ylim(-0.03, 1.0)
        axes.set_title(title, fontsize=10)
        axes.set_xlabel("learning rate (log scale)")
        axes.set_ylabel("final validation accuracy")
        axes.grid(alpha=0.3, which="both")
        axes.legend(title="□ Keras default, ★ tuned, x diverged", title_fontsize=8, fontsize=8, loc="best")
    save_figure_atomic(figure, path, dpi=110)
    pyplot.close(figure)


def _panel_row(pyplot: Any, count: int) -> tuple[Any, Sequence[Any]]:
    """One row of `count` panels (one per workload), within the page's width."""
    figure, axes = pyplot.subplots(
        1, count, figsize=(min(PAGE_WIDTH, 5.5 * count), 4.2), squeeze=False, layout="constrained"
    )
    return figure, axes[0]


@dataclass
class BudgetCurve:
    """Expected best validation accuracy of k tuning trials (k = budgets), optionally with a band (low, high)."""

    optimizer: str
    budgets: Sequence[int]
    expected: Sequence[float]
    low: Sequence[float] | None = None
    high: Sequence[float] | None = None


def budget_curves(
    panels: Sequence[tuple[str, Sequence[BudgetCurve]]], path: Path, band_label: str = "band: 95 %"
) -> None:
    """Expected best validation accuracy against the number of learning rates drawn without replacement from
    the grid (Tang et al. 2020), one line per optimizer (and its band when it has one, named in the legend by
    `band_label`), one panel per workload."""
    from matplotlib.ticker import MaxNLocator

    pyplot = _pyplot()
    figure, axes_row = _panel_row(pyplot, len(panels))
    for (title, curves), axes in zip(panels, axes_row, strict=True):
        banded = False
        for curve in curves:
            colour = optimizer_colour(curve.optimizer)
            axes.plot(curve.budgets, curve.expected, marker="o", markersize=3, color=colour, label=curve.optimizer)
            if curve.low is not None and curve.high is not None:
                axes.fill_between(curve.budgets, curve.low, curve.high, color=colour, alpha=0.15, linewidth=0)
                banded = True
        grid = max((len(curve.budgets) for curve in curves), default=0)
        axes.set_title(title, fontsize=10)
        axes.set_xlabel(f"k: learning rates drawn at random, without\nreplacement, from the {grid}-rate grid")
        axes.set_ylabel("expected best validation accuracy")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        axes.grid(alpha=0.3)
        legend = f"optimizer ({band_label})" if banded else "optimizer"
        axes.legend(title=legend, title_fontsize=8, fontsize=8, loc="lower right")
    save_figure_atomic(figure, path, dpi=110)
    pyplot.close(figure)


def performance_profile(taus: Sequence[float], fractions: dict[str, Sequence[float]], title: str, path: Path) -> None:
    """Dolan-Moré profile: per optimizer, the fraction of workloads within a factor τ of the best."""
    pyplot = _pyplot()
    figure, axes = pyplot.subplots(figsize=(6.5, 4.2), layout="constrained")
    for optimizer, values in fractions.items():
        axes.step(taus, values, where="post", color=optimizer_colour(optimizer), label=optimizer)
    axes.set_ylim(-0.03, 1.03)
    axes.set_xlabel("τ: within this factor of the best optimizer's epochs to target")
    axes.set_ylabel("fraction of workloads")
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(title="optimizer", fontsize=8)
    save_figure_atomic(figure, path, dpi=110)
    pyplot.close(figure)


@dataclass
class ParetoPoint:
    """One setting on a cost-benefit plane: mean and 95 % interval on each axis (`x`, `y`); `marker` and `colour`
    say what kind of setting it is, `short` its name beside the marker when it is on the frontier."""

    label: str
    short: str
    x: Summary
    y: Summary
    marker: str = "o"
    colour: str = OTHER_COLOUR
    filled: bool = True
    on_frontier: bool = False


def pareto(
    panels: Sequence[tuple[str, Sequence[ParetoPoint]]],
    path: Path,
    xlabel: str,
    ylabel: str,
    suptitle: str = "",
    y_scale: float = 100.0,
) -> None:
    """One panel per (title, points): each point its mean with 95 % interval bars on both axes, the points marked
    `on_frontier` (no other beats them on both axes: fewer x and more y) joined by a dashed step line and named;
    one legend for all panels (a label appears once)."""
    pyplot = _pyplot()
    figure, axes_row = pyplot.subplots(
        1, len(panels), figsize=(PAGE_WIDTH, 4.6), squeeze=False, layout="constrained", sharey=False
    )
    seen: dict[str, Any] = {}
    for axes, (title, points) in zip(axes_row[0], panels, strict=True):
        for point in points:
            xerr = _half_width(point.x)
            yerr = _half_width(point.y, y_scale)
            drawn = axes.errorbar(
                point.x.mean,
                point.y.mean * y_scale,
                xerr=xerr,
                yerr=yerr,
                fmt=point.marker,
                color=point.colour,
                markerfacecolor=point.colour if point.filled else "white",
                markersize=6,
                elinewidth=0.8,
                capsize=2,
                alpha=0.9,
            )
            seen.setdefault(point.label, drawn)
        on_front = sorted((p for p in points if p.on_frontier), key=lambda p: p.x.mean)
        if on_front:
            xs = [p.x.mean for p in on_front]
            ys = [p.y.mean * y_scale for p in on_front]
            axes.step(xs, ys, where="post", linestyle="--", color="black", linewidth=0.9, alpha=0.6)
            for point in on_front:
                axes.annotate(
                    point.short,
                    (point.x.mean, point.y.mean * y_scale),
                    textcoords="offset points",
                    xytext=(4, -10),
                    fontsize=7,
                )
        axes.set_title(title, fontsize=10)
        axes.set_xlabel(xlabel)
        axes.set_ylabel(ylabel)
        axes.grid(alpha=0.3)
    figure.legend(list(seen.values()), list(seen), loc="outside lower center", ncol=3, fontsize=7, frameon=False)
    if suptitle:
        figure.suptitle(suptitle, fontsize=10)
    save_figure_atomic(figure, path, dpi=110)
    pyplot.close(figure)


def _half_width(summary: Summary, scale: float = 1.0) -> float:
    """The 95 % interval's half width (0 where n < 2 or every value was the same)."""
    if summary.n < 2 or summary.ci_high != summary.ci_high:
        return 0.0
    return (summary.ci_high - summary.mean) * scale

"""src/analysis/plots.py: one colour per optimizer in the PNGs and DVC's plot templates, figures that fit the page."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import numpy as np

from src.analysis import plots
from src.analysis.stats import summarize
from src.training.config import PROJECT_ROOT

PAGE_PIXELS = 1100  # PAGE_WIDTH at the figures' 110 dpi: inside a 1280-pixel browser window with its margins


def png_size(path: Path) -> tuple[int, int]:
    width, height = struct.unpack(">II", path.read_bytes()[16:24])  # the IHDR chunk
    return width, height


def test_every_optimizer_of_conf_has_its_own_colour() -> None:
    names = sorted(p.stem for p in (PROJECT_ROOT / "conf" / "optimizer").glob("*.yaml"))
    assert sorted(plots.OPTIMIZER_COLOURS) == names
    assert len(set(plots.OPTIMIZER_COLOURS.values())) == len(names)
    assert plots.optimizer_colour("adagrad") == plots.optimizer_colour("optimizer=adagrad,train.epochs=5")
    assert plots.optimizer_colour("not-an-optimizer") == plots.OTHER_COLOUR


def test_dvc_plot_templates_colour_optimizers_as_the_pngs_do() -> None:
    for template in ("by_seed.json", "by_optimizer.json"):
        spec = json.loads((PROJECT_ROOT / ".dvc" / "plots" / template).read_text().replace('"<DVC_METRIC_DATA>"', "[]"))
        (calculate,) = spec["transform"]
        mapping = json.loads(re.fullmatch(r"\((\{.*\})\)\[datum\.optimizer\] \|\| '(#\w+)'", calculate["calculate"])[1])
        assert mapping == plots.OPTIMIZER_COLOURS, template
        assert calculate["calculate"].endswith(f"|| '{plots.OTHER_COLOUR}'")
        assert spec["encoding"]["color"]["scale"] == {"range": {"field": calculate["as"]}}


def test_confusion_grid_of_five_optimizers_wraps_to_fit_the_page(tmp_path: Path) -> None:
    counts = np.diag(np.full(10, 1000))
    matrices = [(f"{name}: 97.00 ± 0.10 %\n(sum over 3 seeds)", counts) for name in ("a", "b", "c", "d", "e")]
    plots.confusion_grid(matrices, tmp_path / "grid.png")
    width, height = png_size(tmp_path / "grid.png")
    assert width <= PAGE_PIXELS and height > width / 2  # two rows of three
    plots.confusion_grid(matrices[:1], tmp_path / "one.png")
    assert png_size(tmp_path / "one.png")[0] <= PAGE_PIXELS / 2


def test_bands_figure_fits_the_page_and_colours_each_optimizer(tmp_path: Path, monkeypatch) -> None:
    drawn: dict[str, str] = {}
    original = plots.optimizer_colour

    def recording(name: str) -> str:  # records what each band was drawn with (the PNG itself has no labels)
        drawn[name] = original(name)
        return drawn[name]

    monkeypatch.setattr(plots, "optimizer_colour", recording)
    bands = [plots.Band(n, n, [1, 2], [summarize([0.9, 0.92]), summarize([0.95])]) for n in ("rmsprop", "adam")]
    panels = [plots.Panel("val accuracy", "epoch", "accuracy", bands), plots.Panel("loss", "epoch", "loss", log_y=True)]
    plots.bands_figure(panels, tmp_path / "bands.png", "suptitle", "optimizer")
    assert png_size(tmp_path / "bands.png")[0] <= PAGE_PIXELS
    assert drawn == {"rmsprop": "#2ca02c", "adam": "#1f77b4"}

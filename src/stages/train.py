"""`python -m src.stages.train <optimizer>`: the DVC stage train@<optimizer>.

Trains `<optimizer>` once per seed of params.yaml in ONE process (a Hydra multirun of `src.train`,
`train.seed=<the seeds to train>`: each job also scores its run's model on the test set), then gathers every
seed's test scores and predictions into reports/eval/<optimizer>/ (src.stages.evaluate) in the same process:
one TensorFlow import per optimizer instead of one per seed and stage (measured: docs/benchmarks.md, "The
DVC pipeline").

Only the seeds that need it are trained. DVC keeps `runs/<optimizer>/` between runs (`persist: true` in
dvc.yaml), and each seed's folder records the config hash it was trained with (`stage.json`, the same
hash as the run's MLflow tag `config_hash`). A seed whose folder holds a finished run of the current
config is kept; any other seed's folder is emptied and trained again; folders of seeds no longer in
params.yaml are removed. So adding a seed trains that seed alone, and changing the optimizer's config
retrains all of its seeds.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from src.infra.errors import ConfigError, exit_on_user_error
from src.infra.files import write_text_atomic
from src.stages import evaluate
from src.stages.params import RUNS_DIR, read_params, seed_dir

RECORD = "stage.json"


def job_overrides(optimizer: str) -> list[str]:
    """The overrides every job of the stage runs with (besides the seed): what dvc.yaml used to pass."""
    return [
        f"optimizer={optimizer}",
        "data.fetch_if_missing=false",  # the fetch stage provides data/mnist.npz
        "train.skip_finished=false",  # the seed folders decide what is trained (see the module docstring)
        f"+mlflow.tags.dvc_stage=train@{optimizer}",
    ]


def config_hashes(optimizer: str, seeds: Sequence[int]) -> dict[int, str]:
    """{seed: the config hash src.train will compute for that job} (src.training.resume.config_hash, which
    includes the sha256 of the MNIST file)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from src.training import data, resume
    from src.training.config import compose

    cfg = compose(job_overrides(optimizer), command="src.stages.train", return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # `${hydra:...}` paths resolve (they do not enter the hash)
    with open_dict(cfg):
        del cfg["hydra"]
    data_path = Path(cfg.data.dir) / data.FILE_NAME
    if not data_path.is_file():
        raise ConfigError(f"{data_path} is missing; fetch it with `dvc repro fetch`")
    data_sha256 = data.sha256_file(data_path)
    hashes = {}
    for seed in seeds:  # what `train.seed=<seed>` on the command line gives, without composing again
        cfg.train.seed = seed
        hashes[seed] = resume.config_hash(cfg, data_sha256)
    return hashes


def is_trained(folder: Path, config_hash: str) -> bool:
    """Whether `folder` holds a finished job of this config hash: its record, its metrics and, unless it
    diverged, its model's test scores and predictions (what src.stages.evaluate gathers)."""
    record = folder / RECORD
    if not record.is_file() or not (folder / "metrics.json").is_file():
        return False
    if json.loads(record.read_text()).get("config_hash") != config_hash:
        return False
    metrics = json.loads((folder / "metrics.json").read_text())
    scored = all(key in metrics for key in evaluate.SCORES) and (folder / evaluate.PREDICTIONS).is_file()
    return bool(metrics.get("diverged")) or scored


def plan(optimizer: str, seeds: Sequence[int], hashes: dict[int, str], runs_dir: Path) -> list[int]:
    """The seeds to train; empties their folders and removes the folders of seeds not listed."""
    folder = runs_dir / optimizer
    listed = {seed_dir(runs_dir, optimizer, seed) for seed in seeds}
    for old in folder.glob("seed*") if folder.is_dir() else []:
        if old not in listed:
            shutil.rmtree(old)
    to_train = [seed for seed in seeds if not is_trained(seed_dir(runs_dir, optimizer, seed), hashes[seed])]
    for seed in to_train:
        shutil.rmtree(seed_dir(runs_dir, optimizer, seed), ignore_errors=True)
    return to_train


def train_seeds(optimizer: str, seeds: Sequence[int], runs_dir: Path) -> None:
    """A Hydra multirun of src.train over `seeds`, in this process, into runs/<optimizer>/seed<k>/."""
    from src import train

    argv = [
        "src.train",
        "-m",
        *job_overrides(optimizer),
        f"train.seed={','.join(map(str, seeds))}",
        f"hydra.sweep.dir={runs_dir / optimizer}",
        "hydra.sweep.subdir=seed${train.seed}",
        # no sweep parent run: the compare stage makes every seed's run a child of the comparison's run
        "~hydra.callbacks.mlflow_sweep",
    ]
    saved, sys.argv = sys.argv, argv
    try:
        train.cli()
    finally:
        sys.argv = saved


def run_stage(optimizer: str, runs_dir: Path = RUNS_DIR) -> list[int]:
    """Train what is missing, record each trained seed's hash, gather every seed's test scores; return the
    seeds trained."""
    _, seeds = read_params()  # fails on bad seeds before anything trains
    hashes = config_hashes(optimizer, seeds)
    to_train = plan(optimizer, seeds, hashes, runs_dir)
    kept = [seed for seed in seeds if seed not in to_train]
    print(f"train@{optimizer}: training seeds {to_train or 'none'}; kept from earlier runs: {kept or 'none'}")
    try:
        if to_train:
            train_seeds(optimizer, to_train, runs_dir)
    finally:  # a seed that finished is kept even when a later one fails
        for seed in to_train:
            _record(seed_dir(runs_dir, optimizer, seed), hashes[seed])
    evaluate.evaluate_seeds(optimizer, seeds, runs_dir)
    return to_train


def _record(folder: Path, config_hash: str) -> None:
    if not (folder / "run.json").is_file():  # src.train writes it once the run has ended FINISHED
        return
    run = json.loads((folder / "run.json").read_text())
    write_text_atomic(folder / RECORD, json.dumps({"config_hash": config_hash, **run}, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("optimizer", help="a name of conf/optimizer/*.yaml listed in params.yaml")
    args = parser.parse_args()
    with exit_on_user_error():
        run_stage(args.optimizer)


if __name__ == "__main__":
    main()

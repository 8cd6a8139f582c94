"""One definition of the keys that do not shape training (src.training.config.NOT_TRAINING_KEYS), four uses that agree.

For every key of real composed configs, each use is observed by what it does, not by asking
`shapes_training`: changing the key changes the config hash; the key is logged as an MLflow param (else as
the tag `config.<key>`); an override of it shows in the run name; two runs differing in it show it among
the comparison's differing settings. A new location key that slipped into one use and not the others
fails here.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml
from omegaconf import DictConfig, OmegaConf

from src.stages.compare import differing_settings, load_seed
from src.stages.params import seed_dir
from src.tracking.job import CONFIG_TAG_PREFIX, SWEEP_ENV, config_params, config_tags, job_run_name
from src.training import resume
from src.training.config import CONFIG_DIR, compose, flatten

# ${hydra:runtime.output_dir} resolves only inside a job: give the two output paths values of their own.
OUTPUT_PATHS = ["callbacks.model_checkpoint.filepath=/tmp/out/best.keras", "callbacks.tensorboard.log_dir=/tmp/out/tb"]
OPTIMIZERS = sorted(path.stem for path in (CONFIG_DIR / "optimizer").glob("*.yaml"))
CONFIGS = {
    "default": [],
    **{f"optimizer={name}": [f"optimizer={name}"] for name in OPTIMIZERS},
    "experiment=hw3_q4": ["experiment=hw3_q4"],  # adds report_dir
    "all-callbacks-cnn-dvc-tag": [
        "callbacks.tensorboard.enabled=true",
        "callbacks.reduce_lr_on_plateau.enabled=true",
        "model=cnn",
        "+mlflow.tags.dvc_stage=train@adam",  # what dvc.yaml adds
    ],
}
# The comparison shows the optimizer as its own column and treats seeds as replicates of one setting.
COMPARE_OWN_COLUMNS = {"optimizer._target_", "train.seed"}
CHANGED = "__changed__"


def _hashed(cfg: DictConfig, keys: list[str]) -> set[str]:
    """The keys whose value changes the config hash (each changed in place, then put back as it was,
    interpolations included: a training key that interpolates a location would show here)."""
    raw = OmegaConf.to_container(cfg, resolve=False)
    base = resume.config_hash(cfg, "0" * 64, "tensorflow")
    hashed = set()
    for key in keys:
        OmegaConf.update(cfg, key, CHANGED, merge=False)
        if resume.config_hash(cfg, "0" * 64, "tensorflow") != base:
            hashed.add(key)
        original = raw
        for part in key.split("."):
            original = original[part]
        OmegaConf.update(cfg, key, original, merge=False)
    assert resume.config_hash(cfg, "0" * 64, "tensorflow") == base  # put back whole
    return hashed


def _named(keys: list[str]) -> set[str]:
    """The keys whose command-line override shows in a (non-sweep) run name."""
    shown = job_run_name([f"{key}=x" for key in keys], {"optimizer": "adam"}).split(",")
    return {key for key in keys if f"{key}=x" in shown}


def _compared(cfg: DictConfig, keys: list[str], runs_dir: Path) -> set[str]:
    """The keys the comparison lists as differing between two runs whose configs differ in every key."""
    changed = copy.deepcopy(cfg)
    for key in keys:
        OmegaConf.update(changed, key, CHANGED, merge=False)
    seeds = []
    for name, config in (("a", cfg), ("b", changed)):
        folder = seed_dir(runs_dir, name, 1)
        (folder / ".hydra").mkdir(parents=True)
        (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(OmegaConf.to_container(config, resolve=True)))
        (folder / "metrics.json").write_text(json.dumps({"best_val_accuracy": 0.9, "diverged": False}))
        (folder / "history.json").write_text(json.dumps({"val_accuracy": [0.9], "val_loss": [0.3]}))
        seeds.append(load_seed(name, 1, runs_dir, {1: {"test_accuracy": 0.9}})["settings"])
    return set(differing_settings(seeds))


@pytest.mark.parametrize("overrides", list(CONFIGS.values()), ids=list(CONFIGS))
def test_hash_params_run_names_and_comparison_agree_on_every_key(
    overrides: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(SWEEP_ENV, raising=False)  # run names outside a sweep
    cfg = compose([*OUTPUT_PATHS, *overrides])
    keys = [key for key, _ in flatten(OmegaConf.to_container(cfg, resolve=True))]
    params = config_params(cfg, {})
    tags = config_tags(cfg)
    as_params = {key for key in keys if key in params}
    as_tags = {key for key in keys if f"{CONFIG_TAG_PREFIX}{key}" in tags}

    assert as_params.isdisjoint(as_tags) and as_params | as_tags == set(keys)  # each key logged once
    # An optimizer's config adds only optimizer.* keys to the default one: hash those (~50 ms a hash).
    optimizer_only = bool(overrides) and overrides[0].startswith("optimizer=")
    hash_keys = [key for key in keys if key.startswith("optimizer.")] if optimizer_only else keys
    assert _hashed(cfg, hash_keys) == as_params & set(hash_keys)
    assert _named(keys) == as_params
    assert _compared(cfg, keys, tmp_path) == as_params - COMPARE_OWN_COLUMNS
    # Not vacuous: both sides hold what they are meant to.
    assert {"optimizer.learning_rate", "train.epochs", "data.limit", "callbacks.early_stopping.patience"} <= as_params
    locations = {"mlflow.tracking_uri", "data.dir", "train.state_dir", "callbacks.model_checkpoint.filepath"}
    assert locations <= as_tags
    if "+mlflow.tags.dvc_stage=train@adam" in overrides:
        assert tags["config.mlflow.tags.dvc_stage"] == "train@adam"
    if "experiment=hw3_q4" in overrides:
        assert "report_dir" in as_tags


def test_group_choices_are_params_but_hydras_own_are_not(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SWEEP_ENV, raising=False)
    choices = {"optimizer": "sgd", "model": "mlp", "callbacks": "default", "hydra/launcher": "joblib"}
    params = config_params(compose(OUTPUT_PATHS), choices)
    assert {params[g] for g in ("optimizer", "model", "callbacks")} == {"sgd", "mlp", "default"}
    assert "hydra/launcher" not in params
    assert job_run_name(["hydra/launcher=joblib", "optimizer=sgd"], choices) == "optimizer=sgd"


def test_tags_mask_the_tracking_password_and_keep_long_values_whole() -> None:
    cfg = compose(["mlflow.tracking_uri=postgresql://ana:s3cret@db/mlflow", *OUTPUT_PATHS])
    tags = config_tags(cfg)
    assert tags["config.mlflow.tracking_uri"] == "postgresql://ana:***@db/mlflow"
    assert tags["config.data.sources"] == "['keras', 'pypi', 'local']"
    assert not any("s3cret" in value for value in [*tags.values(), *config_params(cfg, {}).values()])


def test_the_dvc_runs_params_differ_in_the_optimizer_alone() -> None:
    """What MLflow's "show diff only" shows between the DVC pipeline's runs (each with its own output paths
    and dvc_stage tag, as dvc.yaml makes them)."""
    runs = []
    for name in ("adam", "adagrad", "rmsprop"):
        paths = [
            f"callbacks.model_checkpoint.filepath=/runs/{name}/best.keras",
            f"callbacks.tensorboard.log_dir=/runs/{name}/tb",
        ]
        cfg = compose([*paths, f"optimizer={name}", f"+mlflow.tags.dvc_stage=train@{name}"])
        runs.append(config_params(cfg, {"optimizer": name, "model": "mlp", "callbacks": "default"}))
    differing = {key for key in set().union(*runs) if len({run.get(key) for run in runs}) > 1}
    assert "optimizer.learning_rate" not in differing  # all three at 0.001
    assert {"optimizer", "optimizer._target_", "optimizer.beta_1", "optimizer.rho"} <= differing  # one has it
    assert all(key == "optimizer" or key.startswith("optimizer.") for key in differing), differing

"""The study's config (conf/callback_study/default.yaml), checked before anything trains, and what it implies: the
tuned learning rates read from the fair report, the callback settings compared, and each run's training config.

The study is the `callback_study` group composed onto the training config (conf/config.yaml), like the fair
protocol's `fair` group: overrides that start with `callback_study.` shape the study, any other one
(`data.limit=2000`) every run. A run's training config keeps only the divergence guards of conf/callbacks/ and
adds its setting's callback, every key it does not set kept at its conf/callbacks/<name>.yaml value.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf, open_dict

from src.infra.errors import ConfigError
from src.infra.predicates import seed_problem
from src.training.config import CONFIG_DIR, DIVERGENCE_GUARDS, LOGGED_METRICS, PROJECT_ROOT, ConfigCheck, validate
from src.training.config import compose as compose_config

GROUP = "callback_study"
BASELINE, EARLY_STOPPING, MODEL_CHECKPOINT, REDUCE_LR, TENSORBOARD = (
    "baseline",
    "early_stopping",
    "model_checkpoint",
    "reduce_lr_on_plateau",
    "tensorboard",
)
REPLAYED_KINDS = (EARLY_STOPPING, MODEL_CHECKPOINT)  # computed from the baseline's recorded epochs
NO_TENSORBOARD = "tb-none"
COST_FOLDER = "tensorboard"  # the cost runs' folder in trials_dir (the tensorboard stage's output)
UPDATE_FREQS = ("epoch", "batch")
# How a key is written in a setting's folder name (`es-val_loss-p2-restore`); a true flag is its name alone
SHORT = {
    "patience": "p",
    "restore_best_weights": "restore",
    "start_from_epoch": "start",
    "factor": "f",
    "histogram_freq": "hist",
    "write_graph": "graph",
    "update_freq": "update-",
    "save_best_only": "best",
}


@dataclass(frozen=True)
class Setting:
    """One thing compared: `kind` (baseline or a callback), that callback's keys (over conf/callbacks/'s values),
    a folder-safe `name` and a `label` for tables."""

    kind: str
    options: tuple[tuple[str, Any], ...] = ()  # the callback's keys, in config order (hashable)

    @property
    def keys(self) -> dict[str, Any]:
        return dict(self.options)

    @property
    def replayed(self) -> bool:
        return self.kind in REPLAYED_KINDS

    @property
    def name(self) -> str:
        if self.kind == BASELINE:
            return BASELINE
        if self.kind == TENSORBOARD and not self.keys:
            return NO_TENSORBOARD
        prefix = {EARLY_STOPPING: "es", MODEL_CHECKPOINT: "mc", REDUCE_LR: "rlrop", TENSORBOARD: "tb"}[self.kind]
        parts = []
        for key, value in self.options:
            if key == "monitor":
                parts.append(str(value))
            elif isinstance(value, bool):
                parts += [SHORT.get(key, key)] if value else []
            else:
                parts.append(f"{SHORT.get(key, key)}{_text(value)}")
        return "-".join([prefix, *parts])

    @property
    def label(self) -> str:
        if self.kind == BASELINE:
            return "no callback (full budget)"
        if self.name == NO_TENSORBOARD:
            return "no TensorBoard"
        keys = dict(self.keys)
        head = {
            EARLY_STOPPING: "EarlyStopping",
            MODEL_CHECKPOINT: "ModelCheckpoint",
            REDUCE_LR: "ReduceLROnPlateau",
            TENSORBOARD: "TensorBoard",
        }[self.kind]
        monitor = [str(keys.pop("monitor"))] if "monitor" in keys else []
        if keys.pop("save_best_only", False):
            monitor.append("best only")
        if keys.pop("restore_best_weights", False):
            keys["restore"] = "best"
        else:
            keys.pop("restore_best_weights", None)
        return f"{head}({', '.join(monitor + [f'{k}={_text(v)}' for k, v in keys.items()])})"


def _text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else f"{value:g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class Study:
    """The validated `callback_study` group (conf/callback_study/default.yaml explains every key)."""

    optimizers: tuple[str, ...]
    workload: str
    fair_summary: Path
    fair_lock: Path
    seeds: tuple[int, ...]
    epochs: int
    batch_size: int
    settings: tuple[Setting, ...]  # the baseline first, then every setting compared with it
    cost_optimizer: str
    cost_seeds: tuple[int, ...]
    cost_epochs: int
    cost_settings: tuple[Setting, ...]  # no TensorBoard first
    experiment_name: str
    trials_dir: Path
    report_dir: Path


def _names(folder: str) -> list[str]:
    return sorted(path.stem for path in (CONFIG_DIR / folder).glob("*.yaml"))


def _callback_defaults(kind: str) -> dict[str, Any]:
    """conf/callbacks/<kind>.yaml's keys (every Keras parameter): the keys a setting may set."""
    return yaml.safe_load((CONFIG_DIR / "callbacks" / f"{kind}.yaml").read_text())[kind]


def _check_keys(check: ConfigCheck, key: str, keys: Any, kind: str) -> dict[str, Any]:
    """One setting's callback keys: known to conf/callbacks/<kind>.yaml, each value valid (monitor one of the
    logged metrics, patience an integer >= 0, factor in (0, 1), ...)."""
    if not isinstance(keys, Mapping) or not keys:
        check.fail(key, keys, f"a non-empty mapping of {kind} keys, e.g. {{monitor: val_loss, patience: 2}}")
        return {}
    allowed = [name for name in _callback_defaults(kind) if name not in ("enabled", "_target_")]
    for name, value in keys.items():
        where = f"{key}.{name}"
        if name not in allowed:
            check.fail(where, value, f"not a key of conf/callbacks/{kind}.yaml; use one of {', '.join(allowed)}")
        elif name == "monitor" and value not in LOGGED_METRICS:
            check.fail(where, value, "this metric is never logged; use one of " + ", ".join(LOGGED_METRICS))
        elif name in ("patience", "start_from_epoch", "cooldown", "histogram_freq"):
            check.integer(where, value, 0)
        elif name in ("min_delta", "min_lr"):
            check.number(where, value, 0, low_open=False)
        elif name == "factor":
            check.number(where, value, 0, 1, low_open=True)
        elif name in ("restore_best_weights", "write_graph", "save_best_only") and not isinstance(value, bool):
            check.fail(where, value, "use true or false")
        elif name == "update_freq":
            check.frequency(where, value, UPDATE_FREQS)
    return dict(keys)


def _list(check: ConfigCheck, key: str, value: Any, what: str) -> list[Any]:
    if not isinstance(value, list) or not value:
        check.fail(key, value, f"a non-empty list of {what}")
        return []
    return value


def _seeds(check: ConfigCheck, key: str, seeds: Any, minimum: int) -> tuple[int, ...]:
    problem = seed_problem(seeds) if isinstance(seeds, list) else "is not a list"
    if problem or len(seeds) < minimum:
        why = problem or f"holds fewer than {minimum} seeds (one seed resolves nothing)"
        check.fail(key, seeds, f"{why}; use at least {minimum} distinct integers >= 0, e.g. [1, 2, 3, 4, 5]")
        return ()
    return tuple(seeds)


def _grid(check: ConfigCheck, study: Mapping[str, Any]) -> list[Setting]:
    """Every combination of `early_stopping`'s lists, then each `early_stopping_extra` entry."""
    key = f"{GROUP}.early_stopping"
    grid = study.get("early_stopping")
    if not isinstance(grid, Mapping) or not grid:
        check.fail(key, grid, "a mapping of EarlyStopping keys to lists of values, e.g. {patience: [0, 2]}")
        return []
    lists = {name: _list(check, f"{key}.{name}", values, "values") for name, values in grid.items()}
    combos = [dict(zip(lists, values, strict=True)) for values in itertools.product(*lists.values())]
    settings = []
    for combo in combos:
        settings.append(Setting(EARLY_STOPPING, tuple(_check_keys(check, key, combo, EARLY_STOPPING).items())))
    extra = study.get("early_stopping_extra") or []
    if not isinstance(extra, list):
        check.fail(f"{key}_extra", extra, "a list of EarlyStopping settings (mappings), or []")
        extra = []
    for index, keys in enumerate(extra):
        settings.append(
            Setting(EARLY_STOPPING, tuple(_check_keys(check, f"{key}_extra[{index}]", keys, EARLY_STOPPING).items()))
        )
    return settings


def read_study(study: Mapping[str, Any]) -> Study:
    """The Study of a composed `callback_study` group, or one ConfigError listing every bad key, one line each."""
    check = ConfigCheck()
    optimizers = study.get("optimizers")
    known = _names("optimizer")
    if not isinstance(optimizers, list) or not optimizers or len(set(map(str, optimizers))) != len(optimizers):
        check.fail(f"{GROUP}.optimizers", optimizers, f"a non-empty list of distinct names of {', '.join(known)}")
        optimizers = []
    elif unknown := [name for name in optimizers if name not in known]:
        check.fail(f"{GROUP}.optimizers", optimizers, f"{unknown[0]!r} has no conf/optimizer/{unknown[0]}.yaml")
    workload = study.get("workload")
    if workload not in _names("model"):
        check.fail(f"{GROUP}.workload", workload, f"use one of {', '.join(_names('model'))} (conf/model/)")
    seeds = _seeds(check, f"{GROUP}.seeds", study.get("seeds"), 2)
    for key, minimum in (("epochs", 1), ("batch_size", 1)):
        check.integer(f"{GROUP}.{key}", study.get(key), minimum)
    settings = [Setting(BASELINE), *_grid(check, study)]
    monitors = _list(
        check, f"{GROUP}.model_checkpoint.monitor", (study.get("model_checkpoint") or {}).get("monitor"), "monitors"
    )
    for monitor in monitors:
        keys = {"monitor": monitor, "save_best_only": True}
        settings.append(
            Setting(
                MODEL_CHECKPOINT, tuple(_check_keys(check, f"{GROUP}.model_checkpoint", keys, MODEL_CHECKPOINT).items())
            )
        )
    pairs = _list(check, f"{GROUP}.reduce_lr_on_plateau", study.get("reduce_lr_on_plateau"), "{factor, patience} pairs")
    for index, keys in enumerate(pairs):
        settings.append(
            Setting(
                REDUCE_LR, tuple(_check_keys(check, f"{GROUP}.reduce_lr_on_plateau[{index}]", keys, REDUCE_LR).items())
            )
        )
    if len({setting.name for setting in settings}) != len(settings):
        check.add(f"{GROUP}: a setting is listed twice; list each once")
    cost = study.get("tensorboard") or {}
    cost_optimizer = cost.get("optimizer")
    if cost_optimizer not in (optimizers or []):
        check.fail(f"{GROUP}.tensorboard.optimizer", cost_optimizer, f"use one of {GROUP}.optimizers ({optimizers})")
    cost_seeds = _seeds(check, f"{GROUP}.tensorboard.seeds", cost.get("seeds"), 2)
    check.integer(f"{GROUP}.tensorboard.epochs", cost.get("epochs"), 2)
    cost_settings = [Setting(TENSORBOARD)]
    for index, keys in enumerate(_list(check, f"{GROUP}.tensorboard.settings", cost.get("settings"), "settings")):
        cost_settings.append(
            Setting(
                TENSORBOARD,
                tuple(_check_keys(check, f"{GROUP}.tensorboard.settings[{index}]", keys, TENSORBOARD).items()),
            )
        )
    name = study.get("experiment_name")
    if not isinstance(name, str) or not name.strip():
        check.fail(f"{GROUP}.experiment_name", name, "use a non-empty MLflow experiment name")
    check.raise_if_any()
    return Study(
        optimizers=tuple(optimizers),
        workload=str(workload),
        fair_summary=Path(str(study["fair_summary"])),
        fair_lock=Path(str(study["fair_lock"])),
        seeds=seeds,
        epochs=int(study["epochs"]),
        batch_size=int(study["batch_size"]),
        settings=tuple(settings),
        cost_optimizer=str(cost_optimizer),
        cost_seeds=cost_seeds,
        cost_epochs=int(cost["epochs"]),
        cost_settings=tuple(cost_settings),
        experiment_name=name,
        trials_dir=Path(str(study["trials_dir"])),
        report_dir=Path(str(study["report_dir"])),
    )


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()  # DVC's file hash, not a security measure


def tuned_rates(study: Study) -> dict[str, float]:
    """Each optimizer's tuned learning rate on the study's workload, from the fair report's `tuned_lr` column.

    Refused in one line before anything trains: a missing report, one that is not what the fair pipeline
    recorded in its lock (edited by hand, or left from another run: stale), a missing optimizer or workload row,
    or a row without a tuned rate (no rate worked in every tuning study)."""
    summary, lock = _absolute(study.fair_summary), _absolute(study.fair_lock)
    where = f"{GROUP}.fair_summary={str(study.fair_summary)!r}"
    if not summary.is_file():
        raise ConfigError(f"{where} is invalid: no such file; run `make fair` first (it writes the tuned rates)")
    recorded = _locked_md5(lock, study.fair_summary)
    if recorded is None:
        raise ConfigError(
            f"{where} is invalid: {study.fair_lock} does not record it; run `make fair` (its pipeline writes both)"
        )
    if recorded != _md5(summary):
        raise ConfigError(
            f"{where} is stale: it differs from what {study.fair_lock} recorded (edited by hand, or another run's);"
            " run `make fair` to regenerate it"
        )
    with summary.open(newline="") as stream:
        rows = [row for row in csv.DictReader(stream) if row.get("workload") == study.workload]
    rates: dict[str, float] = {}
    for optimizer in study.optimizers:
        row = next((row for row in rows if row.get("optimizer") == optimizer), None)
        if row is None:
            raise ConfigError(
                f"{where} has no row for optimizer {optimizer!r} on workload {study.workload!r}: add it to the fair"
                f" comparison (conf/fair/default.yaml) and run `make fair`, or drop it from {GROUP}.optimizers"
            )
        try:
            rates[optimizer] = float(row.get("tuned_lr") or "")
        except ValueError:
            raise ConfigError(
                f"{where}: {optimizer} on {study.workload} has tuned_lr={row.get('tuned_lr')!r}: no learning rate"
                " worked in every tuning study, so there is no tuned rate to train at"
            ) from None
    return rates


def _absolute(path: Path) -> Path:
    return path if path.is_absolute() else PROJECT_ROOT / path


def _locked_md5(lock: Path, output: Path) -> str | None:
    """The md5 a dvc.lock records for `output` (a path relative to the project root), if it records one."""
    if not lock.is_file():
        return None
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages") or {}
    for stage in stages.values():
        for out in stage.get("outs") or []:
            if Path(str(out.get("path"))) == output:
                return out.get("md5")
    return None


def with_group(overrides: Sequence[str]) -> list[str]:
    """The overrides with the study's group added; `optimizer=` and `model=` are refused (the study picks them)."""
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key in ("optimizer", "model"):
            plural = "optimizers" if key == "optimizer" else "workload"
            raise ConfigError(f"{override!r}: the study picks the {key}; use {GROUP}.{plural}=... instead")
    return [f"+{GROUP}=default", *overrides]


def compose(overrides: Sequence[str], optimizer: str | None = None, workload: str | None = None) -> DictConfig:
    extra = [f"optimizer={optimizer}"] * bool(optimizer) + [f"model={workload}"] * bool(workload)
    return compose_config([*with_group(overrides), *extra], command="src.callback_study")


@dataclass(frozen=True)
class Trial:
    """One run: an optimizer at its tuned rate, a setting, a seed, `epochs` long (the budget or the cost study's)."""

    optimizer: str
    setting: Setting
    seed: int
    epochs: int

    def folder(self, trials_dir: Path) -> Path:
        """`<trials_dir>/<optimizer>/<setting>/seed<k>` (a TensorBoard cost run: `<trials_dir>/tensorboard/...`): one
        folder per run, under its DVC stage's output."""
        group = COST_FOLDER if self.setting.kind == TENSORBOARD else self.optimizer
        return trials_dir / group / self.setting.name / f"seed{self.seed}"

    @property
    def run_name(self) -> str:
        return f"{self.setting.label} {self.optimizer} seed={self.seed}"


def budget_trials(study: Study, optimizer: str) -> list[Trial]:
    """Every setting on every seed at the full budget, seed-major (a seed's runs share a data split)."""
    return [Trial(optimizer, setting, seed, study.epochs) for seed in study.seeds for setting in study.settings]


def cost_trials(study: Study) -> list[Trial]:
    """The TensorBoard cost runs. Per seed the settings start at another one (a rotation), so that no setting
    always runs first, when the machine may still be warming up."""
    settings = study.cost_settings
    trials = []
    for offset, seed in enumerate(study.cost_seeds):
        for index in range(len(settings)):
            setting = settings[(index + offset) % len(settings)]
            trials.append(Trial(study.cost_optimizer, setting, seed, study.cost_epochs))
    return trials


def load(overrides: Sequence[str]) -> tuple[Study, dict[str, float], dict[str, DictConfig]]:
    """The study, the tuned rates and each optimizer's base training config, all checked: a bad value stops the
    study before its first run (and before any MLflow run)."""
    study = read_study(OmegaConf.to_container(compose(overrides)[GROUP], resolve=True))
    rates = tuned_rates(study)
    bases = {optimizer: base_config(study, overrides, optimizer, rates[optimizer]) for optimizer in study.optimizers}
    for optimizer, base in bases.items():  # every setting's config is a valid training config too
        for setting in {*study.settings, *study.cost_settings}:
            validate(trial_config(base, Trial(optimizer, setting, study.seeds[0], study.epochs), Path("checked")))
    return study, rates, bases


def base_config(study: Study, overrides: Sequence[str], optimizer: str, learning_rate: float) -> DictConfig:
    """The optimizer's training config at its tuned rate and the study's batch size, without callbacks; the
    conf/callbacks/ defaults kept aside under `callback_defaults` for the settings to start from."""
    cfg = compose(overrides, optimizer, study.workload)
    with open_dict(cfg):
        del cfg[GROUP]
        cfg.optimizer.learning_rate = learning_rate
        cfg.train.batch_size = study.batch_size
        cfg.mlflow.experiment_name = study.experiment_name
        cfg.callback_defaults = cfg.callbacks
        cfg.callbacks = {name: cfg.callbacks[name] for name in DIVERGENCE_GUARDS if name in cfg.callbacks}
    return cfg


def trial_config(base: DictConfig, trial: Trial, folder: Path) -> DictConfig:
    """One run's training config: the divergence guards plus its setting's callback (files under `folder`)."""
    cfg = base.copy()
    with open_dict(cfg):
        defaults = cfg.pop("callback_defaults")
        cfg.train.seed = trial.seed
        cfg.train.epochs = trial.epochs
        setting = trial.setting
        if setting.kind != BASELINE and setting.name != NO_TENSORBOARD:
            callback = OmegaConf.create(OmegaConf.to_container(defaults[setting.kind], resolve=False))
            callback.enabled = True
            for key, value in setting.keys.items():
                callback[key] = value
            if setting.kind == MODEL_CHECKPOINT:
                callback.save_weights_only = True  # the kept weights are the same; saving them is faster
                callback.filepath = str(folder / "checkpoint" / "best.weights.h5")
            if setting.kind == TENSORBOARD:
                callback.log_dir = str(folder / "tensorboard")
            cfg.callbacks[setting.kind] = callback
    return cfg

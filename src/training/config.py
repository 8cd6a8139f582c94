"""Config helpers shared by every entry point: the `project_root` resolver, composing, validation, flattening.

Validation runs on the composed config before anything expensive happens (no TensorFlow import, no
MLflow run), so a typo costs a second, not a training run.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from src.infra.errors import ConfigError
from src.infra.predicates import is_finite_number, is_integer
from src.training.data import DATASETS, MNIST

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = PROJECT_ROOT / "conf"


def project_root() -> str:
    """`${project_root:}` in conf/: default paths are absolute, independent of the cwd and Hydra's output dir.

    A named function, not a lambda: Hydra ships the driver's resolvers to Ray workers (Singleton state), a
    lambda with the driver's PROJECT_ROOT inside, a named function by name, so that on another node it
    resolves to the copy of the project that node runs (src/infra/cluster.py).
    """
    return str(PROJECT_ROOT)


OmegaConf.register_new_resolver("project_root", project_root, replace=True)


def compose(overrides: Sequence[str] = (), *, command: str = "", return_hydra_config: bool = False) -> DictConfig:
    """conf/config.yaml with command-line `overrides`, through Hydra's compose API: how every module that is
    not itself a Hydra app reads the config (DVC stages, the fair protocol, reports, tests). It makes no
    output folder and sets up no logging; `return_hydra_config` keeps the `hydra` node (its `${hydra:...}`
    paths resolve once HydraConfig is set from it).

    Hydra's own errors (an unknown group option, a malformed override) become a one-line ConfigError led by
    `command`, the name the user typed: Hydra's further lines repeat the override, a password in it too,
    and list its search path.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return hydra_compose(
                config_name="config", overrides=list(overrides), return_hydra_config=return_hydra_config
            )
    except HydraException as error:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ConfigError(f"{command}: {first_line}" if command else first_line) from None


# What model.fit logs every epoch, and so what a callback may `monitor`.
LOGGED_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")
# The callbacks that only stop a diverging run (conf/callbacks/): all the fair protocol keeps, all the vectorized
# engine accepts.
DIVERGENCE_GUARDS = ("terminate_on_nan", "stop_on_divergence")
MODES = ("auto", "min", "max")
VERBOSE_CHOICES = ("auto", 0, 1, 2)

# Keys that say where things go, how a run is filed or how chatty it is: not what is trained. This one
# definition decides the config hash (src/training/resume.py), run names and MLflow params vs tags
# (src/tracking/job.py) and the comparison's "settings that differ" (src/stages/compare.py); a test checks that
# all four agree. A key and everything below it (`mlflow` covers `mlflow.tags.dvc_stage`).
NOT_TRAINING_KEYS = (
    "hydra",
    "mlflow",
    "report_dir",  # where src.homework.report writes its report (experiment=hw3_q4)
    "train.verbose",
    "train.resume",
    "train.skip_finished",
    "train.force",
    "train.state_dir",
    "data.dir",
    "data.sources",
    "data.local_path",
    "data.cache_dir",
    "data.fetch_if_missing",
)
# The same for the keys of every callback, `callbacks.<name>.<key>`.
NOT_TRAINING_CALLBACK_KEYS = ("filepath", "log_dir", "backup_dir", "verbose")


def shapes_training(key: str) -> bool:
    """Whether a dotted config key (or an override's key: `hydra/launcher`, `+mlflow.tags.x`) can change
    what is trained. False for the keys of NOT_TRAINING_KEYS and NOT_TRAINING_CALLBACK_KEYS."""
    parts = re.split(r"[./]", key.lstrip("+~"))
    if len(parts) >= 3 and parts[0] == "callbacks" and parts[2] in NOT_TRAINING_CALLBACK_KEYS:
        return False
    return not any(".".join(parts[: len(k.split("."))]) == k for k in NOT_TRAINING_KEYS)


def training_tree(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A copy of a nested config without the keys that do not shape training (see NOT_TRAINING_KEYS)."""
    return {
        key: training_tree(value, f"{prefix}{key}.") if isinstance(value, Mapping) else value
        for key, value in tree.items()
        if shapes_training(f"{prefix}{key}")
    }


class ConfigCheck:
    """Every problem of a config, collected so that one error lists them all, one line each: the one style
    of config validation (`validate` here, the fair protocol's `read_protocol`, src.homework.backprop).

    A user who fixes one typo learns of the next one at once instead of after another run."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def add(self, line: str) -> None:
        """A problem in words of its own (it names its key)."""
        self.problems.append(line)

    def fail(self, key: str, value: Any, allowed: str) -> None:
        self.add(f"{key}={value!r} is invalid: {allowed}")

    def integer(self, key: str, value: Any, minimum: int) -> None:
        if not is_integer(value) or value < minimum:
            self.fail(key, value, f"use an integer >= {minimum}")

    def number(
        self, key: str, value: Any, low: float, high: float | None = None, *, low_open: bool, high_open: bool = True
    ) -> None:
        ok = is_finite_number(value) and (value > low if low_open else value >= low)
        if ok and high is not None:
            ok = value < high if high_open else value <= high
        if not ok:
            left = "(" if low_open else "["
            right = "inf)" if high is None else (f"{high})" if high_open else f"{high}]")
            self.fail(key, value, f"use a number in {left}{low}, {right}")

    def choice(self, key: str, value: Any, allowed: tuple[Any, ...]) -> None:
        if value not in allowed or isinstance(value, bool):
            self.fail(key, value, "use one of " + ", ".join(str(a) for a in allowed))

    def frequency(self, key: str, value: Any, words: tuple[str, ...]) -> None:
        if value not in words and not (is_integer(value) and value >= 1):
            self.fail(key, value, f"use {' or '.join(repr(w) for w in words)} or an integer >= 1")

    def raise_if_any(self) -> None:
        """Raise one ConfigError listing every problem (on one line when there is one), if there is any."""
        if self.problems:
            separator = "\n  " if len(self.problems) > 1 else " "
            raise ConfigError("invalid config:" + separator + separator.join(self.problems))


def _check_optimizer(check: ConfigCheck, optimizer: Mapping[str, Any]) -> None:
    if "_target_" not in optimizer:
        check.fail("optimizer._target_", None, "every optimizer config needs a _target_ class")
    learning_rate = optimizer.get("learning_rate")
    if not isinstance(learning_rate, Mapping):  # a Mapping is a Keras schedule: Keras validates it
        check.number("optimizer.learning_rate", learning_rate, 0, low_open=True)
    for key in ("epsilon", "epsilon_1", "epsilon_2"):
        if key in optimizer:
            check.number(f"optimizer.{key}", optimizer[key], 0, low_open=True)
    for key in ("beta_1", "beta_2", "rho", "ema_momentum", "adam_beta_1", "adam_beta_2"):
        if key in optimizer:
            check.number(f"optimizer.{key}", optimizer[key], 0, 1, low_open=False)
    if "momentum" in optimizer:
        check.number("optimizer.momentum", optimizer["momentum"], 0, low_open=False)
    for key in ("weight_decay", "clipnorm", "clipvalue", "global_clipnorm"):
        if optimizer.get(key) is not None:
            check.number(f"optimizer.{key}", optimizer[key], 0, low_open=key != "weight_decay")


def _check_callback(check: ConfigCheck, name: str, callback: Mapping[str, Any]) -> None:
    prefix = f"callbacks.{name}"
    enabled = callback.get("enabled", True)
    if not isinstance(enabled, bool):
        check.fail(f"{prefix}.enabled", enabled, "use true or false")
        return
    if not enabled:
        return
    if "_target_" not in callback:
        check.fail(f"{prefix}._target_", None, "an enabled callback needs a _target_ class")
    if "monitor" in callback and callback["monitor"] not in LOGGED_METRICS:
        check.fail(
            f"{prefix}.monitor",
            callback["monitor"],
            "this metric is never logged; use one of " + ", ".join(LOGGED_METRICS),
        )
    if "mode" in callback:
        check.choice(f"{prefix}.mode", callback["mode"], MODES)
    for key in ("patience", "start_from_epoch", "cooldown", "histogram_freq", "embeddings_freq"):
        if key in callback:
            check.integer(f"{prefix}.{key}", callback[key], 0)
    for key in ("min_delta", "min_lr"):
        if key in callback:
            check.number(f"{prefix}.{key}", callback[key], 0, low_open=False)
    if "factor" in callback:
        check.number(f"{prefix}.factor", callback["factor"], 0, 1, low_open=True)
    if "max_ratio" in callback:  # StopOnDivergence
        check.number(f"{prefix}.max_ratio", callback["max_ratio"], 1, low_open=True)
        if callback.get("baseline") is not None:
            check.number(f"{prefix}.baseline", callback["baseline"], 0, low_open=True)
    if "raise_error" in callback and not isinstance(callback["raise_error"], bool):
        check.fail(f"{prefix}.raise_error", callback["raise_error"], "use true or false")
    if "verbose" in callback:
        check.choice(f"{prefix}.verbose", callback["verbose"], (0, 1))
    if "backup_dir" in callback and callback.get("save_freq") != "epoch":
        check.fail(f"{prefix}.save_freq", callback.get("save_freq"), "backups are made per epoch: use epoch")
    elif "save_freq" in callback:
        check.frequency(f"{prefix}.save_freq", callback["save_freq"], ("epoch",))
    if "update_freq" in callback:
        check.frequency(f"{prefix}.update_freq", callback["update_freq"], ("epoch", "batch"))
    if "filepath" in callback:
        filepath = str(callback["filepath"])
        suffix = ".weights.h5" if callback.get("save_weights_only") else ".keras"
        if not filepath.endswith(suffix):
            check.fail(f"{prefix}.filepath", filepath, f"Keras needs a path ending in {suffix}")


def _check_model(check: ConfigCheck, model: Mapping[str, Any]) -> None:
    # hidden_units may be empty (no hidden layer: logistic regression, conf/model/logreg.yaml); filters may not
    for key, what in (("hidden_units", "a list of integers >= 1, e.g. [128] ([]: none)"), ("filters", None)):
        if key in model:
            units = model[key]
            valid = isinstance(units, list) and all(is_integer(u) and u >= 1 for u in units)
            if not valid or not (units or what):
                check.fail(f"model.{key}", units, f"use {what or 'a non-empty list of integers >= 1, e.g. [32, 64]'}")
    if "kernel_size" in model:
        check.integer("model.kernel_size", model["kernel_size"], 1)
    if "dropout" in model:
        check.number("model.dropout", model["dropout"], 0, 1, low_open=False)


def _check_data(check: ConfigCheck, data: Mapping[str, Any]) -> None:
    val_split = data.get("val_split")
    check.number("data.val_split", val_split, 0, 1, low_open=True)
    limit = data.get("limit")
    if limit is not None:
        check.integer("data.limit", limit, 1)
        if is_integer(limit) and limit >= 1 and is_finite_number(val_split) and 0 < val_split < 1:
            n_val = int(round(limit * val_split))
            if n_val < 1 or n_val >= limit:
                check.fail(
                    "data.limit", limit, f"with data.val_split={val_split} it leaves no training or validation images"
                )
    name = data.get("name", MNIST.name)
    if name not in DATASETS:
        check.fail("data.name", name, f"use one of {', '.join(DATASETS)} (conf/data/<name>.yaml)")
        return
    allowed = DATASETS[name].sources
    sources = data.get("sources")
    if not isinstance(sources, list) or not sources or any(s not in allowed for s in sources):
        check.fail("data.sources", sources, f"use a non-empty list drawn from {', '.join(allowed)} (for {name})")


def registered_model_name_problem(name: Any) -> str | None:
    """Why MLflow's model registry (or `models:/<name>@champion`) would reject `name`, or None if it is fine.

    MLflow's own rules (mlflow.utils.validation._validate_model_name, checked here without importing
    MLflow): non-empty, no "/" or ":", a name that stays itself as a path (no "." or ".." parts), at most
    256 characters. This project also refuses "@" (it separates the alias in `models:/<name>@champion`)
    and quotes (they would break the registry's filter strings).
    """
    if not isinstance(name, str) or not name.strip():
        return "use a non-empty name such as mnist-optimizers"
    if len(name) > 256:
        return "use at most 256 characters"
    bad = sorted(set(name) & set("/:@'\"\\"))
    if bad:
        return f"a registered model name may not contain {' '.join(bad)}; use letters, digits, - _ ."
    if posixpath.normpath(name) != name or name == "." or name.startswith(".."):
        return "use a name that is not . and does not start with .."
    return None


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError listing every invalid value of a composed training config.

    Reads values unresolved where they may hold `${hydra:...}` (checkpoint paths): validation also runs
    on sweep jobs that Hydra has not launched yet.
    """
    check = ConfigCheck()
    train = cfg.train
    check.integer("train.epochs", train.epochs, 1)
    check.integer("train.batch_size", train.batch_size, 1)
    if train.get("validation_batch_size") is not None:
        check.integer("train.validation_batch_size", train.validation_batch_size, 1)
    check.integer("train.seed", train.seed, 0)
    check.integer("train.steps_per_execution", train.steps_per_execution, 1)
    if train.get("steps_per_epoch") is not None:
        check.integer("train.steps_per_epoch", train.steps_per_epoch, 1)
    check.choice("train.verbose", train.verbose, VERBOSE_CHOICES)
    for key in ("resume", "skip_finished", "force"):
        if not isinstance(train.get(key), bool):
            check.fail(f"train.{key}", train.get(key), "use true or false")
    _check_optimizer(check, OmegaConf.to_container(cfg.optimizer, resolve=True))
    callbacks = OmegaConf.to_container(cfg.callbacks, resolve=False) if cfg.get("callbacks") else {}
    for name, callback in callbacks.items():
        if not isinstance(callback, Mapping):
            check.fail(f"callbacks.{name}", callback, "each callback is a mapping with enabled and _target_")
            continue
        _check_callback(check, name, callback)
    _check_model(check, OmegaConf.to_container(cfg.model, resolve=True))
    _check_data(check, OmegaConf.to_container(cfg.data, resolve=False))
    if not isinstance(cfg.mlflow.experiment_name, str) or not cfg.mlflow.experiment_name.strip():
        check.fail("mlflow.experiment_name", cfg.mlflow.experiment_name, "use a non-empty name")
    if not isinstance(cfg.mlflow.get("register", False), bool):
        check.fail("mlflow.register", cfg.mlflow.get("register"), "use true or false")
    model_name = cfg.mlflow.get("registered_model_name", "mnist-optimizers")
    if registered_model_name_problem(model_name):
        check.fail("mlflow.registered_model_name", model_name, registered_model_name_problem(model_name))
    check.raise_if_any()


def flatten(tree: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Yield (dotted.key, leaf) pairs of a nested mapping; lists stay whole leaves."""
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from flatten(value, f"{dotted}.")
        else:
            yield dotted, value

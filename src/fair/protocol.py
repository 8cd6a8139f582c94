"""The fair protocol's settings (conf/fair/), checked before anything trains, and the runs they imply.

The protocol is the `fair` config group composed onto the training config (conf/config.yaml): overrides
that start with `fair.` shape the protocol, any other one (`data.limit=300`, `mlflow.tracking_uri=...`)
every run of it. Each optimizer x workload gets its own training config, in which the protocol fixes what
an equal budget needs: its epochs and batch size, and no callback that ends a run early or changes its
learning rate (EarlyStopping, ReduceLROnPlateau); only the divergence guards stay (TerminateOnNaN,
StopOnDivergence), and nothing writes files a trial does not need (checkpoints, TensorBoard, backups).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from src.infra.errors import ConfigError
from src.infra.predicates import is_finite_number, seed_problem
from src.training.config import CONFIG_DIR, DIVERGENCE_GUARDS, ConfigCheck, validate
from src.training.config import compose as compose_config

GROUP = "fair"
DEFAULT_PRESET = "default"
TUNE, JUDGE = "tune", "judge"
# The callbacks a trial keeps: the divergence guards. Everything else would end runs early, change their
# learning rate or write files (conf/callbacks/default.yaml).


def _names(folder: str) -> list[str]:
    return sorted(path.stem for path in (CONFIG_DIR / folder).glob("*.yaml"))


ENGINES = ("vectorized", "sequential")  # fair.engine: how trials train (conf/fair/default.yaml)


@dataclass(frozen=True)
class Workload:
    """A model trained on a data set: conf/workload/<name>.yaml's `model` (conf/model/) and `data` (conf/data/)."""

    model: str
    data: str


@dataclass(frozen=True)
class Protocol:
    """The validated `fair` group (conf/fair/default.yaml explains every key)."""

    optimizers: tuple[str, ...]
    workloads: tuple[str, ...]
    parts: Mapping[str, Workload]  # each workload's model and data set
    lr_grid: tuple[float, ...]
    tune_seeds: tuple[int, ...]
    epochs: int
    batch_size: int
    judge_seeds: tuple[int, ...]
    targets: Mapping[str, tuple[float, ...]]
    experiment_name: str
    trials_dir: Path
    report_dir: Path
    engine: str
    memory_budget_mb: int


def _name_list(check: ConfigCheck, key: str, value: Any, folder: str) -> tuple[str, ...]:
    """The names in `value` that have a conf/<folder>/<name>.yaml (what later checks may rely on); the first
    one without, a repeated or a missing list is a problem of `key`."""
    allowed = _names(folder)
    what = f"a non-empty list of distinct names of conf/{folder}/*.yaml ({', '.join(allowed)})"
    if not isinstance(value, list) or not value or len(set(map(str, value))) != len(value):
        check.fail(key, value, what)
        return ()
    unknown = [name for name in value if name not in allowed]
    if unknown:
        check.fail(key, value, f"{unknown[0]!r} has no conf/{folder}/{unknown[0]}.yaml; use {what}")
    return tuple(name for name in value if name in allowed)


def _workload(check: ConfigCheck, name: str) -> Workload:
    """conf/workload/<name>.yaml's model and data set, each a name with its own config file."""
    spec = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "workload" / f"{name}.yaml"))
    spec = spec if isinstance(spec, dict) else {}
    for key, folder in (("model", "model"), ("data", "data")):
        if spec.get(key) not in _names(folder):
            allowed = ", ".join(_names(folder))
            check.fail(f"conf/workload/{name}.yaml: {key}", spec.get(key), f"use a name of conf/{folder}/ ({allowed})")
    return Workload(str(spec.get("model")), str(spec.get("data")))


def read_protocol(fair: Mapping[str, Any]) -> Protocol:
    """The Protocol of a composed `fair` group, or one ConfigError listing every bad key, one line each."""
    check = ConfigCheck()
    optimizers = _name_list(check, "fair.optimizers", fair.get("optimizers"), "optimizer")
    workloads = _name_list(check, "fair.workloads", fair.get("workloads"), "workload")
    parts = {name: _workload(check, name) for name in workloads}
    grid = fair.get("lr_grid")
    if not isinstance(grid, list) or not grid:
        check.fail("fair.lr_grid", grid, "a non-empty list of learning rates > 0, e.g. [1.0e-04, 1.0e-03, 1.0e-02]")
    elif not_positive := [lr for lr in grid if not is_finite_number(lr) or lr <= 0]:
        check.fail("fair.lr_grid", grid, f"{not_positive[0]!r} is not a number > 0; every learning rate must be > 0")
    elif len({float(lr) for lr in grid}) != len(grid):
        check.fail("fair.lr_grid", grid, "a learning rate is listed twice; list each once")
    seeds = fair.get("judge_seeds")
    judge_problem = seed_problem(seeds) if isinstance(seeds, list) else "is not a list"
    if judge_problem or len(seeds) < 2:
        why = judge_problem or "holds fewer than 2 seeds (one seed resolves nothing)"
        check.fail("fair.judge_seeds", seeds, f"{why}; use at least 2 distinct integers >= 0, e.g. [1, 2, 3, 4, 5]")
    tune_seeds = fair.get("tune_seeds")
    tune_problem = seed_problem(tune_seeds) if isinstance(tune_seeds, list) else "is not a list"
    if tune_problem:
        check.fail("fair.tune_seeds", tune_seeds, f"{tune_problem}; use distinct integers >= 0, one per tuning study")
    elif not judge_problem and (shared := sorted(set(tune_seeds) & set(seeds))):
        check.fail(
            "fair.tune_seeds",
            tune_seeds,
            f"shares {', '.join(map(str, shared))} with fair.judge_seeds; judging on a tuning seed would score the"
            " selection on the data it was chosen on: use seeds disjoint from fair.judge_seeds",
        )
    if fair.get("engine") not in ENGINES:
        check.fail("fair.engine", fair.get("engine"), f"use one of {', '.join(ENGINES)}")
    for key, minimum in (("epochs", 1), ("batch_size", 1), ("memory_budget_mb", 1)):
        check.integer(f"fair.{key}", fair.get(key), minimum)
    targets = fair.get("targets")
    chosen: dict[str, tuple[float, ...]] = {}
    if not isinstance(targets, Mapping):
        check.fail("fair.targets", targets, "a mapping workload -> list of validation accuracies in (0, 1]")
    # One problem, one line: a bad workload name is fair.workloads' problem, a bad mapping fair.targets'
    for workload in workloads if isinstance(targets, Mapping) else ():
        values = targets.get(workload)
        if not isinstance(values, list) or not values:
            check.fail(f"fair.targets.{workload}", values, "a non-empty list of validation accuracies in (0, 1]")
        elif outside := [value for value in values if not is_finite_number(value) or not 0 < value <= 1]:
            check.fail(f"fair.targets.{workload}", values, f"{outside[0]!r} is outside (0, 1]; targets are accuracies")
        else:
            chosen[workload] = tuple(float(v) for v in values)
    name = fair.get("experiment_name")
    if not isinstance(name, str) or not name.strip():
        check.fail("fair.experiment_name", name, "use a non-empty MLflow experiment name")
    check.raise_if_any()
    return Protocol(
        optimizers=optimizers,
        workloads=workloads,
        parts=parts,
        lr_grid=tuple(sorted(float(lr) for lr in grid)),
        tune_seeds=tuple(tune_seeds),
        epochs=int(fair["epochs"]),
        batch_size=int(fair["batch_size"]),
        judge_seeds=tuple(seeds),
        targets=chosen,
        experiment_name=name,
        trials_dir=Path(str(fair["trials_dir"])),
        report_dir=Path(str(fair["report_dir"])),
        engine=str(fair["engine"]),
        memory_budget_mb=int(fair["memory_budget_mb"]),
    )


def with_group(overrides: Sequence[str]) -> list[str]:
    """The overrides with the `fair` group added (`+fair=default`, or the preset a `fair=<name>` asks for).

    `optimizer=`, `model=` and `data=` are refused: the protocol itself chooses them from fair.optimizers and
    fair.workloads (conf/workload/), so such an override would be silently ignored."""
    result, preset = [], DEFAULT_PRESET
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key in ("optimizer", "model", "data"):
            plural = "optimizers" if key == "optimizer" else "workloads"
            raise ConfigError(f"{override!r}: the protocol picks the {key}; use fair.{plural}=[...] instead")
        if key == GROUP:
            preset = override.split("=", 1)[1]
            continue
        result.append(override)
    return [f"+{GROUP}={preset}", *result]


def compose(overrides: Sequence[str], optimizer: str | None = None, workload: Workload | None = None) -> DictConfig:
    """conf/config.yaml + the fair group + `overrides` (+ the optimizer and the workload's model and data)."""
    extra = [f"optimizer={optimizer}"] * bool(optimizer)
    if workload is not None:
        extra += [f"model={workload.model}", f"data={workload.data}"]
    return compose_config([*with_group(overrides), *extra], command="src.fair")


def load(
    overrides: Sequence[str], only: tuple[str, str] | str | None = None
) -> tuple[Protocol, dict[tuple[str, str], DictConfig]]:
    """The protocol and its optimizer x workload training configs, all validated: a bad value stops the
    protocol before its first trial. `only`: an optimizer (its configs on every workload: a DVC stage) or one
    (optimizer, workload) pair."""
    settings = read_protocol(OmegaConf.to_container(compose(overrides)[GROUP], resolve=True))
    pairs = [(optimizer, workload) for workload in settings.workloads for optimizer in settings.optimizers]
    if only is not None:
        chosen = [pair for pair in pairs if pair == only or pair[0] == only]
        if not chosen:
            raise ConfigError(
                f"{only if isinstance(only, str) else ' '.join(only)} is not in the protocol:"
                f" fair.optimizers={list(settings.optimizers)}, fair.workloads={list(settings.workloads)}"
            )
        pairs = chosen
    return settings, {pair: training_config(settings, overrides, *pair) for pair in pairs}


def training_config(protocol: Protocol, overrides: Sequence[str], optimizer: str, workload: str) -> DictConfig:
    """One optimizer x workload's training config: the protocol's budget, only the divergence guards, no
    `fair` group (it does not shape a run), validated like any training config."""
    cfg = compose(overrides, optimizer, protocol.parts[workload])
    with open_dict(cfg):
        del cfg[GROUP]
        cfg.train.epochs = protocol.epochs
        cfg.train.batch_size = protocol.batch_size
        cfg.callbacks = {name: cfg.callbacks[name] for name in DIVERGENCE_GUARDS if name in cfg.callbacks}
        cfg.mlflow.experiment_name = protocol.experiment_name
    validate(cfg)
    return cfg


def default_learning_rate(cfg: DictConfig) -> float:
    """Keras' default learning rate of the optimizer: conf/optimizer/*.yaml keeps Keras' defaults."""
    return float(cfg.optimizer.learning_rate)


def lr_text(lr: float) -> str:
    """`0.001`, `3e-05`, `1`: how a learning rate is named in folders, tags and tables."""
    return f"{lr:g}"


@dataclass(frozen=True)
class Trial:
    """One run of the protocol: a tuning trial or a judged run (one learning rate, one seed)."""

    phase: str
    workload: str
    optimizer: str
    learning_rate: float
    seed: int

    def folder(self, trials_dir: Path) -> Path:
        """`<trials_dir>/<optimizer>/<workload>/<phase>/lr<lr>-seed<seed>`: one folder per trial."""
        return phase_dir(trials_dir, self.workload, self.optimizer, self.phase) / self.name

    @property
    def name(self) -> str:
        return f"lr{lr_text(self.learning_rate)}-seed{self.seed}"

    @property
    def run_name(self) -> str:
        return f"{self.phase} {self.optimizer} lr={lr_text(self.learning_rate)} seed={self.seed} ({self.workload})"


def phase_dir(trials_dir: Path, workload: str, optimizer: str, phase: str) -> Path:
    """The folder of one optimizer x workload's phase: <trials_dir>/<optimizer>/<workload>/<phase> (trials_dir is
    fair/trials, the output of fair/dvc.yaml's `train` stage)."""
    return trials_dir / optimizer / workload / phase


def tune_trials(protocol: Protocol, optimizer: str, workload: str) -> list[Trial]:
    """Every tuning study (one per tuning seed) is the whole grid: an equal budget per study."""
    return [Trial(TUNE, workload, optimizer, lr, seed) for seed in protocol.tune_seeds for lr in protocol.lr_grid]


def judge_trials(protocol: Protocol, optimizer: str, workload: str, learning_rates: Sequence[float]) -> list[Trial]:
    """Seed-major, so consecutive runs share a seed and so a data split (src.training.data caches one)."""
    return [
        Trial(JUDGE, workload, optimizer, lr, seed)
        for seed in protocol.judge_seeds
        for lr in dict.fromkeys(learning_rates)
    ]

"""A multirun's parent run: the Hydra callback that opens it, validates every job up front, and at
the end writes the summary (grouped by setting when the sweep varies train.seed, see summary.py), tags
every child with its setting, and closes it (FAILED/KILLED when a job did), so no run is left RUNNING.
"""

from __future__ import annotations

import atexit
import json
import os
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from src.analysis.stats import SEED_KEY
from src.infra.errors import ConfigError, exit_on_user_error
from src.infra.files import write_text_atomic
from src.infra.predicates import seed_problem
from src.tracking.job import SWEEP_ENV, override_key, ship_to_jobs
from src.tracking.links import children_url
from src.tracking.parent import FAILED, FINISHED, KILLED, SETTING_TAG, ParentRun, status_with_children
from src.tracking.store import mask_uri, use_experiment
from src.tracking.summary import SweepSummary, summarize_sweep
from src.training.config import PROJECT_ROOT, validate


def _parse_sweep(config: DictConfig) -> tuple[list[str], list[list[str]]]:
    """(the swept keys, every job's override list) of a multirun, as Hydra's basic sweeper expands it."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    arguments = [f"{key}={value}" for key, value in (config.hydra.sweeper.get("params") or {}).items()]
    arguments += list(config.hydra.overrides.task)
    overrides = OverridesParser.create().parse_overrides(arguments)
    swept = [override_key(o.get_key_element()) for o in overrides if o.is_sweep_override()]
    for override in overrides:
        if override_key(override.get_key_element()) == SEED_KEY and override.is_sweep_override():
            check_seeds(override.input_line, list(override.sweep_iterator()))
        elif override.is_sweep_override() and not list(override.sweep_iterator()):
            raise ConfigError(f"{override.input_line!r} sweeps over nothing: give at least one value")
    batches = BasicSweeper.split_arguments(overrides, max_batch_size=None)
    return list(dict.fromkeys(swept)), [job for batch in batches for job in batch]


def check_seeds(override: str, seeds: list[Any]) -> None:
    """The seeds of a sweep are its replicates (src.infra.predicates.seed_problem says what is allowed)."""
    problem = seed_problem(seeds)
    if problem:
        allowed = f"give distinct integers >= 0, e.g. {SEED_KEY}=1,2,3 or {SEED_KEY}='range(1,4)'"
        raise ConfigError(f"{override!r} {problem}: {allowed}")


def validate_sweep(config: DictConfig) -> tuple[list[str], int]:
    """Compose and validate every job of the sweep before any of them starts or any run exists.

    Returns (swept keys, number of jobs). Only the basic sweeper's grid can be expanded up front;
    other sweepers' jobs are still validated one by one as they start.
    """
    from hydra.core.global_hydra import GlobalHydra

    if "BasicSweeper" not in str(config.hydra.sweeper.get("_target_", "")):
        return [], 0
    swept, jobs = _parse_sweep(config)
    loader = GlobalHydra.instance().config_loader()
    for job_overrides in jobs:
        try:
            validate(loader.load_sweep_config(config, job_overrides))
        except ConfigError as error:
            raise ConfigError(f"job {' '.join(job_overrides)}: {error}") from None
    return swept, len(jobs)


def launcher_preflight(config: DictConfig) -> None:
    """Import the sweep's launcher class and run its `preflight(config)`, if it has one, before the parent
    run exists: a launcher that runs jobs elsewhere (hydra_plugins/ray_cluster_launcher.py) checks there that
    they can start and reach the store. Hydra would import the class only after the parent run is created,
    and fail there. The class names its own checks, so tracking knows nothing of Ray."""
    from hydra.utils import get_class

    target = str(config.hydra.launcher.get("_target_", ""))
    try:
        launcher_class = get_class(target)
    except Exception as error:  # Hydra wraps the ImportError; its message says what was missing
        choice = config.hydra.runtime.choices.get("hydra/launcher", "?")
        module_file = PROJECT_ROOT / f"{target.rpartition('.')[0].replace('.', '/')}.py"
        local = target.startswith("hydra_plugins.") and module_file.is_file()
        advice = (
            f"it is this project's (hydra_plugins/), found only from the project's folder: start the sweep from "
            f"{PROJECT_ROOT} or set PYTHONPATH={PROJECT_ROOT}"
            if local
            else "install the package that provides it (make install installs the Ray launcher)"
        )
        raise ConfigError(
            f"hydra/launcher={choice}: hydra.launcher._target_={target} is not importable from {Path.cwd()}: {advice}"
        ) from error
    check = getattr(launcher_class, "preflight", None)
    if callable(check):
        check(config)


class MlflowSweepCallback(Callback):
    """Hydra callback: a multirun is one MLflow parent run; each job's run becomes its child."""

    def __init__(self) -> None:
        self.parent: ParentRun | None = None
        self.swept: list[str] = []
        self.run_name = ""
        self.sweep_dir: Path | None = None
        self.register = False
        self.registered_model_name = "mnist-optimizers"

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

        with exit_on_user_error():
            self.swept, job_count = validate_sweep(config)
            launcher_preflight(config)  # e.g. the Ray cluster's: store, address, resources, runtime_env
        if not self.swept:  # another sweeper (Optuna): it draws the values of its params
            self.swept = [override_key(key) for key in (config.hydra.sweeper.get("params") or {})]
        self.register = bool(config.mlflow.get("register", False))
        self.registered_model_name = str(config.mlflow.get("registered_model_name", self.registered_model_name))
        experiment_id = use_experiment(config.mlflow)
        task_overrides = list(config.hydra.overrides.task)
        # Named after what it sweeps and the config groups chosen on the command line (experiment preset,
        # search, optimizer, model), then the sweep params a preset or search adds.
        named = [
            o
            for o in task_overrides
            if override_key(o) in self.swept or ("." not in override_key(o) and not o.startswith("hydra"))
        ]
        overridden = {override_key(o) for o in task_overrides}
        params = (config.hydra.sweeper.get("params") or {}).items()
        named += [f"{key}={value}" for key, value in params if key not in overridden]
        run_name = mask_uri(" ".join(dict.fromkeys(named)) or "multirun")
        tags = {
            MLFLOW_RUN_NAME: run_name,
            "sweep": "parent",
            "hydra_overrides": mask_uri(" ".join(task_overrides)),  # a password in a URI never reaches MLflow
            "sweep_dir": str(config.hydra.sweep.dir),
            "sweep_jobs": str(job_count),
        }
        self.parent = ParentRun.create(experiment_id, run_name, tags)
        self.run_name, self.sweep_dir = run_name, Path(config.hydra.sweep.dir)
        atexit.register(self.close, FAILED)  # Hydra skips on_multirun_end when a job fails
        global _open_sweep
        _open_sweep = self
        if "'" not in tags["hydra_overrides"]:  # cannot be quoted in a filter string; leave such parents alone
            # a rerun of a sweep whose process died (SIGKILL, power loss) takes over its parent
            self.parent.take_over(f"tags.sweep = 'parent' and tags.hydra_overrides = '{tags['hydra_overrides']}'")
        sweep = json.dumps({"parent_run_id": self.parent.run_id, "swept": self.swept})
        os.environ[SWEEP_ENV] = sweep
        ship_to_jobs(config, sweep)
        print(f"MLflow parent run {run_name!r} ({self.parent.run_id}) in {mask_uri(str(config.mlflow.tracking_uri))}")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self.close(FINISHED)

    def close(self, status: str) -> None:
        """Summarize the children on the parent run and end it with `status` (FAILED if a child failed or the
        summary could not be written, KILLED if a child was killed or Ctrl-C came during the summary)."""
        if self.parent is None or self.parent.ended:
            return
        parent = self.parent
        os.environ.pop(SWEEP_ENV, None)
        try:
            children = sorted(parent.children(), key=lambda run: int(run.data.tags.get("job_num", 0)))
            children = parent.close_lost_children(children, status)
            status = status_with_children(status, children)
            failed = sum(child.info.status != FINISHED for child in children)
            parent.client.set_tag(parent.run_id, "failed_jobs", str(failed))
            if children:
                summary = summarize_sweep(children, self.swept)
                self._report(parent, children, summary)
                if self.register:
                    self._register(summary, status)
                print(f"The runs side by side in the MLflow UI (make ui): {children_url(parent.run_id)}")
        except BaseException as error:
            status = KILLED if isinstance(error, KeyboardInterrupt) or status == KILLED else FAILED
            raise
        finally:
            parent.end(status)

    def _report(self, parent: ParentRun, children: list[Any], summary: SweepSummary) -> None:
        """Tag each child with its setting (adopted runs of an earlier sweep too: the label depends on what
        this sweep varies), log the summary files to the parent and name the best; print the summary."""
        for child in children:
            setting = summary.setting_of(child.info.run_id)
            if child.data.tags.get(SETTING_TAG) != setting:
                parent.adopt(child.info.run_id, {SETTING_TAG: setting})
        files = summary.files(self.run_name)
        parent.log_texts(files)
        if self.sweep_dir is not None and self.sweep_dir.is_dir():
            for name, text in files.items():
                write_text_atomic(self.sweep_dir / name, text)
        parent.tag_best(summary.comparison, summary.comparison.best_run())
        where = f" and in {self.sweep_dir}" if self.sweep_dir is not None else ""
        print(f"\nSweep summary (also in the parent run's summary.md{where}):\n\n" + files["summary.md"])

    def _register(self, summary: SweepSummary, status: str) -> None:
        """mlflow.register=true: register the best setting's best seed (src/tracking/registry.py decides whether it
        becomes the champion); a sweep with a failed job registers nothing."""
        best = summary.comparison.best_run()
        if status != FINISHED or best is None:
            print(f"Model registry: nothing registered (sweep {status.lower()}, best run: {best and best.name})")
            return
        from src.tracking.registry import register_best

        message = register_best(best.run_id, summary.comparison.best_values(), self.registered_model_name)
        if message:
            print(message)


_open_sweep: MlflowSweepCallback | None = None


def close_open_sweep(status: str) -> None:
    """End the sweep's parent run now, e.g. with KILLED when the user pressed Ctrl-C."""
    if _open_sweep is not None:
        _open_sweep.close(status)

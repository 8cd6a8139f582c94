"""Contract tests: every private API of a library that src/ or hydra_plugins/ relies on, checked for exactly what
our code uses. A library upgrade that changes one fails here, in one line naming the library, its installed
version, what changed and what of ours depends on it, instead of silently skewing a metric or a sweep.

The private APIs (every `._name` of a library in src/ and hydra_plugins/, found by grep and an `ast` scan):

- keras, src/training/callbacks.py:
  - RMSprop's and Adam's `_velocities`, Adagrad's `_accumulators` (effective_step_sizes, the step-size metric);
  - ModelCheckpoint's `_save_model`, `_get_file_path`, `_should_save_model` (overridden and called: the
    atomic checkpoint);
  - BackupAndRestore's `_training_metadata_path` and `_save_model` (overridden: the atomic backup);
  - Model's `_initial_epoch` (set by BackupAndRestore to resume);
  - EarlyStopping's and ModelCheckpoint's `_is_improvement`, and the lazily set `monitor_op` and sign of
    `min_delta` that Keras' `_set_monitor_op` would set (replayed by BackupAndRestore on resume);
  - and no other name our callback subclasses define may shadow one of Keras'.
- hydra-core: `hydra._internal.core_plugins.basic_sweeper.BasicSweeper.split_arguments` and the default
  sweeper's `_target_` naming it (src/tracking/sweep.py); `JobReturn(_return_value=...)` (src/infra/cluster.py).
- hydra-ray-launcher (skipped when not installed), src/infra/cluster.py: `hydra_plugins.hydra_ray_launcher.
  _launcher_util._run_job`, and RayLauncher's undocumented `ray_cfg`, `config`, `hydra_context`, `task_function`.
- keras, src/training/vectorized.py: the order `Model.fit(shuffle=True)` visits the data in after
  `keras.utils.set_random_seed` (undocumented; `epoch_order` replays it).
- mlflow: `mlflow.utils.validation._validate_model_name`, mirrored (not called) by
  src/training/config.py registered_model_name_problem, which must be at least as strict.

And two the test harness relies on (tests/conftest.py): Hydra's `hydra._internal.utils.is_under_debugger` and
MLflow's `mlflow.tracking._tracking_service.utils._tracking_uri`.

Fast: no model is fitted, except by the one test of `_initial_epoch` (a single step, marked slow).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import keras
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf, open_dict

from src.training import callbacks
from src.training.config import CONFIG_DIR, registered_model_name_problem


def changed(distribution: str, what: str, used_for: str) -> str:
    """The failure message: the library, its installed version, what changed, and what of ours relies on it."""
    try:
        installed = version(distribution)
    except PackageNotFoundError:
        installed = "(version unknown)"
    return f"{distribution} {installed}: {what} ({used_for})"


def parameters(function) -> list[str]:
    return [name for name in inspect.signature(function).parameters if name != "self"]


def _tiny_model() -> keras.Model:
    model = keras.Sequential([keras.Input(shape=(2,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", run_eagerly=True)
    return model


# ------------------------------------------------------------------------------------------------
# Keras: optimizer state read by the effective step-size metric
# ------------------------------------------------------------------------------------------------

STEP_SIZES = "src/training/callbacks.py effective_step_sizes reads it for the effective_step_size metric"
# (optimizer, its state attribute, that state after one step from a fresh optimizer with gradient g)
OPTIMIZER_STATE = [
    (lambda: keras.optimizers.RMSprop(rho=0.9), "_velocities", lambda g: 0.1 * g**2),
    (lambda: keras.optimizers.Adagrad(initial_accumulator_value=0.1), "_accumulators", lambda g: 0.1 + g**2),
    (lambda: keras.optimizers.Adam(beta_2=0.999), "_velocities", lambda g: 0.001 * g**2),
]


@pytest.mark.parametrize(("make", "attribute", "after_one_step"), OPTIMIZER_STATE, ids=["rmsprop", "adagrad", "adam"])
def test_keras_optimizer_state_holds_what_the_step_size_metric_reads(make, attribute, after_one_step) -> None:
    optimizer = make()
    name = type(optimizer).__name__
    variables = [keras.Variable(np.zeros((2, 3), "float32")), keras.Variable(np.zeros(4, "float32"))]
    optimizer.build(variables)
    state = getattr(optimizer, attribute, None)
    assert state is not None, changed("keras", f"{name} no longer has `{attribute}`", STEP_SIZES)
    shapes = [tuple(variable.shape) for variable in state]
    assert shapes == [(2, 3), (4,)], changed(
        "keras", f"{name}.{attribute} is no longer one variable per model variable, same shape: {shapes}", STEP_SIZES
    )
    gradients = [np.full((2, 3), 0.5, "float32"), np.arange(4, dtype="float32")]
    optimizer.apply_gradients(zip(gradients, variables, strict=True))
    for gradient, held in zip(gradients, getattr(optimizer, attribute), strict=True):
        actual, expected = keras.ops.convert_to_numpy(held), after_one_step(gradient)
        assert np.allclose(actual, expected, rtol=1e-5), changed(
            "keras",
            f"{name}.{attribute} after one step no longer holds what src/training/update_rules.py assumes "
            "(RMSprop, Adam: the running mean of squared gradients; Adagrad: their sum plus the initial value): "
            f"{actual.ravel().tolist()}, expected {expected.ravel().tolist()}",
            STEP_SIZES,
        )


# ------------------------------------------------------------------------------------------------
# Keras: ModelCheckpoint, whose saves src.training.callbacks.ModelCheckpoint redirects to a temporary file
# ------------------------------------------------------------------------------------------------

ATOMIC_CHECKPOINT = "src/training/callbacks.py ModelCheckpoint overrides it to save through write_atomic"


def test_keras_model_checkpoint_get_file_path_formats_the_configured_path(tmp_path: Path) -> None:
    method = keras.callbacks.ModelCheckpoint._get_file_path
    assert parameters(method) == ["epoch", "batch", "logs"], changed(
        "keras",
        f"ModelCheckpoint._get_file_path{inspect.signature(method)}, was (self, epoch, batch, logs)",
        ATOMIC_CHECKPOINT,
    )
    checkpoint = keras.callbacks.ModelCheckpoint(str(tmp_path / "e{epoch:02d}-{val_accuracy:.2f}.keras"))
    path = checkpoint._get_file_path(2, None, {"val_accuracy": 0.5})
    assert path == str(tmp_path / "e03-0.50.keras"), changed(
        "keras",
        f"ModelCheckpoint._get_file_path no longer formats the filepath with epoch + 1 and the logs: {path}",
        "src/training/callbacks.py ModelCheckpoint names the checkpoint by it",
    )


class _RedirectedCheckpoint(keras.callbacks.ModelCheckpoint):
    """Overrides what src.training.callbacks.ModelCheckpoint overrides, with the same signatures, recording calls."""

    def __init__(self, *args, redirect: Path, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.redirect = redirect
        self.asked: list[str] = []
        self.saves: list[tuple[int, int | None]] = []

    def _save_model(self, epoch: int, batch: int | None, logs: dict | None) -> None:
        self.saves.append((epoch, batch))
        super()._save_model(epoch, batch, logs)

    def _get_file_path(self, epoch: int, batch: int | None, logs: dict | None) -> str:
        return str(self.redirect / f"epoch{epoch}.keras")

    def _should_save_model(self, epoch: int, batch: int | None, logs: dict | None, filepath: str) -> bool:
        self.asked.append(filepath)
        return super()._should_save_model(epoch, batch, logs, filepath)


def test_keras_model_checkpoint_saves_where_get_file_path_says_and_only_on_improvement(tmp_path: Path) -> None:
    base = keras.callbacks.ModelCheckpoint
    for method, expected in [
        (base._save_model, ["epoch", "batch", "logs"]),
        (base._should_save_model, ["epoch", "batch", "logs", "filepath"]),
    ]:
        assert parameters(method) == expected, changed(
            "keras",
            f"ModelCheckpoint.{method.__name__}{inspect.signature(method)}, was (self, {', '.join(expected)})",
            ATOMIC_CHECKPOINT,
        )
    configured = tmp_path / "best.keras"
    checkpoint = _RedirectedCheckpoint(
        str(configured), monitor="val_accuracy", mode="max", save_best_only=True, redirect=tmp_path
    )
    checkpoint.set_model(_tiny_model())

    checkpoint.on_epoch_end(0, {"val_accuracy": 0.9})
    redirected = str(tmp_path / "epoch0.keras")
    assert checkpoint.saves == [(0, None)], changed(
        "keras",
        f"ModelCheckpoint.on_epoch_end no longer saves through _save_model(epoch, None, logs): {checkpoint.saves}",
        ATOMIC_CHECKPOINT,
    )
    assert checkpoint.asked == [redirected] and Path(redirected).is_file() and not configured.exists(), changed(
        "keras",
        "ModelCheckpoint._save_model no longer saves to the path _get_file_path returns, after asking "
        f"_should_save_model about that path (asked {checkpoint.asked}; saved: {sorted(tmp_path.iterdir())})",
        ATOMIC_CHECKPOINT,
    )
    checkpoint.on_epoch_end(1, {"val_accuracy": 0.5})
    assert not (tmp_path / "epoch1.keras").exists(), changed(
        "keras",
        "ModelCheckpoint(save_best_only=True)._save_model now writes a file when the monitor did not improve",
        "src/training/callbacks.py ModelCheckpoint: write_atomic must keep the previous best checkpoint",
    )


# ------------------------------------------------------------------------------------------------
# Keras: BackupAndRestore, whose commit point src.training.callbacks.BackupAndRestore replaces
# ------------------------------------------------------------------------------------------------

BACKUP = "src/training/callbacks.py BackupAndRestore"


def test_keras_backup_and_restore_keeps_its_metadata_path_and_arguments(tmp_path: Path) -> None:
    arguments = parameters(keras.callbacks.BackupAndRestore.__init__)
    assert arguments[:4] == ["backup_dir", "save_freq", "double_checkpoint", "delete_checkpoint"], changed(
        "keras", f"BackupAndRestore's arguments are now {arguments}", f"{BACKUP} passes these four by position"
    )
    backup = keras.callbacks.BackupAndRestore(str(tmp_path), "epoch", True, False)
    assert (backup.backup_dir, backup.save_freq, backup.double_checkpoint, backup.delete_checkpoint) == (
        str(tmp_path),
        "epoch",
        True,
        False,
    ), changed("keras", "BackupAndRestore no longer keeps its arguments as attributes of the same names", BACKUP)
    path = getattr(backup, "_training_metadata_path", None)
    assert path == str(tmp_path / "training_metadata.json"), changed(
        "keras",
        f"BackupAndRestore._training_metadata_path is now {path!r}, was <backup_dir>/training_metadata.json",
        f"{BACKUP} commits each backup by replacing that file",
    )


def test_keras_backup_and_restore_save_model_takes_no_arguments() -> None:
    method = keras.callbacks.BackupAndRestore._save_model
    assert parameters(method) == [], changed(
        "keras",
        f"BackupAndRestore._save_model{inspect.signature(method)}, was (self)",
        f"{BACKUP} overrides it with (self): Keras' own callers would pass what ours does not take",
    )


@pytest.mark.slow  # fits one step of a two-weight model (the guard refuses Model.fit in an unmarked test)
def test_keras_fit_starts_at_the_initial_epoch_a_callback_sets_in_on_train_begin() -> None:
    model = _tiny_model()
    assert getattr(model, "_initial_epoch", "missing") is None, changed(
        "keras", "a compiled Model no longer has `_initial_epoch` (None)", f"{BACKUP} sets it to resume a run"
    )

    class Resume(keras.callbacks.Callback):
        def on_train_begin(self, logs: dict | None = None) -> None:
            self.model._initial_epoch = 2

    history = model.fit(
        np.zeros((4, 2), "float32"), np.zeros(4, "int32"), epochs=3, batch_size=4, verbose=0, callbacks=[Resume()]
    )
    assert history.epoch == [2], changed(
        "keras",
        f"Model.fit no longer starts at the `_initial_epoch` set in on_train_begin: it ran epochs {history.epoch}",
        f"{BACKUP}.on_train_begin sets it so that a resumed run trains only the epochs left",
    )


@pytest.mark.slow  # fits 3 one-batch epochs of a two-weight model (eagerly, to see the batches)
def test_keras_fit_visits_the_order_the_vectorized_engine_replays_every_epoch() -> None:
    """Keras' `fit(shuffle=True)` order after `set_random_seed(seed)` is undocumented: the vectorized engine
    replays it (`epoch_order`), so that a member is the sequential engine's trial batch for batch."""
    from src.training.vectorized import epoch_order

    seen: list[np.ndarray] = []

    class Recorder(keras.Model):
        def train_step(self, data):
            seen.append(np.asarray(data[0])[:, 0].astype(int))
            return {"seen": keras.ops.convert_to_tensor(0.0)}

    seed, size = 7, 12
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((2,))
    model = Recorder(inputs, keras.layers.Dense(1)(inputs))
    model.compile(optimizer="sgd", loss="mse", run_eagerly=True)
    features = np.stack([np.arange(size), np.zeros(size)], axis=1).astype("float32")
    model.fit(features, np.zeros(size, "float32"), epochs=3, batch_size=size, shuffle=True, verbose=0)
    replayed = [epoch_order(seed, epoch, size) for epoch in range(3)]
    assert all(np.array_equal(a, b) for a, b in zip(seen, replayed, strict=True)), changed(
        "keras",
        f"Model.fit(shuffle=True) after set_random_seed({seed}) visited {[list(a) for a in seen]}, "
        f"not {[list(b) for b in replayed]}",
        "src/training/vectorized.py epoch_order feeds each member the batches its sequential fit would see",
    )


@pytest.mark.parametrize("kind", ["EarlyStopping", "ModelCheckpoint"])
@pytest.mark.parametrize(("mode", "op_name"), [("min", "less"), ("max", "greater")])
def test_keras_is_improvement_and_the_monitor_op_our_restore_sets(kind: str, mode: str, op_name: str, tmp_path) -> None:
    """`_restore_peers` replays a resumed run's history through `_is_improvement`, first setting `monitor_op` and
    the sign of `min_delta` itself when they are unset, as Keras' `_set_monitor_op` does at the first epoch's end."""
    restore = f"{BACKUP}._restore_peers gives a resumed {kind} its best value"
    extra = {"filepath": str(tmp_path / "best.keras")} if kind == "ModelCheckpoint" else {}
    peer = getattr(keras.callbacks, kind)(monitor="val_x", mode=mode, **extra)
    peer.min_delta = 0.1
    set_monitor_op = getattr(peer, "_set_monitor_op", None)
    assert set_monitor_op is not None, changed(
        "keras", f"{kind} no longer has `_set_monitor_op`: see what sets monitor_op and min_delta now", restore
    )
    set_monitor_op()  # what Keras sets, to compare with what _restore_peers sets
    expected_delta = -0.1 if mode == "min" else 0.1
    assert peer.monitor_op is getattr(keras.ops, op_name) and peer.min_delta == expected_delta, changed(
        "keras",
        f"{kind}(mode={mode!r}) now sets monitor_op={peer.monitor_op}, min_delta={peer.min_delta}; "
        f"_restore_peers sets keras.ops.{op_name} and {expected_delta}",
        restore,
    )
    method = type(peer)._is_improvement
    assert parameters(method) == ["monitor_value", "reference_value"], changed(
        "keras",
        f"{kind}._is_improvement{inspect.signature(method)}, was (self, monitor_value, reference_value)",
        restore,
    )
    better, worse, within_delta = (0.5, 2.0, 0.95) if mode == "min" else (2.0, 0.5, 1.05)
    verdicts = [bool(peer._is_improvement(value, 1.0)) for value in (better, worse, within_delta)]
    assert verdicts == [True, False, False] and bool(peer._is_improvement(worse, None)), changed(
        "keras",
        f"{kind}._is_improvement(value, best) no longer means monitor_op(value - min_delta, best), True when best "
        f"is None: for {better}, {worse}, {within_delta} against 1.0 it says {verdicts}",
        restore,
    )


# Names our subclasses share with Keras on purpose: the private overrides tested above, the epoch counter
# BackupAndRestore keeps as Keras does, and the best value ModelCheckpoint.restore gives back. Any other shared
# name would make our attribute or method replace one of Keras' without anyone deciding it.
SHARED_ON_PURPOSE = {"_save_model", "_get_file_path", "_should_save_model", "_current_epoch", "best"}


def _names_defined_by(cls: type) -> set[str]:
    """The names a class's body defines and the `self.<name>` attributes its methods assign."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    names = {name for name in vars(cls) if not name.startswith("__")}
    for node in ast.walk(tree):
        stored = isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
        if stored and isinstance(node.value, ast.Name) and node.value.id == "self":
            names.add(node.attr)
    return names


def test_no_name_our_keras_callbacks_add_shadows_one_of_keras(tmp_path: Path) -> None:
    fresh = {
        keras.callbacks.ModelCheckpoint: keras.callbacks.ModelCheckpoint(str(tmp_path / "m.keras")),
        keras.callbacks.BackupAndRestore: keras.callbacks.BackupAndRestore(str(tmp_path / "backup")),
        keras.callbacks.Callback: keras.callbacks.Callback(),
    }
    ours = [callbacks.ModelCheckpoint, callbacks.BackupAndRestore, callbacks.EpochStats, callbacks.StopOnDivergence]
    for cls in ours:
        base = cls.__mro__[1]
        hooks = {name for name in dir(keras.callbacks.Callback) if name.startswith("on_") or name.startswith("set_")}
        added = _names_defined_by(cls) - hooks - SHARED_ON_PURPOSE
        shadowed = sorted(name for name in added if hasattr(base, name) or hasattr(fresh[base], name))
        assert not shadowed, changed(
            "keras",
            f"{base.__name__} now has {shadowed}, which src/training/callbacks.py {cls.__name__} also defines",
            "rename ours, or check that Keras' meaning is the one we rely on",
        )


# ------------------------------------------------------------------------------------------------
# Hydra: the basic sweeper's grid, expanded up front by the sweep callback
# ------------------------------------------------------------------------------------------------

SWEEP = "src/tracking/sweep.py validate_sweep expands and validates every job before any starts"


def _basic_sweeper() -> type:
    """Hydra's BasicSweeper, its `split_arguments` checked to be what tracking/sweep.py calls."""
    try:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    except ImportError as error:
        pytest.fail(changed("hydra-core", f"hydra._internal.core_plugins.basic_sweeper.BasicSweeper: {error}", SWEEP))
    split = inspect.getattr_static(BasicSweeper, "split_arguments", None)
    assert isinstance(split, staticmethod) and parameters(split.__func__) == ["overrides", "max_batch_size"], changed(
        "hydra-core",
        f"BasicSweeper.split_arguments is now {split!r}, was a staticmethod (overrides, max_batch_size)",
        SWEEP,
    )
    return BasicSweeper


def test_hydra_basic_sweeper_launches_the_jobs_our_sweep_callback_expands(tmp_path: Path) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.utils import JobReturn, JobStatus
    from hydra.plugins.launcher import Launcher
    from hydra.types import HydraContext

    from src.tracking.sweep import _parse_sweep

    class Recording(Launcher):
        """Hands back every batch the sweeper launches, each job COMPLETED, running nothing."""

        def __init__(self) -> None:
            self.jobs: list[list[str]] = []

        def setup(self, **kwargs) -> None:
            pass

        def launch(self, job_overrides, initial_job_idx: int) -> list[JobReturn]:
            self.jobs += [list(job) for job in job_overrides]
            return [JobReturn(overrides=list(job), status=JobStatus.COMPLETED) for job in job_overrides]

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        config = compose(config_name="config", return_hydra_config=True)
        BasicSweeper = _basic_sweeper()  # after Hydra's plugin scan, which may load the module anew
        target = str(config.hydra.sweeper._target_)
        assert target == f"{BasicSweeper.__module__}.{BasicSweeper.__qualname__}", changed(
            "hydra-core", f"the default hydra.sweeper._target_ is now {target}", f"{SWEEP}: it looks for 'BasicSweeper'"
        )
        with open_dict(config):
            config.hydra.sweeper.params = {"train.seed": "1,2"}
            config.hydra.overrides.task = ["optimizer=adam,sgd", "train.epochs=1"]
            config.hydra.sweep.dir = str(tmp_path)
        # Hydra builds it from this config (its `_target_`); instantiate() refuses hydra._internal targets
        sweeper = BasicSweeper(max_batch_size=config.hydra.sweeper.max_batch_size, params=config.hydra.sweeper.params)
        launcher = Recording()
        loader = GlobalHydra.instance().config_loader()
        sweeper.config, sweeper.launcher = config, launcher
        sweeper.hydra_context = HydraContext(config_loader=loader, callbacks=None)
        sweeper.sweep(arguments=list(config.hydra.overrides.task))
        swept, ours = _parse_sweep(config)
    assert set(swept) == {"train.seed", "optimizer"}
    assert ours == launcher.jobs and len(ours) == 4, changed(
        "hydra-core", f"BasicSweeper now launches {launcher.jobs}; split_arguments gives {ours}", SWEEP
    )


def test_hydra_job_return_takes_the_exception_of_a_failed_job() -> None:
    from hydra.core.utils import JobReturn, JobStatus

    from src.infra.cluster import JobLost

    fields = [field.name for field in dataclasses.fields(JobReturn)]
    used = "src/infra/cluster.py _failed builds JobReturn(_return_value=JobLost(...)) for a job lost on the cluster"
    assert "_return_value" in fields, changed("hydra-core", f"JobReturn's fields are now {fields}", used)
    lost = JobReturn(overrides=["optimizer=adam"], status=JobStatus.FAILED, _return_value=JobLost("node lost"))
    with pytest.raises(JobLost, match="node lost"):
        lost.return_value  # what the sweeper reads to end the sweep FAILED  # noqa: B018


# ------------------------------------------------------------------------------------------------
# hydra-ray-launcher: the launcher loop src/infra/cluster.py runs in place of the plugin's
# ------------------------------------------------------------------------------------------------

RAY_LOOP = "src/infra/cluster.py launch submits every job through it"


def _ray_plugin():
    return pytest.importorskip(
        "hydra_plugins.hydra_ray_launcher._launcher_util", reason="hydra-ray-launcher is not installed (make install)"
    )


def test_ray_plugin_run_job_takes_what_our_launcher_passes() -> None:
    plugin = _ray_plugin()
    import ray
    from hydra.core.utils import JobReturn

    run_job = getattr(plugin, "_run_job", None)
    assert run_job is not None, changed(
        "hydra-ray-launcher", "hydra_plugins.hydra_ray_launcher._launcher_util has no `_run_job`", RAY_LOOP
    )
    signature = inspect.signature(run_job)
    expected = ["hydra_context", "sweep_config", "task_function", "singleton_state"]
    assert list(signature.parameters) == expected, changed(
        "hydra-ray-launcher", f"_run_job{signature}, was ({', '.join(expected)})", f"{RAY_LOOP}, by these keywords"
    )
    assert signature.return_annotation in (JobReturn, "JobReturn"), changed(
        "hydra-ray-launcher",
        f"_run_job now returns {signature.return_annotation}, was JobReturn",
        "src/infra/cluster.py collects one JobReturn per job",
    )
    remote = ray.remote(num_cpus=1)(run_job)
    assert callable(getattr(remote, "remote", None)), changed(
        "ray", "ray.remote(...)(_run_job) has no .remote", RAY_LOOP
    )
    assert not ray.is_initialized()


def test_ray_launcher_keeps_its_config_context_and_task_where_our_launch_reads_them() -> None:
    _ray_plugin()
    from hydra_plugins.ray_cluster_launcher import RayClusterLauncher

    ray_cfg = OmegaConf.create({"init": {}, "remote": {"num_cpus": 1}})
    launcher = RayClusterLauncher(ray=ray_cfg, preflight_timeout_s=1, unschedulable_timeout_s=1)
    context, config = object(), OmegaConf.create({"hydra": {}})

    def task(cfg) -> None:
        return None

    launcher.setup(hydra_context=context, task_function=task, config=config)
    kept = {
        name: getattr(launcher, name, "missing") for name in ("ray_cfg", "hydra_context", "task_function", "config")
    }
    assert kept == {"ray_cfg": ray_cfg, "hydra_context": context, "task_function": task, "config": config}, changed(
        "hydra-ray-launcher",
        f"RayLauncher no longer keeps ray_cfg, hydra_context, task_function, config: {kept}",
        "src/infra/cluster.py launch reads them from the launcher",
    )


# ------------------------------------------------------------------------------------------------
# MLflow: the registered model name rule src/training/config.py mirrors without importing MLflow
# ------------------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(name=st.text(alphabet=st.characters(codec="utf-8"), max_size=12) | st.sampled_from(["..", ".", "./a"]))
@example(name="a/./b")
@example(name="a//b")
@example(name="a/")
@example(name="x" * 300)
def test_mlflow_accepts_every_registered_model_name_we_accept(name: str) -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.utils import validation

    used = "src/training/config.py registered_model_name_problem mirrors it to refuse a name before any training"
    validate = getattr(validation, "_validate_model_name", None)
    assert validate is not None, changed("mlflow", "mlflow.utils.validation has no `_validate_model_name`", used)
    assert parameters(validate) == ["model_name"], changed(
        "mlflow", f"_validate_model_name{inspect.signature(validate)}, was (model_name)", used
    )
    if registered_model_name_problem(name) is not None:
        return
    try:
        validate(name)
    except MlflowException as error:
        pytest.fail(changed("mlflow", f"now rejects the model name {name!r} that we accept: {error}", used))


# ------------------------------------------------------------------------------------------------
# The test harness's own (tests/conftest.py)
# ------------------------------------------------------------------------------------------------


def test_hydra_is_under_debugger_is_what_run_main_replaces() -> None:
    from hydra._internal import utils

    used = "tests/conftest.py run_main replaces it so that Hydra prints its one-line error under coverage"
    check = getattr(utils, "is_under_debugger", None)
    assert callable(check) and parameters(check) == [], changed(
        "hydra-core", "hydra._internal.utils.is_under_debugger() is gone or takes arguments", used
    )
    assert "is_under_debugger()" in inspect.getsource(utils.run_and_report), changed(
        "hydra-core", "hydra._internal.utils.run_and_report no longer calls is_under_debugger() from its module", used
    )


def test_mlflow_tracking_uri_is_kept_where_the_harness_saves_it(tmp_path: Path) -> None:
    import mlflow
    from mlflow.tracking._tracking_service import utils

    used = "tests/conftest.py run_main and tracking_uri save and put back MLflow's tracking URI through it"
    assert hasattr(utils, "_tracking_uri"), changed(
        "mlflow", "mlflow.tracking._tracking_service.utils has no `_tracking_uri`", used
    )
    saved = utils._tracking_uri
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    try:
        mlflow.set_tracking_uri(uri)
        assert utils._tracking_uri == uri, changed(
            "mlflow", f"set_tracking_uri no longer stores the URI in `_tracking_uri` ({utils._tracking_uri!r})", used
        )
    finally:
        mlflow.set_tracking_uri(saved)
    assert utils._tracking_uri == saved, changed("mlflow", "set_tracking_uri(None) no longer unsets the URI", used)

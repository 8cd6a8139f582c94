"""conf/: every YAML builds the real Keras object it describes, and bad values are caught up front."""

from __future__ import annotations

import math
from pathlib import Path

import keras
import pytest
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from src.fair import protocol as fair_protocol
from src.infra.errors import ConfigError
from src.training.config import CONFIG_DIR, PROJECT_ROOT, compose, validate
from tests.conftest import run_cli, run_main

OPTIMIZERS = sorted(path.stem for path in (CONFIG_DIR / "optimizer").glob("*.yaml"))
CALLBACKS = sorted(
    path.stem for path in (CONFIG_DIR / "callbacks").glob("*.yaml") if path.stem not in ("default", "none")
)


def compose_config(*overrides: str) -> DictConfig:
    return compose(overrides, return_hydra_config=True)


def _same(configured, actual) -> bool:
    if configured is None and actual == []:  # Muon stores exclude_layers=None as []
        return True
    if isinstance(configured, float) and isinstance(actual, float):
        return math.isclose(configured, actual, rel_tol=1e-6)
    return configured == actual


def test_every_shipped_keras_optimizer_has_a_config() -> None:
    shipped = {"Adadelta", "Adafactor", "Adagrad", "Adam", "Adamax", "AdamW", "Ftrl", "Lamb", "Lion", "Muon"}
    shipped |= {"Nadam", "RMSprop", "SGD", "ScheduleFreeAdamW"}
    targets = {compose_config(f"optimizer={name}").optimizer._target_.rsplit(".", 1)[1] for name in OPTIMIZERS}
    assert shipped <= targets
    assert {"adam", "adagrad", "rmsprop", "sgd", "momentum", "nesterov"} <= set(OPTIMIZERS)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_optimizer_config_builds_keras_optimizer_with_its_values(name: str) -> None:
    node = compose_config(f"optimizer={name}", "optimizer.learning_rate=0.01").optimizer
    optimizer = instantiate(node)
    assert isinstance(optimizer, getattr(keras.optimizers, node._target_.rsplit(".", 1)[1]))
    keras_config = optimizer.get_config()
    settings = OmegaConf.to_container(node)
    checked = [key for key in settings if key in keras_config and key not in ("_target_", "name")]
    assert "learning_rate" in checked
    for key in checked:
        assert _same(settings[key], keras_config[key]), (name, key, settings[key], keras_config[key])
    assert math.isclose(float(optimizer.learning_rate), 0.01, rel_tol=1e-6)


def test_momentum_presets_set_momentum() -> None:
    momentum = instantiate(compose_config("optimizer=momentum").optimizer)
    nesterov = instantiate(compose_config("optimizer=nesterov").optimizer)
    assert (momentum.momentum, momentum.nesterov) == (0.9, False)
    assert (nesterov.momentum, nesterov.nesterov) == (0.9, True)


@pytest.mark.parametrize("name", CALLBACKS)
def test_callback_config_builds_keras_callback_with_its_values(name: str, tmp_path: Path) -> None:
    cfg = compose_config()
    node = cfg.callbacks[name]
    settings = {key: value for key, value in OmegaConf.to_container(node, resolve=False).items() if key != "enabled"}
    for key in ("filepath", "log_dir", "backup_dir"):  # ${hydra:runtime.output_dir} exists only in a job
        if key in settings:  # backup_dir: null means "chosen by the job"
            settings[key] = str(tmp_path / (Path(settings[key]).name if settings[key] else key))
    callback = instantiate(settings)
    keras_class = getattr(keras.callbacks, node._target_.rsplit(".", 1)[1], None)  # None: ours (StopOnDivergence)
    assert isinstance(callback, keras_class or get_class(node._target_))
    compared = 0
    for key, value in settings.items():
        if key == "_target_" or not hasattr(callback, key):
            continue
        actual = getattr(callback, key)
        if key == "min_delta":
            actual = abs(actual)  # Keras stores it signed by mode
        assert _same(value, actual), (name, key, value, actual)
        compared += 1
    assert compared >= min(3, len(settings) - 1)  # TerminateOnNaN has one parameter


def test_every_callback_key_is_commented() -> None:
    for path in (CONFIG_DIR / "callbacks").glob("*.yaml"):
        for line in path.read_text().splitlines():
            if line.startswith("  ") and ":" in line and not line.strip().startswith("#"):
                assert "#" in line or "_target_" in line, f"{path.name}: {line.strip()}"


def test_tracking_uri_is_absolute_sqlite_at_project_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert compose_config().mlflow.tracking_uri == f"sqlite:///{PROJECT_ROOT}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5555")
    assert compose_config().mlflow.tracking_uri == "http://127.0.0.1:5555"


def test_default_config_is_valid() -> None:
    validate(compose_config())
    validate(compose_config("model=cnn", "callbacks=none", "data.limit=100"))


BAD_VALUES = [
    ("optimizer.learning_rate=0", "optimizer.learning_rate=0"),
    ("optimizer.learning_rate=-0.1", "optimizer.learning_rate=-0.1"),
    ("optimizer.learning_rate=inf", "optimizer.learning_rate=inf"),  # a setting is finite (src/infra/predicates.py)
    ("callbacks.early_stopping.min_delta=inf", "callbacks.early_stopping.min_delta=inf"),
    ("optimizer.beta_1=1.5", "optimizer.beta_1=1.5"),
    ("callbacks.early_stopping.patience=-1", "callbacks.early_stopping.patience=-1"),
    ("data.val_split=0", "data.val_split=0"),
    ("data.val_split=1.5", "data.val_split=1.5"),
    ("train.batch_size=0", "train.batch_size=0"),
    ("train.validation_batch_size=0", "train.validation_batch_size=0"),
    ("train.epochs=abc", "train.epochs='abc'"),
    ("callbacks.early_stopping.monitor=val_acc", "callbacks.early_stopping.monitor='val_acc'"),
    ("callbacks.model_checkpoint.mode=best", "callbacks.model_checkpoint.mode='best'"),
    ("callbacks.model_checkpoint.filepath=/tmp/best.h5", "callbacks.model_checkpoint.filepath='/tmp/best.h5'"),
    ("data.limit=0", "data.limit=0"),
    ("data.sources=[ftp]", "data.sources=['ftp']"),
    ("model.hidden_units=[0]", "model.hidden_units=[0]"),
    ("model=cnn model.filters=[]", "model.filters=[]"),
]


@pytest.mark.parametrize(("override", "named"), BAD_VALUES)
def test_bad_value_is_named_with_what_is_allowed(override: str, named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        validate(compose_config(*override.split()))  # "a b": two overrides
    message = str(caught.value)
    assert named in message
    assert "use " in message or "Keras needs" in message or "never logged" in message


def test_several_problems_are_reported_together() -> None:
    with pytest.raises(ConfigError) as caught:
        validate(compose_config("train.epochs=0", "data.val_split=2"))
    assert "train.epochs=0" in str(caught.value) and "data.val_split=2" in str(caught.value)


def test_hydras_own_error_is_one_line_led_by_the_command() -> None:
    """compose() is how every module that is not a Hydra app reads conf/: Hydra's error is one line, its
    next lines (the override again, a password in it too, and the search path) dropped."""
    with pytest.raises(ConfigError) as caught:
        compose(["optimizer=adamm"], command="src.stages.fetch")
    message = str(caught.value)
    assert message.startswith("src.stages.fetch: ") and "optimizer/adamm" in message and "\n" not in message
    with pytest.raises(ConfigError, match=r"^Error parsing override 'mlflow.tracking_uri=postgresql://a:s@db/m\['$"):
        compose(["mlflow.tracking_uri=postgresql://a:s@db/m["])


def _fair_group() -> dict:
    return OmegaConf.to_container(fair_protocol.compose([])[fair_protocol.GROUP], resolve=True)


def test_the_fair_protocol_lists_every_bad_key_one_line_each_like_the_training_config() -> None:
    fair = _fair_group()
    shipped = fair_protocol.read_protocol(fair)  # the shipped protocol is valid
    assert shipped.workloads == ("mlp", "logreg", "fashion_mlp")
    assert {name: (part.model, part.data) for name, part in shipped.parts.items()} == {
        "mlp": ("mlp", "mnist"),
        "logreg": ("logreg", "mnist"),
        "fashion_mlp": ("mlp", "fashion_mnist"),
    }
    bad = {
        **fair,
        "optimizers": ["adam", "adamm"],
        "lr_grid": [0.1, 0],
        "epochs": 0,
        "targets": {**fair["targets"], "mlp": [0.9, 1.5]},
        "experiment_name": " ",
    }
    with pytest.raises(ConfigError) as caught:
        fair_protocol.read_protocol(bad)
    head, *lines = str(caught.value).splitlines()
    assert head == "invalid config:" and len(lines) == 5, lines
    for line, fragment in zip(
        lines,
        [
            "'adamm' has no conf/optimizer/adamm.yaml",
            "0 is not a number > 0",
            "fair.epochs=0 is invalid: use an integer >= 1",
            "fair.targets.mlp=[0.9, 1.5] is invalid: 1.5 is outside (0, 1]",
            "fair.experiment_name=' ' is invalid",
        ],
        strict=True,
    ):
        assert line.startswith("  fair.") and fragment in line, (fragment, line)


@pytest.mark.parametrize(
    ("changes", "line"),
    [
        ({"epochs": 0}, "invalid config: fair.epochs=0 is invalid: use an integer >= 1"),
        ({"tune_seeds": []}, "invalid config: fair.tune_seeds=[] is invalid: holds no seed"),
        ({"tune_seeds": [100, 100]}, "fair.tune_seeds=[100, 100] is invalid: repeats 100"),
        ({"tune_seeds": [1.5]}, "fair.tune_seeds=[1.5] is invalid: holds 1.5, not a non-negative integer"),
        # judged on a tuning seed, the selection would be scored on the data it was chosen on
        ({"tune_seeds": [0, 3]}, "fair.tune_seeds=[0, 3] is invalid: shares 3 with fair.judge_seeds"),
        ({"lr_grid": [0.1, math.inf]}, "inf is not a number > 0"),
        ({"targets": "high"}, "invalid config: fair.targets='high' is invalid: a mapping workload -> list"),
        # a workload without a conf/workload/ file is one problem, not a second one about its targets
        ({"workloads": ["rnn"]}, "'rnn' has no conf/workload/rnn.yaml"),
    ],
)
def test_one_bad_key_of_the_fair_protocol_is_one_line(changes: dict, line: str) -> None:
    with pytest.raises(ConfigError) as caught:
        fair_protocol.read_protocol({**_fair_group(), **changes})
    assert "\n" not in str(caught.value) and line in str(caught.value)


@pytest.mark.slow
def test_cli_help_lists_groups_and_cfg_job_prints_config(tmp_path: Path) -> None:
    helped = run_cli("src.train", "--help", cwd=tmp_path)
    assert helped.returncode == 0
    assert "optimizer: " in helped.stdout and "rmsprop" in helped.stdout and "callbacks: " in helped.stdout
    printed = run_cli("src.train", "--cfg", "job", "optimizer=rmsprop", cwd=tmp_path)
    assert printed.returncode == 0
    assert OmegaConf.create(printed.stdout).optimizer._target_ == "keras.optimizers.RMSprop"


def test_unknown_optimizer_on_the_command_line_lists_the_options(tmp_path: Path) -> None:
    result = run_main("src.train", "optimizer=adamm", cwd=tmp_path)
    assert result.returncode != 0
    assert "Could not find 'optimizer/adamm'" in result.stderr and "rmsprop" in result.stderr

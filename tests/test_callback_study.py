"""The callback study (src/callback_study/): the replay of EarlyStopping and ModelCheckpoint equals real Keras runs
(the condition under which the study may replay them at all), and bad input stops in one line before anything
trains. The report's computations are tested in tests/test_callback_study_report.py."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from src.callback_study import settings
from src.callback_study.settings import EARLY_STOPPING, MODEL_CHECKPOINT, REDUCE_LR, Setting, Trial
from src.infra.errors import ConfigError
from tests.conftest import store_with_tables, tracking_uri

# Real runs against replays and forks: EarlyStopping with both monitors, patience 0 and > 0, restore_best_weights
# false and true, min_delta, start_from_epoch; ModelCheckpoint's best by each monitor; ReduceLROnPlateau (forked).
# Adam at 0.01 on 2,000 images overfits within a few epochs, so most of them act early (asserted below).
EQUIVALENCE_SETTINGS = [
    Setting(EARLY_STOPPING, (("monitor", "val_loss"), ("patience", 0), ("restore_best_weights", False))),
    Setting(EARLY_STOPPING, (("monitor", "val_loss"), ("patience", 2), ("restore_best_weights", True))),
    Setting(EARLY_STOPPING, (("monitor", "val_accuracy"), ("patience", 0), ("restore_best_weights", True))),
    Setting(EARLY_STOPPING, (("monitor", "val_accuracy"), ("patience", 2), ("restore_best_weights", False))),
    Setting(EARLY_STOPPING, (("monitor", "val_loss"), ("patience", 1), ("min_delta", 0.01))),
    Setting(EARLY_STOPPING, (("monitor", "val_loss"), ("patience", 0), ("start_from_epoch", 3))),
    Setting(MODEL_CHECKPOINT, (("monitor", "val_accuracy"), ("save_best_only", True))),
    Setting(MODEL_CHECKPOINT, (("monitor", "val_loss"), ("save_best_only", True))),
    Setting(REDUCE_LR, (("factor", 0.5), ("patience", 1))),  # forked from the baseline where it first acts
    Setting(REDUCE_LR, (("factor", 0.1), ("patience", 1), ("cooldown", 1))),
]
EPOCHS = 8


def small_study(mnist_dir: Path, folder: Path) -> tuple[settings.Study, list[str]]:
    overrides = [
        "data.limit=2000",
        f"data.dir={mnist_dir}",
        "data.fetch_if_missing=false",
        f"mlflow.tracking_uri={store_with_tables(folder)}",
        f"callback_study.trials_dir={folder}/trials",
        f"callback_study.epochs={EPOCHS}",
        "callback_study.seeds=[1,2]",
    ]
    study = settings.read_study(OmegaConf.to_container(settings.compose(overrides)[settings.GROUP], resolve=True))
    return study, overrides


@pytest.mark.slow
def test_replayed_and_forked_runs_equal_real_keras_runs(mnist_dir: Path, tmp_path: Path) -> None:
    """The study's own path (runs.run_all: the baseline trained with its per-epoch weights, then each setting
    replayed or forked) against `model.fit` from scratch with the real callbacks: the same epochs trained (the same
    history, exactly), the same kept epoch and weights kind, the same test accuracy and loss."""
    from src.callback_study import runs
    from src.training import fit

    study, overrides = small_study(mnist_dir, tmp_path)
    base = settings.base_config(study, overrides, "adam", 0.01)
    baseline = Setting(settings.BASELINE)
    trials = [Trial("adam", setting, 1, EPOCHS) for setting in [baseline, *EQUIVALENCE_SETTINGS]]
    with tracking_uri(str(base.mlflow.tracking_uri)):
        context = runs.open_context(base)
        records = runs.run_all(trials, base, context, study.trials_dir)
    stopped_early = restored = forked = 0
    for trial, record in zip(trials, records, strict=True):
        if trial.setting == baseline:
            continue
        real_folder = tmp_path / "real" / trial.setting.name / str(trial.seed)
        real = fit.fit_one(
            fit.TrialSpec(
                settings.trial_config(base, trial, real_folder), context.data_path, score_test=True, verbose=0
            )
        )
        what = f"{trial.setting.name} seed {trial.seed}"
        assert record["how"] == ("forked" if trial.setting.kind == REDUCE_LR else "replayed"), what
        assert record["history"]["val_loss"] == real.history["val_loss"], what
        assert record["history"]["learning_rate"] == real.history["learning_rate"], what
        assert record["metrics"]["epochs_trained"] == len(real.history["loss"]), what
        assert (record["model_weights"], record["metrics"]["model_epoch"]) == (real.model_weights, real.model_epoch)
        assert record["metrics"]["test_accuracy"] == real.test.accuracy, what
        assert record["metrics"]["test_loss"] == pytest.approx(real.test.loss, rel=1e-6), what
        stopped_early += len(real.history["loss"]) < EPOCHS
        restored += real.model_epoch != len(real.history["loss"])
        forked += 0 < record.get("forked_after_epoch", EPOCHS) < EPOCHS
    assert stopped_early >= 3 and restored >= 2 and forked == 2, (stopped_early, restored, forked)  # they acted


# ------------------------------------------------------------------------------------------------
# Bad input: one line naming the key, the value and what is allowed, before anything trains
# ------------------------------------------------------------------------------------------------


def study_with(**changes: object) -> dict:
    study = yaml.safe_load((settings.CONFIG_DIR / settings.GROUP / "default.yaml").read_text())
    study.update(changes)
    return study


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"early_stopping": {"monitor": ["val_los"]}}, "callback_study.early_stopping.monitor='val_los' is invalid"),
        (
            {"early_stopping": {"patience": [-1]}},
            "callback_study.early_stopping.patience=-1 is invalid: use an integer >= 0",
        ),
        (
            {"reduce_lr_on_plateau": [{"factor": 1.5, "patience": 2}]},
            "callback_study.reduce_lr_on_plateau[0].factor=1.5 is invalid: use a number in (0, 1)",
        ),
        (
            {"reduce_lr_on_plateau": [{"factor": 0, "patience": 2}]},
            "callback_study.reduce_lr_on_plateau[0].factor=0 is invalid: use a number in (0, 1)",
        ),
        ({"early_stopping_extra": [{"patiense": 2}]}, "callback_study.early_stopping_extra[0].patiense=2 is invalid"),
        ({"seeds": [1]}, "callback_study.seeds=[1] is invalid: holds fewer than 2 seeds"),
        ({"optimizers": ["adam", "adamm"]}, "'adamm' has no conf/optimizer/adamm.yaml"),
        (
            {
                "tensorboard": {
                    "optimizer": "adam",
                    "seeds": [1, 2],
                    "epochs": 2,
                    "settings": [{"update_freq": "often"}],
                }
            },
            "callback_study.tensorboard.settings[0].update_freq='often' is invalid",
        ),
    ],
)
def test_a_bad_value_is_one_line_naming_the_key(changes: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as raised:
        settings.read_study(study_with(**changes))
    message = str(raised.value)
    assert expected in message
    assert message.count("\n") == 0, message  # one problem, one line


def test_every_problem_is_listed_at_once() -> None:
    changes = {"early_stopping": {"monitor": ["lost"], "patience": [-2]}, "epochs": 0}
    with pytest.raises(ConfigError) as raised:
        settings.read_study(study_with(**changes))
    assert [line.split("=")[0].strip() for line in str(raised.value).splitlines()[1:]] == [
        "callback_study.epochs",
        "callback_study.early_stopping.monitor",
        "callback_study.early_stopping.patience",
    ]


def fair_files(folder: Path, rows: str, locked: bool = True) -> settings.Study:
    summary = folder / "summary.csv"
    summary.write_text("workload,optimizer,default_lr,tuned_lr\n" + rows)
    md5 = hashlib.md5(summary.read_bytes()).hexdigest() if locked else "0" * 32
    lock = {"schema": "2.0", "stages": {"report": {"outs": [{"path": str(summary), "md5": md5}]}}}
    (folder / "dvc.lock").write_text(yaml.safe_dump(lock))
    return settings.read_study(study_with(fair_summary=str(summary), fair_lock=str(folder / "dvc.lock")))


def test_the_tuned_rates_come_from_the_fair_report(tmp_path: Path) -> None:
    rows = "mlp,adam,0.001,0.003\nmlp,adagrad,0.001,0.3\nmlp,rmsprop,0.001,0.003\nlogreg,adam,0.001,0.01\n"
    assert settings.tuned_rates(fair_files(tmp_path, rows)) == {"adam": 0.003, "adagrad": 0.3, "rmsprop": 0.003}


@pytest.mark.parametrize(
    ("rows", "locked", "expected"),
    [
        (
            "mlp,adam,0.001,0.003\nmlp,rmsprop,0.001,0.003\n",
            True,
            "has no row for optimizer 'adagrad' on workload 'mlp'",
        ),
        ("mlp,adam,0.001,0.003\nmlp,adagrad,0.001,\nmlp,rmsprop,0.001,0.003\n", True, "adagrad on mlp has tuned_lr=''"),
        ("mlp,adam,0.001,0.003\nmlp,adagrad,0.001,0.3\nmlp,rmsprop,0.001,0.003\n", False, "is stale"),
    ],
)
def test_a_bad_fair_report_is_refused_in_one_line(tmp_path: Path, rows: str, locked: bool, expected: str) -> None:
    with pytest.raises(ConfigError) as raised:
        settings.tuned_rates(fair_files(tmp_path, rows, locked))
    assert expected in str(raised.value)
    assert "callback_study.fair_summary=" in str(raised.value) and "\n" not in str(raised.value)


def test_a_missing_fair_report_names_the_command_that_writes_it(tmp_path: Path) -> None:
    study = settings.read_study(study_with(fair_summary=str(tmp_path / "summary.csv")))
    with pytest.raises(ConfigError, match=r"no such file; run `make fair` first"):
        settings.tuned_rates(study)


def test_the_stage_refuses_before_any_training_or_mlflow_run(tmp_path: Path) -> None:
    """From the command line's entry: the error line, exit code 1, and no store was even created."""
    from tests.conftest import run_main

    store = tmp_path / "mlflow.db"
    result = run_main(
        "src.callback_study.stage",
        "optimizer",
        "adam",
        "callback_study.reduce_lr_on_plateau=[{factor: 2, patience: 2}]",
        f"mlflow.tracking_uri=sqlite:///{store}",
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: invalid config: callback_study.reduce_lr_on_plateau[0].factor=2 is invalid: use a number in (0, 1)"
    ]
    assert not store.exists()


def test_settings_have_distinct_folder_names_and_readable_labels() -> None:
    study = settings.read_study(study_with())
    names = [setting.name for setting in study.settings]
    assert len(set(names)) == len(names) == 1 + 12 + 2 + 2 + 2
    assert "es-val_loss-p0-restore" in names and "rlrop-f0.5-p2" in names and "mc-val_accuracy-best" in names
    labels = {setting.name: setting.label for setting in study.settings}
    assert labels["es-val_loss-p0-restore"] == "EarlyStopping(val_loss, patience=0, restore=best)"
    assert labels["mc-val_accuracy-best"] == "ModelCheckpoint(val_accuracy, best only)"
    assert study.cost_settings[0].name == settings.NO_TENSORBOARD

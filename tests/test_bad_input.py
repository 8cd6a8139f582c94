"""The bad-input battery: typos and bad values on the command line, in the config and in the data.

Each case runs src.train's entry point with the user's command line and checks: a non-zero exit, a clear
message naming the problem (no traceback), no MLflow run left RUNNING, and no file that existed before
changed. The battery runs in process (the same Hydra parsing and error reporting, without a TensorFlow
import per case); a few cases run as real `python -m src.train` commands too.
"""

from __future__ import annotations

import functools
import hashlib
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from src.training import data
from tests.conftest import all_runs, run_cli, run_main, store_args


class _Detonator:
    """Unpickling this creates a file: proof that a pickled npz was never unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (self.marker.touch, ())


@functools.cache
def _arrays(source: Path) -> data.Arrays:
    return data.read_npz(source)


def _copy(source: Path, folder: Path, **changes: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / data.FILE_NAME, **{**_arrays(source), **changes})


def _corrupt(source: Path, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / data.FILE_NAME).write_bytes(b"PK\x03\x04 not really a zip" * 100)


def _wrong_shapes(source: Path, folder: Path) -> None:
    _copy(source, folder, x_train=_arrays(source)["x_train"][:100])


def _wrong_dtype(source: Path, folder: Path) -> None:
    _copy(source, folder, y_train=_arrays(source)["y_train"].astype(np.int64))


def _pickled(source: Path, folder: Path) -> None:
    payload = np.empty(1, dtype=object)
    payload[0] = _Detonator(folder / "UNPICKLED")
    _copy(source, folder, x_test=payload)


def _real(source: Path, folder: Path) -> None:
    """The verified file itself (a copy: a bug that wrote to it would not reach the session's MNIST)."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, folder / data.FILE_NAME)


def _missing(source: Path, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)


# (id, arguments, data folder maker, fragments the message must contain)
CASES: list[tuple[str, list[str], Callable[[data.Arrays, Path], None], list[str]]] = [
    ("unknown-optimizer", ["optimizer=adamm"], _real, ["optimizer/adamm", "Available options"]),
    ("unknown-model", ["model=transformer"], _real, ["model/transformer", "Available options"]),
    ("misspelled-key", ["train.epoch=3"], _real, ["train.epoch"]),
    ("wrong-type", ["train.epochs=abc"], _real, ["train.epochs='abc'", "integer >= 1"]),
    ("zero-epochs", ["train.epochs=0"], _real, ["train.epochs=0", "integer >= 1"]),
    ("negative-learning-rate", ["optimizer.learning_rate=-1"], _real, ["optimizer.learning_rate=-1"]),
    ("beta-out-of-range", ["optimizer.beta_1=1.5"], _real, ["optimizer.beta_1=1.5", "[0, 1)"]),
    ("val-split-out-of-range", ["data.val_split=1.5"], _real, ["data.val_split=1.5"]),
    ("limit-zero", ["data.limit=0"], _real, ["data.limit=0", "integer >= 1"]),
    ("not-a-boolean", ["train.resume=maybe"], _real, ["train.resume='maybe'", "true or false"]),
    ("unknown-data-source", ["data.sources=[ftp]"], _real, ["data.sources", "keras, pypi, local"]),
    ("monitor-never-logged", ["callbacks.early_stopping.monitor=val_acc"], _real, ["val_acc", "never logged"]),
    ("invalid-mode", ["callbacks.model_checkpoint.mode=maximum"], _real, ["mode='maximum'", "auto, min, max"]),
    ("batch-backups", ["callbacks.backup_and_restore.save_freq=10"], _real, ["save_freq=10", "per epoch"]),
    ("empty-sweep", ["-m", "train.epochs=range(1,1)"], _real, ["sweeps over nothing"]),
    ("one-bad-job-in-sweep", ["-m", "optimizer.learning_rate=0.1,-1"], _real, ["optimizer.learning_rate=-1"]),
    (
        "unreachable-tracking-server",
        ["mlflow.tracking_uri=http://ana:s3cret@127.0.0.1:9"],
        _real,
        ["http://ana:***@127.0.0.1:9", "no MLflow server answers", "make server"],
    ),
    ("corrupt-npz", [], _corrupt, ["not a readable MNIST npz", "python -m src.stages.fetch"]),
    ("wrong-shapes", [], _wrong_shapes, ["x_train has shape (100, 28, 28)", "expected (60000, 28, 28) uint8"]),
    ("wrong-dtype", [], _wrong_dtype, ["y_train has shape (60000,) and dtype int64"]),
    ("pickled-objects", [], _pickled, ["allow_pickle=False"]),
    ("missing-data-no-fetch", ["data.fetch_if_missing=false"], _missing, ["mnist.npz is missing", "dvc repro fetch"]),
]


@pytest.fixture(scope="module")
def mnist_file(mnist_dir: Path) -> Path:
    return mnist_dir / data.FILE_NAME


def _snapshot(folder: Path) -> dict[Path, str]:
    return {
        path: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in folder.rglob("*")
        if path.is_file() and not path.name.startswith("mlflow.db")
    }


def _fails_with_one_clear_message(
    run, tmp_path: Path, source: Path, arguments: list[str], make_data, fragments: list[str]
) -> None:
    """Run `arguments` through `run` (run_main or run_cli) on a data folder made by `make_data`; check
    what every bad input must give."""
    data_dir = tmp_path / "data"
    make_data(source, data_dir)
    earlier_result = tmp_path / "outputs" / "metrics.json"  # a result from an earlier run must survive
    earlier_result.parent.mkdir()
    earlier_result.write_text('{"test_accuracy": 0.97}\n')
    before = _snapshot(tmp_path)

    started = time.monotonic()
    result = run(
        "src.train",
        *[a for a in arguments if a == "-m"],  # Hydra wants its flags first; later overrides win
        "train.epochs=1",
        "data.limit=2000",
        *store_args(tmp_path, data_dir),
        *[a for a in arguments if a != "-m"],
        cwd=tmp_path,
    )
    elapsed = time.monotonic() - started

    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-2000:]
    assert "Traceback" not in output
    for fragment in fragments:
        assert fragment in output, (fragment, output[-2000:])
    assert "s3cret" not in output
    ours = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(ours) <= 1  # our errors are one line; Hydra's own (unknown option or key) list the choices
    assert [run.info.run_name for run in all_runs(tmp_path) if run.info.status == "RUNNING"] == []
    assert _snapshot(tmp_path).items() >= before.items(), "a file that existed before was changed"
    assert not (data_dir / "UNPICKLED").exists()
    assert elapsed < 60  # no long retry loops (a generous bound for a loaded 2-core CI machine)


@pytest.mark.parametrize(("arguments", "make_data", "fragments"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_fails_with_one_clear_message(
    tmp_path: Path, mnist_file: Path, arguments: list[str], make_data, fragments: list[str]
) -> None:
    _fails_with_one_clear_message(run_main, tmp_path, mnist_file, arguments, make_data, fragments)


# As a user types them: one error of Hydra's, one of the config check, one of the data, one in a sweep.
CLI_CASES = ["unknown-optimizer", "wrong-type", "corrupt-npz", "one-bad-job-in-sweep"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("arguments", "make_data", "fragments"), [c[1:] for c in CASES if c[0] in CLI_CASES], ids=CLI_CASES
)
def test_bad_input_on_the_command_line_fails_with_one_clear_message(
    tmp_path: Path, mnist_file: Path, arguments: list[str], make_data, fragments: list[str]
) -> None:
    _fails_with_one_clear_message(run_cli, tmp_path, mnist_file, arguments, make_data, fragments)


def test_unwritable_checkpoint_folder_is_named_before_training(tmp_path: Path, mnist_dir: Path) -> None:
    # Running as root ignores folder permissions, so the folder is made impossible to create instead:
    # its parent is a file.
    blocker = tmp_path / "read-only"
    blocker.write_text("")
    result = run_main(
        "src.train",
        f"callbacks.model_checkpoint.filepath={blocker}/checkpoints/best.keras",
        *store_args(tmp_path, mnist_dir),
        cwd=tmp_path,
    )
    assert result.returncode != 0
    [line] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "callbacks.model_checkpoint.filepath" in line and "not writable" in line
    assert all_runs(tmp_path) == [] and "Traceback" not in result.stderr


@pytest.mark.slow
def test_hydra_full_error_shows_the_traceback(tmp_path: Path, mnist_dir: Path) -> None:
    result = run_cli(
        "src.train", "train.epochs=0", *store_args(tmp_path, mnist_dir), cwd=tmp_path, env={"HYDRA_FULL_ERROR": "1"}
    )
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "ConfigError" in result.stderr

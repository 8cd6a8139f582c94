"""Fashion-MNIST: its sources (Keras' URL, Debian's package, a local copy), hash-checked like MNIST, and the
fair protocol's workloads that pair a model with a data set.

The Debian package `dataset-fashion-mnist` is the offline source: `.ci/run` installs it. Where it is missing
(a machine without apt or root), the tests that read it skip and say so; the others build their own files.
"""

from __future__ import annotations

import gzip
import importlib.util
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from src.fair import protocol as fair_protocol
from src.infra.errors import ConfigError, DataError
from src.training import data
from src.training.config import compose, validate

needs_debian = pytest.mark.skipif(
    not data.DEBIAN_FASHION_DIR.is_dir(),
    reason=f"{data.DEBIAN_FASHION_DIR} is missing: apt-get install dataset-fashion-mnist (.ci/run does)",
)


@pytest.fixture(scope="module")
def fashion_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not data.DEBIAN_FASHION_DIR.is_dir():
        pytest.skip(f"{data.DEBIAN_FASHION_DIR} is missing: apt-get install dataset-fashion-mnist (.ci/run does)")
    folder = tmp_path_factory.mktemp("fashion")
    result = data.fetch(folder, ["debian"], dataset=data.FASHION_MNIST)
    assert result.source == "debian" and result.path == folder / "fashion_mnist.npz"
    return folder


def test_keras_url_and_files_are_those_of_keras_own_loader() -> None:
    source = Path(importlib.util.find_spec("keras").submodule_search_locations[0], "src/datasets/fashion_mnist.py")
    text = source.read_text()
    assert re.search(r'base = "([^"]+)"', text).group(1) == data.KERAS_FASHION_URL
    # Keras reads labels past an 8-byte header and images past a 16-byte one, in this order of files
    listed = re.findall(r'"((?:train|t10k)-\w+-idx\d-ubyte\.gz)"', text)
    assert sorted(listed) == sorted(file for file, _ in data.IDX_FILES.values())
    assert "offset=8" in text and "offset=16" in text
    assert {name: header for name, (_, header) in data.IDX_FILES.items()} == {
        "x_train": 16,
        "y_train": 8,
        "x_test": 16,
        "y_test": 8,
    }


def test_debian_source_gives_verified_fashion_mnist_in_keras_layout(fashion_dir: Path) -> None:
    arrays = data.load_verified(fashion_dir / "fashion_mnist.npz")  # by its file name: Fashion-MNIST's hashes
    assert {name: (array.shape, array.dtype) for name, array in arrays.items()} == {
        name: (shape, np.uint8) for name, shape in data.ARRAY_SHAPES.items()
    }
    assert tuple(np.bincount(arrays["y_train"])) == data.FASHION_MNIST.train_label_counts
    with pytest.raises(DataError, match="not MNIST's"):  # another data set: MNIST's hashes refuse it
        data.verify(arrays, "fashion", data.MNIST)


@needs_debian
def test_a_folder_of_idx_files_is_a_local_source_and_a_damaged_one_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "keras-cache"
    shutil.copytree(data.DEBIAN_FASHION_DIR, folder)
    result = data.fetch(tmp_path / "data", ["local"], local_path=str(folder), dataset=data.FASHION_MNIST)
    assert result.source == "local"
    labels = folder / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(labels.read_bytes()))
    raw[100] = (raw[100] + 1) % 10  # one test label changed: the size is right, the hash is not
    labels.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(DataError, match=r"source local: DataError: source local: y_test has sha256 .*Fashion-MNIST"):
        data.fetch(tmp_path / "other", ["local"], local_path=str(folder), dataset=data.FASHION_MNIST)


def test_every_source_failing_names_each_and_how_to_get_the_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Nothing listens on port 9 of this machine: a real, fast connection failure, with or without internet.
    monkeypatch.setattr(data, "KERAS_FASHION_URL", "http://127.0.0.1:9/")
    monkeypatch.setattr(data, "DEBIAN_FASHION_DIR", tmp_path / "no-package")
    with pytest.raises(DataError) as caught:
        data.fetch(tmp_path / "data", ["keras", "debian", "local"], dataset=data.FASHION_MNIST)
    message = str(caught.value)
    assert message.startswith("could not obtain Fashion-MNIST; tried: source keras:") and "\n" not in message
    for fragment in ("source debian:", "source local:", "apt-get install dataset-fashion-mnist", "data.local_path="):
        assert fragment in message, fragment
    assert not (tmp_path / "data" / "fashion_mnist.npz").exists()


def test_a_source_the_data_set_has_not_is_refused_in_one_line() -> None:
    cfg = compose(["data=fashion_mnist", "data.sources=[keras,pypi]"])
    with pytest.raises(ConfigError) as caught:
        validate(cfg)
    assert "data.sources=['keras', 'pypi']" in str(caught.value)
    assert "keras, debian, local (for fashion_mnist)" in str(caught.value)
    with pytest.raises(DataError, match="allowed for fashion_mnist: keras, debian, local"):
        data.fetch(Path("unused"), ["pypi"], dataset=data.FASHION_MNIST)


def test_training_without_the_file_says_which_stage_fetches_it(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"dvc repro fair/dvc.yaml:fetch@fashion_mnist"):
        data.load_for_training(tmp_path, [], None, tmp_path, False, data.FASHION_MNIST)


def test_a_workload_file_naming_no_model_or_data_set_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "conf"
    shutil.copytree(fair_protocol.CONFIG_DIR, conf)
    (conf / "workload" / "bad.yaml").write_text("model: mlp\ndata: cifar\n")
    monkeypatch.setattr(fair_protocol, "CONFIG_DIR", conf)
    fair = OmegaConf.to_container(fair_protocol.compose([])[fair_protocol.GROUP], resolve=True)
    fair["workloads"] = ["mlp", "bad"]
    fair["targets"]["bad"] = [0.5]
    with pytest.raises(ConfigError) as caught:
        fair_protocol.read_protocol(fair)
    lines = str(caught.value).splitlines()
    assert lines == [
        "invalid config: conf/workload/bad.yaml: data='cifar' is invalid: use a name of conf/data/"
        " (fashion_mnist, mnist)"
    ], lines

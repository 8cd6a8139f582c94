"""The cluster sweep's store check (src/infra/cluster.py), in-process: no Ray, no process, no training.

The real cluster (three `ray start` nodes, a tracking server) is in tests/test_scaling.py, marked slow.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from omegaconf import DictConfig, OmegaConf

from src.infra.cluster import check_store
from src.infra.errors import ConfigError
from src.tracking.server import check_exposure
from src.tracking.sweep import launcher_preflight


def test_a_file_store_is_refused_with_a_server_command_that_starts() -> None:
    """The refusal's advice must be a `make server` that check_exposure lets start off loopback (an open
    HOST=0.0.0.0 without AUTH=1 is refused), and must tell the jobs how to log in."""
    with pytest.raises(ConfigError) as refused:
        check_store("sqlite:////home/ana/mnist/mlflow.db", "10.0.0.5:6379", "ray_cluster")
    message = str(refused.value)
    [command] = re.findall(r"`(make server[^`]*)`", message)
    settings = dict(word.split("=", 1) for word in command.split()[2:])
    check_exposure(settings.get("HOST", "127.0.0.1"), settings.get("AUTH") == "1", allow_anonymous=False)
    assert settings.get("HOST") not in (None, "127.0.0.1", "localhost")  # other nodes must reach it
    assert "MLFLOW_TRACKING_USERNAME" in message and "MLFLOW_TRACKING_PASSWORD" in message


@pytest.mark.parametrize(
    "tracking_uri",
    ["http://127.0.0.1:5001", "http://localhost:5001", "http://[::1]:5001", "postgresql://mlflow@127.0.0.2/mlflow"],
)
@pytest.mark.parametrize("address", ["10.0.0.5:6379", "ray://head.example:10001", "[fd00::5]:6379"])
def test_a_loopback_store_with_a_cluster_elsewhere_is_refused(tracking_uri: str, address: str) -> None:
    """On another node, 127.0.0.1 is that node: its jobs would log nowhere (or into a stranger's server)."""
    with pytest.raises(ConfigError) as refused:
        check_store(tracking_uri, address, "ray_cluster")
    message = str(refused.value)
    assert "loopback" in message and "host name or address the nodes reach" in message and "\n" not in message


@pytest.mark.parametrize(
    ("tracking_uri", "address"),
    [
        ("http://127.0.0.1:5001", "127.0.0.1:6379"),  # every node on this machine (the tests' cluster)
        ("http://localhost:5001", "localhost:6379"),
        ("http://127.0.0.1:5001", "auto"),  # this node's cluster: where its nodes are is not known here
        ("http://10.0.0.2:5001", "10.0.0.5:6379"),
        ("https://mlflow.example", "ray://head.example:10001"),
        ("postgresql://mlflow@db.example/mlflow", "10.0.0.5:6379"),
    ],
)
def test_a_store_the_nodes_reach_passes(tracking_uri: str, address: str) -> None:
    check_store(tracking_uri, address, "ray_cluster")


def test_the_refusal_masks_a_password() -> None:
    with pytest.raises(ConfigError) as refused:
        check_store("http://ana:s3cret@127.0.0.1:5001", "10.0.0.5:6379", "ray_cluster")
    assert "s3cret" not in str(refused.value) and "ana:***@" in str(refused.value)


def sweep_config(target: str) -> DictConfig:
    return OmegaConf.create(
        {"hydra": {"launcher": {"_target_": target}, "runtime": {"choices": {"hydra/launcher": "ray_cluster"}}}}
    )


def test_the_projects_launcher_is_found_from_its_folder_and_named_when_not(monkeypatch: pytest.MonkeyPatch) -> None:
    """hydra_plugins/ is not an installed package: from another folder, without PYTHONPATH, Hydra could
    not import the launcher, and would say so only after the sweep's parent run exists."""
    basic = sweep_config("hydra._internal.core_plugins.basic_launcher.BasicLauncher")
    launcher_preflight(basic)  # Hydra's own launcher has no pre-flight: nothing to check

    project = str(Path(__file__).resolve().parent.parent)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", project)])
    monkeypatch.delitem(sys.modules, "hydra_plugins.ray_cluster_launcher", raising=False)
    with pytest.raises(ConfigError) as refused:
        launcher_preflight(sweep_config("hydra_plugins.ray_cluster_launcher.RayClusterLauncher"))
    assert f"PYTHONPATH={project}" in str(refused.value) and "hydra/launcher=ray_cluster" in str(refused.value)
    with pytest.raises(ConfigError) as refused:
        launcher_preflight(sweep_config("no_such_package.Launcher"))
    assert "install the package" in str(refused.value)

"""The cluster sweep's store check (src/cluster.py), in-process: no Ray, no process, no training.

The real cluster (three `ray start` nodes, a tracking server) is in tests/test_scaling.py, marked slow.
"""

from __future__ import annotations

import re

import pytest

from src.cluster import check_store
from src.errors import ConfigError
from src.server import check_exposure


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

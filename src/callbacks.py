"""Keras callbacks: the configured ones (conf/callbacks/) and the per-epoch stats this project adds."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import keras
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf


def from_config(callbacks_cfg: DictConfig | None) -> dict[str, keras.callbacks.Callback]:
    """Instantiate every enabled callback of conf/callbacks/ by its `_target_`, keyed by config name."""
    built: dict[str, keras.callbacks.Callback] = {}
    for name, settings in (callbacks_cfg or {}).items():
        if not settings.get("enabled", True):
            continue
        kwargs: Mapping[str, Any] = OmegaConf.to_container(settings, resolve=True)
        kwargs = {key: value for key, value in kwargs.items() if key != "enabled"}
        built[name] = instantiate(kwargs)
    return built


class EpochStats(keras.callbacks.Callback):
    """Adds `learning_rate` and `epoch_seconds` to each epoch's logs.

    Put it first in the list: later callbacks (History, MLflow logging) see the same logs dict.
    """

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is None:
            return
        logs["epoch_seconds"] = time.perf_counter() - self._started
        if "learning_rate" not in logs:  # ReduceLROnPlateau already reports it
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

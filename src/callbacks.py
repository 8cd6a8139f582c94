"""Keras callbacks: the configured ones (conf/callbacks/) and the per-epoch stats this project adds."""

from __future__ import annotations

import time
from typing import Any

import keras
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf


def from_config(callbacks_cfg: DictConfig | None) -> list[keras.callbacks.Callback]:
    """Instantiate every enabled callback of conf/callbacks/ by its `_target_`, in config order."""
    built = []
    for settings in (callbacks_cfg or {}).values():
        if not settings.get("enabled", True):
            continue
        kwargs: dict[str, Any] = OmegaConf.to_container(settings, resolve=True)
        kwargs.pop("enabled", None)  # ours, not Keras'
        built.append(instantiate(kwargs))
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
        logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

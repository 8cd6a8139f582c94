"""Keras callbacks: the configured ones (conf/callbacks/) and the per-epoch stats this project adds.

Two of Keras' callbacks are subclassed, keeping their parameters, because a crash must never leave a
half-written file that a later run accepts:
- `ModelCheckpoint` saves through `src.infra.files.write_atomic` (Keras writes in place);
- `BackupAndRestore` commits each backup with one atomic rename of its metadata, keeps the logs of every
  completed epoch (a resumed run knows its whole history) and restores the state of EarlyStopping and
  ModelCheckpoint from them (Keras resets both, so a resumed run would forget its best epoch).

A diverged run is stopped by Keras' `TerminateOnNaN` or by `StopOnDivergence`, and named by `diverged_epoch`:
THE definition of "diverged" for every run of the project (src/training/fit.py applies it to each fit).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from src.infra.files import write_atomic, write_text_atomic
from src.training import update_rules

log = logging.getLogger(__name__)


def from_config(callbacks_cfg: DictConfig | None, backup_dir: Path | None = None) -> list[keras.callbacks.Callback]:
    """Instantiate every enabled callback of conf/callbacks/ by its `_target_`, in config order.

    `backup_dir` fills a BackupAndRestore whose `backup_dir` is null. A BackupAndRestore goes last, so
    that it restores the other callbacks' state after their own `on_train_begin` reset it.
    """
    built = []
    for settings in (callbacks_cfg or {}).values():
        if not settings.get("enabled", True):
            continue
        kwargs: dict[str, Any] = OmegaConf.to_container(settings, resolve=True)
        kwargs.pop("enabled", None)  # ours, not Keras'
        if "backup_dir" in kwargs and kwargs["backup_dir"] is None:
            kwargs["backup_dir"] = str(backup_dir)
        built.append(instantiate(kwargs))
    backups = [callback for callback in built if isinstance(callback, BackupAndRestore)]
    for backup in backups:
        backup.peers = [callback for callback in built if callback is not backup]
    return [callback for callback in built if callback not in backups] + backups


def effective_step_sizes(optimizer: keras.optimizers.Optimizer) -> np.ndarray | None:
    """What the optimizer now multiplies each parameter's gradient (Adam: first moment) by, from its own
    state (src/training/update_rules.py has the formulas); None for optimizers without a simple per-parameter form."""

    def state(variables: list) -> np.ndarray:
        return np.concatenate([keras.ops.convert_to_numpy(v).ravel() for v in variables])

    learning_rate = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
    if isinstance(optimizer, keras.optimizers.Adagrad):
        return update_rules.adagrad_step_size(learning_rate, state(optimizer._accumulators), optimizer.epsilon)
    if isinstance(optimizer, keras.optimizers.RMSprop) and not optimizer.centered:
        return update_rules.rmsprop_step_size(learning_rate, state(optimizer._velocities), optimizer.epsilon)
    if type(optimizer) is keras.optimizers.Adam and not optimizer.amsgrad:
        iterations = int(keras.ops.convert_to_numpy(optimizer.iterations))
        velocities = state(optimizer._velocities)
        return update_rules.adam_step_size(
            learning_rate, velocities, optimizer.epsilon, optimizer.beta_1, optimizer.beta_2, iterations
        )
    if type(optimizer) is keras.optimizers.SGD:
        return np.array([learning_rate])
    return None


class EpochStats(keras.callbacks.Callback):
    """Adds `learning_rate`, `epoch_seconds` and `effective_step_size` to each epoch's logs.

    `effective_step_size` is the median over all parameters of the optimizer's per-parameter step (see
    `effective_step_sizes`): the median, because weights of always-blank border pixels never get a gradient
    and keep an extreme step (Adam: lr / epsilon) that says nothing about training.
    Put it first in the list: later callbacks (History, MLflow logging) see the same logs dict.
    """

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is None:
            return
        logs["epoch_seconds"] = time.perf_counter() - self._started
        logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        step_sizes = effective_step_sizes(self.model.optimizer)
        if step_sizes is not None:
            logs["effective_step_size"] = float(np.median(step_sizes))


def loss_diverged(loss: float, limit: float = math.inf) -> bool:
    """Whether a training loss is not finite or above `limit`: the part of `diverged_epoch` that
    StopOnDivergence checks after every compiled call."""
    return not (math.isfinite(loss) and loss <= limit)


def diverged_epoch(history: Mapping[str, Sequence[float]], limit: float = math.inf) -> int | None:
    """The 1-based epoch in which the run diverged, or None: the first epoch whose training loss was not
    finite or above `limit` (StopOnDivergence's, when that callback is on), or whose validation loss or
    validation accuracy (any `val_*` metric) was not finite.

    The validation metrics count because an update in an epoch's last batches can make the weights NaN
    while that epoch's mean training loss is still finite: the model is then no model, whatever the loss
    says. Read from the whole run's history, so a resumed run names the same epoch as an uninterrupted one.
    """
    losses = history.get("loss", [])
    validation = [values for key, values in history.items() if key.startswith("val_")]
    for epoch in range(max(map(len, [losses, *validation]))):
        if epoch < len(losses) and loss_diverged(losses[epoch], limit):
            return epoch + 1
        if any(epoch < len(values) and not math.isfinite(values[epoch]) for values in validation):
            return epoch + 1
    return None


class StopOnDivergence(keras.callbacks.Callback):
    """Stop training once the training loss passes `max_ratio` times `baseline` (or is not finite).

    `baseline` null means the loss of guessing uniformly, ln(number of classes) = 2.30 for the 10 digits:
    what an untrained network scores. The first epoch's own loss would be a worse yardstick: a learning
    rate far too high explodes within the first epoch (sgd at 1e6: 4.6e29 in epoch 1, then ~5e5), so a
    first-epoch reference never fires. The loss is checked after every compiled call (`steps_per_execution`
    batches), so a run stops within that many batches of diverging; the epoch then ends as Keras ends it
    (validation runs) and `diverged_epoch` names it from the history.
    """

    def __init__(self, max_ratio: float = 100.0, baseline: float | None = None) -> None:
        super().__init__()
        self.max_ratio = max_ratio
        self.baseline = baseline
        self.limit = math.inf

    def on_train_begin(self, logs: dict | None = None) -> None:
        baseline = self.baseline or math.log(self.model.outputs[0].shape[-1])
        self.limit = self.max_ratio * baseline

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        loss = (logs or {}).get("loss")
        if loss is None or self.model.stop_training:
            return
        loss = float(keras.ops.convert_to_numpy(loss))
        if loss_diverged(loss, self.limit):  # the rule that tags the run (diverged_epoch)
            log.warning(
                "training loss %.4g passed %.4g (max_ratio x baseline): stopping, the run diverged", loss, self.limit
            )
            self.model.stop_training = True


class ModelCheckpoint(keras.callbacks.ModelCheckpoint):
    """keras.callbacks.ModelCheckpoint whose saves go through `write_atomic` (Keras writes in place), and
    which remembers what it saved last: `saved_path` and `saved_epoch` (1-based; None before any save).

    With `save_best_only` that is the best checkpoint, the run's model (src/training/fit.py); a resumed run
    gets both back from its backup (BackupAndRestore), its earlier checkpoints having been carried over.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.saved_path: Path | None = None
        self.saved_epoch: int | None = None

    def _save_model(self, epoch: int, batch: int | None, logs: dict | None) -> None:
        self._final_path = Path(super()._get_file_path(epoch, batch, logs))

        def save(temp: Path) -> None:  # Keras saves nothing if the monitored value did not improve
            self._temp_path = temp
            super(ModelCheckpoint, self)._save_model(epoch, batch, logs)

        if write_atomic(self._final_path, save):
            self.saved_path, self.saved_epoch = self._final_path, epoch + 1

    def restore(self, history: Sequence[dict[str, float]]) -> None:
        """Replay the best value reached in `history` (a resumed run's earlier epochs) and the checkpoint it
        saved then, so that a resumed epoch that is worse never overwrites it and the run's model is known."""
        if not self.save_best_only:
            return
        for epoch, logs in enumerate(history):
            value = logs.get(self.monitor)
            if value is not None and self._is_improvement(value, self.best):
                self.best = value
                self.saved_path = Path(super()._get_file_path(epoch, None, logs))
                self.saved_epoch = epoch + 1

    def _get_file_path(self, epoch: int, batch: int | None, logs: dict | None) -> str:
        return str(self._temp_path)  # what Keras' _save_model saves to

    def _should_save_model(self, epoch: int, batch: int | None, logs: dict | None, filepath: str) -> bool:
        return super()._should_save_model(epoch, batch, logs, str(self._final_path))  # its messages name the checkpoint


def _float_logs(logs: dict | None) -> dict[str, float]:
    return {key: float(keras.ops.convert_to_numpy(value)) for key, value in (logs or {}).items()}


class BackupAndRestore(keras.callbacks.BackupAndRestore):
    """keras.callbacks.BackupAndRestore (same parameters), crash-safe and keeping the epoch history.

    After each epoch the weights (with the optimizer state) go to `epoch-NNNNN.weights.h5`, then
    `training_metadata.json` is replaced atomically: it names the weights and holds every completed
    epoch's logs. A kill at any instant leaves the previous backup whole. Backups are made per epoch
    only: Keras resumes at an epoch boundary anyway, so a mid-epoch backup would redo batches.

    `restored_history` holds the logs of the epochs done before this `fit` (empty on a fresh start);
    `stopped` is true when EarlyStopping had already ended the run.
    """

    def __init__(
        self,
        backup_dir: str,
        save_freq: str = "epoch",
        double_checkpoint: bool = False,
        delete_checkpoint: bool = True,
    ) -> None:
        if save_freq != "epoch":
            raise ValueError(f"save_freq={save_freq!r}: only 'epoch' is supported (Keras resumes at epoch boundaries)")
        super().__init__(backup_dir, save_freq, double_checkpoint, delete_checkpoint)
        self.peers: list[keras.callbacks.Callback] = []
        self.restored_history: list[dict[str, float]] = []
        self.stopped = False
        self._history: list[dict[str, float]] = []
        self._kept: list[dict[str, Any]] = []

    def on_train_begin(self, logs: dict | None = None) -> None:
        metadata_path = Path(self._training_metadata_path)
        if not metadata_path.exists():
            return
        metadata = json.loads(metadata_path.read_text())
        if not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        errors = []
        for backup in metadata["weights"]:  # newest first; two with double_checkpoint
            try:
                self.model.load_weights(str(Path(self.backup_dir) / backup["file"]))
                break
            except (OSError, ValueError) as error:
                errors.append(f"{backup['file']}: {error}")
        else:
            raise OSError(
                f"no usable backup in {self.backup_dir} ({'; '.join(errors)}); "
                "start this run over with train.resume=false"
            )
        history = metadata["history"][: backup["epoch"]]
        self._history = list(history)
        self._kept = metadata["weights"]
        self.restored_history = list(history)
        self.stopped = bool(metadata["stopped"]) and backup["epoch"] == metadata["epoch"]
        self.model._initial_epoch = self.params["epochs"] if self.stopped else len(history)
        self._restore_peers(history)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self._current_epoch = epoch + 1
        self._history.append(_float_logs(logs))
        self._save_model()

    def _save_model(self) -> None:
        backup_dir = Path(self.backup_dir)
        backup_dir.mkdir(parents=True, exist_ok=True)
        name = f"epoch-{self._current_epoch:05d}.weights.h5"
        write_atomic(backup_dir / name, lambda temp: self.model.save_weights(str(temp), overwrite=True))
        newest = {"file": name, "epoch": self._current_epoch}
        kept = [newest, *self._kept[:1]] if self.double_checkpoint else [newest]
        metadata = {
            "epoch": self._current_epoch,
            "weights": kept,
            "stopped": bool(self.model.stop_training),
            "history": self._history,
        }
        write_text_atomic(Path(self._training_metadata_path), json.dumps(metadata))  # the commit point
        for stale in backup_dir.glob("epoch-*.weights.h5"):
            if stale.name not in {backup["file"] for backup in kept}:
                stale.unlink()
        self._kept = kept

    def _restore_peers(self, history: list[dict[str, float]]) -> None:
        """Give EarlyStopping and ModelCheckpoint the best value (and patience count) they had reached."""
        for peer in self.peers:
            if not isinstance(peer, (keras.callbacks.EarlyStopping, keras.callbacks.ModelCheckpoint)):
                continue
            if peer.monitor_op is None:
                mode = peer.mode if peer.mode != "auto" else ("min" if peer.monitor.endswith("loss") else "max")
                peer.monitor_op = keras.ops.less if mode == "min" else keras.ops.greater
                if mode == "min":
                    peer.min_delta = -abs(peer.min_delta)
            if isinstance(peer, keras.callbacks.EarlyStopping):
                for epoch, logs in enumerate(history):
                    value = logs.get(peer.monitor)
                    if value is None or math.isnan(value) or epoch < peer.start_from_epoch:
                        continue
                    peer.wait += 1
                    if peer._is_improvement(value, peer.best):
                        peer.best, peer.best_epoch = value, epoch
                        if peer.baseline is None or peer._is_improvement(value, peer.baseline):
                            peer.wait = 0
            elif isinstance(peer, ModelCheckpoint):
                peer.restore(history)
            elif peer.save_best_only:  # Keras' own class: only its best value
                for logs in history:
                    value = logs.get(peer.monitor)
                    if value is not None and peer._is_improvement(value, peer.best):
                        peer.best = value

    def on_train_end(self, logs: dict | None = None) -> None:
        """Keep the backup: the caller calls `discard` once the run's results are safely logged, so that a
        kill between the last epoch and the end of logging still resumes."""

    def discard(self) -> None:
        """Delete the backup (if `delete_checkpoint`): the run it belongs to has ended FINISHED."""
        if self.delete_checkpoint:
            shutil.rmtree(self.backup_dir, ignore_errors=True)

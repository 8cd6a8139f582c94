"""The vectorized trial engine: N trials of one optimizer and one MLP workload trained as one program.

One epoch of the 784-128-10 MLP at batch 256 is too small to keep two CPU cores busy, so a study of a
hundred such trials spends most of its time waiting on small matrix products. This engine stacks the N
members' weights along a leading member axis (a kernel is (N, in, out), a bias (N, 1, out)), runs one
batched matrix product per layer, sums the members' losses, and lets the optimizer's own Keras code
(`optimizer.apply`) update every stacked variable at once. The math is each member's own, because:

- the members' graphs never meet: the gradient of a sum of losses with respect to member i's weights is the
  gradient of member i's loss alone;
- the learning rate is given to the optimizer as a callable (a public Keras form) returning an (N, 1, 1)
  tensor, so every place Keras reads it (`update_step`, decoupled weight decay) broadcasts one rate per
  member; the float hyperparameters of `MEMBERWISE_FLOATS` may differ per member the same way;
- only optimizers whose update is element-wise are accepted; `why_not_vectorized` names the others and why,
  and they train on the sequential engine (both in stackable.py: which trials can be stacked, and together).

tests/test_vectorized.py checks it: in float64, a member trained in a batch of N and the same trial trained
alone by plain Keras (`fit` from the sequential engine's `build`) agree to 1e-6 relative after 56 steps, for
every accepted optimizer (measured: 1e-13 or closer).

What a member shares with the sequential fit: its initial weights (`keras.utils.set_random_seed(seed)`, then
the model builder: the member's own Keras model is built and its weights stacked), its train/validation split
(`src.training.data.split` with its seed), the loss and accuracy Keras computes, Keras' History keys, and the
order of its batches (`epoch_order`: the permutation Keras' `fit(shuffle=True)` draws after
`keras.utils.set_random_seed(seed)`, a `tf.random.shuffle` in a tf.data map whose seed comes from the global
seed alone; Keras 3.15.1 on TensorFlow draws it anew each epoch with the same seed, so it repeats it every
epoch, and so does the engine). A member is the sequential engine's trial batch for batch; only float32
rounding (stacked products sum in another order) tells them apart.

A member diverges exactly when Keras' fit would stop the same trial: its running epoch loss is checked (non-finite,
or past the StopOnDivergence limit) when each compiled call of `train.steps_per_execution` batches ends, as
Keras' guards read it, not after every step (a loss may pass the limit in a call's first steps and be back under
it by its end; Keras goes on then, and so does the member). A diverged member keeps that call's updates, as
Keras' model does, then is masked: its weights and optimizer slots stay frozen, its history ends with that
epoch, and `src.training.callbacks.diverged_epoch` (the house rule) names the epoch. The other members are
unaffected (their gradients never touch it).

Memory is bounded: the members of a group are trained in chunks, each fitting `memory_budget_bytes`
(memory.py: what one member needs, and the chunks); a budget that cannot hold one member is refused before
anything trains.
"""

from __future__ import annotations

import functools
import itertools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import keras
import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig

from src.training import data
from src.training.callbacks import StopOnDivergence, diverged_epoch, effective_step_sizes, from_config
from src.training.config import LOGGED_METRICS
from src.training.fit import (
    FINAL,
    LOSS,
    Engine,
    FitResult,
    SequentialEngine,
    TrialSpec,
    freeze_imported_objects,
    score,
)
from src.training.memory import DEFAULT_MEMORY_BUDGET, MemoryPlan, estimate_member_bytes, plan_chunks
from src.training.stackable import container, group_key, memberwise_keys, optimizer_class, why_not_vectorized


class NotVectorizable(Exception):
    """A trial the engine cannot train exactly; the message is the one line saying why (for the sequential
    fallback to print)."""


# ------------------------------------------------------------------------------------------------
# Keras' rules a member follows: its divergence limit and its batch order
# ------------------------------------------------------------------------------------------------


def divergence_limit(cfg: DictConfig, model: keras.Model) -> float:
    """The loss limit of the trial's StopOnDivergence (computed by the callback itself, as fit sets it), or inf
    when it is off: TerminateOnNaN's rule (a non-finite loss) always applies."""
    for guard in from_config(cfg.get("callbacks")):
        if isinstance(guard, StopOnDivergence):
            guard.set_model(model)
            guard.on_train_begin()
            return guard.limit
    return math.inf


def epoch_order(seed: int, epoch: int, size: int) -> np.ndarray:
    """The order in which Keras' `fit(shuffle=True)` visits a trial's `size` training images in `epoch`, after
    `keras.utils.set_random_seed(seed)`: the same every epoch (module docstring; tests/test_vectorized.py
    compares it with fit's own order). Seeded by the trial alone, so a member's batches do not depend on which
    other members share its program."""
    del epoch  # Keras repeats one permutation: its tf.data map is re-seeded alike for every epoch
    return _keras_order(seed, size)


@functools.lru_cache(maxsize=1024)
def _keras_order(seed: int, size: int) -> np.ndarray:
    import tensorflow as tf

    keras.utils.set_random_seed(seed)  # what the sequential fit runs under; after every member is built

    @tf.autograph.experimental.do_not_convert
    def permutation(_: Any) -> Any:  # as keras' ArrayDataAdapter.get_tf_dataset: range, then shuffle
        return tf.random.shuffle(tf.range(size, dtype=tf.int64))

    order = next(iter(tf.data.Dataset.range(1).map(permutation))).numpy()
    order.setflags(write=False)
    return order


# ------------------------------------------------------------------------------------------------
# The stacked model
# ------------------------------------------------------------------------------------------------


def _dense(model: keras.Model) -> list[keras.layers.Dense]:
    return [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]


class StackedMLP(keras.Model):
    """N copies of one MLP (Rescaling -> Flatten -> Dense...), their weights stacked on a leading member axis.
    `call` maps raw images (N, batch, 28, 28) to logits (N, batch, 10): the softmax is left to the loss, as
    Keras' sparse crossentropy takes the logits of a softmax output in a compiled train step. Every variable is
    3-D (a bias is (N, 1, units)), so a per-member (N, 1, 1) hyperparameter broadcasts against each of them."""

    def __init__(self, members: Sequence[keras.Model]) -> None:
        super().__init__(name="stacked_mlp")
        template = members[0]
        rescaling = next(layer for layer in template.layers if isinstance(layer, keras.layers.Rescaling))
        self.scale, self.offset = rescaling.scale, rescaling.offset
        dense = _dense(template)
        self.activations = [layer.activation for layer in dense[:-1]]
        self.kernels, self.biases = [], []
        for index in range(len(dense)):
            layers = [_dense(member)[index] for member in members]
            kernel = np.stack([keras.ops.convert_to_numpy(layer.kernel) for layer in layers])
            bias = np.stack([keras.ops.convert_to_numpy(layer.bias)[None, :] for layer in layers])
            self.kernels.append(self.add_weight(shape=kernel.shape, initializer="zeros", name=f"kernel_{index}"))
            self.biases.append(self.add_weight(shape=bias.shape, initializer="zeros", name=f"bias_{index}"))
            self.kernels[-1].assign(kernel)
            self.biases[-1].assign(bias)

    def call(self, images):
        dtype = self.compute_dtype  # what keras.layers.Rescaling computes, in its order of operations
        x = keras.ops.cast(images, dtype) * keras.ops.cast(self.scale, dtype) + keras.ops.cast(self.offset, dtype)
        x = keras.ops.reshape(x, (x.shape[0], -1, int(np.prod(x.shape[2:]))))
        for kernel, bias, activation in zip(self.kernels, self.biases, [*self.activations, None], strict=True):
            x = keras.ops.add(keras.ops.matmul(x, kernel), bias)
            if activation is not None:
                x = activation(x)
        return x

    def member_weights(self, index: int) -> list[np.ndarray]:
        """Member `index`'s weights in a plain MLP's order (kernel, bias per Dense layer)."""
        weights = []
        for kernel, bias in zip(self.kernels, self.biases, strict=True):
            weights += [keras.ops.convert_to_numpy(kernel[index]), keras.ops.convert_to_numpy(bias[index, 0])]
        return weights


def member_model(cfg: DictConfig) -> keras.Model:
    """The trial's model as the sequential fit builds it: seeded, then the builder (its initial weights)."""
    keras.utils.set_random_seed(int(cfg.train.seed))
    return instantiate(cfg.model)


def _check_structure(model: keras.Model) -> None:
    """The stacked model mirrors exactly these layers; anything else would be trained wrongly."""
    kinds = [type(layer) for layer in model.layers]
    allowed = {keras.layers.Rescaling, keras.layers.Flatten, keras.layers.Dense}
    extra = sorted({kind.__name__ for kind in kinds} - {kind.__name__ for kind in allowed})
    dense = _dense(model)
    if extra or kinds[:2] != [keras.layers.Rescaling, keras.layers.Flatten] or not dense:
        raise NotVectorizable(f"model {model.name}: layers {extra or kinds}; the engine stacks Rescaling-Flatten-Dense")
    if not all(layer.use_bias for layer in dense) or dense[-1].activation is not keras.activations.softmax:
        raise NotVectorizable(f"model {model.name}: needs biased Dense layers and a softmax output")


# ------------------------------------------------------------------------------------------------
# Training one chunk
# ------------------------------------------------------------------------------------------------


class _Progress:
    """One line per chunk and epoch: members, epoch, elapsed, ETA (from the time per member-epoch so far)."""

    def __init__(self, total_member_epochs: int, emit: Callable[[str], None]) -> None:
        self.total, self.done, self.emit = total_member_epochs, 0, emit
        self.started = time.perf_counter()

    def epoch_done(self, label: str, members: int, alive: int, epoch: int, epochs: int) -> None:
        self.done += members
        elapsed = time.perf_counter() - self.started
        eta = elapsed / self.done * (self.total - self.done)
        self.emit(
            f"{label}: {members} members ({alive} training), epoch {epoch}/{epochs}, {elapsed:.1f} s elapsed,"
            f" ETA {eta:.1f} s"
        )


def _memberwise_tensor(values: Sequence[float], dtype: str) -> Any:
    return keras.ops.convert_to_tensor(np.asarray(values, dtype=dtype).reshape(-1, 1, 1))


def build_optimizer(configs: Sequence[DictConfig], dtype: str) -> keras.optimizers.Optimizer:
    """The group's optimizer, its member-wise values as (N, 1, 1) tensors: the learning rate through the public
    callable form (so weight decay reads it too), the other floats as the attributes `update_step` reads."""
    optimizers = [container(cfg.optimizer) for cfg in configs]
    rates = _memberwise_tensor([float(o["learning_rate"]) for o in optimizers], dtype)
    optimizer = instantiate(optimizers[0] | {"learning_rate": lambda: rates})
    for key in memberwise_keys(configs[0]):
        if key != "learning_rate" and optimizers[0].get(key) is not None:
            setattr(optimizer, key, _memberwise_tensor([float(o[key]) for o in optimizers], dtype))
    return optimizer


def _step_counter(optimizer: keras.optimizers.Optimizer) -> keras.Variable:
    """The optimizer's step variable (`optimizer.iterations` is a tensor under gradient accumulation)."""
    return next(variable for variable in optimizer.variables if variable.name == "iteration")


@dataclass
class _Member:
    """One trial of a chunk: its config, its own Keras model (initial weights, later its final ones, compiled
    with its own optimizer mirroring its slice of the stacked one), its split as image positions, its history."""

    cfg: DictConfig
    model: keras.Model
    train_positions: np.ndarray
    val_positions: np.ndarray
    history: dict[str, list[float]] = field(default_factory=dict)
    mirrors_state: bool = False  # the stacked optimizer's slots map one to one onto the member's

    @property
    def seed(self) -> int:
        return int(self.cfg.train.seed)


def _member(cfg: DictConfig, limit: int | None) -> _Member:
    """The member's model and its split, as positions into the first `limit` training images: the split is
    `data.split`'s own rule applied to the positions instead of the images (one copy of the images, not N)."""
    model = member_model(cfg)
    _check_structure(model)
    positions = np.arange(data.ARRAY_SHAPES["x_train"][0])
    none = np.empty(0, dtype=np.int64)
    arrays = {"x_train": positions, "y_train": positions, "x_test": none, "y_test": none}
    split = data.split(arrays, float(cfg.data.val_split), limit, int(cfg.train.seed))
    return _Member(cfg, model, split.x_train, split.x_val)


class _Chunk:
    """One program: the stacked model and optimizer, the per-member masks and epoch sums, two compiled steps."""

    def __init__(self, members: Sequence[_Member], images, labels) -> None:
        import tensorflow as tf

        self.tf, self.members, self.size = tf, members, len(members)
        configs = [member.cfg for member in members]
        self.model = StackedMLP([member.model for member in members])
        self.optimizer = build_optimizer(configs, keras.config.floatx())
        self.optimizer.build(self.model.trainable_variables)
        self.slots = [variable for variable in self.optimizer.variables if len(variable.shape) == 3]
        # What a masked member must not change: its weights and every per-member optimizer slot
        self.masked = [*self.model.trainable_variables, *self.slots]
        self.limit = divergence_limit(configs[0], members[0].model)
        self.images, self.labels = images, labels
        self.alive = tf.Variable(tf.ones(self.size, tf.bool), trainable=False)
        self.loss_sum = tf.Variable(tf.zeros(self.size, tf.float64), trainable=False)
        self.correct = tf.Variable(tf.zeros(self.size, tf.float64), trainable=False)
        self.seen = tf.Variable(tf.zeros(self.size, tf.float64), trainable=False)
        self.train = tf.function(
            self._train,
            input_signature=[tf.TensorSpec([None, self.size, None], tf.int32), tf.TensorSpec([], tf.bool)],
        )
        self.evaluate = tf.function(self._evaluate, input_signature=[tf.TensorSpec([self.size, None], tf.int32)])
        stacked_shapes = [_member_shape(variable) for variable in self.slots]
        for member in members:
            optimizer = instantiate(member.cfg.optimizer)
            optimizer.build(member.model.trainable_variables)
            own = [tuple(variable.shape) for variable in optimizer.variables if len(variable.shape) > 0]
            member.mirrors_state = own == stacked_shapes
            member.model.compile(optimizer=optimizer, loss=LOSS, metrics=["accuracy"])

    def _forward(self, positions):
        tf = self.tf
        logits = self.model(tf.gather(self.images, positions))
        labels = tf.gather(self.labels, positions)
        crossentropy = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
        count = tf.cast(tf.shape(positions)[1], crossentropy.dtype)
        member_loss = tf.reduce_sum(crossentropy, axis=1) / count  # Keras' "sum_over_batch_size"
        predicted = tf.argmax(tf.nn.softmax(logits), axis=-1, output_type=labels.dtype)  # as Keras' accuracy
        correct = tf.reduce_sum(tf.cast(tf.equal(predicted, labels), tf.float64), axis=1)
        return member_loss, correct

    def _train(self, batches, check):
        """The steps of one compiled call of Keras' fit. Keras' divergence guards read the running loss only when
        a call returns, so a member alive at the call's start takes every update of the call, and is masked
        (if `check`) only at its end: a member diverges exactly when, and with the weights, Keras' fit would."""
        tf = self.tf
        alive = self.alive.value()
        everyone = tf.reduce_all(alive)
        for step in tf.range(tf.shape(batches)[0]):
            positions = batches[step]
            with tf.GradientTape() as tape:
                member_loss, correct = self._forward(positions)
                scaled = self.optimizer.scale_loss(tf.reduce_sum(member_loss))
            gradients = tape.gradient(scaled, self.model.trainable_variables)
            count = tf.cast(tf.shape(positions)[1], tf.float64)
            self.loss_sum.assign_add(tf.where(alive, tf.cast(member_loss, tf.float64) * count, 0.0))
            self.correct.assign_add(tf.where(alive, correct, 0.0))
            self.seen.assign_add(tf.where(alive, count, 0.0))
            tf.cond(
                everyone,
                lambda gradients=gradients: self._apply(gradients),
                lambda gradients=gradients: self._apply_masked(gradients, alive),
            )
        running = self.loss_sum / tf.maximum(self.seen, 1.0)  # what Keras' logs["loss"] holds after the call
        healthy = tf.math.is_finite(running) & (running <= self.limit)  # callbacks.loss_diverged, negated
        self.alive.assign(tf.where(check, alive & healthy, alive))

    def _apply(self, gradients):
        self.optimizer.apply(gradients, self.model.trainable_variables)
        return self.tf.constant(True)

    def _apply_masked(self, gradients, alive):
        tf = self.tf
        before = [tf.identity(variable.value) for variable in self.masked]
        self.optimizer.apply(gradients, self.model.trainable_variables)
        keep = tf.reshape(alive, (-1, 1, 1))
        for variable, old in zip(self.masked, before, strict=True):
            variable.assign(tf.where(keep, variable.value, old))
        return tf.constant(True)

    def _evaluate(self, positions):
        member_loss, correct = self._forward(positions)
        count = self.tf.cast(self.tf.shape(positions)[1], self.tf.float64)
        return self.tf.cast(member_loss, self.tf.float64) * count, correct

    def train_epoch(self, epoch: int, batch_size: int, steps_per_call: int) -> tuple[np.ndarray, np.ndarray]:
        """One epoch of every member, each in its own order (`epoch_order`), in the compiled calls Keras' fit makes
        (`steps_per_call` batches each); their mean loss and accuracy, as Keras' epoch logs hold them (over the
        batches trained until a member was masked)."""
        tf = self.tf
        for variable in (self.loss_sum, self.correct, self.seen):
            variable.assign(tf.zeros_like(variable))
        size = len(self.members[0].train_positions)
        order = np.stack([m.train_positions[epoch_order(m.seed, epoch, size)] for m in self.members]).astype(np.int32)
        full = size // batch_size * batch_size
        batches = order[:, :full].reshape(self.size, -1, batch_size).transpose(1, 0, 2)
        partial = full < size  # Keras' fit ends the epoch with a smaller batch, in the same call as the last ones
        for begin in range(0, len(batches), steps_per_call):
            ends_call = begin + steps_per_call <= len(batches) or not partial
            self.train(tf.constant(batches[begin : begin + steps_per_call]), tf.constant(ends_call))
        if partial:
            self.train(tf.constant(order[None, :, full:]), tf.constant(True))
        seen = np.maximum(self.seen.numpy(), 1.0)  # 0 only for members masked before this epoch (not recorded)
        return self.loss_sum.numpy() / seen, self.correct.numpy() / seen

    def validate(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Every member's validation loss and accuracy, in batches of `batch_size` as Keras' evaluate makes them."""
        positions = np.stack([member.val_positions for member in self.members]).astype(np.int32)
        loss_sum, correct = np.zeros(self.size), np.zeros(self.size)
        for begin in range(0, positions.shape[1], batch_size):
            losses, hits = self.evaluate(self.tf.constant(positions[:, begin : begin + batch_size]))
            loss_sum += losses.numpy()
            correct += hits.numpy()
        return loss_sum / positions.shape[1], correct / positions.shape[1]

    def mirror(self) -> None:
        """Copy each member's slice of the stacked weights and optimizer state into its own model and optimizer:
        what the per-epoch statistics read, and what a caller saves."""
        for index, member in enumerate(self.members):
            member.model.set_weights(self.model.member_weights(index))
            if not member.mirrors_state:  # a refused optimizer, trained stacked only by the tests
                continue
            optimizer = member.model.optimizer
            own = [variable for variable in optimizer.variables if len(variable.shape) > 0]
            for variable, stacked in zip(own, self.slots, strict=True):
                variable.assign(keras.ops.reshape(stacked[index], variable.shape))
            _step_counter(optimizer).assign(_step_counter(self.optimizer))


def _member_shape(stacked: Any) -> tuple[int, ...]:
    """A stacked variable's shape for one member: (in, out) for a kernel, (units,) for a bias."""
    shape = tuple(stacked.shape[1:])
    return shape[1:] if shape[0] == 1 else shape


def _epoch_logs(member: _Member, values: Mapping[str, float], seconds: float) -> dict[str, float]:
    """The member's logs of one epoch, with what `src.training.callbacks.EpochStats` adds in a sequential fit:
    its share of the epoch's time, its learning rate and the median of its optimizer's per-parameter steps."""
    optimizer = member.model.optimizer
    logs = {**values, "epoch_seconds": seconds}
    logs["learning_rate"] = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
    step_sizes = effective_step_sizes(optimizer) if member.mirrors_state else None
    if step_sizes is not None:
        logs["effective_step_size"] = float(np.median(step_sizes))
    return logs


def train_stacked(
    configs: Sequence[DictConfig], arrays: data.Arrays, progress: _Progress | None = None, label: str = "vectorized"
) -> list[FitResult]:
    """Train `configs` as one program and return their results (test scores are the caller's). No refusal check:
    the engine makes it; the tests call this directly to show that a refused optimizer really differs from
    Keras. The configs must share `group_key`."""
    import tensorflow as tf

    first = configs[0]
    limit = first.data.get("limit")
    members = [_member(cfg, limit) for cfg in configs]
    images = tf.constant(arrays["x_train"][:limit])
    labels = tf.constant(arrays["y_train"][:limit].astype(np.int64))
    chunk = _Chunk(members, images, labels)
    batch_size = int(first.train.batch_size)
    validation_batch = int(first.train.get("validation_batch_size") or batch_size)
    steps_per_call = max(1, int(first.train.get("steps_per_execution") or 1))
    epochs = int(first.train.epochs)
    alive = np.ones(len(members), dtype=bool)
    started = time.perf_counter()
    for epoch in range(epochs):
        began = time.perf_counter()
        loss, accuracy = chunk.train_epoch(epoch, batch_size, steps_per_call)
        val_loss, val_accuracy = chunk.validate(validation_batch)
        chunk.mirror()
        share = (time.perf_counter() - began) / len(members)
        for index, member in enumerate(members):
            if alive[index]:  # alive when the epoch began: a member masked in it still has this epoch's logs
                values = map(float, (loss[index], accuracy[index], val_loss[index], val_accuracy[index]))
                for key, value in _epoch_logs(member, dict(zip(LOGGED_METRICS, values, strict=True)), share).items():
                    member.history.setdefault(key, []).append(value)
        alive = chunk.alive.numpy()
        if progress is not None:
            progress.epoch_done(label, len(members), int(alive.sum()), epoch + 1, epochs)
        if not alive.any():  # every member diverged: nothing left to train
            if progress is not None:
                progress.total -= len(members) * (epochs - epoch - 1)
            break
    chunk.optimizer.finalize_variable_values(chunk.model.trainable_variables)  # as fit ends (EMA, if any)
    chunk.mirror()
    seconds = (time.perf_counter() - started) / len(members)
    results = []
    for member in members:
        diverged = diverged_epoch(member.history, chunk.limit)
        epochs_run = len(member.history["loss"]) or None
        results.append(
            FitResult(
                history=member.history,
                model=member.model,
                final_model=member.model,
                model_weights=FINAL,
                model_epoch=epochs_run,
                train_seconds=seconds,
                diverged_epoch=diverged,
                engine="vectorized",
            )
        )
    return results


# ------------------------------------------------------------------------------------------------
# The engine (src.training.fit.Engine)
# ------------------------------------------------------------------------------------------------


def _label(cfg: DictConfig) -> str:
    optimizer = optimizer_class(container(cfg.optimizer))
    workload = str(container(cfg.model).get("_target_", "")).rsplit(".", 1)[-1]
    return f"{getattr(optimizer, '__name__', 'optimizer')} ({workload})"


def _trial_name(cfg: DictConfig) -> str:
    return f"{_label(cfg)} lr={float(cfg.optimizer.learning_rate):g} seed={cfg.train.seed}"


def why_not_this_spec(spec: TrialSpec) -> str | None:
    """`why_not_vectorized` of the spec's config, and what a spec may add that the engine cannot honour."""
    if spec.callbacks:
        return "the caller's Keras callbacks run per trial and per batch; the engine runs none"
    if spec.backup_dir is not None:
        return "a backup to resume from: the engine trains whole groups from scratch"
    return why_not_vectorized(spec.cfg)


def verified_arrays(path: Path) -> data.Arrays:
    """The verified arrays of the data file `path` (`<data set>.npz`), read once per process while the file is
    unchanged (the cache `data.load_for_training` keeps, shared with the sequential fit's splits)."""
    dataset = data.dataset_of(path)
    arrays, _ = data.load_for_training(path.parent, (), None, path.parent, False, dataset)
    return arrays


def plan_group(configs: Sequence[DictConfig], arrays: data.Arrays, budget: int) -> MemoryPlan:
    """The chunks of one group within `budget` (ConfigError before anything trains when one member cannot fit)."""
    first = configs[0]
    limit = first.data.get("limit")
    member = _member(first, limit)
    batch_size = int(first.train.batch_size)
    dense = _dense(member.model)
    member_bytes = estimate_member_bytes(
        member.model,
        [int(dense[0].kernel.shape[0]), *(int(layer.units) for layer in dense)],
        container(first.optimizer),
        batch_size,
        int(first.train.get("validation_batch_size") or batch_size),
        len(member.train_positions),
    )
    count = len(arrays["x_train"][:limit])
    shared = count * (int(np.prod(data.ARRAY_SHAPES["x_train"][1:])) + 8)  # uint8 images, int64 labels
    return plan_chunks(len(configs), member_bytes, shared, budget, _label(first))


class VectorizedEngine:
    """`src.training.fit.Engine` training each group of compatible trials as stacked programs.

    Specs are grouped by `group_key` (one optimizer class and workload per program, never mixed), every group's
    chunks are planned within `memory_budget_bytes` before anything trains, and a spec the engine cannot train
    exactly goes to `fallback` (the sequential engine by default) with one line saying why. `on_start(i)` is
    called for every member of a chunk before it trains, `on_result(i, result)` for each once it has."""

    name = "vectorized"

    def __init__(
        self,
        memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET,
        fallback: Engine | None = None,
        progress: Callable[[str], None] = print,
    ) -> None:
        self.memory_budget_bytes = memory_budget_bytes
        self.fallback = fallback if fallback is not None else SequentialEngine()
        self.progress = progress

    def fit_trials(
        self,
        specs: Sequence[TrialSpec],
        on_start: Callable[[int], None] | None = None,
        on_result: Callable[[int, FitResult], None] | None = None,
    ) -> list[FitResult]:
        freeze_imported_objects()
        refused = {index: why_not_this_spec(spec) for index, spec in enumerate(specs)}
        refused = {index: reason for index, reason in refused.items() if reason}
        groups: dict[tuple[str, Path], list[int]] = {}  # one program per compatible config and data file
        for index, spec in enumerate(specs):
            if index not in refused:
                groups.setdefault((group_key(spec.cfg), spec.data_path), []).append(index)
        arrays = {path: verified_arrays(path) for _, path in groups}
        plans = {  # every group's chunks before anything trains: a budget too small fails first
            key: plan_group([specs[i].cfg for i in indices], arrays[key[1]], self.memory_budget_bytes)
            for key, indices in groups.items()
        }
        results: dict[int, FitResult] = {}
        if refused:
            for index, reason in refused.items():
                self.progress(f"{_trial_name(specs[index].cfg)}: sequential engine: {reason}")
            order = list(refused)
            trained = self.fallback.fit_trials(
                [specs[i] for i in order],
                (lambda position: on_start(order[position])) if on_start else None,
                (lambda position, result: on_result(order[position], result)) if on_result else None,
            )
            results.update(zip(order, trained, strict=True))
        tracker = _Progress(sum(len(i) * int(specs[i[0]].cfg.train.epochs) for i in groups.values()), self.progress)
        for key, indices in groups.items():
            chunks = self._chunks(indices, plans[key], specs[indices[0]].cfg)
            for number, chunk in enumerate(chunks, start=1):
                for index in chunk:
                    if on_start:
                        on_start(index)
                label = f"{_label(specs[chunk[0]].cfg)} chunk {number}/{len(chunks)}"
                try:
                    trained = train_stacked([specs[i].cfg for i in chunk], arrays[key[1]], tracker, label)
                    for index, result in zip(chunk, trained, strict=True):
                        results[index] = self._scored(specs[index], result, arrays[key[1]])
                        if on_result:
                            on_result(index, results[index])
                finally:  # the chunk's graphs and variables go with it; its members' models stay usable
                    keras.backend.clear_session(free_memory=False)
        return [results[index] for index in range(len(specs))]

    def _chunks(self, indices: list[int], plan: MemoryPlan, cfg: DictConfig) -> list[list[int]]:
        """The group's members cut into the plan's chunks, announced in one line."""
        self.progress(
            f"vectorized {_label(cfg)}: {len(indices)} members in {len(plan.chunk_sizes)} chunk(s) of at most"
            f" {max(plan.chunk_sizes)} (~{plan.member_bytes / 2**20:.1f} MiB a member +"
            f" {plan.shared_bytes / 2**20:.1f} MiB shared; budget {self.memory_budget_bytes / 2**20:.0f} MiB)"
        )
        bounds = np.cumsum([0, *plan.chunk_sizes])
        return [indices[begin:end] for begin, end in itertools.pairwise(bounds)]

    @staticmethod
    def _scored(spec: TrialSpec, result: FitResult, arrays: data.Arrays) -> FitResult:
        if not spec.score_test or result.diverged_epoch is not None:
            # A diverged member is a failure (status diverged) and has no test scores, as the report says, like a
            # sequential trial that diverged.
            return result
        cfg = spec.cfg
        batch_size = cfg.train.get("validation_batch_size") or cfg.train.batch_size
        return replace(result, test=score(result.model, arrays["x_test"], arrays["y_test"], batch_size))

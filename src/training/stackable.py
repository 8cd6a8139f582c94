"""Which trials the vectorized engine (vectorized.py) can train exactly as Keras would, and which trials can
share one stacked program. Apart from the engine because it changes for another reason: a new Keras optimizer
or setting is checked member by member (tests/test_vectorized.py) and then listed here, without touching how
the engine trains.

- `why_not_vectorized`: None, or one line naming the key and why (the sequential engine trains such a trial);
- `memberwise_keys`: the optimizer floats in which the members of one program may differ (`MEMBERWISE_FLOATS`);
- `group_key`: trials with equal keys share a program (one optimizer class and workload, never mixed).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import keras
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from src.training.config import DIVERGENCE_GUARDS

MLP_TARGET = "src.training.models.mlp"

# Per accepted optimizer class: the float hyperparameters that members may differ in (each becomes an (N, 1, 1)
# tensor). A float qualifies when its optimizer's `update_step` uses it only in arithmetic with tensors, never
# through `ops.cast`: Keras casts a Python float with `tf.cast`, which rounds it to float32 first, while the same
# float in `1 - beta_1` stays a double, so no one tensor can stand for both (Adam's betas differ by 6e-6 after
# one float64 step). Structural settings are shared by a group too: SGD's and RMSprop's `momentum` choose a
# Python branch, `initial_accumulator_value` is an initializer, `weight_decay` is cast. `learning_rate` is
# member-wise for all: Keras reads it from a float variable (`update_step` and weight decay alike).
MEMBERWISE_FLOATS: dict[type, tuple[str, ...]] = {
    keras.optimizers.SGD: (),
    keras.optimizers.Adam: ("epsilon",),
    keras.optimizers.AdamW: ("epsilon",),
    keras.optimizers.Adamax: ("beta_2", "epsilon"),
    keras.optimizers.Nadam: ("epsilon",),
    keras.optimizers.Adagrad: ("epsilon",),
    keras.optimizers.RMSprop: ("rho", "epsilon"),
    keras.optimizers.Adadelta: ("rho", "epsilon"),
    keras.optimizers.Lion: (),
    keras.optimizers.Ftrl: (
        "learning_rate_power",
        "l1_regularization_strength",
        "l2_regularization_strength",
        "l2_shrinkage_regularization_strength",
        "beta",
    ),
}
ALWAYS_MEMBERWISE = ("learning_rate",)
# Optimizers whose update is not element-wise on a stacked variable, or not reproducible in another train loop:
# they train on the sequential engine. tests/test_vectorized.py shows that each really differs.
REFUSED_OPTIMIZERS: dict[type, str] = {
    keras.optimizers.Lamb: "scales each variable's step by the ratio of its weight norm to its update norm, and a"
    " stacked variable's norm spans every member",
    keras.optimizers.Muon: "orthogonalises each 2-D kernel (Newton-Schulz); a stacked kernel is 3-D, which Keras'"
    " Muon updates with AdamW instead",
    keras.optimizers.Adafactor: "scales its step by the RMS of the whole variable and factors the last two axes;"
    " on a stacked variable both span members",
    keras.optimizers.ScheduleFreeAdamW: "its update reads `momentum.value` as an alias of a variable it assigns, so"
    " its result depends on how the compiled step orders that read; Keras' train step and the engine's differ",
}
# Base-optimizer settings that act on a whole variable or on all of them together.
REFUSED_SETTINGS = {
    "clipnorm": "clips each variable's gradient to a norm, and a stacked variable's norm spans every member",
    "global_clipnorm": "clips all gradients to one global norm, which spans every member",
}


def container(node: Any) -> Any:
    """A config node as plain Python (resolved), or the value itself."""
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def optimizer_class(optimizer_cfg: Mapping[str, Any]) -> type | None:
    """The Keras optimizer class a config's `_target_` names, or None when it names none."""
    try:
        return get_class(str(optimizer_cfg.get("_target_")))
    except Exception:  # Hydra raises its own error types for a bad target; the config validation reports them
        return None


def why_not_vectorized(cfg: DictConfig) -> str | None:
    """None when the engine trains `cfg` exactly as Keras would; else one line naming the key and why."""
    if keras.backend.backend() != "tensorflow":
        return f"Keras backend {keras.backend.backend()}: the engine's train step is written for TensorFlow"
    optimizer = container(cfg.optimizer)
    target = optimizer.get("_target_")
    cls = optimizer_class(optimizer)
    if cls in REFUSED_OPTIMIZERS:
        return f"optimizer {target}: {REFUSED_OPTIMIZERS[cls]}"
    if cls not in MEMBERWISE_FLOATS:
        return f"optimizer {target}: not one of the optimizers checked member by member against Keras"
    for key, reason in REFUSED_SETTINGS.items():
        if optimizer.get(key):
            return f"optimizer.{key}={optimizer[key]}: {reason}"
    learning_rate = optimizer.get("learning_rate")
    if isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float)):
        return f"optimizer.learning_rate={learning_rate!r}: the engine gives each member one constant rate"
    model = container(cfg.model)
    if model.get("_target_") != MLP_TARGET:
        return f"model {model.get('_target_')}: the engine stacks Dense layers only (the MLP), not convolutions"
    if model.get("dropout"):
        return f"model.dropout={model['dropout']}: Keras' dropout masks come from its seed generator, not reproducible"
    if cfg.train.get("steps_per_epoch") is not None:
        return f"train.steps_per_epoch={cfg.train.steps_per_epoch}: the engine trains whole epochs"
    for name, settings in (cfg.get("callbacks") or {}).items():  # unresolved: checkpoint paths name Hydra's run
        if not settings.get("enabled", True):
            continue
        if name not in DIVERGENCE_GUARDS:
            return f"callbacks.{name}: the engine runs no per-trial Keras callback but the divergence guards"
        if settings.get("raise_error"):
            return f"callbacks.{name}.raise_error=true: the engine masks a diverged member instead of failing it"
    return None


def memberwise_keys(cfg: DictConfig) -> tuple[str, ...]:
    """The optimizer keys in which the members of one program may differ."""
    optimizer = container(cfg.optimizer)
    return ALWAYS_MEMBERWISE + MEMBERWISE_FLOATS.get(optimizer_class(optimizer), ())


def group_key(cfg: DictConfig) -> str:
    """Trials with equal keys can share one program: the same optimizer class and structural settings, the same
    workload, batch size, epochs and data; they may differ in seed and member-wise floats. A member-wise key set
    to null is structural: it joins the key."""
    optimizer = container(cfg.optimizer)
    for key in memberwise_keys(cfg):
        if optimizer.get(key) is not None:
            optimizer.pop(key)
    shared = {
        "optimizer": optimizer,
        "model": container(cfg.model),
        "train": {key: cfg.train.get(key) for key in ("batch_size", "epochs", "validation_batch_size")},
        "data": {key: cfg.data.get(key) for key in ("val_split", "limit")},
        "callbacks": OmegaConf.to_container(cfg.callbacks) if cfg.get("callbacks") else {},
    }
    return json.dumps(shared, sort_keys=True, default=str)

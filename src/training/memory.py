"""How many stacked members one program of the vectorized engine (vectorized.py) may hold: one member's memory
estimated, and a group's members cut into chunks of about equal size within a budget. Decided before anything
trains: a budget that cannot hold one member is a ConfigError naming what it needs."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
from hydra.utils import instantiate

from src.infra.errors import ConfigError

DEFAULT_MEMORY_BUDGET = 2 * 1024**3  # bytes; the fair protocol's 12 tuning trials of the MLP need ~140 MiB


@dataclass(frozen=True)
class MemoryPlan:
    shared_bytes: int  # the images and labels, once for all chunks
    member_bytes: int  # one member's estimate (see estimate_member_bytes)
    chunk_sizes: tuple[int, ...]


def estimate_member_bytes(
    model: keras.Model,
    widths: Sequence[int],
    optimizer_cfg: Mapping[str, Any],
    batch_size: int,
    validation_batch_size: int,
    n_train: int,
) -> int:
    """One member's memory, estimated: weights, their gradients and masking copy (3x the parameters), the
    optimizer's slots and their masking copy (2x, counted by building the configured optimizer on `model`),
    the activations of a training step (the input, then pre-activation and output of every layer of `widths`:
    the input width, then each Dense layer's units; forward and backward) or of a validation batch (forward
    only), whichever is larger, and its index arrays."""
    item = np.dtype(keras.config.floatx()).itemsize
    params = int(sum(np.prod(v.shape) for v in model.trainable_variables))
    optimizer = instantiate(optimizer_cfg)
    optimizer.build(model.trainable_variables)
    slots = int(sum(np.prod(v.shape) for v in optimizer.variables if len(v.shape) > 0))
    width = widths[0] + 2 * sum(widths[1:])
    activations = max(2 * batch_size * width, validation_batch_size * width) * item
    indices = n_train * (8 + 4)  # the split's int64 positions, an epoch's int32 order
    return item * (3 * params + 2 * slots) + activations + indices


def plan_chunks(members: int, member_bytes: int, shared_bytes: int, budget: int, what: str) -> MemoryPlan:
    """Chunks as equal as possible, each within `budget`; ConfigError when not even one member fits."""
    needed = shared_bytes + member_bytes
    if budget < needed:
        raise ConfigError(
            f"memory budget {budget / 2**20:.1f} MiB cannot hold one member of {what}: it needs at least"
            f" {needed / 2**20:.1f} MiB ({shared_bytes / 2**20:.1f} MiB of shared data + {member_bytes / 2**20:.1f}"
            " MiB per member); raise the budget"
        )
    most = min(members, (budget - shared_bytes) // member_bytes)
    count = math.ceil(members / most)
    sizes = tuple(members // count + (1 if index < members % count else 0) for index in range(count))
    return MemoryPlan(shared_bytes, member_bytes, sizes)

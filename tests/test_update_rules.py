"""Homework Q1: the numpy update rules match keras.optimizers step for step, and the effective step size
logged during training is computed from Keras' own optimizer state."""

from __future__ import annotations

import itertools

import keras
import numpy as np
import pytest

from src.training import update_rules
from src.training.callbacks import effective_step_sizes

STEPS = 25

CASES = [
    (update_rules.SGDMomentum(learning_rate=0.05, momentum=0.9), keras.optimizers.SGD(0.05, momentum=0.9)),
    (
        update_rules.SGDMomentum(learning_rate=0.05, momentum=0.9, nesterov=True),
        keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True),
    ),
    (update_rules.SGDMomentum(learning_rate=0.05), keras.optimizers.SGD(0.05)),
    (update_rules.AdaGrad(), keras.optimizers.Adagrad()),
    (update_rules.AdaGrad(learning_rate=0.1), keras.optimizers.Adagrad(learning_rate=0.1)),
    (update_rules.RMSProp(), keras.optimizers.RMSprop()),
    (update_rules.RMSProp(learning_rate=0.01, rho=0.5), keras.optimizers.RMSprop(learning_rate=0.01, rho=0.5)),
    (update_rules.Adam(), keras.optimizers.Adam()),
    # Keras turns Python-float hyperparameters into float32 tensors before casting them to the variable's
    # dtype (0.999 becomes 0.99900001...), which shifts a large Adam step by ~6e-6 relative. Values exact
    # in float32 compare the update rules themselves.
    (
        update_rules.Adam(learning_rate=2**-7, beta_1=0.5, beta_2=1 - 2**-10),
        keras.optimizers.Adam(learning_rate=2**-7, beta_1=0.5, beta_2=1 - 2**-10),
    ),
]


def _gradient(weights: np.ndarray, targets: np.ndarray, inputs: np.ndarray) -> np.ndarray:
    """Gradient of the least-squares loss 0.5 * mean((inputs @ w - targets)^2): a small real problem."""
    return inputs.T @ (inputs @ weights - targets) / len(targets)


@pytest.mark.parametrize(("reference", "optimizer"), CASES, ids=lambda c: type(c).__name__)
def test_numpy_rule_matches_keras_step_for_step(reference, optimizer) -> None:
    rng = np.random.default_rng(0)
    inputs, targets = rng.normal(size=(32, 5)), rng.normal(size=32)
    start = rng.normal(size=5)
    variable = keras.Variable(start.astype("float64"), dtype="float64")
    weights = start.copy()
    for step in range(STEPS):
        gradient = _gradient(weights, targets, inputs)
        optimizer.apply_gradients([(keras.ops.convert_to_tensor(gradient, dtype="float64"), variable)])
        weights = reference.step(weights, gradient)
        np.testing.assert_allclose(weights, keras.ops.convert_to_numpy(variable), rtol=0, atol=1e-6, err_msg=f"{step}")
    steps = effective_step_sizes(optimizer)
    assert steps is not None
    np.testing.assert_allclose(np.broadcast_to(reference.effective_step_size(), steps.shape), steps, rtol=1e-6)


def test_adagrad_step_only_shrinks_while_rmsprop_recovers() -> None:
    """Q1 in numbers: after a burst of large gradients, AdaGrad's step stays small for good; RMSProp's
    moving average forgets the burst and its step grows back."""
    adagrad, rmsprop = update_rules.AdaGrad(), update_rules.RMSProp()
    weights_a = weights_r = np.zeros(1)
    history_a, history_r = [], []
    for step in range(200):
        gradient = np.array([10.0 if step < 20 else 0.1])
        weights_a, weights_r = adagrad.step(weights_a, gradient), rmsprop.step(weights_r, gradient)
        history_a.append(float(adagrad.effective_step_size()[0]))
        history_r.append(float(rmsprop.effective_step_size()[0]))
    assert all(later <= earlier for earlier, later in itertools.pairwise(history_a))
    assert history_r[-1] > 50 * history_r[19] and history_a[-1] < 1.01 * history_a[19]

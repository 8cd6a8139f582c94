"""Homework Q1 in code: the update rules of SGD with momentum, AdaGrad, RMSProp and Adam, in numpy.

Each class mirrors its `keras.optimizers` counterpart line by line (same defaults, same placement of
epsilon), so a test can run both on the same gradients and compare them step by step
(tests/test_update_rules.py). `effective_step_size` is what each rule multiplies the gradient (Adam: the
first moment) by, per parameter; it is what makes the answers to Q1 visible:

- AdaGrad: lr / sqrt(sum of all squared gradients + eps). The sum only grows, so the step only shrinks,
  for every parameter, whatever the loss does: the learning rate decays on its own and the user cannot
  steer it. With Keras' default lr = 0.001 that leaves MNIST training at about half accuracy.
- RMSProp: lr / sqrt(moving average of squared gradients + eps). The average forgets old gradients, so
  the step stops shrinking: AdaGrad's per-parameter scaling without its decay.
- Adam: RMSProp's scaling (with bias correction) applied to a moving average of the gradients (momentum).
- SGD with momentum: a velocity that accumulates past gradients; it speeds up along directions where the
  gradient keeps its sign (ravines, plateaus) and damps oscillations across them. No per-parameter scaling.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class SGDMomentum:
    """keras.optimizers.SGD(learning_rate, momentum, nesterov)."""

    learning_rate: float = 0.01
    momentum: float = 0.0
    nesterov: bool = False
    velocity: np.ndarray | None = field(default=None, repr=False)

    def step(self, weights: np.ndarray, gradient: np.ndarray) -> np.ndarray:
        if self.momentum == 0:
            return weights - self.learning_rate * gradient
        if self.velocity is None:
            self.velocity = np.zeros_like(weights)
        self.velocity = self.momentum * self.velocity - self.learning_rate * gradient
        if self.nesterov:
            return weights + self.momentum * self.velocity - self.learning_rate * gradient
        return weights + self.velocity

    def effective_step_size(self) -> float:
        return self.learning_rate


@dataclass
class AdaGrad:
    """keras.optimizers.Adagrad(learning_rate, initial_accumulator_value, epsilon)."""

    learning_rate: float = 0.001
    initial_accumulator_value: float = 0.1
    epsilon: float = 1e-7
    accumulator: np.ndarray | None = field(default=None, repr=False)

    def step(self, weights: np.ndarray, gradient: np.ndarray) -> np.ndarray:
        if self.accumulator is None:
            self.accumulator = np.full_like(weights, self.initial_accumulator_value)
        self.accumulator = self.accumulator + gradient**2
        return weights - self.learning_rate * gradient / np.sqrt(self.accumulator + self.epsilon)

    def effective_step_size(self) -> np.ndarray:
        return adagrad_step_size(self.learning_rate, self.accumulator, self.epsilon)


@dataclass
class RMSProp:
    """keras.optimizers.RMSprop(learning_rate, rho, epsilon), without momentum or centering."""

    learning_rate: float = 0.001
    rho: float = 0.9
    epsilon: float = 1e-7
    velocity: np.ndarray | None = field(default=None, repr=False)

    def step(self, weights: np.ndarray, gradient: np.ndarray) -> np.ndarray:
        if self.velocity is None:
            self.velocity = np.zeros_like(weights)
        self.velocity = self.rho * self.velocity + (1 - self.rho) * gradient**2
        return weights - self.learning_rate * gradient / np.sqrt(self.velocity + self.epsilon)

    def effective_step_size(self) -> np.ndarray:
        return rmsprop_step_size(self.learning_rate, self.velocity, self.epsilon)


@dataclass
class Adam:
    """keras.optimizers.Adam(learning_rate, beta_1, beta_2, epsilon), without amsgrad."""

    learning_rate: float = 0.001
    beta_1: float = 0.9
    beta_2: float = 0.999
    epsilon: float = 1e-7
    iterations: int = 0
    first_moment: np.ndarray | None = field(default=None, repr=False)
    second_moment: np.ndarray | None = field(default=None, repr=False)

    def step(self, weights: np.ndarray, gradient: np.ndarray) -> np.ndarray:
        if self.first_moment is None:
            self.first_moment, self.second_moment = np.zeros_like(weights), np.zeros_like(weights)
        self.iterations += 1
        self.first_moment = self.first_moment + (gradient - self.first_moment) * (1 - self.beta_1)
        self.second_moment = self.second_moment + (gradient**2 - self.second_moment) * (1 - self.beta_2)
        step_size = adam_step_size(
            self.learning_rate, self.second_moment, self.epsilon, self.beta_1, self.beta_2, self.iterations
        )
        return weights - self.first_moment * step_size

    def effective_step_size(self) -> np.ndarray:
        return adam_step_size(
            self.learning_rate, self.second_moment, self.epsilon, self.beta_1, self.beta_2, self.iterations
        )


# The per-parameter step sizes, shared with the training callback that reads Keras' optimizer state.


def adagrad_step_size(learning_rate: float, accumulator: np.ndarray, epsilon: float) -> np.ndarray:
    return learning_rate / np.sqrt(accumulator + epsilon)


def rmsprop_step_size(learning_rate: float, velocity: np.ndarray, epsilon: float) -> np.ndarray:
    return learning_rate / np.sqrt(velocity + epsilon)


def adam_step_size(
    learning_rate: float, second_moment: np.ndarray, epsilon: float, beta_1: float, beta_2: float, iterations: int
) -> np.ndarray:
    alpha = learning_rate * np.sqrt(1 - beta_2**iterations) / (1 - beta_1**iterations)
    return alpha / (np.sqrt(second_moment) + epsilon)

"""`python -m src.homework.backprop x0=1.0 x1=-2.0 y=1`: homework Q3, backpropagation through one neuron by hand.

    z = w0*x0 + w1*x1 + b,   p = sigmoid(z),   L = (y - p)^2

Chain rule, one factor per step of the forward pass:

    dL/dp = -2 (y - p)        dp/dz = p (1 - p)        dz/dw0 = x0,  dz/dw1 = x1,  dz/db = 1
    dL/dw0 = dL/dp * dp/dz * x0   (likewise w1 with x1, b with 1)

numpy only, no Keras; tests/test_backprop.py checks it against TensorFlow's autodiff and finite differences.
"""

from __future__ import annotations

from dataclasses import dataclass

import hydra
import numpy as np
from omegaconf import DictConfig

from src.infra.errors import exit_on_user_error
from src.infra.predicates import is_finite_number
from src.training.config import CONFIG_DIR, ConfigCheck

KEYS = ("x0", "x1", "y", "w0", "w1", "b", "lr")


@dataclass(frozen=True)
class Pass:
    """Every intermediate value of one forward and backward pass."""

    z: float
    sigmoid: float
    loss: float
    dloss_dsigmoid: float
    dsigmoid_dz: float
    dloss_dw0: float
    dloss_dw1: float
    dloss_db: float


def sigmoid(z: float) -> float:
    # Two branches keep exp() from overflowing for large |z|.
    if z >= 0:
        return float(1.0 / (1.0 + np.exp(-z)))
    exp_z = np.exp(z)
    return float(exp_z / (1.0 + exp_z))


def forward_backward(x0: float, x1: float, y: float, w0: float, w1: float, b: float) -> Pass:
    z = w0 * x0 + w1 * x1 + b
    p = sigmoid(z)
    loss = (y - p) ** 2
    dloss_dsigmoid = -2.0 * (y - p)
    dsigmoid_dz = p * (1.0 - p)
    dloss_dz = dloss_dsigmoid * dsigmoid_dz
    return Pass(z, p, loss, dloss_dsigmoid, dsigmoid_dz, dloss_dz * x0, dloss_dz * x1, dloss_dz * 1.0)


def gradient_step(w0: float, w1: float, b: float, result: Pass, lr: float) -> tuple[float, float, float]:
    """The weights after one step of gradient descent: w <- w - lr * dL/dw."""
    return w0 - lr * result.dloss_dw0, w1 - lr * result.dloss_dw1, b - lr * result.dloss_db


def _values(cfg: DictConfig) -> dict[str, float]:
    check = ConfigCheck()
    for key in sorted(set(cfg) - set(KEYS)):
        check.add(f"unknown key {key!r}; the keys are {', '.join(KEYS)}")
    for key in KEYS:
        if not is_finite_number(cfg.get(key)):
            check.fail(key, cfg.get(key), "use a finite number")
    check.raise_if_any()
    return {key: float(cfg[key]) for key in KEYS}


def report(values: dict[str, float]) -> str:
    x0, x1, y, w0, w1, b, lr = (values[key] for key in KEYS)
    result = forward_backward(x0, x1, y, w0, w1, b)
    new_w0, new_w1, new_b = gradient_step(w0, w1, b, result, lr)
    after = forward_backward(x0, x1, y, new_w0, new_w1, new_b)
    lines = [
        f"inputs   x0={x0:g}  x1={x1:g}  y={y:g}     weights  w0={w0:g}  w1={w1:g}  b={b:g}",
        "forward",
        f"  z        = w0*x0 + w1*x1 + b         = {result.z:.6f}",
        f"  sigma(z) = 1 / (1 + exp(-z))         = {result.sigmoid:.6f}",
        f"  L        = (y - sigma(z))^2          = {result.loss:.6f}",
        "backward (chain rule)",
        f"  dL/dsigma = -2 (y - sigma(z))        = {result.dloss_dsigmoid:.6f}",
        f"  dsigma/dz = sigma(z) (1 - sigma(z))  = {result.dsigmoid_dz:.6f}",
        f"  dL/dw0    = dL/dsigma * dsigma/dz * x0 = {result.dloss_dw0:.6f}",
        f"  dL/dw1    = dL/dsigma * dsigma/dz * x1 = {result.dloss_dw1:.6f}",
        f"  dL/db     = dL/dsigma * dsigma/dz * 1  = {result.dloss_db:.6f}",
        f"one gradient-descent step, lr={lr:g}: w <- w - lr * dL/dw",
        f"  w0 = {new_w0:.6f}   w1 = {new_w1:.6f}   b = {new_b:.6f}",
        f"  L after the step = {after.loss:.6f} (before: {result.loss:.6f})",
    ]
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="backprop")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():
        print(report(_values(cfg)))


if __name__ == "__main__":
    main()

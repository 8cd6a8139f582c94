"""Homework Q3: the hand-derived gradients equal TensorFlow's autodiff and central finite differences."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from src.homework.backprop import forward_backward, gradient_step, sigmoid
from tests.conftest import run_cli, run_main

values = st.floats(min_value=-4, max_value=4, allow_nan=False)
targets = st.sampled_from([0.0, 1.0]) | st.floats(min_value=0, max_value=1)


def _loss(x0: float, x1: float, y: float, w0: float, w1: float, b: float) -> float:
    return (y - sigmoid(w0 * x0 + w1 * x1 + b)) ** 2


@settings(max_examples=200, deadline=None)
@given(x0=values, x1=values, y=targets, w0=values, w1=values, b=values)
def test_gradients_equal_tensorflow_autodiff(x0, x1, y, w0, w1, b) -> None:
    weights = [tf.Variable(value, dtype=tf.float64) for value in (w0, w1, b)]
    with tf.GradientTape() as tape:
        z = weights[0] * x0 + weights[1] * x1 + weights[2]
        loss = (y - tf.sigmoid(z)) ** 2
    expected = [float(g) for g in tape.gradient(loss, weights)]
    result = forward_backward(x0, x1, y, w0, w1, b)
    np.testing.assert_allclose([result.dloss_dw0, result.dloss_dw1, result.dloss_db], expected, rtol=0, atol=1e-6)
    assert abs(result.loss - float(loss)) <= 1e-6 and abs(result.z - float(z)) <= 1e-6


@settings(max_examples=200, deadline=None)
@given(x0=values, x1=values, y=targets, w0=values, w1=values, b=values)
def test_gradients_equal_central_finite_differences(x0, x1, y, w0, w1, b) -> None:
    h = 1e-5
    point = {"x0": x0, "x1": x1, "y": y, "w0": w0, "w1": w1, "b": b}

    def numeric(name: str) -> float:
        up, down = {**point, name: point[name] + h}, {**point, name: point[name] - h}
        return (_loss(**up) - _loss(**down)) / (2 * h)

    result = forward_backward(x0, x1, y, w0, w1, b)
    analytic = [result.dloss_dw0, result.dloss_dw1, result.dloss_db]
    np.testing.assert_allclose(analytic, [numeric("w0"), numeric("w1"), numeric("b")], rtol=0, atol=1e-6)


def test_homework_weights_step_downhill() -> None:
    result = forward_backward(1.0, -2.0, 1.0, 2.0, 1.0, 2.0)
    assert result.z == 2.0 and abs(result.sigmoid - 0.8807970779778823) < 1e-12
    new_w0, new_w1, new_b = gradient_step(2.0, 1.0, 2.0, result, lr=0.1)
    assert forward_backward(1.0, -2.0, 1.0, new_w0, new_w1, new_b).loss < result.loss


def test_command_prints_the_gradients_and_rejects_bad_values(tmp_path) -> None:
    result = run_main("src.homework.backprop", "x0=1.0", "x1=-2.0", "y=1", "lr=0.5", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for line in ("z        = w0*x0 + w1*x1 + b         = 2.000000", "dL/dw1", "dL/db", "w0 = 2.012516"):
        assert line in result.stdout, line
    assert list(tmp_path.iterdir()) == []  # a calculator leaves no output folders behind
    bad = run_main("src.homework.backprop", "x1=abc", cwd=tmp_path)
    assert bad.returncode == 1 and bad.stderr.strip().endswith("x1='abc' is invalid: use a finite number")


@pytest.mark.slow
def test_cli_prints_the_gradients(tmp_path) -> None:
    result = run_cli("src.homework.backprop", "x0=1.0", "x1=-2.0", "y=1", "lr=0.5", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "w0 = 2.012516" in result.stdout
    assert list(tmp_path.iterdir()) == []

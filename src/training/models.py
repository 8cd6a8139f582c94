"""Model builders, referenced from conf/model/*.yaml by `_target_`.

Both take raw pixel values (0-255) and rescale them inside the model, so a saved or MLflow-logged
model predicts straight from MNIST images.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras

INPUT_SHAPE = (28, 28)
NUM_CLASSES = 10


def mlp(hidden_units: Sequence[int] = (128,), activation: str = "relu", dropout: float = 0.0) -> keras.Model:
    """28x28 -> Flatten -> [Dense(units) -> Dropout] per hidden layer -> Dense(10, softmax)."""
    layers = [keras.Input(shape=INPUT_SHAPE), keras.layers.Rescaling(1 / 255), keras.layers.Flatten()]
    for units in hidden_units:
        layers.append(keras.layers.Dense(units, activation=activation))
        if dropout:
            layers.append(keras.layers.Dropout(dropout))
    layers.append(keras.layers.Dense(NUM_CLASSES, activation="softmax"))
    return keras.Sequential(layers, name="mlp")


def cnn(
    filters: Sequence[int] = (32, 64), kernel_size: int = 3, activation: str = "relu", dropout: float = 0.5
) -> keras.Model:
    """28x28 -> [Conv2D -> MaxPooling2D] per entry of `filters` -> Flatten -> Dropout -> Dense(10, softmax)."""
    layers = [keras.Input(shape=INPUT_SHAPE), keras.layers.Rescaling(1 / 255), keras.layers.Reshape((*INPUT_SHAPE, 1))]
    for count in filters:
        layers.append(keras.layers.Conv2D(count, kernel_size, activation=activation))
        layers.append(keras.layers.MaxPooling2D())
    layers += [
        keras.layers.Flatten(),
        keras.layers.Dropout(dropout),
        keras.layers.Dense(NUM_CLASSES, activation="softmax"),
    ]
    return keras.Sequential(layers, name="cnn")

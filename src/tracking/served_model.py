"""The MLflow model every job logs, as MLflow "models from code": MLflow copies this file into the logged
model and runs it to load the model, for `mlflow.pyfunc.load_model` and `mlflow models serve` alike.

Why a Python model instead of MLflow's keras flavor: the keras flavor's predict calls `model.predict(data)`,
which draws a progress bar on every call (into a server's log too) and cannot be told otherwise. Here the model
is called batch by batch, as `src.training.fit.score` scores it, so a served model's accuracy on the test set is
the run's logged test_accuracy (tests/test_pipeline.py checks it).

It imports nothing from this project, so that the model loads wherever MLflow, Keras and NumPy are
installed (another machine, another folder). The Keras model itself is the artifact `keras_model`.
"""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel

# Images per forward pass: no gradients, so large batches are fast and the result is the same.
PREDICT_BATCH_SIZE = 1024


class DigitClassifier(PythonModel):
    """Raw 28x28 MNIST images (uint8 pixels 0-255) in, 10 class probabilities per image out.

    The Keras model casts and rescales the pixels itself; MLflow's schema check (the model's signature)
    has already made sure the input is a uint8 array of shape (n, 28, 28).
    """

    def load_context(self, context: Any) -> None:
        import keras

        # compile=False: predicting needs no optimizer or loss, and loading is faster without them.
        self.model = keras.saving.load_model(context.artifacts["keras_model"], compile=False, safe_mode=True)

    # model_input: np.ndarray is a hint MLflow derives no schema from (the logged signature is the schema).
    def predict(self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None) -> np.ndarray:
        import keras

        images = np.asarray(model_input)
        starts = range(0, max(len(images), 1), PREDICT_BATCH_SIZE)  # no images: one empty batch, 0 rows out
        batches = [self.model(images[begin : begin + PREDICT_BATCH_SIZE], training=False) for begin in starts]
        return np.concatenate([keras.ops.convert_to_numpy(batch) for batch in batches])


mlflow.models.set_model(DigitClassifier())

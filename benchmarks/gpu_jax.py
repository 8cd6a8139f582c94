"""Epoch time of this project's model on a GPU through Keras on JAX, against a bare Keras model.

Made for a machine with JAX and CUDA but no TensorFlow, no MLflow and no network: it installs Keras
(and its pure-Python dependencies namex and optree) from a folder of wheels when Keras is missing, reads
MNIST from a given `mnist.npz`, and imports nothing of this project but `src/training/models.py` (Keras only).

    python benchmarks/gpu_jax.py --mnist /path/to/mnist.npz [--wheels /path/to/wheels] [--epochs 4]

Wheels: `pip download keras==3.15.1 namex optree --no-deps -d wheels/` on a machine with a network.
`benchmarks/gpu_run.sh` runs it after the sweep benchmark; results on an H100: docs/benchmarks.md.
For each setting it prints the median epoch time (the first epoch, which compiles, is left out) of:
- "project": src.training.models.mlp (cast and Rescaling inside the model, raw uint8 pixels in), the project's way;
- "bare": Keras' own MLP 784-128-10 on inputs scaled beforehand, the reference's way;
and the ratios to each other and to the reference figures below (bare Keras 3.15 on JAX, one H200).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# (batch size, steps_per_execution) -> seconds per epoch, bare Keras 3.15 on JAX, one H200, MLP 784-128-10
REFERENCE = {(32, 1): 2.47, (32, 64): 1.25, (1024, 8): 0.098}


def ensure_keras(wheels: Path | None) -> None:
    if importlib.util.find_spec("keras") is not None:
        return
    if wheels is None:
        raise SystemExit("error: Keras is not installed; pass --wheels DIR with the keras, namex and optree wheels")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(wheels), "keras", "namex", "optree"],
        check=True,
    )


def epoch_timer():
    """A Keras callback collecting each epoch's wall time (Keras is imported only after ensure_keras)."""
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.seconds: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self._started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self._started)

    return EpochTimer()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mnist", type=Path, required=True, help="Keras' mnist.npz (11 MB)")
    parser.add_argument("--wheels", type=Path, help="folder with the keras, namex and optree wheels")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per setting; the first is left out")
    parser.add_argument("--json", type=Path, help="also write the rows here, rewritten after each setting")
    args = parser.parse_args()
    os.environ.setdefault("KERAS_BACKEND", "jax")
    ensure_keras(args.wheels)
    import jax
    import keras
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from src.training.models import mlp  # Keras only

    with np.load(args.mnist, allow_pickle=False) as npz:
        x_train, y_train = npz["x_train"][:54000], npz["y_train"][:54000]  # uint8, as src.train feeds them
        x_val, y_val = npz["x_train"][54000:], npz["y_train"][54000:]
    devices = [f"{d.platform}:{getattr(d, 'device_kind', d)}" for d in jax.devices()]
    print(
        f"keras {keras.__version__} on {keras.backend.backend()}, jax {jax.__version__}, devices: {devices}", flush=True
    )

    def bare_model():
        return keras.Sequential(
            [
                keras.Input(shape=(784,)),
                keras.layers.Dense(128, activation="relu"),
                keras.layers.Dense(10, activation="softmax"),
            ]
        )

    sides = {
        "project": (lambda: mlp(), x_train, x_val),
        "bare": (bare_model, x_train.reshape(-1, 784) / np.float32(255), x_val.reshape(-1, 784) / np.float32(255)),
    }
    results = []
    for (batch_size, steps_per_execution), reference in REFERENCE.items():
        medians = {}
        for side, (build, train_images, val_images) in sides.items():
            keras.utils.set_random_seed(42)
            model = build()
            model.compile(
                optimizer="adam",
                loss="sparse_categorical_crossentropy",
                metrics=["accuracy"],
                steps_per_execution=steps_per_execution,
            )
            timer = epoch_timer()
            model.fit(
                train_images,
                y_train,
                batch_size=batch_size,
                epochs=args.epochs,
                validation_data=(val_images, y_val),
                callbacks=[timer],
                verbose=0,
            )
            medians[side] = statistics.median(timer.seconds[1:])
        row = {
            "batch_size": batch_size,
            "steps_per_execution": steps_per_execution,
            "project_s": round(medians["project"], 4),
            "bare_s": round(medians["bare"], 4),
            "project_vs_bare": round(medians["project"] / medians["bare"], 3),
            "reference_s": reference,
            "project_vs_reference": round(medians["project"] / reference, 3),
        }
        results.append(row)
        print(json.dumps(row), flush=True)
        if args.json:
            args.json.write_text(
                json.dumps({"devices": devices, "keras": keras.__version__, "rows": results}, indent=2)
            )
    print("\n| batch | steps_per_execution | project | bare (same machine) | ratio | reference (H200) | ratio |")
    print("|---|---|---|---|---|---|---|")
    for row in results:
        print(
            f"| {row['batch_size']} | {row['steps_per_execution']} | {row['project_s']:.3f} s | "
            f"{row['bare_s']:.3f} s | "
            f"{row['project_vs_bare']:.3f}x | {row['reference_s']} s | {row['project_vs_reference']:.3f}x |"
        )


if __name__ == "__main__":
    main()

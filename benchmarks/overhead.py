"""Benchmark: `python -m src.train` (all logging on) vs a bare Keras `model.fit` of the same model.

Runs each side as its own process, alternating, and prints per-epoch fit times, medians and ratios:
- logging overhead   = src.train epoch time / bare fit epoch time, same settings (batch 32, steps_per_execution 64)
- default speed-up   = src.train default epoch time / bare *Keras-default* fit (batch 32, steps_per_execution 1)

    python benchmarks/overhead.py [--epochs 3] [--rounds 2]

"Epoch time" is the wall time of model.fit (training + validation + every callback) divided by the epochs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def bare_fit(epochs: int, steps_per_execution: int) -> dict[str, float]:
    """model.fit with nothing but Keras: same data split, model, optimizer, batch size and seed."""
    import keras

    sys.path.insert(0, str(ROOT))
    from src import data, models

    keras.utils.set_random_seed(42)
    splits = data.split(data.load_verified(ROOT / "data" / "mnist.npz"), 0.1, None, 42)
    model = models.mlp()
    model.compile(
        optimizer="adam",
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        steps_per_execution=steps_per_execution,
    )
    started = time.perf_counter()
    history = model.fit(
        splits.x_train,
        splits.y_train,
        batch_size=32,
        epochs=epochs,
        validation_data=(splits.x_val, splits.y_val),
        verbose=0,
    )
    seconds = time.perf_counter() - started
    return {"epoch_seconds": seconds / epochs, "val_accuracy": history.history["val_accuracy"][-1]}


def run_side(side: str, epochs: int, workdir: Path) -> dict[str, float]:
    started = time.perf_counter()
    if side == "src.train":
        out = workdir / f"run-{time.monotonic_ns()}"
        command = [
            sys.executable,
            "-m",
            "src.train",
            f"train.epochs={epochs}",
            "callbacks.early_stopping.enabled=false",
        ]
        command += [f"mlflow.tracking_uri=sqlite:///{workdir}/mlflow.db", f"hydra.run.dir={out}"]
        subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
        metrics = json.loads((out / "metrics.json").read_text())
        history = json.loads((out / "history.json").read_text())
        result = {"epoch_seconds": metrics["train_seconds"] / epochs, "val_accuracy": history["val_accuracy"][-1]}
    else:
        spe = side.rsplit("=", 1)[1]
        command = [sys.executable, __file__, "--bare", spe, "--epochs", str(epochs)]
        result = json.loads(subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True).stdout)
    result["process_seconds"] = time.perf_counter() - started
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--bare", type=int, metavar="STEPS_PER_EXECUTION", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare is not None:
        print(json.dumps(bare_fit(args.epochs, args.bare)))
        return
    subprocess.run([sys.executable, "-m", "src.data"], cwd=ROOT, check=True, capture_output=True)
    sides = ["src.train", "bare spe=64", "bare spe=1"]
    results: dict[str, list[dict[str, float]]] = {side: [] for side in sides}
    with tempfile.TemporaryDirectory() as workdir:
        for round_number in range(1, args.rounds + 1):
            for side in sides:  # interleaved, so drift in machine load hits every side alike
                results[side].append(run_side(side, args.epochs, Path(workdir)))
                last = results[side][-1]
                print(
                    f"round {round_number} {side:12s} epoch {last['epoch_seconds']:6.2f} s  "
                    f"process {last['process_seconds']:6.1f} s  val_accuracy {last['val_accuracy']:.4f}",
                    flush=True,
                )
    median = {side: statistics.median(r["epoch_seconds"] for r in results[side]) for side in sides}
    print(f"\nmedian epoch time over {args.rounds} rounds, {args.epochs} epochs each, full MNIST (54000 train images):")
    for side in sides:
        print(f"  {side:12s} {median[side]:6.2f} s/epoch")
    overhead = median["src.train"] / median["bare spe=64"]
    versus_default = median["src.train"] / median["bare spe=1"]
    print(f"logging overhead  src.train / bare spe=64 : {overhead:.3f}x (target <= 1.05)")
    print(f"default vs Keras  src.train / bare spe=1  : {versus_default:.3f}x (target <= 0.5)")


if __name__ == "__main__":
    main()

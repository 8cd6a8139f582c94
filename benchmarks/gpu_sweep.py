"""The project's 3-optimizer sweep against bare Keras doing the same training, on one machine (made for a GPU).

    python benchmarks/gpu_sweep.py --out results.json [--rounds 2] [--store-dir /tmp/gpu_sweep] [-- extra overrides]

Project side: `python -m src.train -m optimizer=adam,adagrad,rmsprop` with the default config, except
`callbacks.tensorboard.enabled=false` (TensorBoard needs TensorFlow, which a JAX-only GPU machine lacks),
a SQLite store under --store-dir (created by a 1-epoch warm-up run first, so the sweeps log into an existing
store, a project's usual case), `train.skip_finished=false` (the store already holds the same configs after
round 1) and the run/state dirs under --store-dir. Wall time of the whole command; each job's
`train_seconds` (its `model.fit`) and epochs from the job's metrics.json and history.json.

Bare side (`--bare`, in a child process): one Python process that imports Keras once and, per optimizer,
does what a job trains: the same split of the same mnist.npz (src.training.data, numpy only), the same model
(src.training.models.mlp), the optimizer at the defaults of conf/optimizer/<name>.yaml (Keras' own), batch 32,
steps_per_execution 64, validation at batch 1024, at most 10 epochs with EarlyStopping(val_loss,
patience 3), seed 42, then a test evaluation at batch 1024. No MLflow, Hydra, checkpoints or backups.

The two sides alternate (project, bare, bare, project, ...), so drift hits both alike. Both run in their
own process, and both process walls include Python start-up, imports and XLA compilation. Results are
written to --out after every measurement, so a later failure or time-out keeps what was measured.
The backend is whatever KERAS_BACKEND says (jax on a GPU machine without TensorFlow).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parent.parent
OPTIMIZERS = ("adam", "adagrad", "rmsprop")
CONFIG = OmegaConf.load(ROOT / "conf" / "config.yaml")
EARLY_STOPPING = OmegaConf.load(ROOT / "conf" / "callbacks" / "early_stopping.yaml").early_stopping


def bare(optimizers: list[str], epochs: int, limit: int | None) -> dict:
    """The bare side, in this process: what each sweep job trains, with nothing but Keras around it."""
    started = time.perf_counter()
    import keras

    sys.path.insert(0, str(ROOT))
    from src.training import data, models

    train = CONFIG.train
    imported = time.perf_counter() - started
    splits = data.split(data.load_verified(ROOT / "data" / "mnist.npz"), 0.1, limit, train.seed)
    fits = []
    for name in optimizers:
        settings = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "optimizer" / f"{name}.yaml"))
        target = settings.pop("_target_")  # keras.optimizers.Adam, ...
        keras.utils.set_random_seed(train.seed)
        optimizer = getattr(keras.optimizers, target.rsplit(".", 1)[1])(**settings)
        model = models.mlp()
        model.compile(
            optimizer=optimizer,
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
            steps_per_execution=train.steps_per_execution,
        )
        stopping = keras.callbacks.EarlyStopping(
            monitor=EARLY_STOPPING.monitor, patience=EARLY_STOPPING.patience, min_delta=EARLY_STOPPING.min_delta
        )
        fit_started = time.perf_counter()
        history = model.fit(
            splits.x_train,
            splits.y_train,
            batch_size=train.batch_size,
            validation_batch_size=train.validation_batch_size,
            epochs=epochs,
            validation_data=(splits.x_val, splits.y_val),
            callbacks=[stopping],
            verbose=2,  # what src.train's verbose=auto picks when its output is not a terminal
        )
        train_seconds = time.perf_counter() - fit_started
        _, test_accuracy = model.evaluate(
            splits.x_test, splits.y_test, batch_size=train.validation_batch_size, verbose=0
        )
        fits.append(
            {
                "optimizer": name,
                "train_seconds": train_seconds,
                "epochs": len(history.history["val_accuracy"]),
                "best_val_accuracy": max(history.history["val_accuracy"]),
                "test_accuracy": float(test_accuracy),
            }
        )
        print(f"bare {name}: {json.dumps(fits[-1])}", file=sys.stderr, flush=True)
        keras.backend.clear_session()
    return {"jobs": fits, "import_seconds": imported, "process_seconds": time.perf_counter() - started}


def timed(command: list[str], timeout: float, log: Path) -> tuple[int, float]:
    """(exit code, wall seconds) of a command whose output is appended to `log`; 124 on a time-out."""
    started = time.perf_counter()
    with log.open("a") as sink:
        sink.write(f"\n$ {' '.join(command)}\n")
        sink.flush()
        try:
            code = subprocess.run(command, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            code = 124
    return code, time.perf_counter() - started


def project_command(store_dir: Path, tag: str, overrides: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "src.train",
        "-m",
        f"optimizer={','.join(OPTIMIZERS)}",
        "callbacks.tensorboard.enabled=false",
        f"mlflow.tracking_uri=sqlite:///{store_dir / 'mlflow.db'}",
        "train.skip_finished=false",
        f"hydra.sweep.dir={store_dir / tag}",
        f"train.state_dir={store_dir / 'state'}",
        *overrides,
    ]


def run_project(store_dir: Path, tag: str, overrides: list[str], timeout: float, log: Path) -> dict:
    code, wall = timed(project_command(store_dir, tag, overrides), timeout, log)
    jobs = []
    for job in sorted((store_dir / tag).glob("[0-9]*"), key=lambda p: int(p.name)):
        try:
            metrics = json.loads((job / "metrics.json").read_text())
            history = json.loads((job / "history.json").read_text())
        except OSError:
            continue
        jobs.append(
            {
                "train_seconds": metrics["train_seconds"],
                "epochs": len(history["val_accuracy"]),
                "best_val_accuracy": metrics["best_val_accuracy"],
                "test_accuracy": metrics["test_accuracy"],
            }
        )
    for name, job in zip(OPTIMIZERS, jobs, strict=False):
        job["optimizer"] = name
    return {"exit_code": code, "wall_seconds": wall, "jobs": jobs}


def run_bare(epochs: int, limit: int | None, timeout: float, log: Path, store_dir: Path) -> dict:
    result_file = store_dir / f"bare-{time.monotonic_ns()}.json"
    spec = json.dumps({"optimizers": list(OPTIMIZERS), "epochs": epochs, "limit": limit, "out": str(result_file)})
    code, wall = timed([sys.executable, __file__, "--bare", spec], timeout, log)
    try:
        result = json.loads(result_file.read_text())
        result_file.unlink()
    except OSError:
        result = {"jobs": []}
    return {"exit_code": code, "wall_seconds": wall, **result}


def summarize(rounds: list[dict]) -> dict:
    """Medians over the rounds that both sides finished, and the ratios project / bare."""
    done = [r for r in rounds if r.get("project", {}).get("exit_code") == 0 and r.get("bare", {}).get("exit_code") == 0]
    if not done:
        return {}

    def median(side: str, pick) -> float:
        return statistics.median(pick(r[side]) for r in done)

    def train_total(side_result: dict) -> float:
        return sum(job["train_seconds"] for job in side_result["jobs"])

    def epochs_total(side_result: dict) -> int:
        return sum(job["epochs"] for job in side_result["jobs"])

    out = {"rounds_compared": len(done)}
    for side in ("project", "bare"):
        out[f"{side}_wall_s"] = median(side, lambda s: s["wall_seconds"])
        out[f"{side}_train_s"] = median(side, train_total)
        out[f"{side}_epochs"] = median(side, epochs_total)
        out[f"{side}_epochs_per_s"] = median(side, lambda s: epochs_total(s) / train_total(s))
    out["wall_ratio"] = out["project_wall_s"] / out["bare_wall_s"]
    out["train_ratio"] = out["project_train_s"] / out["bare_train_s"]
    out["seconds_per_epoch_ratio"] = out["bare_epochs_per_s"] / out["project_epochs_per_s"]
    out["wall_ratio_per_round"] = [r["project"]["wall_seconds"] / r["bare"]["wall_seconds"] for r in done]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bare", help=argparse.SUPPRESS)  # the child process of the bare side
    parser.add_argument("--out", type=Path, required=False, help="results JSON, rewritten after each measurement")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--store-dir", type=Path, default=Path("/tmp/gpu_sweep"), help="MLflow store and run dirs")
    parser.add_argument("--timeout", type=float, default=200, help="seconds allowed to each side of a round")
    parser.add_argument("--epochs", type=int, default=int(CONFIG.train.epochs), help="both sides (small = rehearsal)")
    parser.add_argument("--limit", type=int, default=None, help="data.limit on both sides (small = rehearsal)")
    args, overrides = parser.parse_known_args()
    if args.bare:
        spec = json.loads(args.bare)
        result = bare(spec["optimizers"], spec["epochs"], spec["limit"])
        Path(spec["out"]).write_text(json.dumps(result))
        return
    if args.out is None:
        parser.error("--out is required")
    overrides = [o for o in overrides if o != "--"]
    overrides += [f"train.epochs={args.epochs}"] + ([f"data.limit={args.limit}"] if args.limit else [])
    args.store_dir.mkdir(parents=True, exist_ok=True)
    log = args.out.with_suffix(".log")
    results: dict = {  # the parent never imports Keras: on JAX that would take the GPU's memory from the children
        "keras": version("keras"),
        "backend": os.environ.get("KERAS_BACKEND", "tensorflow"),
        "command": " ".join(project_command(args.store_dir, "<round>", overrides)),
        "rounds": [],
    }

    def save() -> None:
        results["summary"] = summarize(results["rounds"])
        args.out.write_text(json.dumps(results, indent=2) + "\n")

    warm = [
        sys.executable,
        "-m",
        "src.train",
        "train.epochs=1",
        "data.limit=1000",
        "callbacks.tensorboard.enabled=false",
    ]
    warm += [
        f"mlflow.tracking_uri=sqlite:///{args.store_dir / 'mlflow.db'}",
        f"hydra.run.dir={args.store_dir / 'warm'}",
    ]
    warm += [f"train.state_dir={args.store_dir / 'state'}"]
    code, wall = timed(warm, args.timeout, log)
    results["warm_up"] = {"exit_code": code, "wall_seconds": wall}
    print(f"warm-up run (creates the store): exit {code}, {wall:.1f} s", flush=True)
    save()
    for number in range(args.rounds):
        current: dict = {}
        results["rounds"].append(current)
        order = ("project", "bare") if number % 2 == 0 else ("bare", "project")
        for side in order:
            if side == "project":
                current[side] = run_project(args.store_dir, f"round{number + 1}", overrides, args.timeout, log)
            else:
                current[side] = run_bare(args.epochs, args.limit, args.timeout, log, args.store_dir)
            jobs = ", ".join(
                f"{j['optimizer']} {j['train_seconds']:.1f} s/{j['epochs']} ep" for j in current[side]["jobs"]
            )
            print(
                f"round {number + 1} {side}: exit {current[side]['exit_code']}, "
                f"wall {current[side]['wall_seconds']:.1f} s; train {jobs}",
                flush=True,
            )
            save()
    print(json.dumps(results.get("summary", {}), indent=2), flush=True)


if __name__ == "__main__":
    main()

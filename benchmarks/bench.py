"""`make bench`: this project against bare Keras. Every figure is printed with both sides and the ratio.

Sections (the two sides of each pair alternate within a round, so drift in machine load hits both alike):

  epoch   epoch time and samples/s of `python -m src.train` (all callbacks but EarlyStopping, MLflow logging)
          vs a bare `model.fit` of the same model, data, seed and settings, at batch sizes 32, 128, 1024;
          and the default config vs a bare fit at Keras' defaults (batch 32, steps_per_execution 1).
          The bare side uses the project's defaults from conf/config.yaml (steps_per_execution,
          validation_batch_size) unless a row says otherwise
  input   the input pipeline, by measurement: numpy arrays of raw uint8 pixels (what src.train feeds) vs
          the same as float32 vs keras.utils.PyDataset vs tf.data (cached, prefetched), bare fits at batch
          32 and 1024
  sweep   `python -m src.train -m optimizer=adam,adagrad,rmsprop` end to end (one process, wall time) vs one
          process that imports TensorFlow once and runs three bare fits; into an MLflow store that exists
          (a project's usual case) and into a new one (the first sweep also creates the store)
  memory  peak RSS of a 6-job sweep vs one bare run, and the sweep's RSS after each job (no growth)
  dvc     `dvc repro` with nothing to do (run `make run` first)
  pipeline  the whole `make run` (`dvc repro` from scratch, every optimizer x seed of params.yaml) in a
          temporary copy of the project with its own MLflow store: wall time vs the sum of the jobs'
          train_seconds (target <= 1.4x and <= 4 min), and each stage's wall time and overhead
          (`--dvc-yaml other.yaml` measures another stage layout the same way)
  fair    `make fair` (`dvc repro fair/dvc.yaml` from scratch: the default fair protocol, ~100 runs) in a
          temporary copy the same way: wall time vs the sum of its runs' train_seconds (target <= 1.15x,
          <= 15 min). Not in the default sections (it takes ~15 min): `--sections fair`

    python benchmarks/bench.py [--sections epoch,sweep,memory,dvc,pipeline] [--epochs 3] [--rounds 2]

"Epoch time" is the wall time of model.fit (training, validation, every callback) divided by the epochs.
Each side runs in its own process. The machine, date and versions are printed first.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parent.parent
TRAIN_IMAGES = 54000
BATCH_SIZES = (32, 128, 1024)
SWEEP_OPTIMIZERS = ("adam", "adagrad", "rmsprop")
# The bare side uses the project's default settings (conf/config.yaml), except where a row says otherwise.
TRAIN_DEFAULTS = OmegaConf.load(ROOT / "conf" / "config.yaml").train
SPE = int(TRAIN_DEFAULTS.steps_per_execution)
VALIDATION_BATCH = TRAIN_DEFAULTS.validation_batch_size
MEMORY_OPTIMIZERS = ("adam", "adagrad", "rmsprop", "sgd", "nadam", "adamax")


# ------------------------------------------------------------------------------------------------
# The bare side: nothing but Keras (run in a child process: `bench.py --bare '<json>'`)


def bare(
    batch_size: int,
    steps_per_execution: int,
    epochs: int,
    optimizers: list[str],
    pipeline: str = "numpy",
    validation_batch_size: int | None = None,
) -> dict:
    started = time.perf_counter()
    import keras

    sys.path.insert(0, str(ROOT))
    from src.training import data, models

    splits = data.split(data.load_verified(ROOT / "data" / "mnist.npz"), 0.1, None, 42)
    train_inputs = _pipeline(pipeline, splits.x_train, splits.y_train, batch_size)
    fits = []
    for optimizer in optimizers:
        keras.utils.set_random_seed(42)
        model = models.mlp()
        model.compile(
            optimizer=optimizer,
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
            steps_per_execution=steps_per_execution,
        )
        fit_started = time.perf_counter()
        history = model.fit(
            *train_inputs,
            batch_size=batch_size if pipeline.startswith("numpy") else None,  # the others batch themselves
            epochs=epochs,
            validation_data=(splits.x_val, splits.y_val),
            validation_batch_size=validation_batch_size,
            verbose=0,
        )
        fits.append({"epoch_seconds": (time.perf_counter() - fit_started) / epochs, **_last(history.history)})
        keras.backend.clear_session()
    return {"fits": fits, "process_seconds": time.perf_counter() - started}


def _pipeline(name: str, images, labels, batch_size: int) -> tuple:
    """The training inputs of model.fit for one input pipeline (all shuffle every epoch). The images are
    raw uint8 pixels, which the model casts and rescales itself; "numpy-float32" converts them first."""
    if name == "numpy":
        return (images, labels)
    if name == "numpy-float32":
        return (images.astype("float32"), labels)
    if name == "pydataset":
        import keras
        import numpy as np

        class Batches(keras.utils.PyDataset):
            def __init__(self) -> None:
                super().__init__()
                self.order = np.random.default_rng(42).permutation(len(images))

            def __len__(self) -> int:
                return -(-len(images) // batch_size)

            def __getitem__(self, index: int):
                chosen = self.order[index * batch_size : (index + 1) * batch_size]
                return images[chosen], labels[chosen]

            def on_epoch_end(self) -> None:
                np.random.default_rng(42).shuffle(self.order)

        return (Batches(),)
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).cache()
    dataset = dataset.shuffle(len(images), seed=42, reshuffle_each_iteration=True).batch(batch_size)
    return (dataset.prefetch(tf.data.AUTOTUNE),)


def _last(history: dict) -> dict:
    return {"val_accuracy": history["val_accuracy"][-1]}


def run_bare(
    batch_size: int,
    steps_per_execution: int,
    epochs: int,
    optimizers: tuple[str, ...] = ("adam",),
    pipeline: str = "numpy",
    validation_batch_size: int | None = None,
) -> dict:
    spec = json.dumps([batch_size, steps_per_execution, epochs, list(optimizers), pipeline, validation_batch_size])
    output, wall, peak = run_measured([sys.executable, __file__, "--bare", spec])
    return {**json.loads(output.strip().splitlines()[-1]), "wall_seconds": wall, "peak_rss_mb": peak}


# Runs a command and prints its peak RSS: a fresh parent per measurement, so RUSAGE_CHILDREN is that command's.
_MEASURE = (
    "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=sys.stderr); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def run_measured(command: list[str]) -> tuple[str, float, float]:
    """(stdout, wall seconds, peak RSS in MB) of a command; Linux reports ru_maxrss in KiB."""
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", _MEASURE, *command], cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{result.stderr[-3000:]}")
    return result.stderr, wall, int(result.stdout.strip().splitlines()[-1]) / 1024


# ------------------------------------------------------------------------------------------------
# The project's side: `python -m src.train`, into a new store (or `store`, one that already exists)


def run_project(workdir: Path, *overrides: str, multirun: bool = False, store: Path | None = None) -> dict:
    out = workdir / f"run-{time.monotonic_ns()}"
    command = [sys.executable, "-m", "src.train", *(["-m"] if multirun else []), *overrides]
    command += [
        "callbacks.early_stopping.enabled=false",
        f"mlflow.tracking_uri=sqlite:///{store or out / 'mlflow.db'}",
        "train.skip_finished=false",  # an existing store holds the same configs, FINISHED: train them again
        f"hydra.run.dir={out}/run",
        f"hydra.sweep.dir={out}/multirun",
        f"train.state_dir={out}/state",
        "train.verbose=0",
    ]
    _, wall, peak = run_measured(command)
    job_dirs = sorted((out / "multirun").glob("[0-9]*"), key=lambda p: int(p.name)) if multirun else [out / "run"]
    jobs = []
    for job in job_dirs:
        metrics = json.loads((job / "metrics.json").read_text())
        history = json.loads((job / "history.json").read_text())
        epochs = len(history["val_accuracy"])
        jobs.append(
            {
                "epoch_seconds": metrics["train_seconds"] / epochs,
                "val_accuracy": history["val_accuracy"][-1],
                "rss_mb": metrics.get("process_rss_mb"),
            }
        )
    return {"jobs": jobs, "wall_seconds": wall, "peak_rss_mb": peak}


# ------------------------------------------------------------------------------------------------
# Sections


def ratio(ours: list[float], theirs: list[float]) -> str:
    """The ratio of the medians, and the range of the per-round ratios (the two sides of a round ran
    back to back): a target inside that range is within this machine's noise."""
    per_round = [mine / other for mine, other in zip(ours, theirs, strict=True)]
    median = statistics.median(ours) / statistics.median(theirs)
    return f"{median:.3f}x ({min(per_round):.2f} to {max(per_round):.2f})" if len(per_round) > 1 else f"{median:.3f}x"


# The callbacks that write files every epoch (checkpoint, backup, TensorBoard): off = MLflow logging only.
FILE_CALLBACKS_OFF = (
    "callbacks.model_checkpoint.enabled=false",
    "callbacks.backup_and_restore.enabled=false",
    "callbacks.tensorboard.enabled=false",
)


def epoch_section(workdir: Path, epochs: int, rounds: int, table: list[list[str]]) -> None:
    for batch_size in BATCH_SIZES:
        ours, logging_only, theirs, defaults = [], [], [], []
        for round_number in range(rounds):
            settings = (f"train.epochs={epochs}", f"train.batch_size={batch_size}")
            project = run_project(workdir, *settings)["jobs"][0]
            lean = run_project(workdir, *settings, *FILE_CALLBACKS_OFF)["jobs"][0]
            plain = run_bare(batch_size, SPE, epochs, validation_batch_size=VALIDATION_BATCH)["fits"][0]
            ours.append(project["epoch_seconds"])
            logging_only.append(lean["epoch_seconds"])
            theirs.append(plain["epoch_seconds"])
            print(
                f"  batch {batch_size:4d} round {round_number + 1}: src.train {ours[-1]:.3f} s/epoch, "
                f"logging only {logging_only[-1]:.3f}, bare {theirs[-1]:.3f} "
                f"(val_accuracy {project['val_accuracy']:.4f}, {lean['val_accuracy']:.4f}, {plain['val_accuracy']:.4f})"
            )
            if batch_size == 32:  # Keras' defaults: steps_per_execution 1, validation at the training batch size
                defaults.append(run_bare(32, 1, epochs)["fits"][0]["epoch_seconds"])
                print(f"  batch   32 round {round_number + 1}: bare Keras defaults {defaults[-1]:.3f} s/epoch")
        ours_s, lean_s, theirs_s = (statistics.median(values) for values in (ours, logging_only, theirs))
        table.append(
            [
                f"epoch, batch {batch_size} (spe {SPE}, val batch {VALIDATION_BATCH}), default callbacks",
                f"{ours_s:.3f} s ({TRAIN_IMAGES / ours_s:,.0f} img/s)",
                f"{theirs_s:.3f} s ({TRAIN_IMAGES / theirs_s:,.0f} img/s)",
                ratio(ours, theirs),
                "≤ 1.05x",
            ]
        )
        table.append(
            [
                f"epoch, batch {batch_size}, MLflow logging only (no checkpoint/backup/TensorBoard files)",
                f"{lean_s:.3f} s ({TRAIN_IMAGES / lean_s:,.0f} img/s)",
                f"{theirs_s:.3f} s",
                ratio(logging_only, theirs),
                "≤ 1.05x",
            ]
        )
        if defaults:
            default_s = statistics.median(defaults)
            table.append(
                [
                    "epoch, default config vs bare Keras defaults (batch 32, steps_per_execution 1)",
                    f"{ours_s:.3f} s",
                    f"{default_s:.3f} s",
                    ratio(ours, defaults),
                    "≤ 0.5x",
                ]
            )


def input_section(epochs: int, rounds: int, table: list[list[str]]) -> None:
    """Bare fits fed by uint8 numpy arrays (what src.train uses), float32 arrays, a PyDataset, and tf.data."""
    pipelines = ("numpy", "numpy-float32", "pydataset", "tf.data")
    for batch_size in (32, 1024):
        times: dict[str, list[float]] = {name: [] for name in pipelines}
        for round_number in range(rounds):
            shown = []
            for name in pipelines:
                fit = run_bare(batch_size, SPE, epochs, pipeline=name, validation_batch_size=VALIDATION_BATCH)
                times[name].append(fit["fits"][0]["epoch_seconds"])
                # the same batches give about the same accuracy: a pipeline that batches differently shows here
                shown.append(f"{name} {times[name][-1]:.3f} s (val_accuracy {fit['fits'][0]['val_accuracy']:.4f})")
            print(f"  batch {batch_size:4d} round {round_number + 1}: {', '.join(shown)}")
        numpy_s = statistics.median(times["numpy"])
        for name in pipelines[1:]:
            other = statistics.median(times[name])
            table.append(
                [
                    f"input pipeline, batch {batch_size}: numpy uint8 arrays (used) vs {name}",
                    f"{numpy_s:.3f} s",
                    f"{other:.3f} s",
                    ratio(times["numpy"], times[name]),
                    "choose the fastest",
                ]
            )


def sweep_section(workdir: Path, epochs: int, rounds: int, table: list[list[str]]) -> None:
    """Into the store a project keeps (it exists after the first run: `make run`, `make sweep`), and as the
    very first sweep, which also creates the SQLite store (MLflow's schema migrations, ~1 s)."""
    store = workdir / "existing" / "mlflow.db"
    store.parent.mkdir()
    run_project(workdir, "train.epochs=1", "data.limit=1000", store=store)  # creates the store and experiment
    sweep = (f"optimizer={','.join(SWEEP_OPTIMIZERS)}", f"train.epochs={epochs}")
    existing, new, theirs = [], [], []
    for round_number in range(rounds):
        existing.append(run_project(workdir, *sweep, multirun=True, store=store)["wall_seconds"])
        new.append(run_project(workdir, *sweep, multirun=True)["wall_seconds"])
        theirs.append(
            run_bare(32, SPE, epochs, SWEEP_OPTIMIZERS, validation_batch_size=VALIDATION_BATCH)["wall_seconds"]
        )
        print(
            f"  round {round_number + 1}: sweep {existing[-1]:.1f} s (into a new store {new[-1]:.1f} s), "
            f"one process + 3 bare fits {theirs[-1]:.1f} s",
            flush=True,
        )
    for label, ours in (("", existing), (", first sweep (creates the store)", new)):
        table.append(
            [
                f"3-optimizer sweep end to end, {epochs} epochs each{label}",
                f"{statistics.median(ours):.1f} s",
                f"{statistics.median(theirs):.1f} s",
                ratio(ours, theirs),
                "≤ 1.15x",
            ]
        )


def memory_section(workdir: Path, table: list[list[str]]) -> None:
    plain = run_bare(32, SPE, 1, validation_batch_size=VALIDATION_BATCH)
    sweep = run_project(workdir, f"optimizer={','.join(MEMORY_OPTIMIZERS)}", "train.epochs=1", multirun=True)
    after_each = [job["rss_mb"] for job in sweep["jobs"]]
    print(f"  one bare run: peak RSS {plain['peak_rss_mb']:.0f} MB", flush=True)
    print(f"  6-job sweep: peak RSS {sweep['peak_rss_mb']:.0f} MB; RSS after each job (MB): {after_each}", flush=True)
    table.append(
        [
            "peak RSS, 6-job sweep vs one bare run (1 epoch each)",
            f"{sweep['peak_rss_mb']:.0f} MB",
            f"{plain['peak_rss_mb']:.0f} MB",
            f"{sweep['peak_rss_mb'] / plain['peak_rss_mb']:.3f}x",
            "≤ 1.5x",
        ]
    )
    growth = after_each[-1] - after_each[1] if len(after_each) > 2 else float("nan")
    table.append(
        [
            "RSS after each sweep job (MB)",
            " → ".join(f"{value:.0f}" for value in after_each),
            "",
            f"{growth:+.0f} MB from job 2 to 6",
            "no growth",
        ]
    )


def dvc_section(rounds: int, table: list[list[str]]) -> None:
    dvc = str(Path(sys.executable).parent / "dvc")
    environment = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    status = subprocess.run([dvc, "status"], cwd=ROOT, capture_output=True, text=True, env=environment).stdout
    if "up to date" not in status:
        print("  skipped: the pipeline is not up to date; run `make run` first", flush=True)
        return
    times = []
    for _ in range(max(rounds, 3)):
        started = time.perf_counter()
        subprocess.run([dvc, "repro"], cwd=ROOT, check=True, capture_output=True, env=environment)
        times.append(time.perf_counter() - started)
    print(f"  dvc repro with nothing to do: {', '.join(f'{t:.2f}' for t in times)} s", flush=True)
    table.append(["`dvc repro` with nothing to do", f"{statistics.median(times):.2f} s", "", "", "≤ 3 s"])


def copy_project(target: Path) -> None:
    """The project as a fresh clone has it (git's tracked and unignored files, no runs/, reports or
    dvc.lock), with data/mnist.npz and the PyPI wheel cache so that nothing is downloaded, as a git repo."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    for name in listed:
        if (ROOT / name).is_file() and not name.startswith(("reports/", "runs/")) and name != "dvc.lock":
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, target / name)
    for name in ("data/mnist.npz", *(str(p.relative_to(ROOT)) for p in (ROOT / "data" / ".cache").glob("*.whl"))):
        if (ROOT / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, target / name)
    identity = ["-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    for command in (["init", "-q"], ["add", "-A"], [*identity, "commit", "-qm", "copy"]):
        subprocess.run(["git", *command], cwd=target, check=True, capture_output=True)


def timed_repro(project: Path, *targets: str) -> tuple[float, list[tuple[str, float]], str]:
    """(wall seconds, [(stage, seconds)], output) of `dvc repro` in `project`; a stage lasts from its
    "Running stage" line to the next stage's (or the end)."""
    bin_dir = str(Path(sys.executable).parent)
    environment = {**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}", "PYTHONUNBUFFERED": "1"}
    environment.pop("MLFLOW_TRACKING_URI", None)  # the copy's own store: sqlite:///<copy>/mlflow.db
    started = time.perf_counter()
    marks: list[tuple[str, float]] = []
    lines = []
    with subprocess.Popen(
        [str(Path(bin_dir) / "dvc"), "repro", *targets],
        cwd=project,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as process:
        for line in process.stdout:
            lines.append(line)
            if line.startswith("Running stage '"):
                marks.append((line.split("'")[1], time.perf_counter() - started))
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit("dvc repro failed:\n" + "".join(lines[-40:]))
    ends = [start for _, start in marks[1:]] + [wall]
    return wall, [(name, end - start) for (name, start), end in zip(marks, ends, strict=True)], "".join(lines)


def _stage_overhead(stage: str, seconds: float, jobs: dict[Path, float]) -> str:
    """`, of which train_seconds T, overhead O s` for a train stage: train@<optimizer> trains every seed of
    that optimizer; train@<optimizer>-<seed> (a matrix over optimizer x seed) one job."""
    if not stage.startswith("train@"):
        return ""
    item = stage.split("@", 1)[1]
    if "-" in item:
        optimizer, seed = item.rsplit("-", 1)
        trained = jobs.get(Path(optimizer) / f"seed{seed}", 0.0)
    else:
        trained = sum(t for job, t in jobs.items() if job.parts[0] == item)
    return f", of which train_seconds {trained:.1f}, overhead {seconds - trained:.1f} s"


def pipeline_section(rounds: int, table: list[list[str]], dvc_yaml: Path | None = None) -> None:
    """`make run` from scratch in a temporary copy: wall time against the sum of the jobs' train_seconds."""
    walls, ratios = [], []
    for round_number in range(rounds):
        with tempfile.TemporaryDirectory() as folder:
            project = Path(folder)
            copy_project(project)
            if dvc_yaml is not None:
                shutil.copy2(dvc_yaml, project / "dvc.yaml")
            wall, stages, _ = timed_repro(project)
            jobs = {
                metrics.parent.relative_to(project / "runs"): json.loads(metrics.read_text())["train_seconds"]
                for metrics in (project / "runs").glob("**/metrics.json")
            }
        train = sum(jobs.values())
        walls.append(wall)
        ratios.append(wall / train)
        print(
            f"  round {round_number + 1}: dvc repro {wall:.1f} s for {len(jobs)} jobs, train_seconds sum {train:.1f} s:"
            f" {wall / train:.2f}x",
            flush=True,
        )
        for name, seconds in stages:
            print(f"    {name}: {seconds:.1f} s{_stage_overhead(name, seconds, jobs)}", flush=True)
    layout = f" ({dvc_yaml.name})" if dvc_yaml else ""
    table.append(
        [
            f"`make run` from scratch{layout}: wall / sum of train_seconds",
            f"{statistics.median(walls):.0f} s",
            "",
            ratio(walls, [w / r for w, r in zip(walls, ratios, strict=True)]),
            "≤ 1.4x, ≤ 240 s",
        ]
    )


def fair_section(table: list[list[str]]) -> None:
    """`make fair` from scratch in a temporary copy: wall time against the sum of its runs' train_seconds
    (every tuning trial and judged run records them in fair/trials/**/trial.json)."""
    with tempfile.TemporaryDirectory() as folder:
        project = Path(folder)
        copy_project(project)
        wall, stages, _ = timed_repro(project, "fair/dvc.yaml")
        records = [json.loads(path.read_text()) for path in (project / "fair" / "trials").glob("**/trial.json")]
    train = sum(record["metrics"]["train_seconds"] for record in records)
    print(f"  dvc repro fair/dvc.yaml {wall:.1f} s for {len(records)} runs, train_seconds sum {train:.1f} s")
    for name, seconds in stages:
        print(f"    {name}: {seconds:.1f} s", flush=True)
    table.append(["`make fair` from scratch: wall / sum of train_seconds", f"{wall:.0f} s", "", f"{wall / train:.2f}x"])
    table[-1].append("≤ 1.15x, ≤ 900 s")


def describe_machine() -> str:
    import importlib.metadata as metadata

    versions = ", ".join(f"{name} {metadata.version(name)}" for name in ("tensorflow", "keras", "mlflow", "hydra-core"))
    return (
        f"{datetime.date.today()}, {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}, "
        f"Python {platform.python_version()}, {versions}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default="epoch,input,sweep,memory,dvc,pipeline")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per fit (epoch and sweep sections)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--dvc-yaml", type=Path, help="pipeline section: measure this dvc.yaml instead of the project's"
    )
    parser.add_argument("--bare", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # progress shows up as it happens, also through a pipe
    if args.bare:
        print(json.dumps(bare(*json.loads(args.bare))))
        return
    subprocess.run([sys.executable, "-m", "src.stages.fetch"], cwd=ROOT, check=True, capture_output=True)
    print(describe_machine(), flush=True)
    table: list[list[str]] = []
    sections = args.sections.split(",")
    with tempfile.TemporaryDirectory() as workdir:
        for name in ("epoch", "input", "sweep", "memory", "dvc", "pipeline", "fair"):
            if name not in sections:
                continue
            print(f"\n[{name}]", flush=True)
            if name == "epoch":
                epoch_section(Path(workdir), args.epochs, args.rounds, table)
            elif name == "input":
                input_section(args.epochs, args.rounds, table)
            elif name == "sweep":
                sweep_section(Path(workdir), args.epochs, args.rounds, table)
            elif name == "memory":
                memory_section(Path(workdir), table)
            elif name == "dvc":
                dvc_section(args.rounds, table)
            elif name == "pipeline":
                pipeline_section(args.rounds, table, args.dvc_yaml)
            else:
                fair_section(table)
    print(f"\nMedians of {args.rounds} rounds; ratio = of the medians (lowest to highest per-round ratio):\n")
    print("| measurement | this project | bare Keras | ratio | target |")
    print("|---|---|---|---|---|")
    for row in table:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()

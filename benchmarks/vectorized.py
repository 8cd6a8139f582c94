"""`make bench-vectorized`: the vectorized engine against the sequential one, on the same trials, in one run.

The trials are the fair protocol's kind (conf/fair/default.yaml): the 784-128-10 MLP, batch 256, one optimizer,
learning rates around its grid and one seed each. Trial i is the same trial for both engines. The sizes are
measured in turn, the two engines alternating (sequential trials N_prev..N-1, then the vectorized engine on
trials 0..N-1), so drift in the machine's load hits both alike; the sequential engine's time at N is the sum
over its first N trials (its cost per trial does not depend on N).

Printed per N: trials per second of each engine end to end (`Engine.fit_trials`: building, compiling, tracing,
training, validating; one untimed warm-up of each first), the ratio, and each engine's training GFLOP/s per
member-epoch against the machine's peak. FLOPs counted: 6 per parameter per training image (the forward
product and the two backward ones) and 2 per validation image; element-wise work and the optimizer are not
counted. The peak assumed: every core doing two 8-wide float32 FMAs a cycle (AVX2 + FMA: 32 FLOP/cycle/core)
at the clock /proc/cpuinfo reports. Where oneDNN runs AVX-512 kernels (`ONEDNN_VERBOSE=1` names them:
`brg_matmul:avx512_core` on the project's 2-core machine) the real peak is up to twice that, and the
percentages half of what is printed.

    python benchmarks/vectorized.py [--sizes 12,36,60] [--epochs 1] [--limit N] [--optimizer adam]

Its last line is `vectorized speedup at N=36: X.XXx`.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LEARNING_RATES = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)  # the fair grid's middle: no trial diverges


def peak_gflops() -> tuple[float, str]:
    """The assumed float32 peak of this machine and how it was derived."""
    cores = len(os.sched_getaffinity(0))
    megahertz = 0.0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                megahertz = float(line.split(":")[1])
                break
    except OSError:
        pass
    gflops = cores * 32 * megahertz / 1000
    return gflops, f"{cores} cores x 32 FLOP/cycle (AVX2 FMA, float32) x {megahertz:.0f} MHz = {gflops:.0f} GFLOP/s"


def trial_configs(count: int, optimizer: str, epochs: int, limit: int | None, data_dir: str | None) -> list:
    """`count` trials of the fair protocol's shape: trial i has the i-th learning rate (cycling) and seed i."""
    from src.training.config import compose

    overrides = [f"optimizer={optimizer}", "model=mlp", f"train.epochs={epochs}", "train.batch_size=256"]
    overrides += ["callbacks=[terminate_on_nan,stop_on_divergence]", "train.verbose=0"]
    overrides += [f"data.limit={limit if limit else 'null'}"] + ([f"data.dir={data_dir}"] if data_dir else [])
    base = compose(overrides)
    configs = []
    for index in range(count):
        cfg = base.copy()
        cfg.optimizer.learning_rate = LEARNING_RATES[index % len(LEARNING_RATES)]
        cfg.train.seed = index
        configs.append(cfg)
    return configs


def flops_per_member_epoch(cfg, n_train: int, n_val: int) -> float:
    from hydra.utils import instantiate

    params = instantiate(cfg.model).count_params()
    return params * (6 * n_train + 2 * n_val)


def timed(engine, specs) -> float:
    started = time.perf_counter()
    results = engine.fit_trials(specs)
    seconds = time.perf_counter() - started
    diverged = [index for index, result in enumerate(results) if result.diverged_epoch is not None]
    if diverged:
        print(f"  ({engine.name}: trials {diverged} diverged)", flush=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="12,36,60", help="numbers of trials, comma-separated (default 12,36,60)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs of every trial (default 1)")
    parser.add_argument("--limit", type=int, default=None, help="train on the first N images (default: all 60000)")
    parser.add_argument("--optimizer", default="adam", help="a conf/optimizer/*.yaml name (default adam)")
    parser.add_argument("--data-dir", default=None, help="folder of mnist.npz (default: the config's data.dir)")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]

    sys.path.insert(0, str(ROOT))
    import keras
    import tensorflow as tf

    from src.training import data, stackable, vectorized
    from src.training.fit import SequentialEngine, TrialSpec

    peak, assumption = peak_gflops()
    machine = platform.processor() or platform.machine()
    print(f"{datetime.datetime.now():%Y-%m-%d %H:%M}, {machine}, load {os.getloadavg()}")
    print(f"Keras {keras.__version__}, TensorFlow {tf.__version__}, backend {keras.backend.backend()}")
    print(f"peak assumed: {assumption}", flush=True)

    configs = trial_configs(max(sizes), args.optimizer, args.epochs, args.limit, args.data_dir)
    first = configs[0]
    _, data_path = data.load_for_training(
        first.data.dir, first.data.sources, first.data.local_path, first.data.cache_dir, True
    )
    specs = [TrialSpec(cfg, data_path, verbose=0) for cfg in configs]
    reason = stackable.why_not_vectorized(first)
    if reason:
        raise SystemExit(f"error: the vectorized engine refuses {args.optimizer}: {reason}")
    splits = specs[0].splits()
    flops = flops_per_member_epoch(first, len(splits.x_train), len(splits.x_val))
    print(
        f"{len(splits.x_train)} training and {len(splits.x_val)} validation images, {args.epochs} epoch(s):"
        f" {flops / 1e9:.1f} GFLOP per member-epoch",
        flush=True,
    )

    sequential = SequentialEngine()
    lines = {"print": False}
    vectorized_engine = vectorized.VectorizedEngine(progress=lambda line: lines["print"] and print(f"  {line}"))
    warm_up = [TrialSpec(cfg, data_path, verbose=0) for cfg in trial_configs(2, args.optimizer, 1, 2048, args.data_dir)]
    sequential.fit_trials(warm_up[:1])
    vectorized_engine.fit_trials(warm_up)
    lines["print"] = True  # from now on the engine's chunk plan and progress lines

    sequential_seconds: list[float] = []  # per trial
    rows = []
    for size in sizes:
        for index in range(len(sequential_seconds), size):
            sequential_seconds.append(timed(sequential, specs[index : index + 1]))
        seconds_vectorized = timed(vectorized_engine, specs[:size])
        seconds_sequential = sum(sequential_seconds[:size])
        member_epochs = size * args.epochs
        row = {
            "size": size,
            "sequential": size / seconds_sequential,
            "vectorized": size / seconds_vectorized,
            "ratio": seconds_sequential / seconds_vectorized,
            "gflops_sequential": flops * member_epochs / seconds_sequential / 1e9,
            "gflops_vectorized": flops * member_epochs / seconds_vectorized / 1e9,
        }
        rows.append(row)
        print(
            f"N={size}: sequential {row['sequential']:.3f} trials/s ({seconds_sequential:.1f} s), vectorized"
            f" {row['vectorized']:.3f} trials/s ({seconds_vectorized:.1f} s), {row['ratio']:.2f}x;"
            f" load {os.getloadavg()[0]:.2f}",
            flush=True,
        )

    print()
    print(
        "| N | sequential trials/s | vectorized trials/s | ratio | sequential GFLOP/s (% peak) |"
        " vectorized GFLOP/s (% peak) |"
    )
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['size']} | {row['sequential']:.3f} | {row['vectorized']:.3f} | {row['ratio']:.2f}x |"
            f" {row['gflops_sequential']:.1f} ({100 * row['gflops_sequential'] / peak:.0f} %) |"
            f" {row['gflops_vectorized']:.1f} ({100 * row['gflops_vectorized'] / peak:.0f} %) |"
        )
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process: {peak_rss:.0f} MiB; load now {os.getloadavg()}")
    speedup = next((row["ratio"] for row in rows if row["size"] == 36), rows[-1]["ratio"])
    print(f"vectorized speedup at N={36 if 36 in sizes else sizes[-1]}: {speedup:.2f}x")


if __name__ == "__main__":
    main()

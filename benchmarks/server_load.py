"""Load on the team tracking server: N client processes log metrics and params at once, through MLflow's
client and `log_batch`, to `mlflow server` on a SQLite store and on a PostgreSQL store (`make db`).

Each client creates a run, logs its params in one `log_batch`, then `points` metric values (5 metric
keys, one value per key and step) in batches of `batch` values, timing every `log_batch` call. Afterwards
every run is read back and checked: all params, every metric's full history (nothing lost).
Printed per store: metric values written per second (all clients together, wall time from the first
to the last call), `log_batch` calls per second, and the median and p95 latency of `log_batch`.

    python benchmarks/server_load.py [--clients 4] [--points 500] [--batch 50] [--workers 1] [--rounds 3]

Both servers run at once and the stores alternate within each round; the table gives the median over the
rounds and, in brackets, the lowest and highest round.

tests/test_server.py runs the same clients (`run_clients`, `check_runs`) against an access-controlled
server on PostgreSQL.
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from src.infra.postgres import PG_BIN, Cluster  # noqa: E402
from src.tracking.server import free_port, stop_group, wait_healthy  # noqa: E402

METRIC_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate")


def _client(url: str, experiment_id: str, index: int, points: int, batch: int, params: int, env: dict) -> tuple:
    """One client process: a run, its params, `points` metric values in `log_batch` calls of `batch`."""
    os.environ.update(env)  # e.g. MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"  # no "View run at ..." line per client
    # MLflow's telemetry thread (started on import) unsets a variable of os.environ while requests may be
    # iterating it: one client in 8 died of KeyError '_MLFLOW_TELEMETRY_SESSION_ID' before this was set.
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    client = MlflowClient(url)
    run_id = client.create_run(experiment_id, run_name=f"load-client-{index}").info.run_id
    latencies = []
    started = time.perf_counter()
    client.log_batch(run_id, params=[Param(f"param_{i}", f"value {index}.{i}") for i in range(params)])
    values = [(key, step) for step in range(points // len(METRIC_KEYS)) for key in METRIC_KEYS]
    now = int(time.time() * 1000)
    for first in range(0, len(values), batch):
        metrics = [Metric(key, index + step / 1000, now + step, step) for key, step in values[first : first + batch]]
        begin = time.perf_counter()
        client.log_batch(run_id, metrics=metrics)
        latencies.append(time.perf_counter() - begin)
    client.set_terminated(run_id)
    return run_id, latencies, started, time.perf_counter()


def run_clients(
    url: str, experiment_id: str, clients: int, points: int, batch: int = 50, params: int = 20, env: dict | None = None
) -> dict:
    """Run `clients` processes at once; return their run ids, every log_batch latency and the throughput."""
    context = multiprocessing.get_context("spawn")  # fresh interpreters, as separate jobs or machines would be
    arguments = [(url, experiment_id, i, points, batch, params, env or {}) for i in range(clients)]
    with context.Pool(clients) as pool:
        results = pool.starmap(_client, arguments)
    latencies = [latency for _, client_latencies, _, _ in results for latency in client_latencies]
    # Each process has its own perf_counter origin on some systems: use the longest client as the wall time.
    wall = max(end - start for _, _, start, end in results)
    values = clients * (points // len(METRIC_KEYS)) * len(METRIC_KEYS)
    return {
        "run_ids": [run_id for run_id, _, _, _ in results],
        "values_per_s": values / wall,
        "calls_per_s": len(latencies) / wall,
        "p50_ms": 1000 * statistics.median(latencies),
        "p95_ms": 1000 * statistics.quantiles(latencies, n=20)[-1],
        "wall_s": wall,
    }


def check_runs(url: str, run_ids: list[str], points: int, params: int = 20) -> None:
    """Every run finished with all its params and every metric value at every step: nothing lost."""
    from mlflow import MlflowClient

    client = MlflowClient(url)
    steps = points // len(METRIC_KEYS)
    for index, run_id in enumerate(run_ids):
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED", run.info
        assert len(run.data.params) == params, (run_id, len(run.data.params))
        for key in METRIC_KEYS:
            history = client.get_metric_history(run_id, key)
            got = sorted((m.step, m.value) for m in history)
            # each client logs index + step / 1000 (the index tells clients apart)
            expected = [(step, index + step / 1000) for step in range(steps)]
            assert len(got) == steps and [s for s, _ in got] == list(range(steps)), (run_id, key, len(got))
            assert all(abs(g - e) < 1e-9 for (_, g), (_, e) in zip(got, expected, strict=True)), (run_id, key)


def start_server(store: str, folder: Path, workers: int, env: dict | None = None) -> tuple[str, subprocess.Popen]:
    """`mlflow server` as `make server` starts it (src.tracking.server serve), on 127.0.0.1 and a free port."""
    port = free_port()
    log = folder / "server.log"
    command = [sys.executable, "-m", "src.tracking.server", "serve", "--store", store, "--server-dir", str(folder)]
    command += ["--port", str(port), "--workers", str(workers)]
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, process, 180, log)
    return url, process


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--points", type=int, default=500, help="metric values per client")
    parser.add_argument("--batch", type=int, default=50, help="metric values per log_batch call")
    parser.add_argument("--workers", type=int, default=1, help="server worker processes")
    parser.add_argument("--rounds", type=int, default=3)
    arguments = parser.parse_args()

    import mlflow

    print(f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, {os.cpu_count()} CPUs")
    print(f"load average {os.getloadavg()[0]:.1f} (other work on the machine adds noise); MLflow {mlflow.__version__}")
    print(f"{arguments.clients} clients x {arguments.points} metric values (log_batch of {arguments.batch}), 20 params")
    print(f"server: {arguments.workers} worker(s); PostgreSQL from {PG_BIN}")
    folder = Path(tempfile.mkdtemp(prefix="server-load-", dir="/tmp"))
    folder.chmod(0o755)  # the `postgres` user must reach the cluster inside it
    cluster = Cluster(folder / "db").start()
    stores = {"sqlite": f"sqlite:///{folder / 'sqlite' / 'mlflow.db'}", "postgresql": cluster.uri()}
    results: dict[str, list[dict]] = {name: [] for name in stores}
    servers: dict[str, tuple[str, subprocess.Popen]] = {}
    try:
        for name, store in stores.items():
            (folder / name).mkdir(exist_ok=True)
            servers[name] = start_server(store, folder / name, arguments.workers, {"PGPASSFILE": str(cluster.pgpass)})
        from mlflow import MlflowClient

        # Both servers run throughout and the stores alternate within a round, so drift in the machine's
        # load hits both alike.
        for round_ in range(arguments.rounds):
            for name, (url, _) in servers.items():
                experiment_id = MlflowClient(url).create_experiment(f"load-{round_}")
                result = run_clients(url, experiment_id, arguments.clients, arguments.points, arguments.batch)
                check_runs(url, result["run_ids"], arguments.points)
                results[name].append(result)
                print(
                    f"  {name:<10} round {round_ + 1}: {result['values_per_s']:7.0f} values/s "
                    f"{result['calls_per_s']:6.1f} log_batch/s  p50 {result['p50_ms']:6.1f} ms  "
                    f"p95 {result['p95_ms']:6.1f} ms  (all {len(result['run_ids'])} runs complete)",
                    flush=True,
                )
    finally:
        for _, process in servers.values():
            stop_group(process)
        cluster.remove()
        shutil.rmtree(folder, ignore_errors=True)
    print("\n| store | metric values/s | log_batch calls/s | log_batch p50 | log_batch p95 |")
    print("|---|---|---|---|---|")
    for name, rounds in results.items():
        if not rounds:
            continue

        def span(key: str, rounds: list[dict] = rounds) -> str:
            values = [r[key] for r in rounds]
            return f"{statistics.median(values):.0f} ({min(values):.0f}-{max(values):.0f})"

        print(
            f"| {name} | {span('values_per_s')} | {span('calls_per_s')} | {span('p50_ms')} ms | {span('p95_ms')} ms |"
        )


if __name__ == "__main__":
    main()

#!/bin/bash
# One 4-job sweep by three launchers into one tracking server, on this machine: the basic launcher (jobs in
# turn), joblib (2 processes) and hydra/launcher=ray_cluster on a head (0 CPUs) plus node A (2 CPUs), both
# `ray start`ed here. Prints each one's wall time and the sum of its jobs' train_seconds (docs/benchmarks.md).
#   benchmarks/ray_cluster.sh                 ORDER="ray joblib basic" LIMIT=20000 EPOCHS=3 MNIST=path/mnist.npz
# Run from the project folder after `make install`; everything it starts is killed at the end.
set -u
V=$PWD/.venv/bin
export RAY_USAGE_STATS_ENABLED=0 PYTHONPATH=$PWD
MNIST=${MNIST:-$PWD/data/mnist.npz}
W=$(mktemp -d /tmp/ray-bench-XXXX)
H=$(mktemp -d /tmp/rbh-XXXX)
N=$(mktemp -d /tmp/rba-XXXX)  # short: Ray's socket paths must stay under 108 bytes
mkdir -p "$W/srv" "$W/drv" "$W/node-a"
SERVER_PORT=$($V/python -c "from src.tracking.server import free_port; print(free_port())")
HEAD_PORT=$($V/python -c "from src.tracking.server import free_port; print(free_port())")
cleanup() {
  for pattern in "$H" "$N" "$W/srv"; do
    for group in $(ps -eo pgid=,args= | grep -F "$pattern" | grep -v grep | awk '{print $1}' | sort -u); do
      kill -KILL -"$group" 2>/dev/null
    done
  done
  rm -rf "$H" "$N" "$W"
}
trap cleanup EXIT
setsid $V/python -m src.tracking.server serve --store "sqlite:///$W/srv/mlflow.db" --server-dir "$W/srv" --port "$SERVER_PORT" \
  > "$W/srv/log" 2>&1 &
disown  # its end (cleanup kills it) is expected: no "Killed" notice
(cd "$H" && setsid $V/ray start --head --node-ip-address=127.0.0.1 --port="$HEAD_PORT" --num-cpus=0 \
  --include-dashboard=false --temp-dir="$H" --ray-client-server-port="$($V/python -c "from src.tracking.server import free_port; print(free_port())")" > /dev/null)
(cd "$W/node-a" && env -u PYTHONPATH setsid $V/ray start --address="127.0.0.1:$HEAD_PORT" --node-ip-address=127.0.0.1 \
  --num-cpus=2 --resources='{"trainer": 2}' --temp-dir="$N" > /dev/null)
# Bounded, and straight to loopback: through an http_proxy the check would never reach this machine's server
deadline=$((SECONDS + ${SERVER_TIMEOUT:-120}))
until curl -sf --noproxy '*' --max-time 2 "http://127.0.0.1:$SERVER_PORT/health" > /dev/null; do
  if ((SECONDS > deadline)); then
    echo "mlflow server did not answer on 127.0.0.1:$SERVER_PORT within ${SERVER_TIMEOUT:-120} s; its log:" >&2
    tail -20 "$W/srv/log" >&2
    exit 1
  fi
  sleep 1
done
SWEEP="optimizer=adam,sgd,rmsprop,adagrad data.limit=${LIMIT:-20000} train.epochs=${EPOCHS:-3}"
SWEEP="$SWEEP data.sources=[local] data.local_path=$MNIST"

run() {  # run <experiment> <overrides...>
  local name=$1; shift
  local load_before started ended
  load_before=$(cut -d' ' -f1 /proc/loadavg); started=$(date +%s.%N)
  (cd "$W/drv" && MLFLOW_TRACKING_URI="http://127.0.0.1:$SERVER_PORT" RAY_ADDRESS="127.0.0.1:$HEAD_PORT" \
    $V/python -m src.train -m $SWEEP mlflow.experiment_name="$name" "$@" > "$W/$name.log" 2>&1) || tail -5 "$W/$name.log"
  ended=$(date +%s.%N)
  $V/python - "$name" "$started" "$ended" "$load_before" "$(cut -d' ' -f1 /proc/loadavg)" "$SERVER_PORT" <<'PY'
import sys
from mlflow import MlflowClient
name, started, ended, load_before, load_after, port = sys.argv[1:]
client = MlflowClient(f"http://127.0.0.1:{port}")
experiment = client.get_experiment_by_name(name)
jobs = [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("sweep") != "parent"]
train = sum(r.data.metrics["train_seconds"] for r in jobs)
wall = float(ended) - float(started)
print(f"{name:7} {len(jobs)} jobs  wall {wall:6.1f} s  train_seconds {train:6.1f} s  {wall / train:.2f}x  load {load_before}->{load_after}")
PY
}

for launcher in ${ORDER:-basic joblib ray}; do
  case $launcher in
    basic) run basic "data.dir=$W/data-basic" "train.state_dir=$W/state-basic" ;;
    joblib) run joblib hydra/launcher=joblib hydra.launcher.n_jobs=2 "data.dir=$W/data-joblib" "train.state_dir=$W/state-joblib" ;;
    ray) run ray hydra/launcher=ray_cluster "hydra.launcher.ray.remote.resources={trainer: 1}" ;;  # paths: the node's
  esac
done
